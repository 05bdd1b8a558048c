/**
 * qmq side by side with NATS JetStream and RabbitMQ (quorum queues, publisher confirms), in one run
 * (issue 21): `npm run bench -- peers` (add `--quick` for one short round).
 *
 * Installs Debian's `nats-server` and `rabbitmq-server` when missing (apt-get, as root), then per round
 * starts each server alone on loopback with its data in a temp dir (qmq: one broker, flush 'sync', in
 * its own process; NATS: JetStream file storage, 1 replica; RabbitMQ: its own node name, ports, epmd
 * port, config and data in the temp dir, a quorum queue per scenario), runs every scenario, stops it.
 * Every server process carries QMQ_PEERS_TAG=<its temp dir> in its environment: at the end (also on
 * failure or Ctrl-C) any process still carrying a tag of this run (e.g. RabbitMQ's daemonised epmd)
 * is killed and the temp dirs removed.
 *
 * Scenarios, 1 KiB messages, each producer/consumer on its own connection, at most 128 unconfirmed
 * messages per producer, consumers ack each message:
 * - publish with 1 and 4 producers (msgs/s); consume that backlog with 1 and 4 consumers (msgs/s);
 *   qmq also publishes with 1 then 4 producers on a second broker with flush 'async' (the 4-producer
 *   figure's ratio is to the peers' 4-producer publish);
 * - publish-to-deliver latency at a fixed 2k and 10k msgs/s (p50, p99, p999) and confirm latency p50;
 * - backlog drain with a 5 ms handler (each consumer holds at most 5 messages) for 1, 2, 4, 8 consumers.
 * Each throughput and latency row also gets the server's CPU per message (user + system time of every
 * process carrying the server's tag, before and after the scenario, over its messages).
 * Floors in the same run: two bare Node processes echoing 1 KiB messages over loopback at the same
 * rates (round trip: two hops, as publish-to-deliver), and 1 KiB write + fdatasync alone.
 * Figures are medians over the rounds (3 by default, BENCH_ROUNDS); every figure is reported for each
 * broker, with qmq's figure divided by the best peer's (and qmq's latency divided by the floors).
 * BENCH_PEERS=qmq,nats,rabbitmq picks the brokers.
 * BENCH_PEERS_PARTS=publish,consume,latency,drain picks the scenarios, BENCH_PEERS_RATES the latency
 * scenario's rates; QMQ_BROKER_LOOP_STATS=1 shows the qmq broker's event-loop delay and store
 * histograms (bench/broker-child.ts) on stderr; QMQ_BROKER_NODE_ARGS gives the qmq broker node flags
 * (e.g. --trace-gc, --cpu-prof; their output goes to stderr or files, never to the results);
 * QMQ_BROKER_OPTIONS='{"indexes":false}' adds broker options (experiments only: a recorded run uses none).
 */
import { type ChildProcess, type SpawnSyncOptions, spawn, spawnSync } from 'node:child_process'
import {
  closeSync,
  fdatasyncSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
  writeSync,
} from 'node:fs'
import { createServer, type Socket, connect as tcpConnect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import * as amqp from 'amqplib'
import { AckPolicy, connect as natsConnect, DeliverPolicy, type NatsConnection, StorageType } from 'nats'
import { RequestCode } from '../src/common/protocol/codes'
import {
  decodePullResponse,
  decodeSendResponse,
  encodeAckRequest,
  encodePullRequest,
  encodeSendRequest,
  type PullRequest,
  StartPosition,
} from '../src/common/protocol/commands'
import { encodeRecord } from '../src/common/record'
import { RawClient } from '../test/helpers/raw-client'
import { BROKER_THREADPOOL_SIZE, brokerChildPort, quick, report } from './common'

const BENCH = 'peers'
const MSG_BYTES = 1024
const WINDOW = 128
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? (quick ? 1 : 3))
const N = Number(process.env.BENCH_PEERS_MESSAGES ?? (quick ? 5_000 : 50_000))
const LAT_SECONDS = quick ? 1 : 4
const DRAIN = quick ? 100 : 800
/** BENCH_PEERS_RATES=2000,10000: the fixed rates of the latency scenario (msgs/s). */
const RATES = (process.env.BENCH_PEERS_RATES ?? '2000,10000').split(',').map(Number)
const DRAIN_CONSUMERS = [1, 2, 4, 8]
const PEERS = (process.env.BENCH_PEERS ?? 'qmq,nats,rabbitmq').split(',')
/** BENCH_PEERS_PARTS=publish,consume,latency,drain picks the scenarios (all by default). */
const PARTS = (process.env.BENCH_PEERS_PARTS ?? 'publish,consume,latency,drain').split(',')
/** QMQ_BROKER_LOOP_STATS=1: the qmq broker prints its event-loop delay and histograms at exit. */
const LOOP_STATS = process.env.QMQ_BROKER_LOOP_STATS === '1'

const DURABILITY: Record<string, string> = {
  qmq: "flush 'sync': fdatasync before confirming",
  nats: 'JetStream file storage, 1 replica: acks a publish without waiting for an fsync (syncs in the background)',
  rabbitmq: 'quorum queue, publisher confirms: fsync before confirming',
}

// ------------------------------------------------------------------------------------------------
// Server processes and cleanup

const TAG = 'QMQ_PEERS_TAG'
const tempDirs: string[] = []
const children = new Set<ChildProcess>()
/** Children being stopped by stopServer (their exit status is then not an error). */
const stopping = new WeakSet<ChildProcess>()

function tempDir(name: string): string {
  const dir = mkdtempSync(join(tmpdir(), `qmq-peers-${name}-`))
  tempDirs.push(dir)
  return dir
}

/** Kills every process carrying one of this run's tags (found through /proc), then our children. */
function killTagged(): void {
  const tags = new Set(tempDirs.map((d) => `${TAG}=${d}`))
  for (const c of children) {
    if (c.pid !== undefined && c.exitCode === null && c.signalCode === null) {
      try {
        process.kill(-c.pid, 'SIGKILL') // its process group (spawned detached)
      } catch {
        c.kill('SIGKILL')
      }
    }
  }
  let pids: string[] = []
  try {
    pids = readdirSync('/proc').filter((p) => /^\d+$/.test(p))
  } catch {
    return
  }
  for (const pid of pids) {
    if (Number(pid) === process.pid) continue
    let env = ''
    try {
      env = readFileSync(`/proc/${pid}/environ`, 'utf8')
    } catch {
      continue
    }
    if (env.split('\0').some((kv) => tags.has(kv))) {
      try {
        process.kill(Number(pid), 'SIGKILL')
      } catch {
        // gone already
      }
    }
  }
}

/** Clock ticks per second of /proc/<pid>/stat's utime and stime (USER_HZ, 100 on Linux). */
const CLK_TCK = (() => {
  const r = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' })
  const n = Number(r.stdout?.trim())
  return Number.isFinite(n) && n > 0 ? n : 100
})()

/**
 * CPU time (user + system, ms) used so far by every live process tagged with `dir`: a server and all
 * of its threads and helper processes (RabbitMQ's beam.smp and epmd; NATS; the qmq broker and its
 * threadpool). Read before and after a scenario, the difference divided by the messages is the
 * server's CPU per message: steadier than a rate on a shared machine (a wait for a CPU costs none).
 */
function serverCpuMs(dir: string): number {
  const tag = `${TAG}=${dir}`
  let ticks = 0
  let pids: string[] = []
  try {
    pids = readdirSync('/proc').filter((p) => /^\d+$/.test(p))
  } catch {
    return Number.NaN // not Linux
  }
  for (const pid of pids) {
    try {
      if (!readFileSync(`/proc/${pid}/environ`, 'latin1').split('\0').includes(tag)) continue
      // pid (comm) state ppid ...: utime and stime are the 12th and 13th fields after comm's ')'.
      const stat = readFileSync(`/proc/${pid}/stat`, 'latin1')
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      ticks += Number(f[11]) + Number(f[12])
    } catch {
      // exited meanwhile, or not ours to read
    }
  }
  return (ticks * 1000) / CLK_TCK
}

/** Kills what is left of this run's servers and removes their temp dirs (nothing else is running then). */
function cleanup(): void {
  killTagged()
  for (const d of tempDirs.splice(0)) rmSync(d, { recursive: true, force: true })
}
process.on('exit', cleanup)
for (const sig of ['SIGINT', 'SIGTERM'] as const)
  process.on(sig, () => {
    cleanup()
    process.exit(130)
  })

/** Spawns a server in its own process group, tagged with its temp dir; stderr kept for errors. */
function spawnServer(
  cmd: string,
  args: string[],
  dir: string,
  env: Record<string, string> = {},
  readsStdout = false,
): ChildProcess {
  const child = spawn(cmd, args, {
    cwd: join(__dirname, '..'), // (node children resolve tsx from here)
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...env, [TAG]: dir },
  })
  children.add(child)
  // stdout is read by spawnOut where a port is printed; otherwise discarded.
  if (!readsStdout) child.stdout?.resume()
  let err = ''
  child.stderr?.on('data', (d: Buffer) => {
    err = (err + d.toString()).slice(-4000)
    // The qmq broker's event-loop delay and stage histograms (bench/broker-child.ts) on request.
    if (LOOP_STATS) process.stderr.write(d)
  })
  child.once('exit', (code, sig) => {
    children.delete(child)
    if (!stopping.has(child) && code !== 0 && code !== null && sig === null)
      process.stderr.write(`${cmd} exited with ${code}: ${err}\n`)
  })
  return child
}

/** SIGTERM to the process group, SIGKILL after `graceMs`; resolves when the leader has exited. */
async function stopServer(child: ChildProcess, graceMs = 10_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return
  const exited = new Promise((r) => child.once('exit', r))
  stopping.add(child)
  const pid = child.pid
  try {
    process.kill(-pid, 'SIGTERM')
  } catch {
    child.kill('SIGTERM')
  }
  const killer = setTimeout(() => {
    try {
      process.kill(-pid, 'SIGKILL')
    } catch {
      child.kill('SIGKILL')
    }
  }, graceMs)
  await exited
  clearTimeout(killer)
}

async function freePort(): Promise<number> {
  const s = createServer()
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r))
  const port = (s.address() as { port: number }).port
  await new Promise((r) => s.close(r))
  return port
}

async function waitFor<T>(what: string, ms: number, fn: () => Promise<T>, child?: ChildProcess): Promise<T> {
  const deadline = Date.now() + ms
  for (;;) {
    if (child !== undefined && (child.exitCode !== null || child.signalCode !== null))
      throw new Error(`${what}: server exited`)
    try {
      return await fn()
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`${what}: not ready after ${ms} ms: ${String(err)}`)
      await sleep(250)
    }
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** Installs Debian's nats-server and rabbitmq-server packages when missing (apt-get, as root). */
function ensurePackages(): void {
  const need: string[] = []
  if (PEERS.includes('nats') && !existsOnPath('nats-server')) need.push('nats-server')
  if (PEERS.includes('rabbitmq') && !existsOnPath('/usr/lib/rabbitmq/bin/rabbitmq-server'))
    need.push('rabbitmq-server')
  if (need.length === 0) return
  process.stderr.write(`installing ${need.join(' ')} (apt-get)\n`)
  // apt's output goes to our stderr: stdout carries only the result lines.
  const opts: SpawnSyncOptions = {
    stdio: ['ignore', 2, 'inherit'],
    env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
  }
  const update = spawnSync('apt-get', ['update'], opts)
  if (update.status !== 0) throw new Error(`apt-get update failed (${update.status ?? update.error})`)
  const install = spawnSync('apt-get', ['install', '-y', '--no-install-recommends', ...need], opts)
  if (install.status !== 0)
    throw new Error(`apt-get install ${need.join(' ')} failed (${install.status ?? install.error})`)
  // A package's postinst may start a system service: stop it, the peers run alone, started by us.
  if (need.includes('rabbitmq-server')) spawnSync('service', ['rabbitmq-server', 'stop'], { stdio: 'ignore' })
  if (need.includes('nats-server')) spawnSync('service', ['nats-server', 'stop'], { stdio: 'ignore' })
}

function existsOnPath(bin: string): boolean {
  if (bin.startsWith('/')) return spawnSync('test', ['-x', bin]).status === 0
  return spawnSync('sh', ['-c', `command -v ${bin}`], { stdio: 'ignore' }).status === 0
}

// ------------------------------------------------------------------------------------------------
// Drivers: one per broker, the same scenarios through each one's own client

interface LatencyResult {
  deliver: number[]
  confirm: number[]
}

interface Driver {
  /** The server's temp dir: every process of the server carries it as its tag (see serverCpuMs). */
  dir: string
  /** Publishes `total` messages to `subject` from `producers` connections; msgs/s. */
  publish(subject: string, producers: number, total: number): Promise<number>
  /** `consumers` connections of one consumer group read and ack `total` messages of `subject`; msgs/s. */
  consume(subject: string, consumers: number, total: number): Promise<number>
  /** One producer at `rate` msgs/s for `seconds`, one consumer; latencies in ms. */
  latency(subject: string, rate: number, seconds: number): Promise<LatencyResult>
  /** Seconds for `consumers` consumers with a 5 ms handler to drain `total` messages of `subject`. */
  drain(subject: string, consumers: number, total: number): Promise<number>
  stop(): Promise<void>
}

/** A 1 KiB body whose first 4 bytes are `i` (the message's index, to find its send time). */
function body(i: number): Buffer {
  const b = Buffer.alloc(MSG_BYTES, 0x61)
  b.writeUInt32BE(i, 0)
  return b
}

/** Runs `total` sends with at most `window` unconfirmed; `send(i, done)` calls done when confirmed. */
function windowed(
  total: number,
  window: number,
  send: (i: number, done: (err?: unknown) => void) => void,
): Promise<void> {
  return new Promise((resolve, reject) => {
    let next = 0
    let confirmed = 0
    let failed = false
    const pump = (): void => {
      while (!failed && next < total && next - confirmed < window) send(next++, done)
    }
    const done = (err?: unknown): void => {
      if (failed) return
      if (err) {
        failed = true
        reject(err instanceof Error ? err : new Error(String(err)))
        return
      }
      if (++confirmed === total) resolve()
      else pump()
    }
    pump()
  })
}

/**
 * Paces `total` messages at `rate` msgs/s by a 1 ms timer: what is due is handed to `sendDue` at once
 * (as a client batches what an application produced meanwhile).
 */
async function paced(
  rate: number,
  total: number,
  sendDue: (from: number, to: number) => void,
): Promise<void> {
  const started = performance.now()
  let sent = 0
  while (sent < total) {
    const due = Math.min(total, Math.floor(((performance.now() - started) / 1000) * rate))
    if (due > sent) {
      sendDue(sent, due)
      sent = due
    }
    await sleep(1)
  }
}

// ---- qmq: one broker (flush sync) in its own process, driven over its wire protocol

async function startQmq(flush: 'sync' | 'async' = 'sync'): Promise<Driver> {
  const dir = tempDir('qmq')
  const child = spawnServer(
    process.execPath,
    [
      // QMQ_BROKER_NODE_ARGS="--trace-gc" or "--cpu-prof --cpu-prof-dir=/tmp/prof": the broker's node flags.
      ...(process.env.QMQ_BROKER_NODE_ARGS ?? '').split(' ').filter((a) => a !== ''),
      '--import',
      'tsx',
      join(__dirname, 'broker-child.ts'),
      join(dir, 'data'),
      // QMQ_BROKER_OPTIONS='{"indexes":false}': more broker options (experiments; never in a recorded run).
      JSON.stringify({ ...JSON.parse(process.env.QMQ_BROKER_OPTIONS ?? '{}'), flush }),
    ],
    dir,
    // The threadpool size bin/qmq.js gives a broker (unless UV_THREADPOOL_SIZE is set).
    { UV_THREADPOOL_SIZE: process.env.UV_THREADPOOL_SIZE ?? BROKER_THREADPOOL_SIZE },
    true,
  )
  const port = await brokerChildPort(child)
  // Answer bodies as views of the read chunks, as the SDK reads them (no copy per answer).
  const connectRaw = () => RawClient.connect(port, '127.0.0.1', { copyBodies: false })
  let idSeq = 0
  const record = (subject: string, i: number): Buffer =>
    encodeRecord({
      id: `p${idSeq++}`,
      subject,
      createdAt: Date.now(),
      tags: [],
      properties: new Map(),
      body: body(i),
    })
  const pullReq = (
    p: Partial<PullRequest> & { subject: string; group: string; consumerId: string },
  ): Buffer =>
    encodePullRequest({
      maxMessages: WINDOW,
      maxBytes: 0,
      timeoutMs: 100,
      broadcast: false,
      atMostOnce: false,
      tagsAll: false,
      start: StartPosition.EARLIEST,
      startTime: 0,
      tags: [],
      ...p,
    })
  const send = async (c: RawClient, recs: Buffer[]): Promise<void> => {
    for (const r of decodeSendResponse(await c.call(RequestCode.SEND, encodeSendRequest(recs))))
      if (r.status !== 0) throw new Error(`send failed: ${r.status} ${r.message}`)
  }
  const ack = (c: RawClient, subject: string, group: string, consumerId: string, sequences: number[]) =>
    c.call(RequestCode.ACK, encodeAckRequest({ subject, group, consumerId, broadcast: false, sequences }))
  // The client's batching: 4 SENDs of 32 in flight = at most 128 unconfirmed messages per producer.
  const LANES = 4
  const BATCH = WINDOW / LANES
  return {
    dir,
    async publish(subject, producers, total) {
      const clients = await Promise.all(Array.from({ length: producers }, () => connectRaw()))
      const per = Math.ceil(total / producers)
      const batches = clients.map(() => {
        const out: Buffer[][] = []
        for (let i = 0; i < per; i += BATCH)
          out.push(Array.from({ length: Math.min(BATCH, per - i) }, (_, k) => record(subject, i + k)))
        return out
      })
      const t0 = performance.now()
      await Promise.all(
        clients.map(async (c, p) => {
          const mine = batches[p] as Buffer[][]
          let next = 0
          const lane = async () => {
            while (next < mine.length) await send(c, mine[next++] as Buffer[])
          }
          await Promise.all(Array.from({ length: LANES }, lane))
        }),
      )
      const rate = (per * producers) / ((performance.now() - t0) / 1000)
      for (const c of clients) c.destroy()
      return rate
    },
    async consume(subject, consumers, total) {
      const clients = await Promise.all(Array.from({ length: consumers }, () => connectRaw()))
      const group = `g-${subject}`
      let got = 0
      let t1 = 0
      const t0 = performance.now()
      await Promise.all(
        clients.map(async (c, i) => {
          const acks: Promise<Buffer>[] = []
          while (got < total) {
            const msgs = decodePullResponse(
              await c.call(RequestCode.PULL, pullReq({ subject, group, consumerId: `c${i}` })),
            )
            if (msgs.length === 0) continue
            // Acks are pipelined, as NATS and RabbitMQ clients send theirs without waiting.
            acks.push(
              ack(
                c,
                subject,
                group,
                `c${i}`,
                msgs.map((m) => m.sequence),
              ),
            )
            got += msgs.length
            if (got >= total && t1 === 0) t1 = performance.now()
          }
          await Promise.all(acks)
        }),
      )
      for (const c of clients) c.destroy()
      return total / ((t1 - t0) / 1000)
    },
    async latency(subject, rate, seconds) {
      const total = Math.floor(rate * seconds)
      const producer = await connectRaw()
      const consumer = await connectRaw()
      const group = 'lat'
      // Create the group at the end of the subject before producing.
      await consumer.call(
        RequestCode.PULL,
        pullReq({ subject, group, consumerId: 'c', timeoutMs: 0, start: StartPosition.LATEST }),
      )
      const prepared = Array.from({ length: total }, (_, i) => record(subject, i))
      const sentAt = new Float64Array(total)
      const deliver: number[] = []
      const confirm: number[] = []
      let producing = true
      const consumerLoop = (async () => {
        const acks: Promise<Buffer>[] = []
        while (deliver.length < total) {
          const msgs = decodePullResponse(
            await consumer.call(
              RequestCode.PULL,
              pullReq({ subject, group, consumerId: 'c', timeoutMs: 500, start: StartPosition.LATEST }),
            ),
          )
          const now = performance.now()
          if (msgs.length === 0 && !producing) break
          for (const m of msgs) deliver.push(now - (sentAt[bodyIndex(m.record.body)] as number))
          if (msgs.length > 0)
            acks.push(
              ack(
                consumer,
                subject,
                group,
                'c',
                msgs.map((m) => m.sequence),
              ),
            )
        }
        await Promise.all(acks)
      })()
      const pending: Promise<void>[] = []
      await paced(rate, total, (from, to) => {
        const at = performance.now()
        for (let i = from; i < to; i++) sentAt[i] = at
        pending.push(
          send(producer, prepared.slice(from, to)).then(() => {
            const t = performance.now() - at
            for (let i = from; i < to; i++) confirm.push(t)
          }),
        )
      })
      await Promise.all(pending)
      producing = false
      await consumerLoop
      producer.destroy()
      consumer.destroy()
      return { deliver, confirm }
    },
    async drain(subject, consumers, total) {
      const group = `drain${consumers}`
      const acks: Promise<Buffer>[] = []
      const clients = await Promise.all(Array.from({ length: consumers }, () => connectRaw()))
      let handled = 0
      let t1 = 0
      const t0 = performance.now()
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
              await sleep(5)
              // Not awaited, as NATS and RabbitMQ clients ack: the next message is handled at once.
              acks.push(ack(c, subject, group, `d${i}`, [m.sequence]))
              if (++handled === total) t1 = performance.now()
            }
          }
        }),
      )
      await Promise.all(acks)
      for (const c of clients) c.destroy()
      return (t1 - t0) / 1000
    },
    stop: () => stopServer(child),
  }
}

/** The index a body carries (see body()). */
function bodyIndex(b: unknown): number {
  if (!Buffer.isBuffer(b)) throw new Error('qmq record without a binary body')
  return b.readUInt32BE(0)
}

// ---- NATS JetStream: file storage, 1 replica

/**
 * Deadline of one JetStream publish: well above the client's 5 s default, which a publish missed on a
 * loaded shared machine (the run then failed instead of reporting a slow figure).
 */
const JS_TIMEOUT_MS = 60_000

async function startNats(): Promise<Driver> {
  const dir = tempDir('nats')
  const port = await freePort()
  const child = spawnServer(
    'nats-server',
    ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', join(dir, 'js')],
    dir,
  )
  const conn = (): Promise<NatsConnection> =>
    natsConnect({ servers: `127.0.0.1:${port}`, maxReconnectAttempts: 0 })
  const admin = await waitFor('nats-server', 30_000, conn, child)
  const jsm = await admin.jetstreamManager()
  await jsm.streams.add({ name: 'BENCH', subjects: ['bench.>'], storage: StorageType.File, num_replicas: 1 })
  const subj = (s: string) => `bench.${s}`
  /** A durable pull consumer of `subject`'s messages (all, or only new ones). */
  const addConsumer = async (
    name: string,
    subject: string,
    policy: DeliverPolicy,
    maxAckPending = 10_000,
  ) => {
    await jsm.consumers.add('BENCH', {
      durable_name: name,
      ack_policy: AckPolicy.Explicit,
      deliver_policy: policy,
      filter_subject: subj(subject),
      max_ack_pending: maxAckPending,
    })
  }
  /**
   * `consumers` connections read the durable consumer `name` (each holding at most `maxMessages`),
   * one message at a time: `handle`, then ack. Seconds until `total` were handled.
   */
  const consumeAll = async (
    name: string,
    consumers: number,
    maxMessages: number,
    total: number,
    handle: () => Promise<unknown> | undefined,
  ): Promise<number> => {
    const conns = await Promise.all(Array.from({ length: consumers }, conn))
    const iters = await Promise.all(
      conns.map(async (nc) =>
        (await nc.jetstream().consumers.get('BENCH', name)).consume({ max_messages: maxMessages }),
      ),
    )
    let handled = 0
    let t1 = 0
    const t0 = performance.now()
    await new Promise<void>((resolve, reject) => {
      for (const it of iters)
        void (async () => {
          for await (const m of it) {
            await handle()
            m.ack()
            if (++handled === total) {
              t1 = performance.now()
              resolve()
            }
            if (handled >= total) break
          }
        })().catch(reject)
    })
    for (const it of iters) it.stop()
    await Promise.all(conns.map((nc) => nc.drain().catch(() => nc.close())))
    return (t1 - t0) / 1000
  }
  return {
    dir,
    async publish(subject, producers, total) {
      const conns = await Promise.all(Array.from({ length: producers }, conn))
      const per = Math.ceil(total / producers)
      const t0 = performance.now()
      await Promise.all(
        conns.map((nc) => {
          const js = nc.jetstream({ timeout: JS_TIMEOUT_MS })
          return windowed(per, WINDOW, (i, done) => {
            js.publish(subj(subject), body(i)).then(() => done(), done)
          })
        }),
      )
      const rate = (per * producers) / ((performance.now() - t0) / 1000)
      await Promise.all(conns.map((nc) => nc.close()))
      return rate
    },
    async consume(subject, consumers, total) {
      const name = `c-${subject}`
      await addConsumer(name, subject, DeliverPolicy.All)
      return total / (await consumeAll(name, consumers, WINDOW, total, () => undefined))
    },
    async latency(subject, rate, seconds) {
      const total = Math.floor(rate * seconds)
      await addConsumer(`lat-${subject}`, subject, DeliverPolicy.New)
      const pnc = await conn()
      const cnc = await conn()
      const js = pnc.jetstream({ timeout: JS_TIMEOUT_MS })
      const sentAt = new Float64Array(total)
      const deliver: number[] = []
      const confirm: number[] = []
      const c = await cnc.jetstream().consumers.get('BENCH', `lat-${subject}`)
      const it = await c.consume({ max_messages: WINDOW })
      const consumerLoop = (async () => {
        for await (const m of it) {
          deliver.push(
            performance.now() -
              (sentAt[Buffer.from(m.data.buffer, m.data.byteOffset, 4).readUInt32BE(0)] as number),
          )
          m.ack()
          if (deliver.length >= total) break
        }
      })()
      const pending: Promise<void>[] = []
      await paced(rate, total, (from, to) => {
        const at = performance.now()
        for (let i = from; i < to; i++) {
          sentAt[i] = at
          pending.push(
            js.publish(subj(subject), body(i)).then(() => void confirm.push(performance.now() - at)),
          )
        }
      })
      await Promise.all(pending)
      await Promise.race([consumerLoop, sleep(10_000)])
      it.stop()
      await cnc.close()
      await pnc.close()
      return { deliver, confirm }
    },
    async drain(subject, consumers, total) {
      const name = `drain${consumers}`
      await addConsumer(name, subject, DeliverPolicy.All)
      return consumeAll(name, consumers, 5, total, () => sleep(5))
    },
    async stop() {
      await admin.close()
      await stopServer(child)
    },
  }
}

// ---- RabbitMQ: a quorum queue per scenario, publisher confirms, manual acks

async function startRabbit(): Promise<Driver> {
  const dir = tempDir('rabbitmq')
  const [port, distPort, epmdPort] = [await freePort(), await freePort(), await freePort()]
  writeFileSync(
    join(dir, 'rabbitmq.conf'),
    [`listeners.tcp.1 = 127.0.0.1:${port}`, 'loopback_users.guest = false', 'log.console = false', ''].join(
      '\n',
    ),
  )
  writeFileSync(join(dir, 'enabled_plugins'), '[].\n')
  writeFileSync(join(dir, 'rabbitmq-env.conf'), '\n')
  const child = spawnServer('/usr/lib/rabbitmq/bin/rabbitmq-server', [], dir, {
    HOME: dir,
    RABBITMQ_NODENAME: `qmqpeers${process.pid}@localhost`,
    RABBITMQ_NODE_IP_ADDRESS: '127.0.0.1',
    RABBITMQ_NODE_PORT: String(port),
    RABBITMQ_DIST_PORT: String(distPort),
    ERL_EPMD_PORT: String(epmdPort),
    ERL_EPMD_ADDRESS: '127.0.0.1',
    RABBITMQ_CONFIG_FILE: join(dir, 'rabbitmq.conf'),
    RABBITMQ_ADVANCED_CONFIG_FILE: join(dir, 'advanced.config'),
    RABBITMQ_CONF_ENV_FILE: join(dir, 'rabbitmq-env.conf'),
    RABBITMQ_ENABLED_PLUGINS_FILE: join(dir, 'enabled_plugins'),
    RABBITMQ_ENABLED_PLUGINS: '',
    RABBITMQ_MNESIA_BASE: join(dir, 'mnesia'),
    RABBITMQ_LOG_BASE: join(dir, 'log'),
    RABBITMQ_PID_FILE: join(dir, 'rabbit.pid'),
  })
  const url = `amqp://guest:guest@127.0.0.1:${port}`
  const conn = () => amqp.connect(url)
  const admin = await waitFor('rabbitmq-server', 120_000, conn, child)
  const adminCh = await admin.createChannel()
  const queue = async (q: string) => {
    await adminCh.assertQueue(q, { durable: true, arguments: { 'x-queue-type': 'quorum' } })
  }
  /** `consumers` connections consume `q` with `prefetch`; `handle` acks; resolves when `total` were handled. */
  const consumeQueue = async (
    q: string,
    consumers: number,
    prefetch: number,
    total: number,
    handle: (ch: amqp.Channel, m: amqp.ConsumeMessage) => Promise<void> | void,
  ): Promise<number> => {
    const conns = await Promise.all(Array.from({ length: consumers }, conn))
    let handled = 0
    let t1 = 0
    const t0 = performance.now()
    await new Promise<void>((resolve, reject) => {
      for (const c of conns) {
        void (async () => {
          const ch = await c.createChannel()
          await ch.prefetch(prefetch)
          // Handlers run one at a time per consumer (as the other brokers' loops do).
          let chain = Promise.resolve()
          await ch.consume(q, (m) => {
            if (m === null) return
            chain = chain.then(async () => {
              await handle(ch, m)
              if (++handled === total) {
                t1 = performance.now()
                resolve()
              }
            })
          })
        })().catch(reject)
      }
    })
    await Promise.all(conns.map((c) => c.close().catch(() => {})))
    return (t1 - t0) / 1000
  }
  return {
    dir,
    async publish(subject, producers, total) {
      await queue(subject)
      const conns = await Promise.all(Array.from({ length: producers }, conn))
      const chans = await Promise.all(conns.map((c) => c.createConfirmChannel()))
      const per = Math.ceil(total / producers)
      const t0 = performance.now()
      await Promise.all(
        chans.map((ch) =>
          windowed(per, WINDOW, (i, done) => {
            ch.publish('', subject, body(i), { persistent: true }, (err) => done(err))
          }),
        ),
      )
      const rate = (per * producers) / ((performance.now() - t0) / 1000)
      await Promise.all(conns.map((c) => c.close()))
      return rate
    },
    async consume(subject, consumers, total) {
      const seconds = await consumeQueue(subject, consumers, WINDOW, total, (ch, m) => ch.ack(m))
      return total / seconds
    },
    async latency(subject, rate, seconds) {
      const total = Math.floor(rate * seconds)
      await queue(subject)
      const sentAt = new Float64Array(total)
      const deliver: number[] = []
      const confirm: number[] = []
      const cconn = await conn()
      const cch = await cconn.createChannel()
      await cch.prefetch(WINDOW)
      await cch.consume(subject, (m) => {
        if (m === null) return
        deliver.push(performance.now() - (sentAt[m.content.readUInt32BE(0)] as number))
        cch.ack(m)
      })
      const pconn = await conn()
      const pch = await pconn.createConfirmChannel()
      const pending: Promise<void>[] = []
      await paced(rate, total, (from, to) => {
        const at = performance.now()
        for (let i = from; i < to; i++) {
          sentAt[i] = at
          pending.push(
            new Promise<void>((resolve, reject) =>
              pch.publish('', subject, body(i), { persistent: true }, (err) => {
                if (err) return reject(err instanceof Error ? err : new Error(String(err)))
                confirm.push(performance.now() - at)
                resolve()
              }),
            ),
          )
        }
      })
      await Promise.all(pending)
      const deadline = Date.now() + 10_000
      while (deliver.length < total && Date.now() < deadline) await sleep(10)
      await cconn.close()
      await pconn.close()
      return { deliver, confirm }
    },
    async drain(subject, consumers, total) {
      // One queue per consumer count: a queue is emptied by its consumers.
      const q = `${subject}-${consumers}`
      await fill(q, total)
      return consumeQueue(q, consumers, 5, total, async (ch, m) => {
        await sleep(5)
        ch.ack(m)
      })
    },
    async stop() {
      await admin.close().catch(() => {})
      await stopServer(child, 20_000)
    },
  }
  async function fill(q: string, total: number): Promise<void> {
    await queue(q)
    const c = await conn()
    const ch = await c.createConfirmChannel()
    await windowed(total, WINDOW, (i, done) => {
      ch.publish('', q, body(i), { persistent: true }, (err) => done(err))
    })
    await c.close()
  }
}

// ------------------------------------------------------------------------------------------------
// Floors: bare loopback echo between two Node processes, and write + fdatasync

/** The echo process: returns every byte it receives (two loopback hops per round trip). */
const ECHO_SRC = `const s=require('net').createServer(c=>{c.setNoDelay(true);c.pipe(c)});s.listen(0,'127.0.0.1',()=>process.stdout.write(JSON.stringify({port:s.address().port})+'\\n'))`

async function loopbackFloor(rate: number, seconds: number): Promise<number[]> {
  const dir = tempDir('echo')
  const child = spawnServer(process.execPath, ['-e', ECHO_SRC], dir, {}, true)
  const port = await brokerChildPort(child).catch((e: unknown) => {
    throw new Error(`echo process: ${String(e)}`)
  })
  const sock: Socket = await new Promise((resolve, reject) => {
    const s = tcpConnect(port, '127.0.0.1', () => resolve(s))
    s.once('error', reject)
  })
  sock.setNoDelay(true)
  const total = Math.floor(rate * seconds)
  const sentAt = new Float64Array(total)
  const rtt: number[] = []
  let received = 0
  const done = new Promise<void>((resolve) => {
    sock.on('data', (d: Buffer) => {
      const now = performance.now()
      const before = Math.floor(received / MSG_BYTES)
      received += d.length
      const after = Math.floor(received / MSG_BYTES)
      for (let i = before; i < after; i++) rtt.push(now - (sentAt[i] as number))
      if (after >= total) resolve()
    })
  })
  const msg = Buffer.alloc(MSG_BYTES, 0x61)
  await paced(rate, total, (from, to) => {
    const at = performance.now()
    sock.cork()
    for (let i = from; i < to; i++) {
      sentAt[i] = at
      sock.write(msg)
    }
    sock.uncork()
  })
  await Promise.race([done, sleep(10_000)])
  sock.destroy()
  await stopServer(child)
  return rtt
}

function fdatasyncFloor(count: number): number[] {
  const dir = tempDir('fsync')
  const fd = openSync(join(dir, 'f'), 'w')
  const buf = Buffer.alloc(MSG_BYTES, 0x61)
  const out: number[] = []
  try {
    for (let i = 0; i < count; i++) {
      const t = performance.now()
      writeSync(fd, buf)
      fdatasyncSync(fd)
      out.push(performance.now() - t)
    }
  } finally {
    closeSync(fd)
  }
  return out
}

// ------------------------------------------------------------------------------------------------
// Rounds, medians and the report

function pct(samples: number[], p: number): number {
  const s = [...samples].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.floor(s.length * p))] ?? Number.NaN
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 === 1 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2
}

/** metric -> broker (or floor) -> values of the rounds */
const figures = new Map<string, { unit: string; higherIsBetter: boolean; by: Map<string, number[]> }>()
function record(metric: string, who: string, value: number, unit: string, higherIsBetter: boolean): void {
  let f = figures.get(metric)
  if (f === undefined) {
    f = { unit, higherIsBetter, by: new Map() }
    figures.set(metric, f)
  }
  const list = f.by.get(who) ?? []
  list.push(value)
  f.by.set(who, list)
  process.stderr.write(`  ${who}: ${metric}: ${+value.toFixed(3)} ${unit}\n`)
}

/** qmq with flush 'async'; the peers have no such row, so its ratio is to their 'publish, 4 producers'. */
const ASYNC_METRIC = "publish, 4 producers, qmq flush 'async'"

const STARTERS: Record<string, () => Promise<Driver>> = {
  qmq: () => startQmq('sync'),
  nats: startNats,
  rabbitmq: startRabbit,
}

async function runBroker(name: string, round: number): Promise<void> {
  process.stderr.write(`round ${round + 1}: ${name} (${DURABILITY[name]})\n`)
  const d = await (STARTERS[name] as () => Promise<Driver>)()
  try {
    /** Runs a throughput scenario of `total` messages: its rate, and the server's CPU per message. */
    const tp = async (m: string, total: number, run: () => Promise<number>): Promise<void> => {
      const cpu0 = serverCpuMs(d.dir)
      const rate = await run()
      const cpu = serverCpuMs(d.dir) - cpu0
      record(m, name, rate, 'msgs/s', true)
      if (Number.isFinite(cpu))
        record(`${m}: server CPU per message`, name, (cpu * 1000) / total, 'us', false)
    }
    if (PARTS.includes('publish') || PARTS.includes('consume')) {
      await tp('publish, 1 producer', N, () => d.publish('p1', 1, N))
      await tp('publish, 4 producers', N, () => d.publish('p4', 4, N))
    }
    if (PARTS.includes('consume')) {
      await tp('consume from backlog, 1 consumer', N, () => d.consume('p1', 1, N))
      await tp('consume from backlog, 4 consumers', N, () => d.consume('p4', 4, N))
    }
    for (const rate of PARTS.includes('latency') ? RATES : []) {
      const k = `${rate / 1000}k msgs/s`
      const cpu0 = serverCpuMs(d.dir)
      const { deliver, confirm } = await d.latency(`lat${rate}`, rate, LAT_SECONDS)
      const cpu = serverCpuMs(d.dir) - cpu0
      const expected = Math.floor(rate * LAT_SECONDS)
      if (deliver.length < expected)
        throw new Error(`${name}: ${deliver.length} of ${expected} messages delivered`)
      record(`publish-to-deliver p50 at ${k}`, name, pct(deliver, 0.5), 'ms', false)
      record(`publish-to-deliver p99 at ${k}`, name, pct(deliver, 0.99), 'ms', false)
      record(`publish-to-deliver p999 at ${k}`, name, pct(deliver, 0.999), 'ms', false)
      record(`confirm p50 at ${k}`, name, pct(confirm, 0.5), 'ms', false)
      // At a fixed rate this includes the server's idle work (timers, polling) over the run.
      if (Number.isFinite(cpu))
        record(
          `publish-to-deliver at ${k}: server CPU per message`,
          name,
          (cpu * 1000) / expected,
          'us',
          false,
        )
    }
    if (name === 'qmq' && PARTS.includes('publish')) {
      // The same publish with flush 'async' (acknowledged after the write, fdatasync every
      // flushIntervalMs: NATS's durability) on a fresh broker, so the target ">= 2x NATS" is read
      // against the same NATS figure of the round.
      // 1 producer first, as on the 'sync' broker (the same JIT warm-up before the 4-producer row).
      const a = await startQmq('async')
      try {
        record("publish, 1 producer, qmq flush 'async'", name, await a.publish('pa1', 1, N), 'msgs/s', true)
        record(ASYNC_METRIC, name, await a.publish('pa4', 4, N), 'msgs/s', true)
      } finally {
        await a.stop()
      }
    }
    if (!PARTS.includes('drain')) return
    if (name !== 'rabbitmq') {
      // One backlog read by one consumer group per consumer count (RabbitMQ fills a queue per count).
      await d.publish('drain', 1, DRAIN)
    }
    for (const consumers of DRAIN_CONSUMERS)
      record(
        `drain ${DRAIN} msgs, 5 ms handler, ${consumers} consumers`,
        name,
        await d.drain('drain', consumers, DRAIN),
        's',
        false,
      )
  } finally {
    await d.stop()
    cleanup() // its leftovers (if any) and its data: a full run would otherwise keep GiBs in tmp
  }
}

async function runFloors(): Promise<void> {
  process.stderr.write('floors\n')
  for (const rate of RATES) {
    const k = `${rate / 1000}k msgs/s`
    const rtt = await loopbackFloor(rate, LAT_SECONDS)
    for (const [p, label] of [
      [0.5, 'p50'],
      [0.99, 'p99'],
      [0.999, 'p999'],
    ] as const)
      record(`publish-to-deliver ${label} at ${k}`, 'floor: loopback echo', pct(rtt, p), 'ms', false)
  }
  const sync = fdatasyncFloor(quick ? 200 : 2_000)
  record('write + fdatasync 1 KiB p50', 'floor: disk', pct(sync, 0.5), 'ms', false)
  record('write + fdatasync 1 KiB p99', 'floor: disk', pct(sync, 0.99), 'ms', false)
}

function emit(): void {
  const digits = (unit: string) => (unit === 'msgs/s' ? 0 : 3)
  for (const [metric, f] of figures) {
    const med = new Map([...f.by].map(([who, vs]) => [who, median(vs)]))
    for (const [who, v] of med)
      report({ bench: BENCH, metric: `${metric}: ${who}`, value: +v.toFixed(digits(f.unit)), unit: f.unit })
    const qmq = med.get('qmq')
    const peers = [...med].filter(([who]) => who !== 'qmq' && !who.startsWith('floor')).map(([, v]) => v)
    if (qmq !== undefined && peers.length > 0) {
      const best = f.higherIsBetter ? Math.max(...peers) : Math.min(...peers)
      report({
        bench: BENCH,
        metric: `${metric}: qmq / best peer (${f.higherIsBetter ? 'higher' : 'lower'} is better)`,
        value: +(qmq / best).toFixed(2),
        unit: 'x',
      })
    }
    const floor = med.get('floor: loopback echo')
    if (qmq !== undefined && floor !== undefined)
      report({
        bench: BENCH,
        metric: `${metric}: qmq / loopback floor`,
        value: +(qmq / floor).toFixed(2),
        unit: 'x',
      })
  }
  // qmq flush 'async' against the peers' publish with 4 producers (NATS acks before an fsync too).
  const asyncQmq = figures.get(ASYNC_METRIC)?.by.get('qmq')
  const p4 = figures.get('publish, 4 producers')?.by
  if (asyncQmq !== undefined && p4 !== undefined)
    for (const [who, vs] of p4)
      if (who !== 'qmq')
        report({
          bench: BENCH,
          metric: `${ASYNC_METRIC}: qmq / ${who} 'publish, 4 producers' (higher is better)`,
          value: +(median(asyncQmq) / median(vs)).toFixed(2),
          unit: 'x',
        })
  // Confirm latency against the disk's own fdatasync in the same run.
  const sync = figures.get('write + fdatasync 1 KiB p50')?.by.get('floor: disk')
  for (const rate of RATES) {
    const c = figures.get(`confirm p50 at ${rate / 1000}k msgs/s`)?.by.get('qmq')
    if (sync !== undefined && c !== undefined)
      report({
        bench: BENCH,
        metric: `confirm p50 at ${rate / 1000}k msgs/s: qmq / write + fdatasync p50`,
        value: +(median(c) / median(sync)).toFixed(2),
        unit: 'x',
      })
  }
}

async function main(): Promise<void> {
  ensurePackages()
  for (const [name, d] of Object.entries(DURABILITY))
    if (PEERS.includes(name)) process.stderr.write(`${name}: ${d}\n`)
  for (let round = 0; round < ROUNDS; round++) {
    // Each broker alone on the machine, in turn; the floors in the same round.
    for (const name of PEERS) await runBroker(name, round)
    await runFloors()
    cleanup()
  }
  emit()
}

main().then(
  () => {
    cleanup()
    process.exit(0)
  },
  (err: unknown) => {
    process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`)
    cleanup()
    process.exit(1)
  },
)
