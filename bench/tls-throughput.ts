/**
 * TLS vs plain TCP on the broker's port, in one run (issue 18): the same broker benchmark twice, the
 * broker in its own process (bench/broker-child.ts) once on plain TCP and once with a certificate
 * (made with openssl in a temp dir), the client being the SDK's transport (src/client/transport).
 * - produce: 4 connections, batches of 100 records of ~1 KiB, 8 batches in flight per connection;
 * - consume: 1 connection draining the backlog (PULL 1000 + ACK).
 * Results: msgs/s for each, and TLS/plain ratios. The broker runs with flush 'async' (BROKER_FLUSH=sync
 * to include fdatasync, which hides most of the TLS cost). Knobs: BENCH_QUICK=1, TLS_BENCH_MESSAGES.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Connection } from '../src/client/transport/connection'
import { RequestCode } from '../src/common/protocol/codes'
import {
  decodeSendResponse,
  encodeAckRequest,
  encodePullRequest,
  encodeSendRequest,
  StartPosition,
} from '../src/common/protocol/commands'
import { encodeRecord } from '../src/common/record'
import type { ClientTlsOptions } from '../src/common/tls'
import { makeCa } from '../test/helpers/certs'
import { brokerChildPort, quick, report } from './common'

const BENCH = 'tls'
const flush = process.env.BROKER_FLUSH === 'sync' ? 'sync' : 'async'
const MESSAGES = Number(process.env.TLS_BENCH_MESSAGES ?? (quick ? 20_000 : 200_000))
const PRODUCERS = 4
const BATCH = 100
const IN_FLIGHT = 8
const BODY = Buffer.alloc(1024 - 80, 0x61)
let idSeq = 0

function startBroker(
  dataDir: string,
  extra: Record<string, unknown>,
): Promise<{ child: ChildProcess; port: number }> {
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', join(__dirname, 'broker-child.ts'), dataDir, JSON.stringify({ flush, ...extra })],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  )
  return brokerChildPort(child).then((port) => ({ child, port }))
}

function connect(port: number, tls: ClientTlsOptions | undefined): Connection {
  return new Connection({
    address: `127.0.0.1:${port}`,
    requestTimeoutMs: 60_000,
    ...(tls !== undefined ? { tls } : {}),
  })
}

async function produce(port: number, tls: ClientTlsOptions | undefined, subject: string): Promise<number> {
  const per = Math.ceil(MESSAGES / PRODUCERS)
  const conns = Array.from({ length: PRODUCERS }, () => connect(port, tls))
  // Connect (and handshake) before the clock starts.
  await Promise.all(conns.map((c) => c.request(RequestCode.PING, Buffer.alloc(0))))
  const batches = conns.map(() => {
    const out: Buffer[][] = []
    for (let sent = 0; sent < per; sent += BATCH)
      out.push(
        Array.from({ length: Math.min(BATCH, per - sent) }, () =>
          encodeRecord({
            id: `t${idSeq++}`,
            subject,
            createdAt: Date.now(),
            tags: [],
            properties: new Map(),
            body: BODY,
          }),
        ),
      )
    return out
  })
  const started = performance.now()
  await Promise.all(
    conns.map(async (c, i) => {
      const mine = batches[i] as Buffer[][]
      let next = 0
      const lane = async () => {
        while (next < mine.length) {
          const f = await c.request(RequestCode.SEND, encodeSendRequest(mine[next++] as Buffer[]))
          for (const r of decodeSendResponse(f.body))
            if (r.status !== 0) throw new Error(`send: ${r.message}`)
        }
      }
      await Promise.all(Array.from({ length: IN_FLIGHT }, lane))
    }),
  )
  const seconds = (performance.now() - started) / 1000
  await Promise.all(conns.map((c) => c.close()))
  return (per * PRODUCERS) / seconds
}

async function consume(port: number, tls: ClientTlsOptions | undefined, subject: string): Promise<number> {
  const c = connect(port, tls)
  await c.request(RequestCode.PING, Buffer.alloc(0))
  const total = Math.ceil(MESSAGES / PRODUCERS) * PRODUCERS
  let got = 0
  const started = performance.now()
  while (got < total) {
    const f = await c.request(
      RequestCode.PULL,
      encodePullRequest({
        subject,
        group: 'g',
        consumerId: 'c',
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
    const count = f.body.readUInt32BE(0)
    if (count === 0) continue
    const sequences: number[] = []
    for (let i = 0, o = 4; i < count; i++, o += 10)
      sequences.push(f.body.readUInt32BE(o) * 0x1_0000_0000 + f.body.readUInt32BE(o + 4))
    got += count
    await c.request(
      RequestCode.ACK,
      encodeAckRequest({ subject, group: 'g', consumerId: 'c', broadcast: false, sequences }),
    )
  }
  const seconds = (performance.now() - started) / 1000
  await c.close()
  return total / seconds
}

async function run(label: string, extra: Record<string, unknown>, tls: ClientTlsOptions | undefined) {
  const dir = mkdtempSync(join(tmpdir(), `qmq-bench-${label}-`))
  const { child, port } = await startBroker(join(dir, 'data'), extra)
  try {
    const produced = await produce(port, tls, `bench.${label}`)
    const consumed = await consume(port, tls, `bench.${label}`)
    return { produced, consumed }
  } finally {
    child.kill('SIGTERM')
    await new Promise((r) => child.once('exit', r))
    rmSync(dir, { recursive: true, force: true })
  }
}

async function main(): Promise<void> {
  const certDir = mkdtempSync(join(tmpdir(), 'qmq-bench-certs-'))
  try {
    const ca = makeCa(certDir)
    const leaf = ca.issue('broker')
    const plain = await run('plain', {}, undefined)
    const tls = await run(
      'tls',
      { tlsCertFile: leaf.cert, tlsKeyFile: leaf.key },
      { ca: readFileSync(ca.cert) },
    )
    const r = (metric: string, value: number, unit: string) => report({ bench: BENCH, metric, value, unit })
    r(`produce plain, ${PRODUCERS} conns, 1 KiB, flush ${flush}`, Math.round(plain.produced), 'msgs/s')
    r(`produce TLS, ${PRODUCERS} conns, 1 KiB, flush ${flush}`, Math.round(tls.produced), 'msgs/s')
    r('produce TLS/plain', +(tls.produced / plain.produced).toFixed(2), 'ratio')
    r('consume plain, 1 conn, pull 1000 + ack', Math.round(plain.consumed), 'msgs/s')
    r('consume TLS, 1 conn, pull 1000 + ack', Math.round(tls.consumed), 'msgs/s')
    r('consume TLS/plain', +(tls.consumed / plain.consumed).toFixed(2), 'ratio')
  } finally {
    rmSync(certDir, { recursive: true, force: true })
  }
}

main().catch((err) => {
  process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`)
  process.exit(1)
})
