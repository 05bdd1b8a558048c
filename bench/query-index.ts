// Message index (issue 17): produce throughput with the indexes on vs off (one run each, ratio; flush
// 'async', where the CPU decides, and 'sync', the default, where fdatasync does), and
// query latency by id and by business key over a store of BENCH_QUERY_MESSAGES messages (default 10M;
// 200k with --quick). Each record has a 100-byte body and one business key shared by 4 messages.
// Knobs: BENCH_SECONDS (5) per throughput case, BENCH_QUERY_MESSAGES, BENCH_QUERIES (2000), BENCH_DIR.
import fs from 'node:fs'
import { openMessageStore } from '../src/broker/store'
import type { FileMessageStore } from '../src/broker/store/file-message-store'
import type { AppendInput } from '../src/broker/store/types'
import { crc32c } from '../src/common/crc32c'
import type { ListAnswer, MessageAnswer } from '../src/common/protocol/query'
import { encodeRecord, KEYS_PROPERTY, readRecordHeader } from '../src/common/record'
import { quick } from './common'
import { emit, envNumber, tmpDir } from './store-common'

const DIGITS = 12
const ID_MARK = 'I'.repeat(DIGITS)
const KEY_MARK = 'K'.repeat(DIGITS)

/** Records with distinct ids `000000000042` and key `k000000000010` (4 messages per key). */
class KeyedPool {
  private readonly template: Buffer
  private readonly idAt: number
  private readonly keyAt: number
  private readonly header: ReturnType<typeof readRecordHeader>
  counter = 0
  constructor(subject: string) {
    this.template = encodeRecord({
      id: ID_MARK,
      subject,
      createdAt: Date.now(),
      tags: [],
      properties: new Map([
        ['qmq_appCode', 'bench'],
        [KEYS_PROPERTY, `k${KEY_MARK}`],
      ]),
      body: Buffer.alloc(100, 0x61),
    })
    this.idAt = this.template.indexOf(ID_MARK, 0, 'latin1')
    this.keyAt = this.template.indexOf(KEY_MARK, 0, 'latin1')
    this.header = readRecordHeader(this.template)
  }
  take(n: number): AppendInput[] {
    const size = this.template.length
    const buf = Buffer.allocUnsafe(n * size)
    const out: AppendInput[] = new Array(n)
    for (let i = 0; i < n; i++) {
      const bytes = buf.subarray(i * size, (i + 1) * size)
      bytes.set(this.template)
      const c = this.counter++
      const id = String(c).padStart(DIGITS, '0')
      bytes.write(id, this.idAt, DIGITS, 'latin1')
      bytes.write(String(c >> 2).padStart(DIGITS, '0'), this.keyAt, DIGITS, 'latin1')
      bytes.writeUInt32BE(crc32c(bytes.subarray(8)), 4)
      out[i] = { bytes, header: { ...this.header, id } }
    }
    return out
  }
}

async function throughput(indexes: boolean, seconds: number, flush: 'sync' | 'async'): Promise<number> {
  const dir = tmpDir('index-tput')
  const store = await openMessageStore({ dataDir: dir, flush, indexes, segmentBytes: 256 * 1024 * 1024 })
  const pool = new KeyedPool('bench')
  let count = 0
  const deadline = Date.now() + seconds * 1000
  const t0 = process.hrtime.bigint()
  const cpu0 = process.cpuUsage()
  await Promise.all(
    Array.from({ length: 64 }, async () => {
      while (Date.now() < deadline) {
        await store.append(pool.take(32))
        count += 32
      }
    }),
  )
  await store.index?.flush()
  const secs = Number(process.hrtime.bigint() - t0) / 1e9
  const cpu = process.cpuUsage(cpu0)
  await store.close()
  fs.rmSync(dir, { recursive: true, force: true })
  const rate = count / secs
  emit('query-index', `produce_${flush}_indexes_${indexes ? 'on' : 'off'}`, rate, 'msgs/s', {
    flush,
    appenders: 64,
    batch: 32,
    cpuMicrosPerMsg: Math.round(((cpu.user + cpu.system) / count) * 100) / 100,
  })
  return rate
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] ?? 0
}

async function latency(
  store: FileMessageStore,
  total: number,
  queries: number,
  label: string,
): Promise<void> {
  const rnd = () => Math.floor(Math.random() * total)
  for (const kind of ['id', 'key'] as const) {
    const times: number[] = []
    let misses = 0
    for (let i = 0; i < queries; i++) {
      const n = rnd()
      const t0 = process.hrtime.bigint()
      if (kind === 'id') {
        const a = (await store.query(
          { op: 'message', id: String(n).padStart(DIGITS, '0') },
          'bench',
        )) as MessageAnswer
        if (a.messages.length !== 1) misses++
      } else {
        const key = `k${String(n >> 2).padStart(DIGITS, '0')}`
        const a = (await store.query({ op: 'key', key, limit: 50 }, 'bench')) as ListAnswer
        if (a.messages.length === 0) misses++
      }
      times.push(Number(process.hrtime.bigint() - t0) / 1e6)
    }
    times.sort((a, b) => a - b)
    emit('query-index', `query_by_${kind}_${label}_p50`, percentile(times, 0.5), 'ms', {
      messages: total,
      queries,
      p99: Math.round(percentile(times, 0.99) * 100) / 100,
      max: Math.round((times[times.length - 1] ?? 0) * 100) / 100,
      misses,
    })
  }
}

async function main(): Promise<void> {
  const seconds = envNumber('BENCH_SECONDS', quick ? 1 : 5)
  for (const flush of ['async', 'sync'] as const) {
    const off = await throughput(false, seconds, flush)
    const on = await throughput(true, seconds, flush)
    emit('query-index', `produce_${flush}_indexes_on_vs_off`, on / off, 'ratio')
  }

  const total = envNumber('BENCH_QUERY_MESSAGES', quick ? 200_000 : 10_000_000)
  const queries = envNumber('BENCH_QUERIES', quick ? 200 : 2000)
  const dir = tmpDir('index-query')
  let store = await openMessageStore({ dataDir: dir, flush: 'async', segmentBytes: 512 * 1024 * 1024 })
  const pool = new KeyedPool('bench')
  const t0 = Date.now()
  let inflight: Promise<unknown>[] = []
  while (pool.counter < total) {
    inflight.push(store.append(pool.take(Math.min(256, total - pool.counter))))
    if (inflight.length >= 16) {
      await Promise.all(inflight)
      inflight = []
    }
  }
  await Promise.all(inflight)
  await store.index?.flush()
  const fillSecs = (Date.now() - t0) / 1000
  const du = (sub: string) => {
    let n = 0
    const walk = (p: string) => {
      for (const e of fs.readdirSync(p, { withFileTypes: true })) {
        if (e.isDirectory()) walk(`${p}/${e.name}`)
        else n += fs.statSync(`${p}/${e.name}`).size
      }
    }
    walk(`${dir}/${sub}`)
    return n
  }
  emit('query-index', 'fill_rate', total / fillSecs, 'msgs/s', {
    messages: total,
    messageLogBytes: du('messagelog'),
    indexBytes: du('indexlog') + du('indexrun'),
  })
  await latency(store, total, queries, 'live')
  await store.close()
  const t1 = Date.now()
  store = await openMessageStore({ dataDir: dir, flush: 'async', segmentBytes: 512 * 1024 * 1024 })
  emit('query-index', 'reopen', Date.now() - t1, 'ms', { messages: total })
  await latency(store, total, queries, 'reopened')
  await store.close()
  fs.rmSync(dir, { recursive: true, force: true })
}
void main()
