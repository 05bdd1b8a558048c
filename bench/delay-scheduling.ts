/**
 * Delay server macro benchmark: the delay server runs in its own process (src/delay/main.ts) and
 * dispatches to a stand-in broker in this process that acknowledges every SEND and notes arrival times.
 *
 *   (1) pending   DELAY_BENCH_PENDING messages (default 1M, quick 100k; the target run is 10M) spread
 *                 over 30 days: delay-server RSS once all are stored (target < 300 MB), send rate.
 *   (2) burst     DELAY_BENCH_BURST messages (default 200k, quick 50k; target run 1M) due in the same
 *                 second: time from due to the last delivery and drain rate (target >= 100k msgs/s).
 *   (3) steady    DELAY_BENCH_RATE msgs/s due (default 20k) for DELAY_BENCH_STEADY_S seconds (default
 *                 10, quick 3): dispatch lateness p50/p99 measured at the broker (target p99 < 200 ms).
 *
 *   node --import tsx bench/delay-scheduling.ts [--quick]      (DELAY_BENCH_ONLY=pending,burst,steady)
 *   DELAY_BENCH_PENDING=10000000 DELAY_BENCH_BURST=1000000 node --import tsx bench/delay-scheduling.ts
 */
import { type ChildProcess, spawn } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { createInterface } from 'node:readline'
import { Connection } from '../src/client/transport/connection'
import { decodeSendResponse, encodeSendRequest, encodeSendResponse } from '../src/common/protocol/commands'
import { RequestCode } from '../src/common/protocol/codes'
import { encodeFrame, FLAG_RESPONSE, FrameDecoder } from '../src/common/protocol/frame'
import { encodeRecord } from '../src/common/record'
import { quick, report } from './common'

const env = (name: string, full: number, small: number): number => {
  const v = process.env[name]
  return v !== undefined && v !== '' ? Number(v) : quick ? small : full
}
const PENDING = env('DELAY_BENCH_PENDING', 1_000_000, 100_000)
const BURST = env('DELAY_BENCH_BURST', 200_000, 50_000)
const RATE = env('DELAY_BENCH_RATE', 20_000, 20_000)
const STEADY_S = env('DELAY_BENCH_STEADY_S', 10, 3)
const BATCH = 1_000
const IN_FLIGHT = 8
const BODY = 'x'.repeat(100)

/** Stand-in broker: acks SEND; calls onRecord(scheduleAt, arrival) per record without decoding more. */
class StubBroker {
  server: net.Server | undefined
  port = 0
  received = 0
  onRecord: (scheduleAt: number, now: number) => void = () => {}
  async start(): Promise<void> {
    this.server = net.createServer((s) => {
      s.on('error', () => {})
      const dec = new FrameDecoder()
      s.on('data', (chunk) => {
        for (const f of dec.push(chunk)) {
          const body = f.body
          const count = body.readUInt32BE(0)
          const now = Date.now()
          let o = 4
          for (let i = 0; i < count; i++) {
            const len = body.readUInt32BE(o)
            this.onRecord(body.readInt32BE(o + 20) * 0x1_0000_0000 + body.readUInt32BE(o + 24), now)
            o += len
          }
          this.received += count
          const res = encodeSendResponse(Array.from({ length: count }, () => ({ status: 0, message: '' })))
          s.write(encodeFrame({ flags: FLAG_RESPONSE, code: f.code, status: 0, requestId: f.requestId }, res))
        }
      })
    })
    await new Promise<void>((r) => this.server?.listen(0, '127.0.0.1', () => r()))
    const a = this.server.address()
    this.port = typeof a === 'object' && a !== null ? a.port : 0
  }
  close(): Promise<void> {
    return new Promise((r) => (this.server ? this.server.close(() => r()) : r()))
  }
}

async function startDelay(dir: string, brokerPort: number): Promise<{ child: ChildProcess; port: number }> {
  // A bounded heap, as the delay server should be deployed: its live JS heap is small (typed arrays
  // hold the indexes) and without a cap V8 lets garbage from the SEND path pile up before collecting.
  const heap = ['--max-old-space-size=160', '--max-semi-space-size=4']
  const child = spawn(
    process.execPath,
    [...heap, '--import', 'tsx', path.join(__dirname, '..', 'src', 'delay', 'main.ts')],
    {
      env: {
        ...process.env,
        QMQ_DELAY_PORT: '0',
        QMQ_DELAY_DATA_DIR: dir,
        QMQ_DELAY_BROKERS: `b1=127.0.0.1:${brokerPort}`,
        QMQ_DELAY_DISPATCH_BATCH: '1000',
      },
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  )
  const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream })
  const port = await new Promise<number>((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`delay server exited with ${code}`)))
    lines.once('line', (line) => resolve((JSON.parse(line) as { port: number }).port))
  })
  return { child, port }
}

function rssBytes(pid: number, field: 'VmRSS' | 'VmHWM'): number {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8')
  const m = new RegExp(`${field}:\\s+(\\d+) kB`).exec(status)
  return m ? Number(m[1]) * 1024 : Number.NaN
}

/** CPU seconds (user + system) a process has used so far (/proc; clock ticks of 10 ms). */
function cpuSeconds(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return (Number(f[11]) + Number(f[12])) / 100
}

/** Sends n messages with schedule times from `at(i)`, BATCH per SEND, IN_FLIGHT at once. Returns msgs/s. */
async function sendAll(port: number, n: number, at: (i: number) => number): Promise<number> {
  const conn = new Connection({ address: `127.0.0.1:${port}`, requestTimeoutMs: 120_000 })
  const t0 = performance.now()
  let next = 0
  const worker = async () => {
    while (next < n) {
      const start = next
      const end = Math.min(n, start + BATCH)
      next = end
      const records: Buffer[] = []
      for (let i = start; i < end; i++) {
        records.push(
          encodeRecord({
            id: `m${i}`,
            subject: 'bench.delay',
            createdAt: Date.now(),
            scheduleAt: at(i),
            tags: [],
            properties: new Map(),
            body: BODY,
          }),
        )
      }
      const res = decodeSendResponse((await conn.request(RequestCode.SEND, encodeSendRequest(records))).body)
      const bad = res.find((r) => r.status !== 0)
      if (bad) throw new Error(`send failed: ${bad.status} ${bad.message}`)
    }
  }
  await Promise.all(Array.from({ length: IN_FLIGHT }, worker))
  await conn.close()
  return n / ((performance.now() - t0) / 1000)
}

function stop(child: ChildProcess): Promise<void> {
  return new Promise((r) => {
    child.once('exit', () => r())
    child.kill('SIGTERM')
  })
}

const waitUntil = async (cond: () => boolean, timeoutMs: number) => {
  const until = Date.now() + timeoutMs
  while (!cond() && Date.now() < until) await new Promise((r) => setTimeout(r, 2))
  return cond()
}

async function pending(broker: StubBroker): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qmq-delay-bench-'))
  const { child, port } = await startDelay(dir, broker.port)
  try {
    const now = Date.now()
    const month = 30 * 24 * 3600 * 1000
    const cpu0 = cpuSeconds(child.pid as number)
    const rate = await sendAll(
      port,
      PENDING,
      (i) => now + 3_600_000 + Math.floor((i * 2_654_435_761) % month),
    )
    await new Promise((r) => setTimeout(r, 1_500)) // a checkpoint passes
    const pid = child.pid as number
    const cpu = cpuSeconds(pid) - cpu0
    report({ bench: 'delay-pending', metric: 'messages', value: PENDING, unit: 'msgs' })
    report({ bench: 'delay-pending', metric: 'send rate', value: Math.round(rate), unit: 'msgs/s' })
    report({
      bench: 'delay-pending',
      metric: 'delay server CPU per stored message',
      value: +((cpu / PENDING) * 1e6).toFixed(2),
      unit: 'us',
    })
    report({
      bench: 'delay-pending',
      metric: 'delay server RSS',
      value: Math.round(rssBytes(pid, 'VmRSS') / 2 ** 20),
      unit: 'MB',
      target: '< 300 MB at 10M pending',
    })
    report({
      bench: 'delay-pending',
      metric: 'delay server peak RSS',
      value: Math.round(rssBytes(pid, 'VmHWM') / 2 ** 20),
      unit: 'MB',
    })
  } finally {
    await stop(child)
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

async function burst(broker: StubBroker): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qmq-delay-bench-'))
  const { child, port } = await startDelay(dir, broker.port)
  try {
    // Due time far enough ahead for every send to be stored first (~25k msgs/s assumed, plus margin).
    const due = Date.now() + 3_000 + Math.ceil(BURST / 25)
    let last = 0
    let got = 0
    broker.onRecord = (_s, at) => {
      got++
      last = at
    }
    await sendAll(port, BURST, () => due)
    const storedBeforeDue = Date.now() < due
    await waitUntil(() => Date.now() >= due, due - Date.now() + 1_000)
    const cpu0 = cpuSeconds(child.pid as number)
    await waitUntil(() => got >= BURST, Math.max(0, due - Date.now()) + 120_000)
    const cpu = cpuSeconds(child.pid as number) - cpu0
    const drainMs = last - due
    report({ bench: 'delay-burst', metric: 'messages due in one second', value: BURST, unit: 'msgs' })
    report({ bench: 'delay-burst', metric: 'due to last delivery', value: drainMs, unit: 'ms' })
    report({
      bench: 'delay-burst',
      metric: 'drain rate',
      value: Math.round(BURST / (Math.max(1, drainMs) / 1000)),
      unit: 'msgs/s',
      target: '>= 100k msgs/s',
    })
    report({
      bench: 'delay-burst',
      metric: 'delay server CPU per drained message',
      value: +((cpu / BURST) * 1e6).toFixed(2),
      unit: 'us',
    })
    if (!storedBeforeDue || got < BURST) {
      process.stderr.write(`delay-burst: stored before due=${storedBeforeDue}, delivered ${got}/${BURST}\n`)
    }
  } finally {
    broker.onRecord = () => {}
    await stop(child)
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

async function steady(broker: StubBroker): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qmq-delay-bench-'))
  const { child, port } = await startDelay(dir, broker.port)
  try {
    const n = RATE * STEADY_S
    const start = Date.now() + 3_000 + Math.ceil(n / 25)
    const lateness = new Float64Array(n)
    let got = 0
    broker.onRecord = (scheduleAt, at) => {
      if (got < n) lateness[got++] = at - scheduleAt
    }
    await sendAll(port, n, (i) => start + Math.floor((i * 1000) / RATE))
    await waitUntil(() => got >= n, Math.max(0, start - Date.now()) + STEADY_S * 1000 + 60_000)
    const sorted = lateness.subarray(0, got).sort()
    const pct = (p: number) =>
      sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] ?? Number.NaN
    report({ bench: 'delay-steady', metric: 'due rate', value: RATE, unit: 'msgs/s' })
    report({ bench: 'delay-steady', metric: 'lateness p50', value: pct(0.5), unit: 'ms' })
    report({
      bench: 'delay-steady',
      metric: 'lateness p99',
      value: pct(0.99),
      unit: 'ms',
      target: '< 200 ms',
    })
    report({
      bench: 'delay-steady',
      metric: 'lateness max',
      value: sorted[sorted.length - 1] ?? Number.NaN,
      unit: 'ms',
    })
  } finally {
    broker.onRecord = () => {}
    await stop(child)
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

async function main(): Promise<void> {
  const broker = new StubBroker()
  await broker.start()
  try {
    const only = process.env.DELAY_BENCH_ONLY // e.g. "pending" or "burst,steady"
    const run = (name: string) => only === undefined || only.split(',').includes(name)
    if (run('pending')) await pending(broker)
    if (run('burst')) await burst(broker)
    if (run('steady')) await steady(broker)
  } finally {
    await broker.close()
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`)
  process.exit(1)
})
