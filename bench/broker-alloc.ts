/**
 * Bytes the broker allocates on its JS heap per message, and its young-generation collections
 * (scavenges) per 10k messages, over loopback with 1 KiB messages and the broker in its own process
 * (flush 'sync'). Unlike a latency tail on a shared machine these figures barely move between runs:
 * they are what makes the broker's GC pauses rarer or more frequent (issue 21).
 * Phases, after a warm-up: idle (bytes per second with nothing to do), bytes per request of each kind
 * (PING, SEND of one record, PULL of one message + ACK, empty PULL), one message at a time (SEND
 * of one record, delivered to a waiting long poll, ACK: deterministic per-request costs), publish +
 * deliver + ack at a fixed 2k msgs/s with a long-polling consumer (what the latency benchmarks run;
 * its batching depends on timing, so its figure moves by about 10% between runs), publish with 1 producer (batches of 100, 8 in
 * flight), and consume that backlog with 1 consumer (pull 1000 + ack). Each per-message phase also gives
 * the broker's CPU time per message (all its threads; unlike the bytes, it moves with the load).
 * Knobs: BENCH_QUICK=1 for a short run; QMQ_BROKER_HEAP_SAMPLE=<prefix> writes each phase's sampled
 * allocation sites (<prefix>.<n>.heapprofile, see bench/broker-child.ts); BROKER_NODE_ARGS.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { extname, join } from 'node:path'
import { RequestCode } from '../src/common/protocol/codes'
import { encodeAckRequest, StartPosition } from '../src/common/protocol/commands'
import { encodeRecord } from '../src/common/record'
import { RawClient } from '../test/helpers/raw-client'
import { brokerChildEnv, brokerChildPort, quick, report, stopBrokerChild } from './common'
import { LATENCY_BODY, latency, pullReq, sendBatch } from './latency-common'

const BENCH = 'broker-alloc'

interface Alloc {
  bytes: number
  scavenges: number
  markCompacts: number
  gcMs: number
  /** The broker process's CPU time (user + system), microseconds. */
  cpuUs: number
  requests: number
}

function startBroker(
  dataDir: string,
): Promise<{ child: ChildProcess; port: number; snapshot: () => Promise<Alloc> }> {
  const child = spawn(
    process.execPath,
    [
      ...(process.env.BROKER_NODE_ARGS ?? '').split(' ').filter((a) => a !== ''),
      // broker-child.js when run from a tsc build: what an installed broker runs (dist/), without
      // tsx's transform (its keepNames wraps every function made at run time in a defineProperty call).
      ...(extname(__filename) === '.ts' ? ['--import', 'tsx'] : []),
      join(__dirname, `broker-child${extname(__filename)}`),
      dataDir,
      JSON.stringify({ flush: 'sync' }),
    ],
    { stdio: ['ignore', 'pipe', 'inherit'], env: brokerChildEnv({ QMQ_BROKER_ALLOC_STATS: '1' }) },
  )
  const waiting: ((a: Alloc) => void)[] = []
  let out = ''
  child.stdout?.on('data', (d: Buffer) => {
    out += d.toString()
    for (let nl = out.indexOf('\n'); nl >= 0; nl = out.indexOf('\n')) {
      const line = out.slice(0, nl)
      out = out.slice(nl + 1)
      if (line.startsWith('{"alloc":')) waiting.shift()?.((JSON.parse(line) as { alloc: Alloc }).alloc)
    }
  })
  /** The broker's allocation since the previous snapshot. */
  const snapshot = () =>
    new Promise<Alloc>((resolve) => {
      waiting.push(resolve)
      child.kill('SIGUSR2')
    })
  return brokerChildPort(child).then((port) => ({ child, port, snapshot }))
}

let idSeq = 0
function record(subject: string): Buffer {
  return encodeRecord({
    id: `a${process.pid}-${idSeq++}`,
    subject,
    createdAt: Date.now(),
    tags: [],
    properties: new Map(),
    body: LATENCY_BODY,
  })
}

async function produce(port: number, subject: string, total: number): Promise<void> {
  const c = await RawClient.connect(port)
  const batches: Buffer[][] = []
  for (let sent = 0; sent < total; sent += 100)
    batches.push(Array.from({ length: Math.min(100, total - sent) }, () => record(subject)))
  let next = 0
  const lane = async () => {
    while (next < batches.length) await sendBatch(c, batches[next++] as Buffer[])
  }
  await Promise.all(Array.from({ length: 8 }, lane))
  c.destroy()
}

async function consume(port: number, subject: string, total: number): Promise<void> {
  const c = await RawClient.connect(port)
  let got = 0
  while (got < total) {
    const body = await c.call(
      RequestCode.PULL,
      pullReq({ subject, group: 'one', consumerId: 'c', timeoutMs: 100 }),
    )
    const count = body.readUInt32BE(0)
    if (count === 0) continue
    const sequences: number[] = []
    for (let i = 0, o = 4; i < count; i++, o += 10)
      sequences.push(body.readUInt32BE(o) * 0x1_0000_0000 + body.readUInt32BE(o + 4))
    got += count
    await c.call(
      RequestCode.ACK,
      encodeAckRequest({ subject, group: 'one', consumerId: 'c', broadcast: false, sequences }),
    )
  }
  c.destroy()
}

/**
 * One message at a time, `total` times: SEND of one record, delivered to a consumer that long-polls
 * (its PULL waits), ACK answered, then the next. Every message costs exactly one SEND, one PULL and
 * one ACK: the per-request part of the fixed-rate scenario without its timing-dependent batching.
 */
async function pingPong(port: number, subject: string, total: number): Promise<void> {
  const producer = await RawClient.connect(port)
  const consumer = await RawClient.connect(port)
  const pull = (timeoutMs: number) =>
    consumer.call(
      RequestCode.PULL,
      pullReq({ subject, group: 'pp', consumerId: 'c', timeoutMs, start: StartPosition.LATEST }),
    )
  await pull(0) // the group starts at the end of the subject
  const records = Array.from({ length: total }, () => record(subject))
  for (const r of records) {
    const polled = pull(500)
    // The PULL is waiting before the SEND goes out (a PULL reaches the broker first on its connection).
    await new Promise((resolve) => setImmediate(resolve))
    await sendBatch(producer, [r])
    const body = await polled
    if (body.readUInt32BE(0) !== 1) throw new Error('ping-pong: expected one message per pull')
    const sequences = [body.readUInt32BE(4) * 0x1_0000_0000 + body.readUInt32BE(8)]
    await consumer.call(
      RequestCode.ACK,
      encodeAckRequest({ subject, group: 'pp', consumerId: 'c', broadcast: false, sequences }),
    )
  }
  producer.destroy()
  consumer.destroy()
}

/**
 * Bytes per request of each kind, one request at a time on one connection: PING (the connection
 * loop and frame handler alone), SEND of one record, PULL of one message (no wait) then its ACK, and
 * a PULL that finds nothing.
 */
async function perRequest(port: number, snapshot: () => Promise<Alloc>, n: number): Promise<void> {
  const c = await RawClient.connect(port)
  // 'rq-none' never gets a message: its PULL finds nothing (and does not wait).
  const pull = (subject: string) =>
    c.call(
      RequestCode.PULL,
      pullReq({ subject, group: 'g', consumerId: 'c', maxMessages: 1, start: StartPosition.LATEST }),
    )
  await pull('rq')
  await pull('rq-none')
  const kinds: [string, () => Promise<unknown>][] = [
    ['PING', () => c.call(RequestCode.PING)],
    ['SEND of 1 record', () => sendBatch(c, [record('rq')])],
    [
      'PULL of 1 message + its ACK',
      async () => {
        const body = await pull('rq')
        const sequences = [body.readUInt32BE(4) * 0x1_0000_0000 + body.readUInt32BE(8)]
        await c.call(
          RequestCode.ACK,
          encodeAckRequest({ subject: 'rq', group: 'g', consumerId: 'c', broadcast: false, sequences }),
        )
      },
    ],
    ['PULL finding nothing', () => pull('rq-none')],
  ]
  for (const [name, request] of kinds) {
    for (let i = 0; i < 200; i++) await request()
    await snapshot()
    for (let i = 0; i < n; i++) await request()
    const a = await snapshot()
    report({
      bench: BENCH,
      metric: `${name}: heap bytes allocated per request`,
      value: Math.round(a.bytes / n),
      unit: 'B',
    })
  }
  c.destroy()
}

function perMessage(metric: string, a: Alloc, messages: number): void {
  report({
    bench: BENCH,
    metric: `${metric}: heap bytes allocated per message`,
    value: Math.round(a.bytes / messages),
    unit: 'B',
  })
  report({
    bench: BENCH,
    metric: `${metric}: scavenges per 10k messages`,
    value: +((a.scavenges * 10_000) / messages).toFixed(1),
    unit: 'GCs',
  })
  report({
    bench: BENCH,
    metric: `${metric}: broker CPU per message`,
    value: +(a.cpuUs / messages).toFixed(1),
    unit: 'us',
  })
  process.stderr.write(`${metric}: ${JSON.stringify({ messages, ...a })}\n`)
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'qmq-bench-alloc-'))
  const started = await startBroker(join(dir, 'data')).catch((err: unknown) => {
    rmSync(dir, { recursive: true, force: true })
    throw err
  })
  const { child, port, snapshot } = started
  try {
    const seconds = quick ? 3 : 10
    const n = quick ? 20_000 : 100_000
    // Warm-up: every path compiled, the store's files and caches made.
    await latency(port, 2000, 2)
    await produce(port, 'warm', 10_000)
    await consume(port, 'warm', 10_000)
    await pingPong(port, 'pp', 500)
    await snapshot()
    await new Promise((r) => setTimeout(r, seconds * 1000))
    const idle = await snapshot()
    report({
      bench: BENCH,
      metric: 'idle: heap bytes allocated per second',
      value: Math.round(idle.bytes / seconds),
      unit: 'B',
    })
    await perRequest(port, snapshot, quick ? 1000 : 3000)
    await snapshot()
    const one = quick ? 2000 : 5000
    await pingPong(port, 'pp', one)
    perMessage('one message at a time (SEND 1, long-poll PULL, ACK)', await snapshot(), one)
    await latency(port, 2000, seconds)
    perMessage('publish + deliver + ack at 2k msgs/s', await snapshot(), 2000 * seconds)
    await produce(port, 'p1', n)
    perMessage('publish, 1 producer', await snapshot(), n)
    await consume(port, 'p1', n)
    perMessage('consume from backlog, 1 consumer', await snapshot(), n)
  } finally {
    await stopBrokerChild(child)
    rmSync(dir, { recursive: true, force: true })
  }
}

main().catch((err) => {
  process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`)
  process.exit(1)
})
