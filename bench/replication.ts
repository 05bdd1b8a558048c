/**
 * Replication benchmark (issue 14), brokers in their own processes (bench/broker-child.ts), 1 KiB
 * messages, flush 'sync':
 * - produce throughput with 4 producers (batches of 100, 8 in flight each) to a master with a 'sync'
 *   slave, as a ratio to the same run against a master alone (target >= 0.6): 3 rounds of each
 *   (--quick 1), alternated, the median of the rounds' ratios;
 * - slave catch-up rate: a fresh slave copies a master's backlog (REPL_BENCH_BACKLOG_BYTES, default
 *   1 GiB; 64 MiB with --quick) (target >= 150 MB/s), and the CPU seconds master and slave spend
 *   per GiB copied (steadier than the rate on a shared machine);
 * - publish-to-deliver latency at a fixed rate (REPL_BENCH_RATE, default 2k msgs/s; a long-polling
 *   consumer on the master, bench/latency-common.ts) against the master alone and against the master
 *   with a 'sync' slave, in alternating rounds of the same run (3 rounds of 5 s; --quick 1 of 2 s):
 *   p50 and p99 of each (the median round), and the p99 added by replication as a difference and a
 *   ratio;
 * - failover time: a metaserver (heartbeat timeout 3 s, interval 500 ms), master and slave started
 *   through the CLI (bin/qmq.js, as an operator would), an SDK producer (default options) sending all
 *   the time; the master is SIGKILLed, and the time to the first acknowledgement of a message sent
 *   after the kill is measured; the killed broker is restarted (it rejoins as the slave), and the new
 *   master is killed in turn: 5 kills (--quick 2), median, lowest and highest. Split, to tell the
 *   SDK's share from the servers': the medians of kill to the metaserver routing to the successor,
 *   and of kill to the successor acknowledging a SEND sent straight to its address.
 * The master with the slave runs with in-sync lag and ack timeout of 60 s: on a loaded machine a
 * starved slave slows its writes down (what is measured) instead of having them refused.
 * Knobs: REPL_BENCH_BACKLOG_BYTES, REPL_BENCH_FETCH_BYTES (the slave's replicationFetchBytes),
 * REPL_BENCH_RATE, REPL_BENCH_PARTS (produce,latency,catchup,failover; default all).
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { ChildService } from '../src/cli/child-service'
import { MessageProducerProvider } from '../src/client'
import { MetaClient } from '../src/common/meta/meta-client'
import { encodeRecord } from '../src/common/record'
import { RawClient } from '../test/helpers/raw-client'
import { launchService, metaserverArgs, replicatedBrokerArgs } from '../test/helpers/services'
import { brokerChildPort, quick, report } from './common'
import { latency, percentile, sendBatch } from './latency-common'

const BENCH = 'replication'
const PARTS = (process.env.REPL_BENCH_PARTS ?? 'produce,latency,catchup,failover').split(',')
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

/**
 * REPL_BENCH_CPU_PROF=<dir>: the catch-up part's master and slave write V8 CPU profiles there (at
 * their exit, SIGTERM).
 */
const CPU_PROF_DIR = process.env.REPL_BENCH_CPU_PROF

/** CPU seconds a child process has used so far, user and system (Linux /proc). */
function cpuTimes(pid: number | undefined): { user: number; sys: number } {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    // Fields 14 and 15 of stat (utime, stime), in clock ticks (100 per second on Linux).
    return { user: Number(f[11]) / 100, sys: Number(f[12]) / 100 }
  } catch {
    return { user: Number.NaN, sys: Number.NaN }
  }
}

async function startBroker(
  dataDir: string,
  extra: Record<string, unknown>,
  nodeArgs: string[] = [],
): Promise<number> {
  const child = spawn(
    process.execPath,
    [
      ...nodeArgs,
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

async function until(
  cond: () => boolean | Promise<boolean>,
  timeoutMs: number,
  what = 'a condition',
): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

/**
 * Until the master acknowledges a write: under 'sync' it refuses writes while its slave is out of sync
 * (on a loaded machine a slave can fall behind between two parts).
 */
async function writable(port: number): Promise<void> {
  const c = await RawClient.connect(port)
  try {
    await until(
      () =>
        sendBatch(c, [record('bench.repl')]).then(
          () => true,
          () => false,
        ),
      120_000,
      'the master acknowledging writes (its slave in sync)',
    )
  } finally {
    c.destroy()
  }
}

/** Publish-to-deliver p50 and p99 (ms) of one latency round. */
async function latencyRound(
  port: number,
  rate: number,
  seconds: number,
): Promise<{ p50: number; p99: number }> {
  const samples = await latency(port, rate, seconds)
  return { p50: percentile(samples, 0.5), p99: percentile(samples, 0.99) }
}

/** The round with the median p99 of `rounds`. */
function medianRound<T extends { p99: number }>(rounds: T[]): T {
  return [...rounds].sort((a, b) => a.p99 - b.p99)[Math.floor((rounds.length - 1) / 2)] as T
}

/**
 * Failover time over `kills` SIGKILLs of the group's master (ms each): see the file's comment.
 * Services through the CLI, started as test/e2e/replication-kill.fault.ts starts them (test/helpers/services.ts).
 */
interface Failover {
  /** Kill to the SDK producer's first acknowledgement of a message sent after the kill (ms). */
  sdk: number
  /** Kill to the metaserver routing to the new master (ms). */
  routed: number
  /** Kill to the new master's first acknowledgement of a SEND straight to its address (ms). */
  direct: number
}

async function failovers(root: string, kills: number): Promise<Failover[]> {
  const services: ChildService[] = []
  const start = async (name: string, args: string[]) => {
    const s = await launchService(name, args, { secret: SECRET, startTimeoutMs: 60_000 })
    services.push(s.child)
    return s
  }
  let producer: MessageProducerProvider | undefined
  let admin: MetaClient | undefined
  let sending = true
  const lanes: Promise<void>[] = []
  try {
    const meta = await start('metaserver', metaserverArgs(join(root, 'fo-meta')))
    const brokerArgs = (name: string, role: 'master' | 'slave', port: number) =>
      replicatedBrokerArgs(root, `fo-${name}`, meta.address, role, port)
    const nodes = {
      a: await start('a', brokerArgs('a', 'master', 0)),
      b: await start('b', brokerArgs('b', 'slave', 0)),
    }
    admin = new MetaClient({ url: meta.address, clusterSecret: SECRET })
    const client = admin
    const inSync = async (master: string, slave: string) => {
      const g = await client.getGroup('g1').catch(() => undefined)
      const m = g?.servers.find((x) => x.role === 'master')
      return (
        g?.alive === true && m?.address === master && m.replication?.inSyncSlaves?.includes(slave) === true
      )
    }
    await until(async () => inSync(nodes.a.address, nodes.b.address), 60_000, 'the slave in sync')
    const p = new MessageProducerProvider({
      appCode: 'repl-bench',
      metaServer: `${meta.address}/meta/address`,
    })
    producer = p
    await p.init()
    // 4 lanes, one message in flight each; a message's send start and acknowledgement times.
    const acked: { sentAt: number; ackedAt: number }[] = []
    for (let l = 0; l < 4; l++)
      lanes.push(
        (async () => {
          while (sending) {
            const sentAt = performance.now()
            try {
              await p.sendMessage(p.generateMessage('bench.failover'))
              acked.push({ sentAt, ackedAt: performance.now() })
            } catch {
              await new Promise((r) => setTimeout(r, 20))
            }
          }
        })(),
      )
    const times: Failover[] = []
    let [master, slave]: ['a' | 'b', 'a' | 'b'] = ['a', 'b']
    for (let k = 0; k < kills; k++) {
      const m = nodes[master]
      const sl = nodes[slave]
      const before = acked.length
      await until(() => acked.length >= before + 50, 60_000, 'sends acknowledged before the kill')
      const port = Number(m.address.slice(m.address.lastIndexOf(':') + 1))
      m.child.proc.kill('SIGKILL')
      await m.child.exited
      const killedAt = performance.now()
      // Where the time goes: when the metaserver routes to the new master, and when the new master
      // first acknowledges a SEND of our own (a probe straight to its address, no SDK).
      const sides = { routedAt: 0, probeAckedAt: 0 }
      const watch = (async () => {
        const port = Number(sl.address.slice(sl.address.lastIndexOf(':') + 1))
        let probe: RawClient | undefined
        while (sides.routedAt === 0 || sides.probeAckedAt === 0) {
          if (sides.routedAt === 0) {
            const g = await client.getGroup('g1').catch(() => undefined)
            if (g?.address === sl.address && g.alive) sides.routedAt = performance.now()
          }
          if (sides.probeAckedAt === 0) {
            try {
              // A new connection after each failure: the broker restarts its port when promoted.
              probe ??= await RawClient.connect(port)
              await sendBatch(probe, [record('bench.probe')])
              sides.probeAckedAt = performance.now()
            } catch {
              probe?.destroy()
              probe = undefined
            }
          }
          await new Promise((r) => setTimeout(r, 50))
        }
        probe?.destroy()
      })()
      await until(
        () => acked.some((x) => x.sentAt >= killedAt),
        60_000,
        'an acknowledgement after the kill',
      ).catch(async (err: unknown) => {
        process.stderr.write(`${JSON.stringify(await client.getGroup('g1'))}\n`)
        throw err
      })
      const first = Math.min(...acked.filter((x) => x.sentAt >= killedAt).map((x) => x.ackedAt))
      await Promise.race([watch, new Promise((r) => setTimeout(r, 30_000))])
      const since = (at: number) => (at === 0 ? Number.NaN : at - killedAt)
      times.push({ sdk: first - killedAt, routed: since(sides.routedAt), direct: since(sides.probeAckedAt) })
      const after = (at: number) => (at === 0 ? 'never' : `${Math.round(at - killedAt)} ms`)
      process.stderr.write(
        `  failover ${k + 1}: SDK producer acknowledged ${Math.round(first - killedAt)} ms after the kill (metaserver routed to the new master ${after(sides.routedAt)}, its first direct acknowledgement ${after(sides.probeAckedAt)})\n`,
      )
      // The killed broker comes back on its address and rejoins as the slave of the new master.
      nodes[master] = await start(master, brokerArgs(master, 'master', port))
      await until(
        async () => inSync(sl.address, nodes[master].address),
        60_000,
        'the killed broker back in sync',
      )
      ;[master, slave] = [slave, master]
    }
    return times
  } finally {
    sending = false
    await Promise.race([Promise.all(lanes), new Promise((r) => setTimeout(r, 10_000))])
    await producer?.close().catch(() => {})
    await admin?.close()
    for (const s of services)
      if (s.proc.exitCode === null && s.proc.signalCode === null) s.proc.kill('SIGKILL')
    await Promise.all(services.map((s) => s.exited))
  }
}

async function main(): Promise<void> {
  const root = mkdtempSync(join(tmpdir(), 'qmq-bench-repl-'))
  try {
    // Per producer and round (3 rounds of each, alternated; --quick: 1).
    const perProducer = quick ? 5_000 : 25_000
    // A master alone, and a master with a 'sync' slave.
    const alonePort = await startBroker(join(root, 'alone'), {})
    // Generous in-sync lag and ack timeout: on a loaded machine a starved slave must slow the
    // measured writes down (what is measured), not have them refused.
    const mPort = await startBroker(join(root, 'm'), {
      replicationInSyncLagMs: 60_000,
      replicationAckTimeoutMs: 60_000,
    })
    await startBroker(join(root, 's'), { role: 'slave', masterAddress: `127.0.0.1:${mPort}` })
    await until(() => readdirSync(join(root, 'm', 'replication')).includes('slaves.json'), 30_000).catch(
      () => {},
    )
    await writable(mPort)
    if (PARTS.includes('latency')) {
      const rate = Number(process.env.REPL_BENCH_RATE ?? 2_000)
      const seconds = quick ? 2 : 5
      const alone: { p50: number; p99: number }[] = []
      const synced: { p50: number; p99: number }[] = []
      // Alternating order, so that a drift of the machine's load weighs on both alike.
      for (let r = 0; r < (quick ? 1 : 3); r++) {
        for (const which of r % 2 === 0 ? ['alone', 'sync'] : ['sync', 'alone']) {
          if (which === 'sync') await writable(mPort)
          const round = await latencyRound(which === 'alone' ? alonePort : mPort, rate, seconds)
          ;(which === 'alone' ? alone : synced).push(round)
          process.stderr.write(
            `  latency round ${r + 1} ${which}: p50 ${round.p50.toFixed(2)} ms, p99 ${round.p99.toFixed(2)} ms\n`,
          )
        }
      }
      const a = medianRound(alone)
      const sy = medianRound(synced)
      const k = `${rate / 1000}k msgs/s`
      const ms = (n: number) => +n.toFixed(2)
      report({
        bench: BENCH,
        metric: `publish-to-deliver p50 at ${k}, master alone`,
        value: ms(a.p50),
        unit: 'ms',
      })
      report({
        bench: BENCH,
        metric: `publish-to-deliver p99 at ${k}, master alone`,
        value: ms(a.p99),
        unit: 'ms',
      })
      report({
        bench: BENCH,
        metric: `publish-to-deliver p50 at ${k}, sync slave`,
        value: ms(sy.p50),
        unit: 'ms',
      })
      report({
        bench: BENCH,
        metric: `publish-to-deliver p99 at ${k}, sync slave`,
        value: ms(sy.p99),
        unit: 'ms',
      })
      report({
        bench: BENCH,
        metric: `publish-to-deliver p99 added by a sync slave at ${k}`,
        value: ms(sy.p99 - a.p99),
        unit: 'ms',
      })
      report({
        bench: BENCH,
        metric: `publish-to-deliver p99 ratio sync slave / alone at ${k}`,
        value: +(sy.p99 / a.p99).toFixed(2),
        unit: 'ratio',
      })
    }
    if (PARTS.includes('produce')) {
      // Rounds alternating the master alone and the master with the slave, so that a drift of the
      // machine's load weighs on both alike; the ratio is the median of the rounds' own ratios.
      const rounds = quick ? 1 : 3
      const alone: number[] = []
      const synced: number[] = []
      const ratios: number[] = []
      for (let r = 0; r < rounds; r++) {
        const round: Record<string, number> = {}
        for (const which of r % 2 === 0 ? ['alone', 'sync'] : ['sync', 'alone']) {
          if (which === 'sync') await writable(mPort)
          round[which] = await produce(which === 'alone' ? alonePort : mPort, 4, perProducer)
        }
        const a = round.alone as number
        const sy = round.sync as number
        alone.push(a)
        synced.push(sy)
        ratios.push(sy / a)
        process.stderr.write(
          `  produce round ${r + 1}: alone ${Math.round(a)}, sync slave ${Math.round(sy)} msgs/s (ratio ${(sy / a).toFixed(2)})\n`,
        )
      }
      const median = (v: number[]) => [...v].sort((x, y) => x - y)[Math.floor((v.length - 1) / 2)] as number
      report({
        bench: BENCH,
        metric: `produce 4 producers, master alone (median of ${rounds} rounds)`,
        value: Math.round(median(alone)),
        unit: 'msgs/s',
      })
      report({
        bench: BENCH,
        metric: `produce 4 producers, sync slave (median of ${rounds} rounds)`,
        value: Math.round(median(synced)),
        unit: 'msgs/s',
      })
      report({
        bench: BENCH,
        metric: `produce ratio sync slave / alone (median of ${rounds} alternated rounds)`,
        value: +median(ratios).toFixed(2),
        unit: 'ratio',
        target: '>= 0.6',
      })
    }
    if (PARTS.includes('catchup')) {
      // A fresh slave copies the backlog of the master alone.
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
      let masterPort = alonePort
      let master = children[0]
      if (CPU_PROF_DIR !== undefined) {
        // A master of its own for the profile (without the fill): the same data dir, restarted.
        master?.kill('SIGTERM')
        await new Promise((r) => master?.once('exit', r))
        masterPort = await startBroker(join(root, 'alone'), {}, [
          '--cpu-prof',
          '--cpu-prof-dir',
          CPU_PROF_DIR,
        ])
        master = children[children.length - 1]
      }
      const masterCpu0 = cpuTimes(master?.pid)
      const started = performance.now()
      const fetchBytes = process.env.REPL_BENCH_FETCH_BYTES
      await startBroker(
        join(root, 'catchup'),
        {
          role: 'slave',
          masterAddress: `127.0.0.1:${masterPort}`,
          ...(fetchBytes === undefined ? {} : { replicationFetchBytes: Number(fetchBytes) }),
        },
        CPU_PROF_DIR === undefined ? [] : ['--cpu-prof', '--cpu-prof-dir', CPU_PROF_DIR],
      )
      const slave = children[children.length - 1]
      // The slave's CPU from its first answer on (not its start: module loading, store open).
      const slaveCpu0 = cpuTimes(slave?.pid)
      const copied0 = logBytes(join(root, 'catchup'))
      const copyStarted = performance.now()
      await until(() => logBytes(join(root, 'catchup')) >= target, 600_000)
      const now = performance.now()
      const seconds = (now - started) / 1000
      const gib = (target - copied0) / 2 ** 30
      const perGiB = (pid: number | undefined, t0: { user: number; sys: number }) => {
        const t = cpuTimes(pid)
        return { user: (t.user - t0.user) / gib, sys: (t.sys - t0.sys) / gib }
      }
      const m = perGiB(master?.pid, masterCpu0)
      const sl = perGiB(slave?.pid, slaveCpu0)
      const masterCpu = m.user + m.sys
      const slaveCpu = sl.user + sl.sys
      const f2 = (n: number) => n.toFixed(2)
      process.stderr.write(
        `  catch-up: ${target} bytes in ${seconds.toFixed(2)} s (${((target - copied0) / 1e6 / ((now - copyStarted) / 1000)).toFixed(1)} MB/s after the slave's start); CPU s/GiB master ${f2(m.user)} user + ${f2(m.sys)} sys, slave ${f2(sl.user)} user + ${f2(sl.sys)} sys\n`,
      )
      report({
        bench: BENCH,
        metric: `slave catch-up of a ${Math.round(target / 2 ** 20)} MiB backlog (process start included)`,
        value: +(target / 1e6 / seconds).toFixed(1),
        unit: 'MB/s',
        target: '>= 150',
      })
      report({
        bench: BENCH,
        metric: 'slave catch-up: master CPU per GiB copied',
        value: +masterCpu.toFixed(2),
        unit: 'CPU s/GiB',
      })
      report({
        bench: BENCH,
        metric: 'slave catch-up: slave CPU per GiB copied',
        value: +slaveCpu.toFixed(2),
        unit: 'CPU s/GiB',
      })
      if (CPU_PROF_DIR !== undefined) {
        // SIGTERM: the processes exit cleanly and write their profiles.
        const exits = [master, slave].map((c) => new Promise((r) => c?.once('exit', r)))
        master?.kill('SIGTERM')
        slave?.kill('SIGTERM')
        await Promise.all(exits)
      }
    }
    // The brokers above are done with: the failover part runs on its own.
    for (const c of children.splice(0)) c.kill('SIGKILL')
    if (PARTS.includes('failover')) {
      const runs = await failovers(root, quick ? 2 : 5)
      const n = runs.length
      const label = `(heartbeat timeout 3 s, ${n} kills)`
      const figures: [keyof Failover, string][] = [
        ['sdk', 'failover: SIGKILL of the master to the first acknowledged send, SDK producer'],
        [
          'direct',
          'failover: SIGKILL of the master to its successor acknowledging a SEND sent straight to it',
        ],
        ['routed', 'failover: SIGKILL of the master to the metaserver routing to its successor'],
      ]
      for (const [key, metric] of figures) {
        const v = runs.map((r) => r[key]).sort((x, y) => x - y)
        const median = v[Math.floor((n - 1) / 2)] as number
        report({
          bench: BENCH,
          metric: `${metric} ${label}, median`,
          value: Math.round(median),
          unit: 'ms',
          ...(key === 'sdk' ? { target: '<= 8000' } : {}),
        })
        if (key === 'sdk')
          for (const [which, value] of [
            ['lowest', v[0]],
            ['highest', v[n - 1]],
          ] as const)
            report({
              bench: BENCH,
              metric: `${metric} ${label}, ${which}`,
              value: Math.round(value as number),
              unit: 'ms',
            })
      }
    }
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
