// Store open of a promoted slave (docs/replication.md, "Failover time"): a master and a slave, both
// in this process, the master stores PROMOTE_BENCH_MESSAGES (default 100k; 10k with --quick) of
// 200 bytes on 5 subjects; once the slave has copied them and installed the master's checkpoint,
// both close. Then, each in a fresh process and alternated (3 rounds; 1 with --quick), the slave's
// data dir is opened as a store (what a promotion opens):
//  - as the slave left it (it keeps its consume logs: replication/slave-consume.ts),
//  - without its consume logs (what a slave kept before it did: recovery rebuilds them from the
//    start of the message log).
// Each also with the messages older than the dedupe window (opened with dedupeWindowMs 1): recovery
// then skips the dedupe rebuild's scan of the recent log (bounded by the window and
// dedupeRebuildMaxBytes, not by the backlog), which is what a 72 h backlog mostly is.
// Reported: the medians of the open time and of recovery's own time, and the records replayed.
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { Broker } from '../src/broker/broker'
import { loadCheckpoint } from '../src/broker/store/checkpoint'
import type { FileMessageStore } from '../src/broker/store/file-message-store'
import { openMessageStore } from '../src/broker/store'
import { silentLogger } from '../src/common/logger'
import { encodeRecord } from '../src/common/record'
import { RawClient } from '../test/helpers/raw-client'
import { encodeSendRequest } from '../src/common/protocol/commands'
import { RequestCode } from '../src/common/protocol/codes'
import { quick } from './common'
import { emit, envNumber, tmpDir } from './store-common'

const BENCH = 'promote-open'
const SECRET = 'promote-open-bench-secret-0123456789'

interface Opened {
  ms: number
  recoveryMs: number
  replayed: number
  replayedFrom: number
}

function openIn(dir: string, dedupeWindowMs: number): Opened {
  const args = ['--import', 'tsx', __filename, 'open', dir, String(dedupeWindowMs)]
  const out = execFileSync(process.execPath, args, {
    encoding: 'utf8',
  })
  return JSON.parse(out.trim().split('\n').pop() as string) as Opened
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.floor(s.length / 2)] as number
}

async function until(cond: () => boolean): Promise<void> {
  const deadline = Date.now() + 600_000
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('timed out')
    await new Promise((r) => setTimeout(r, 50))
  }
}

async function build(messages: number): Promise<string> {
  const masterDir = tmpDir('promote-master')
  const slaveDir = tmpDir('promote-slave')
  const common = {
    port: 0,
    httpPort: -1,
    clusterSecret: SECRET,
    replicationInSyncLagMs: 600_000,
    replicationAckTimeoutMs: 600_000,
    checkpointIntervalMs: 500,
  }
  const master = new Broker({ ...common, dataDir: masterDir, degradedWrites: true }, { logger: silentLogger })
  await master.start()
  const slave = new Broker(
    { ...common, dataDir: slaveDir, role: 'slave', masterAddress: master.addresses.address },
    { logger: silentLogger },
  )
  await slave.start()
  const c = await RawClient.connect(master.addresses.port)
  const body = Buffer.alloc(200 - 60, 0x61)
  for (let i = 0; i < messages; i += 500) {
    const records: Buffer[] = []
    for (let j = i; j < Math.min(messages, i + 500); j++)
      records.push(
        encodeRecord({
          id: `m-${j}`,
          subject: `subject-${j % 5}`,
          createdAt: Date.now(),
          tags: [],
          properties: new Map(),
          body,
        }),
      )
    await c.call(RequestCode.SEND, encodeSendRequest(records))
  }
  await c.close()
  const m = master.messageStore as FileMessageStore
  const end = m.mlog.log.endOffset
  await until(() => loadCheckpoint(path.join(slaveDir, 'checkpoint')).checkpoint?.messageLogOffset === end)
  await slave.close()
  await master.close()
  fs.rmSync(masterDir, { recursive: true, force: true })
  return slaveDir
}

async function main(): Promise<void> {
  const [mode, dir, window] = process.argv.slice(2)
  if (mode === 'open' && dir) {
    const t0 = process.hrtime.bigint()
    const store = await openMessageStore({
      dataDir: dir,
      checkpointIntervalMs: 3_600_000,
      dedupeWindowMs: Number(window),
    })
    const ms = Number(process.hrtime.bigint() - t0) / 1e6
    const r = store.recoveryReport
    const opened: Opened = {
      ms,
      recoveryMs: r?.durationMs ?? 0,
      replayed: r?.replayedRecords ?? 0,
      replayedFrom: r?.replayedFrom ?? 0,
    }
    process.stdout.write(`${JSON.stringify(opened)}\n`)
    await store.close()
    return
  }
  const messages = envNumber('PROMOTE_BENCH_MESSAGES', quick ? 10_000 : 100_000)
  const rounds = quick ? 1 : 3
  const slaveDir = await build(messages)
  const windows = { 'recent messages': 600_000, 'messages older than the dedupe window': 1 }
  const results = new Map<string, Opened[]>()
  try {
    for (let round = 0; round < rounds; round++) {
      for (const [age, window] of Object.entries(windows)) {
        for (const variant of ['dropped', 'kept'] as const) {
          const copy = tmpDir(`promote-${variant}`)
          fs.cpSync(slaveDir, copy, { recursive: true })
          if (variant === 'dropped')
            fs.rmSync(path.join(copy, 'consumelog'), { recursive: true, force: true })
          const o = openIn(copy, window)
          const key = `consume logs ${variant}, ${age}`
          process.stderr.write(`${key}: ${JSON.stringify(o)}\n`)
          results.set(key, [...(results.get(key) ?? []), o])
          fs.rmSync(copy, { recursive: true, force: true })
        }
      }
    }
  } finally {
    fs.rmSync(slaveDir, { recursive: true, force: true })
  }
  for (const [key, rs] of results) {
    const extra = { messages, replayed: median(rs.map((r) => r.replayed)) }
    emit(BENCH, `store open, ${key}`, median(rs.map((r) => r.ms)), 'ms', extra)
    emit(BENCH, `recovery, ${key}`, median(rs.map((r) => r.recoveryMs)), 'ms', extra)
  }
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
