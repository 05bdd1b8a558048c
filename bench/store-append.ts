// Append rate of 1 KiB messages, 1 / 8 / 64 concurrent appenders, flush 'sync' and 'async'.
// Each appender is a producer connection: it appends a batch of BENCH_BATCH messages (QMQ clients
// send up to 30 per request) and sends the next once the store acknowledged it.
// Knobs: BENCH_SECONDS (2), BENCH_BATCH (32; also run with 1), BENCH_DIR, BENCH_CASES (async:64x32,...).
import fs from 'node:fs'
import { openMessageStore } from '../src/broker/store'
import { emit, envNumber, RecordPool, tmpDir } from './store-common'

async function run(
  flush: 'sync' | 'async',
  appenders: number,
  batch: number,
  seconds: number,
): Promise<void> {
  const dir = tmpDir('append')
  const store = await openMessageStore({ dataDir: dir, flush, segmentBytes: 256 * 1024 * 1024 })
  const pool = new RecordPool('bench', Math.max(8192, appenders * batch * 8))
  let count = 0
  const deadline = Date.now() + seconds * 1000
  const t0 = process.hrtime.bigint()
  const cpu0 = process.cpuUsage()
  await Promise.all(
    Array.from({ length: appenders }, async () => {
      while (Date.now() < deadline) {
        await store.append(pool.take(batch))
        count += batch
      }
    }),
  )
  const secs = Number(process.hrtime.bigint() - t0) / 1e9
  // CPU time of this process (main thread and libuv's threads) per message: steadier than the rate
  // on a shared machine.
  const cpu = process.cpuUsage(cpu0)
  await store.close()
  fs.rmSync(dir, { recursive: true, force: true })
  emit('store-append', `append_${flush}_${appenders}x${batch}`, count / secs, 'msgs/s', {
    flush,
    appenders,
    batch,
    mbPerSec: Math.round((count * 1024) / secs / 1e4) / 100,
    cpuMicrosPerMsg: Math.round(((cpu.user + cpu.system) / count) * 100) / 100,
  })
}

async function main(): Promise<void> {
  const seconds = envNumber('BENCH_SECONDS', 2)
  const batch = envNumber('BENCH_BATCH', 32)
  // BENCH_CASES=async:64x32,sync:64x32 runs only those cases (flush:appenders x batch).
  const only = process.env.BENCH_CASES
  if (only) {
    for (const c of only.split(',')) {
      const m = /^(sync|async):(\d+)x(\d+)$/.exec(c.trim())
      if (!m) throw new Error(`BENCH_CASES: bad case ${c} (want e.g. async:64x32)`)
      await run(m[1] as 'sync' | 'async', Number(m[2]), Number(m[3]), seconds)
    }
    return
  }
  for (const flush of ['async', 'sync'] as const) {
    for (const appenders of [1, 8, 64]) await run(flush, appenders, batch, seconds)
    if (batch !== 1) for (const appenders of [1, 64]) await run(flush, appenders, 1, seconds)
  }
}
void main()
