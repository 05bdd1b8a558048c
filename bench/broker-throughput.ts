/**
 * Broker macro benchmark over loopback, 1 KiB messages, the broker in its own process (flush 'sync'):
 * - produce throughput with 1 and 4 producers (batches of 100, BENCH_IN_FLIGHT (8) batches in flight per producer),
 * - consume throughput from a backlog with 1 and 4 consumers (pull 1000 + ack),
 * - publish-to-deliver latency p50/p99/p999 at a fixed 10k msgs/s with a long-polling consumer,
 * - backlog drain time with a 5 ms handler for 1, 2, 4, 8 and 16 consumers.
 * Targets: >= 150k msgs/s produced with 4 producers, >= 150k msgs/s consumed, p99 < 5 ms at 10k msgs/s,
 * 16 consumers drain >= 12x faster than one.
 * Knobs: BENCH_QUICK=1 (or --quick) for a short run; BROKER_FLUSH=async to compare; BENCH_PARTS
 * (produce,consume,latency,drain); BROKER_NODE_ARGS (node flags of the broker process, e.g. --cpu-prof);
 * BENCH_PHASE_MARKS=1 marks each phase's start and end on stderr (with --trace-gc: GCs per phase).
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { RawClient } from '../test/helpers/raw-client'
import { RequestCode } from '../src/common/protocol/codes'
import { decodePullResponse, encodeAckRequest } from '../src/common/protocol/commands'
import { encodeRecord } from '../src/common/record'
import { brokerChildEnv, brokerChildPort, quick, report, stopBrokerChild } from './common'
import { LATENCY_BODY, latency, percentile, pullReq, sendBatch } from './latency-common'

const BENCH = 'broker'
const flush = process.env.BROKER_FLUSH === 'async' ? 'async' : 'sync'
const BODY = LATENCY_BODY // record of about 1 KiB
let idSeq = 0

function record(subject: string, body: Buffer = BODY): Buffer {
  return encodeRecord({
    id: `b${process.pid}-${idSeq++}`,
    subject,
    createdAt: Date.now(),
    tags: [],
    properties: new Map(),
    body,
  })
}

function startBroker(dataDir: string): Promise<{ child: ChildProcess; port: number }> {
  const child = spawn(
    process.execPath,
    [
      // e.g. BROKER_NODE_ARGS="--cpu-prof --cpu-prof-dir=/tmp/prof" to profile the broker process
      ...(process.env.BROKER_NODE_ARGS ?? '').split(' ').filter((a) => a !== ''),
      '--import',
      'tsx',
      join(__dirname, 'broker-child.ts'),
      dataDir,
      JSON.stringify({ flush }),
    ],
    { stdio: ['ignore', 'pipe', 'inherit'], env: brokerChildEnv() },
  )
  return brokerChildPort(child).then((port) => ({ child, port }))
}

/** `producers` connections each send `perProducer` messages, `inFlight` batches of `batch` at a time. */
async function produce(
  port: number,
  subject: string,
  producers: number,
  perProducer: number,
): Promise<number> {
  const batch = 100
  const inFlight = Number(process.env.BENCH_IN_FLIGHT ?? 8)
  const clients = await Promise.all(Array.from({ length: producers }, () => RawClient.connect(port)))
  // Records are encoded before the clock starts: the figure is the broker's, not the client's CRC work.
  const batches = clients.map(() => {
    const out: Buffer[][] = []
    for (let sent = 0; sent < perProducer; sent += batch) {
      out.push(Array.from({ length: Math.min(batch, perProducer - sent) }, () => record(subject)))
    }
    return out
  })
  const started = performance.now()
  await Promise.all(
    clients.map(async (c, p) => {
      const mine = batches[p] as Buffer[][]
      let next = 0
      const lane = async () => {
        while (next < mine.length) {
          await sendBatch(c, mine[next++] as Buffer[])
        }
      }
      await Promise.all(Array.from({ length: inFlight }, lane))
    }),
  )
  const seconds = (performance.now() - started) / 1000
  for (const c of clients) c.destroy()
  return (producers * perProducer) / seconds
}

/** `consumers` connections of one group drain `total` messages. */
async function consume(
  port: number,
  subject: string,
  group: string,
  consumers: number,
  total: number,
): Promise<number> {
  const clients = await Promise.all(Array.from({ length: consumers }, () => RawClient.connect(port)))
  let got = 0
  const started = performance.now()
  await Promise.all(
    clients.map(async (c, i) => {
      while (got < total) {
        const sequences = pulledSequences(
          await c.call(RequestCode.PULL, pullReq({ subject, group, consumerId: `c${i}`, timeoutMs: 100 })),
        )
        if (sequences.length === 0) continue
        got += sequences.length
        await c.call(
          RequestCode.ACK,
          encodeAckRequest({ subject, group, consumerId: `c${i}`, broadcast: false, sequences }),
        )
      }
    }),
  )
  const seconds = (performance.now() - started) / 1000
  for (const c of clients) c.destroy()
  return total / seconds
}

/**
 * The sequences of a PULL answer, read from its entry table only: the throughput figure is the
 * broker's; decoding and CRC-checking every record is the client's work (measured by the codec bench).
 */
function pulledSequences(body: Buffer): number[] {
  const count = body.readUInt32BE(0)
  const out: number[] = []
  for (let i = 0, o = 4; i < count; i++, o += 10)
    out.push(body.readUInt32BE(o) * 0x1_0000_0000 + body.readUInt32BE(o + 4))
  return out
}

/** Time for `consumers` consumers with a 5 ms handler to drain `total` messages of `subject`. */
async function drain(port: number, subject: string, consumers: number, total: number): Promise<number> {
  const group = `drain${consumers}`
  const clients = await Promise.all(Array.from({ length: consumers }, () => RawClient.connect(port)))
  let handled = 0
  const started = performance.now()
  await Promise.all(
    clients.map(async (c, i) => {
      while (handled < total) {
        const msgs = decodePullResponse(
          await c.call(
            RequestCode.PULL,
            pullReq({ subject, group, consumerId: `d${i}`, maxMessages: 5, timeoutMs: 50 }),
          ),
        )
        for (const m of msgs) {
          await new Promise((r) => setTimeout(r, 5))
          handled++
          await c.call(
            RequestCode.ACK,
            encodeAckRequest({
              subject,
              group,
              consumerId: `d${i}`,
              broadcast: false,
              sequences: [m.sequence],
            }),
          )
        }
      }
    }),
  )
  const seconds = (performance.now() - started) / 1000
  for (const c of clients) c.destroy()
  return seconds
}

const parts = (process.env.BENCH_PARTS ?? 'produce,consume,latency,drain').split(',')

/** CPU time (user + system, ms) the broker process used so far, from /proc; undefined elsewhere. */
function cpuMs(pid: number | undefined): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return ((Number(f[11]) + Number(f[12])) * 1000) / 100 // utime + stime, in 100 Hz ticks
  } catch {
    return undefined
  }
}

/**
 * Runs a phase of `messages` messages; reports its rate and, beside it, the broker's CPU time per
 * message (steadier than the rate on a shared machine).
 */
async function phase(
  child: ChildProcess,
  metric: string,
  messages: number,
  run: () => Promise<number>,
  target?: string,
): Promise<void> {
  // With BROKER_NODE_ARGS=--trace-gc the broker's GC lines (forwarded to stderr) fall between these
  // marks: GC counts per phase.
  if (process.env.BENCH_PHASE_MARKS === '1') process.stderr.write(`# phase start: ${metric}\n`)
  const before = cpuMs(child.pid)
  const rate = await run()
  const after = cpuMs(child.pid)
  if (process.env.BENCH_PHASE_MARKS === '1') process.stderr.write(`# phase end: ${metric}\n`)
  report({ bench: BENCH, metric, value: Math.round(rate), unit: 'msgs/s', ...(target ? { target } : {}) })
  if (before !== undefined && after !== undefined)
    report({
      bench: BENCH,
      metric: `${metric}: broker CPU per message`,
      value: +(((after - before) * 1000) / messages).toFixed(2),
      unit: 'us',
    })
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'qmq-bench-broker-'))
  const { child, port } = await startBroker(dir)
  try {
    const n = quick ? 20_000 : 100_000
    if (parts.includes('produce')) {
      await phase(child, `produce 1 producer (flush ${flush})`, n, () => produce(port, 'p1', 1, n))
      await phase(
        child,
        `produce 4 producers (flush ${flush})`,
        2 * n,
        () => produce(port, 'p4', 4, n / 2),
        '>= 150000',
      )
    }
    if (parts.includes('consume')) {
      if (!parts.includes('produce')) await produce(port, 'p4', 4, n / 2)
      // Consume the 4-producer backlog (2n messages) with fresh groups.
      await phase(
        child,
        'consume from backlog, 1 consumer',
        2 * n,
        () => consume(port, 'p4', 'one', 1, 2 * n),
        '>= 150000',
      )
      await phase(
        child,
        'consume from backlog, 4 consumers',
        2 * n,
        () => consume(port, 'p4', 'four', 4, 2 * n),
        '>= 150000',
      )
    }
    if (parts.includes('latency')) {
      const lat = await latency(port, 10_000, quick ? 2 : 5)
      report({
        bench: BENCH,
        metric: 'publish-to-deliver p50 at 10k msgs/s',
        value: +percentile(lat, 0.5).toFixed(3),
        unit: 'ms',
      })
      report({
        bench: BENCH,
        metric: 'publish-to-deliver p99 at 10k msgs/s',
        value: +percentile(lat, 0.99).toFixed(3),
        unit: 'ms',
        target: '< 5',
      })
      report({
        bench: BENCH,
        metric: 'publish-to-deliver p999 at 10k msgs/s',
        value: +percentile(lat, 0.999).toFixed(3),
        unit: 'ms',
      })
    }
    if (parts.includes('drain')) {
      const backlog = quick ? 400 : 1000
      const producer = await RawClient.connect(port)
      for (let i = 0; i < backlog; i += 100)
        await sendBatch(
          producer,
          Array.from({ length: 100 }, () => record('drain', BODY.subarray(0, 64))),
        )
      producer.destroy()
      let one = 0
      for (const consumers of [1, 2, 4, 8, 16]) {
        const seconds = await drain(port, 'drain', consumers, backlog)
        if (consumers === 1) one = seconds
        report({
          bench: BENCH,
          metric: `drain ${backlog} msgs, 5 ms handler, ${consumers} consumers`,
          value: +seconds.toFixed(3),
          unit: 's',
        })
        if (consumers === 16)
          report({
            bench: BENCH,
            metric: 'drain speedup 16 consumers vs 1',
            value: +(one / seconds).toFixed(2),
            unit: 'x',
            target: '>= 12',
          })
      }
    }
  } finally {
    await stopBrokerChild(child)
    rmSync(dir, { recursive: true, force: true })
  }
}

main().catch((err) => {
  process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`)
  process.exit(1)
})
