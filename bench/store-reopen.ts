// Reopen time of a large log: BENCH_REOPEN_BYTES (default 256 MiB; the target is stated for 2 GiB:
// BENCH_REOPEN_BYTES=2147483648) of 1 KiB messages over 16 subjects, then, each in a fresh process
// (as a broker restart is; the writer's heap would otherwise weigh on the measurement):
//  - reopen after a clean close (from its checkpoint),
//  - reopen after a crash with BENCH_REOPEN_TAIL_BYTES (16 MiB) written after the last checkpoint:
//    replay and CRC check of that tail.
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import { openMessageStore } from '../src/broker/store'
import { emit, envNumber, RecordPool, tmpDir } from './store-common'

const storeOptions = (dir: string) => ({
  dataDir: dir,
  flush: 'async' as const,
  segmentBytes: 128 * 1024 * 1024,
  checkpointIntervalMs: 3_600_000,
})

function child(mode: 'open' | 'crash-tail', dir: string, tail = 0): { ms: number; replayed: number } {
  const out = execFileSync(process.execPath, ['--import', 'tsx', __filename, mode, dir, String(tail)], {
    encoding: 'utf8',
  })
  return JSON.parse(out.trim().split('\n').pop() as string) as { ms: number; replayed: number }
}

async function main(): Promise<void> {
  const [mode, dir, tailArg] = process.argv.slice(2)
  if (mode === 'open' && dir) {
    const t0 = process.hrtime.bigint()
    const store = await openMessageStore(storeOptions(dir))
    const ms = Number(process.hrtime.bigint() - t0) / 1e6
    process.stdout.write(`${JSON.stringify({ ms, replayed: store.recoveryReport?.replayedRecords ?? 0 })}\n`)
    await store.close()
    return
  }
  if (mode === 'crash-tail' && dir) {
    const store = await openMessageStore(storeOptions(dir))
    const pool = new RecordPool('subject-0', 4096)
    for (let i = 0; i < Math.ceil(Number(tailArg) / 1024); i += 256) await store.append(pool.take(256))
    await store.abandon()
    process.stdout.write('{"ms":0,"replayed":0}\n')
    process.exit(0)
  }
  const bytes = envNumber('BENCH_REOPEN_BYTES', 256 * 1024 * 1024)
  const tail = envNumber('BENCH_REOPEN_TAIL_BYTES', 16 * 1024 * 1024)
  const root = tmpDir('reopen')
  const store = await openMessageStore(storeOptions(root))
  const pools = Array.from({ length: 16 }, (_, i) => new RecordPool(`subject-${i}`, 4096))
  const n = Math.ceil(bytes / 1024)
  for (let i = 0; i < n; i += 512) {
    await Promise.all([
      store.append((pools[i % 16] as RecordPool).take(256)),
      store.append((pools[(i + 1) % 16] as RecordPool).take(256)),
    ])
  }
  await store.close()
  const clean = child('open', root)
  emit('store-reopen', 'reopen_from_checkpoint', clean.ms, 'ms', { logBytes: bytes })
  child('crash-tail', root, tail)
  const crash = child('open', root)
  emit('store-reopen', 'reopen_after_crash', crash.ms, 'ms', {
    logBytes: bytes + tail,
    replayedRecords: crash.replayed,
  })
  fs.rmSync(root, { recursive: true, force: true })
}
void main()
