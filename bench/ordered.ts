/**
 * Ordered messages (issue 20): consume throughput of keyed messages as a ratio to unkeyed ones in the
 * same run, the broker in its own process (flush 'sync'), 1 KiB messages over loopback.
 * For unkeyed messages, 1,000 keys and 100,000 keys: a backlog of BENCH_ORDERED_MESSAGES (200,000;
 * 20,000 with --quick) messages, keys drawn at random, then drained by 1 and by 8 consumers of a
 * fresh group (pull up to 1000, ack, pull again). A key has one message out at a time, so a pull
 * gets at most one message per key: with 1,000 keys a group has at most 1,000 messages in flight.
 * Knobs: BENCH_QUICK=1 (or --quick); BENCH_ORDERED_MESSAGES; BENCH_ORDERED_KINDS (e.g. 0,1000:
 * which key counts to run); BROKER_NODE_ARGS (node flags of the broker process, e.g. --cpu-prof).
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { RequestCode } from '../src/common/protocol/codes'
import {
  decodeSendResponse,
  encodeAckRequest,
  encodePullRequest,
  encodeSendRequest,
  StartPosition,
} from '../src/common/protocol/commands'
import { encodeRecord } from '../src/common/record'
import { RawClient } from '../test/helpers/raw-client'
import { brokerChildPort, quick, report, stopBrokerChild } from './common'

const BENCH = 'ordered'
const BODY = Buffer.alloc(1024 - 90, 0x61)
const total = Number(process.env.BENCH_ORDERED_MESSAGES ?? (quick ? 20_000 : 200_000))

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
      JSON.stringify({ flush: 'sync' }),
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  )
  return brokerChildPort(child).then((port) => ({ child, port }))
}

/** A backlog of `total` messages on `subject`: keys drawn at random from `keys` (0 = unkeyed). */
async function fill(port: number, subject: string, keys: number): Promise<void> {
  const c = await RawClient.connect(port)
  let next = 0
  const lane = async () => {
    while (next < total) {
      const recs: Buffer[] = []
      for (let i = 0; i < 100 && next < total; i++, next++) {
        recs.push(
          encodeRecord({
            id: `${subject}-${next}`,
            subject,
            createdAt: Date.now(),
            tags: [],
            orderKey: keys > 0 ? `order-${Math.floor(Math.random() * keys)}` : undefined,
            properties: new Map(),
            body: BODY,
          }),
        )
      }
      const res = decodeSendResponse(await c.call(RequestCode.SEND, encodeSendRequest(recs)))
      for (const r of res) if (r.status !== 0) throw new Error(`send failed: ${r.status} ${r.message}`)
    }
  }
  await Promise.all(Array.from({ length: 8 }, lane))
  c.destroy()
}

function pulledSequences(body: Buffer): number[] {
  const count = body.readUInt32BE(0)
  const out: number[] = []
  for (let i = 0, o = 4; i < count; i++, o += 10)
    out.push(body.readUInt32BE(o) * 0x1_0000_0000 + body.readUInt32BE(o + 4))
  return out
}

/** `consumers` connections of a fresh group drain the subject's backlog; msgs/s. */
async function drain(port: number, subject: string, group: string, consumers: number): Promise<number> {
  const clients = await Promise.all(Array.from({ length: consumers }, () => RawClient.connect(port)))
  let got = 0
  const started = performance.now()
  await Promise.all(
    clients.map(async (c, i) => {
      const consumerId = `c${i}`
      while (got < total) {
        const body = await c.call(
          RequestCode.PULL,
          encodePullRequest({
            subject,
            group,
            consumerId,
            maxMessages: 1000,
            maxBytes: 0,
            timeoutMs: 100,
            broadcast: false,
            atMostOnce: false,
            tagsAll: false,
            start: StartPosition.EARLIEST,
            startTime: 0,
            tags: [],
          }),
        )
        const sequences = pulledSequences(body)
        if (sequences.length === 0) continue
        got += sequences.length
        await c.call(
          RequestCode.ACK,
          encodeAckRequest({ subject, group, consumerId, broadcast: false, sequences }),
        )
      }
    }),
  )
  const seconds = (performance.now() - started) / 1000
  for (const c of clients) c.destroy()
  return total / seconds
}

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

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'qmq-bench-ordered-'))
  const { child, port } = await startBroker(dir)
  try {
    const kinds = [
      { name: 'unkeyed', keys: 0 },
      { name: '1,000 keys', keys: 1_000 },
      { name: '100,000 keys', keys: 100_000 },
    ]
    const only = process.env.BENCH_ORDERED_KINDS?.split(',').map(Number)
    if (only !== undefined) kinds.splice(0, kinds.length, ...kinds.filter((k) => only.includes(k.keys)))
    for (const k of kinds) await fill(port, `ord${k.keys}`, k.keys)
    // Warm-up (the broker's JIT), not reported: the first drain would pay for it.
    await drain(port, `ord${(kinds[0] as { keys: number }).keys}`, 'warmup', 2)
    for (const consumers of [1, 8]) {
      const plural = consumers > 1 ? 's' : ''
      let unkeyed: { rate: number; cpu: number | undefined } | undefined
      for (const k of kinds) {
        const before = cpuMs(child.pid)
        const rate = await drain(port, `ord${k.keys}`, `g${consumers}`, consumers)
        const after = cpuMs(child.pid)
        // Broker CPU per message: steadier than the rate on a shared machine.
        const cpu =
          before !== undefined && after !== undefined ? ((after - before) * 1000) / total : undefined
        if (k.keys === 0) unkeyed = { rate, cpu }
        report({
          bench: BENCH,
          metric: `consume ${k.name}, ${consumers} consumer${plural} (${total} msgs)`,
          value: Math.round(rate),
          unit: 'msgs/s',
        })
        if (cpu !== undefined)
          report({
            bench: BENCH,
            metric: `consume ${k.name}, ${consumers} consumer${plural}: broker CPU per message`,
            value: +cpu.toFixed(2),
            unit: 'us',
          })
        if (k.keys > 0 && unkeyed !== undefined)
          report({
            bench: BENCH,
            metric: `consume ${k.name} / unkeyed, ${consumers} consumer${plural}`,
            value: +(rate / unkeyed.rate).toFixed(2),
            unit: 'x',
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
