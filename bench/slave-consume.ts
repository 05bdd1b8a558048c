// The CPU a broker slave spends keeping its consume logs current (replication/slave-consume.ts),
// without the network or the copy's own writes: a real message log of SLAVE_CONSUME_MESSAGES
// (default 200k; 20k with --quick) 1 KiB records on 4 subjects, each with 1-2 tags, is written by
// the store's own code; then its bytes, read into memory, are fed to SlaveConsumeLogs in chunks of
// 1 MiB and 4 MiB (as the follower hands it what it wrote), alternated for SLAVE_CONSUME_ROUNDS
// rounds (default 3; 1 with --quick), each into fresh consume logs (written to disk, as a slave's).
// Reported per chunk size: the median process CPU (user + system, process.cpuUsage) per message
// and the MB/s of message log dispatched (wall time, from the first chunk to every entry written).
import fs from 'node:fs'
import path from 'node:path'
import { SlaveConsumeLogs } from '../src/broker/replication/slave-consume'
import { openMessageStore } from '../src/broker/store'
import { SegmentLog } from '../src/broker/store/segment-log'
import { silentLogger } from '../src/common/logger'
import { encodeRecord, readRecordHeader } from '../src/common/record'
import { quick } from './common'
import { emit, envNumber, tmpDir } from './store-common'

const BENCH = 'slave-consume'
const SUBJECTS = ['orders.created', 'orders.paid', 'payments.refund', 'users.signup']

async function buildLog(dir: string, messages: number): Promise<Buffer> {
  const store = await openMessageStore({ dataDir: dir, flush: 'async', checkpointIntervalMs: 3_600_000 })
  const body = Buffer.alloc(1024 - 100, 0x61)
  for (let i = 0; i < messages; i += 500) {
    const batch = []
    for (let j = i; j < Math.min(messages, i + 500); j++) {
      const bytes = encodeRecord({
        id: `msg-${String(j).padStart(10, '0')}`,
        subject: SUBJECTS[j % SUBJECTS.length] as string,
        createdAt: 1_700_000_000_000 + j,
        tags: j % 3 === 0 ? [`t${j % 7}`, 'all'] : [`t${j % 7}`],
        properties: new Map(),
        body,
      })
      batch.push({ bytes, header: readRecordHeader(bytes) })
    }
    await store.append(batch)
  }
  await store.close()
  const logDir = path.join(dir, 'messagelog')
  const files = fs.readdirSync(logDir).filter((f) => f.endsWith('.log'))
  return Buffer.concat(files.sort().map((f) => fs.readFileSync(path.join(logDir, f))))
}

interface Run {
  usPerMessage: number
  mbPerSec: number
}

async function feed(bytes: Buffer, chunk: number, messages: number): Promise<Run> {
  const dir = tmpDir('slave-consume-run')
  try {
    const mlog = SegmentLog.open({ dir: path.join(dir, 'messagelog'), segmentBytes: Number.MAX_SAFE_INTEGER })
    const consume = new SlaveConsumeLogs(
      { root: path.join(dir, 'consumelog'), maxMessageBytes: 4 * 1024 * 1024, entriesPerSegment: 1_000_000 },
      silentLogger,
    )
    await consume.open(mlog, undefined)
    const cpu0 = process.cpuUsage()
    const t0 = process.hrtime.bigint()
    for (let o = 0; o < bytes.length; o += chunk) {
      consume.written(o, bytes.subarray(o, Math.min(bytes.length, o + chunk)))
      // One chunk per turn, as the follower's writes complete.
      await new Promise((r) => setImmediate(r))
    }
    await consume.close()
    const ns = Number(process.hrtime.bigint() - t0)
    const cpu = process.cpuUsage(cpu0)
    mlog.close()
    if (consume.dispatchedTo !== bytes.length) throw new Error(`dispatched to ${consume.dispatchedTo}`)
    return { usPerMessage: (cpu.user + cpu.system) / messages, mbPerSec: bytes.length / 1e6 / (ns / 1e9) }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.floor(s.length / 2)] as number
}

async function main(): Promise<void> {
  const messages = envNumber('SLAVE_CONSUME_MESSAGES', quick ? 20_000 : 200_000)
  const rounds = envNumber('SLAVE_CONSUME_ROUNDS', quick ? 1 : 3)
  const master = tmpDir('slave-consume-master')
  let bytes: Buffer
  try {
    bytes = await buildLog(master, messages)
  } finally {
    fs.rmSync(master, { recursive: true, force: true })
  }
  const chunks = { '1 MiB': 1024 * 1024, '4 MiB': 4 * 1024 * 1024 }
  const results = new Map<string, Run[]>()
  await feed(bytes, chunks['4 MiB'], messages) // warm-up
  for (let round = 0; round < rounds; round++) {
    for (const [name, size] of Object.entries(chunks)) {
      const r = await feed(bytes, size, messages)
      process.stderr.write(`${name} chunks: ${JSON.stringify(r)}\n`)
      results.set(name, [...(results.get(name) ?? []), r])
    }
  }
  for (const [name, rs] of results) {
    const extra = { messages, bytes: bytes.length, rounds }
    emit(BENCH, `cpu per message, ${name} chunks`, median(rs.map((r) => r.usPerMessage)), 'us', extra)
    emit(BENCH, `dispatch, ${name} chunks`, median(rs.map((r) => r.mbPerSec)), 'MB/s', extra)
  }
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
