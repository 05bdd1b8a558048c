/**
 * Replication benchmark (issue 14), brokers in their own processes (bench/broker-child.ts), 1 KiB
 * messages, flush 'sync':
 * - produce throughput with 4 producers (batches of 100, 8 in flight each) to a master with a 'sync'
 *   slave, as a ratio to the same run against a master alone (target >= 0.6);
 * - slave catch-up rate: a fresh slave copies a master's backlog (REPL_BENCH_BACKLOG_BYTES, default
 *   1 GiB; 64 MiB with --quick) (target >= 150 MB/s).
 * Knobs: REPL_BENCH_BACKLOG_BYTES, REPL_BENCH_FETCH_BYTES (the slave's replicationFetchBytes).
 * Not measured here yet: publish-to-deliver p99 added by replication, failover time (the e2e test
 * test/e2e/replication-kill.fault.ts prints kill-to-first-acknowledged-send).
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { RequestCode } from '../src/common/protocol/codes'
import { decodeSendResponse, encodeSendRequest } from '../src/common/protocol/commands'
import { encodeRecord } from '../src/common/record'
import { RawClient } from '../test/helpers/raw-client'
import { brokerChildPort, quick, report } from './common'

const BENCH = 'replication'
const SECRET = 'replication-bench-secret-0123456789'
const BODY = Buffer.alloc(1024 - 80, 0x61)
let idSeq = 0

function record(subject: string): Buffer {
  return encodeRecord({
    id: `r${process.pid}-${idSeq++}`,
    subject,
    createdAt: Date.now(),
    tags: [],
    properties: new Map(),
    body: BODY,
  })
}

const children: ChildProcess[] = []

async function startBroker(dataDir: string, extra: Record<string, unknown>): Promise<number> {
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      join(__dirname, 'broker-child.ts'),
      dataDir,
      JSON.stringify({ clusterSecret: SECRET, replicationFetchWaitMs: 200, ...extra }),
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  )
  children.push(child)
  return brokerChildPort(child)
}

async function sendBatch(c: RawClient, records: Buffer[]): Promise<void> {
  const res = decodeSendResponse(await c.call(RequestCode.SEND, encodeSendRequest(records)))
  for (const r of res) if (r.status !== 0) throw new Error(`send failed: ${r.status} ${r.message}`)
}

async function produce(port: number, producers: number, perProducer: number): Promise<number> {
  const clients = await Promise.all(Array.from({ length: producers }, () => RawClient.connect(port)))
  const batches = clients.map(() => {
    const out: Buffer[][] = []
    for (let sent = 0; sent < perProducer; sent += 100)
      out.push(Array.from({ length: 100 }, () => record('bench.repl')))
    return out
  })
  const started = performance.now()
  await Promise.all(
    clients.map(async (c, p) => {
      const mine = batches[p] as Buffer[][]
      let next = 0
      const lane = async () => {
        while (next < mine.length) await sendBatch(c, mine[next++] as Buffer[])
      }
      await Promise.all(Array.from({ length: 8 }, lane))
    }),
  )
  const seconds = (performance.now() - started) / 1000
  for (const c of clients) c.destroy()
  return (producers * perProducer) / seconds
}

function logBytes(dataDir: string): number {
  const dir = join(dataDir, 'messagelog')
  let n = 0
  try {
    for (const f of readdirSync(dir)) n += statSync(join(dir, f)).size
  } catch {
    // not created yet
  }
  return n
}

async function until(cond: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('timed out')
    await new Promise((r) => setTimeout(r, 20))
  }
}

async function main(): Promise<void> {
  const root = mkdtempSync(join(tmpdir(), 'qmq-bench-repl-'))
  try {
    const perProducer = quick ? 5_000 : 50_000
    // 1. A master alone.
    const alonePort = await startBroker(join(root, 'alone'), {})
    const alone = await produce(alonePort, 4, perProducer)
    // 2. A master with a 'sync' slave.
    const mPort = await startBroker(join(root, 'm'), {})
    await startBroker(join(root, 's'), { role: 'slave', masterAddress: `127.0.0.1:${mPort}` })
    const warm = await RawClient.connect(mPort)
    await until(() => readdirSync(join(root, 'm', 'replication')).includes('slaves.json'), 30_000).catch(
      () => {},
    )
    await sendBatch(warm, [record('bench.repl')])
    warm.destroy()
    const synced = await produce(mPort, 4, perProducer)
    report({
      bench: BENCH,
      metric: 'produce 4 producers, master alone',
      value: Math.round(alone),
      unit: 'msgs/s',
    })
    report({
      bench: BENCH,
      metric: 'produce 4 producers, sync slave',
      value: Math.round(synced),
      unit: 'msgs/s',
    })
    report({
      bench: BENCH,
      metric: 'produce ratio sync slave / alone',
      value: +(synced / alone).toFixed(2),
      unit: 'ratio',
      target: '>= 0.6',
    })
    // 3. Catch-up: a fresh slave copies the backlog of the master alone.
    const backlog = Number(process.env.REPL_BENCH_BACKLOG_BYTES ?? (quick ? 64 : 1024) * 1024 * 1024)
    const fill = await RawClient.connect(alonePort)
    while (logBytes(join(root, 'alone')) < backlog) {
      await Promise.all(
        Array.from({ length: 8 }, () =>
          sendBatch(
            fill,
            Array.from({ length: 100 }, () => record('bench.fill')),
          ),
        ),
      )
    }
    fill.destroy()
    const target = logBytes(join(root, 'alone'))
    const started = performance.now()
    const fetchBytes = process.env.REPL_BENCH_FETCH_BYTES
    await startBroker(join(root, 'catchup'), {
      role: 'slave',
      masterAddress: `127.0.0.1:${alonePort}`,
      ...(fetchBytes === undefined ? {} : { replicationFetchBytes: Number(fetchBytes) }),
    })
    await until(() => logBytes(join(root, 'catchup')) >= target, 600_000)
    const seconds = (performance.now() - started) / 1000
    report({
      bench: BENCH,
      metric: `slave catch-up of a ${Math.round(target / 2 ** 20)} MiB backlog (process start included)`,
      value: +(target / 1e6 / seconds).toFixed(1),
      unit: 'MB/s',
      target: '>= 150',
    })
  } finally {
    for (const c of children) c.kill('SIGKILL')
    rmSync(root, { recursive: true, force: true })
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`${String(err)}\n`)
    for (const c of children) c.kill('SIGKILL')
    process.exit(1)
  },
)
