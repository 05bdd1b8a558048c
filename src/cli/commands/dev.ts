import { randomBytes } from 'node:crypto'
import { join, resolve } from 'node:path'
import { type FlagSpec, flagsHelp, intFlag, parseArgs, stringFlag } from '../args'
import { QmqError } from '../../common/errors'
import { CLUSTER_SECRET_ENV } from '../../common/token'
import { type ChildService, startChildService, stopChildService } from '../child-service'
import type { Command } from './command'

/**
 * `qmq dev`: a local cluster as separate processes (the same `qmq metaserver|broker|delay` commands
 * an operator runs): one metaserver on SQLite, N broker groups and M delay groups, data under
 * --data-dir. Each child reports readiness with its "started" log line, which carries the addresses
 * it bound (so port 0 works). A service that dies is restarted on the same ports, after a backoff
 * (1 s doubling to 30 s while it keeps dying within 30 s of its start). Only Ctrl-C (or SIGTERM)
 * stops the cluster: brokers and delay servers first, then the metaserver, each with a clean close.
 */
const DEFAULTS = {
  dataDir: './data',
  brokers: 2,
  delays: 1,
  metaserverPort: 8080,
  brokerPort: 20881,
  delayPort: 20801,
}
const START_TIMEOUT_MS = 30_000

const DEV_FLAGS: readonly FlagSpec[] = [
  {
    name: 'data-dir',
    value: 'DIR',
    doc: `where every service keeps its data (default: ${DEFAULTS.dataDir})`,
  },
  { name: 'brokers', value: 'N', doc: `broker groups broker-1..N (default: ${DEFAULTS.brokers})` },
  { name: 'delays', value: 'N', doc: `delay groups delay-1..N (default: ${DEFAULTS.delays})` },
  {
    name: 'metaserver-port',
    value: 'N',
    doc: `metaserver HTTP port (default: ${DEFAULTS.metaserverPort}; 0 = any free port)`,
  },
  {
    name: 'broker-port',
    value: 'N',
    doc: `TCP port of broker-1; broker-k uses N + 10(k-1), its HTTP port N+1 (default: ${DEFAULTS.brokerPort}; 0 = any)`,
  },
  {
    name: 'delay-port',
    value: 'N',
    doc: `TCP port of delay-1; delay-k uses N + 10(k-1), its HTTP port N+1 (default: ${DEFAULTS.delayPort}; 0 = any)`,
  },
  { name: 'verbose', doc: 'show every log line of the services (default: warnings and errors only)' },
  { name: 'json', doc: "print the cluster's addresses as one JSON line once it is up" },
]

function help(): string {
  return `Usage: qmq dev [options]

Start a local qmq cluster as separate processes: a metaserver (SQLite), broker groups and delay
groups, with data under --data-dir. A service that dies (kill one to try failover) is restarted on
the same ports, with a backoff. Stop the cluster with Ctrl-C.

Options:
${flagsHelp(DEV_FLAGS)}

The services share a cluster secret: QMQ_CLUSTER_SECRET when set (so a broker you start by hand with
the same variable can join), otherwise a random one for this run.`
}

function portPlus(base: number, k: number): number {
  return base === 0 ? 0 : base + k
}

/** Restart backoff of a service that died: doubles from the first to the last, reset once it stayed up. */
const RESTART_FIRST_MS = 1_000
const RESTART_MAX_MS = 30_000
const STAYED_UP_MS = 30_000

/** One service of the cluster, across its restarts. */
interface Slot {
  name: string
  /** The `qmq dev` flag that sets its port (named in the busy-port hint). */
  portFlag: string
  args: string[]
  child: ChildService
  startedAt: number
  nextBackoffMs: number
  /** A port the service found in use (from its one-line EADDRINUSE error), if any. */
  portInUse?: string
}

function startSlot(slot: Omit<Slot, 'child' | 'startedAt'>, verbose: boolean, secret: string): Slot {
  const s = slot as Slot
  s.portInUse = undefined
  s.startedAt = Date.now()
  s.child = startChildService(s.name, s.args, {
    startTimeoutMs: START_TIMEOUT_MS,
    env: { [CLUSTER_SECRET_ENV]: secret },
    onLine: (line, parsed) => {
      const busy = /port (\d+) in use.*QMQ_ERR_PORT_IN_USE/.exec(line)
      if (busy) {
        s.portInUse = busy[1]
        return
      }
      const level = typeof parsed?.level === 'string' ? parsed.level : 'warn'
      if (verbose || level === 'warn' || level === 'error' || level === 'fatal')
        process.stderr.write(`[${s.name}] ${line}\n`)
    },
  })
  return s
}

/** The started line of a slot; a busy port becomes the one-line hint naming the flag to change. */
async function started(slot: Slot): Promise<Record<string, unknown>> {
  try {
    return await slot.child.started
  } catch (err) {
    // The exit can be seen before the last line of output: wait for it to be read.
    await slot.child.exited
    await new Promise((r) => setImmediate(r))
    if (slot.portInUse !== undefined)
      throw new QmqError(
        'QMQ_ERR_PORT_IN_USE',
        `port ${slot.portInUse} in use: is another cluster running? use ${slot.portFlag}`,
      )
    throw err
  }
}

/** The service's arguments with its ports pinned to those it bound, so a restart keeps its addresses. */
function pinPorts(args: string[], port: string | undefined, httpPort: string | undefined): string[] {
  const out = [...args]
  const set = (flag: string, value: string | undefined) => {
    const i = out.indexOf(flag)
    if (i >= 0 && value !== undefined && value !== '') out[i + 1] = value
  }
  set('--port', port)
  set('--http-port', httpPort)
  return out
}

const portOf = (address: unknown): string | undefined =>
  typeof address === 'string' ? address.slice(address.lastIndexOf(':') + 1) : undefined

export const devCommand: Command = {
  name: 'dev',
  summary: 'Start a local cluster (metaserver, 2 broker groups, a delay group) as separate processes',
  help,
  run: async (argv) => {
    const { flags } = parseArgs(argv, { flags: DEV_FLAGS })
    const dataDir = resolve(stringFlag(flags, 'dataDir') ?? DEFAULTS.dataDir)
    const brokers = intFlag(flags, 'brokers', DEFAULTS.brokers, 1, 20)
    const delays = intFlag(flags, 'delays', DEFAULTS.delays, 0, 10)
    const metaserverPort = intFlag(flags, 'metaserverPort', DEFAULTS.metaserverPort, 0, 65535)
    const brokerPort = intFlag(flags, 'brokerPort', DEFAULTS.brokerPort, 0, 65000)
    const delayPort = intFlag(flags, 'delayPort', DEFAULTS.delayPort, 0, 65000)
    const verbose = flags.verbose === true
    const given = process.env[CLUSTER_SECRET_ENV]
    const secret = given !== undefined && given !== '' ? given : randomBytes(32).toString('hex')

    const slots: Slot[] = []
    const restartTimers = new Set<NodeJS.Timeout>()
    let stopping = false
    const stopAll = async () => {
      stopping = true
      for (const timer of restartTimers) clearTimeout(timer)
      const services = slots.filter((c) => c.name !== 'metaserver')
      await Promise.all(services.map((c) => stopChildService(c.child)))
      const meta = slots.find((c) => c.name === 'metaserver')
      if (meta) await stopChildService(meta.child)
    }
    // A service that dies is started again (same arguments and ports) after a backoff that doubles
    // while it keeps dying soon after its start, so a crash loop does not spin. Only a signal stops all.
    const supervise = (slot: Slot) => {
      const proc = slot.child.proc
      const onExit = (code: number | null, signal: NodeJS.Signals | null) => {
        if (stopping) return
        if (Date.now() - slot.startedAt >= STAYED_UP_MS) slot.nextBackoffMs = RESTART_FIRST_MS
        const wait = slot.nextBackoffMs
        slot.nextBackoffMs = Math.min(wait * 2, RESTART_MAX_MS)
        process.stderr.write(
          `qmq dev: ${slot.name} exited (${code ?? signal}); restarting in ${wait / 1000} s\n`,
        )
        const timer = setTimeout(() => {
          restartTimers.delete(timer)
          if (stopping) return
          startSlot(slot, verbose, secret)
          supervise(slot)
          started(slot).then(
            (info) =>
              process.stderr.write(
                `qmq dev: ${slot.name} restarted (${String(info.address ?? info.url ?? '')}, pid ${slot.child.proc.pid})\n`,
              ),
            (err: unknown) =>
              process.stderr.write(`qmq dev: ${slot.name} did not restart: ${(err as Error).message}\n`),
          )
        }, wait)
        restartTimers.add(timer)
      }
      if (proc.exitCode !== null || proc.signalCode !== null) onExit(proc.exitCode, proc.signalCode)
      else proc.once('exit', onExit)
    }
    // Handlers stay installed: a second Ctrl-C while stopping must not kill us before the services close.
    const signalled = new Promise<string>((r) => {
      let seen = false
      const onSignal = (sig: string) => {
        if (seen) process.stderr.write('qmq dev: already stopping the cluster, please wait\n')
        seen = true
        r(sig)
      }
      process.on('SIGINT', onSignal)
      process.on('SIGTERM', onSignal)
    })
    const slot = (name: string, portFlag: string, args: string[]): Slot =>
      startSlot({ name, portFlag, args, nextBackoffMs: RESTART_FIRST_MS }, verbose, secret)

    try {
      const meta = slot('metaserver', '--metaserver-port', [
        'metaserver',
        '--port',
        String(metaserverPort),
        '--data-dir',
        join(dataDir, 'metaserver'),
      ])
      slots.push(meta)
      const metaInfo = await Promise.race([started(meta), signalled.then(() => undefined)])
      if (metaInfo === undefined) {
        await stopAll()
        return 0
      }
      const metaUrl = String(metaInfo.url)
      meta.args = pinPorts(meta.args, portOf(metaUrl), undefined)
      // Group k of a kind listens on base + 10(k-1), its HTTP port one above.
      const group = (kind: 'broker' | 'delay', k: number, basePort: number): Slot => {
        const name = `${kind}-${k + 1}`
        const port = portPlus(basePort, 10 * k)
        const args = [kind, '--group', name, '--port', String(port), '--http-port', String(portPlus(port, 1))]
        args.push('--data-dir', join(dataDir, name), '--metaserver', metaUrl)
        return slot(name, `--${kind}-port`, args)
      }
      const services: Slot[] = [
        ...Array.from({ length: brokers }, (_, k) => group('broker', k, brokerPort)),
        ...Array.from({ length: delays }, (_, k) => group('delay', k, delayPort)),
      ]
      slots.push(...services)
      const infos = await Promise.race([
        Promise.all(services.map((s) => started(s))),
        signalled.then(() => undefined),
      ])
      if (infos === undefined) {
        await stopAll()
        return 0
      }
      services.forEach((s, i) => {
        const info = infos[i] ?? {}
        s.args = pinPorts(
          s.args,
          portOf(info.address),
          info.httpPort !== undefined ? String(info.httpPort) : portOf(info.httpAddress),
        )
      })
      const cluster = {
        metaAddress: `${metaUrl}/meta/address`,
        metaserver: metaUrl,
        /** `qmq dev` is for local development: no TLS, no application authentication. */
        auth: false,
        tls: false,
        metaserverPid: meta.child.proc.pid,
        dataDir,
        brokers: infos.slice(0, brokers).map((i, k) => ({
          group: i.group,
          address: i.address,
          httpAddress: i.httpAddress,
          pid: services[k]?.child.proc.pid,
        })),
        delays: infos.slice(brokers).map((i, k) => ({
          group: i.group,
          address: i.address,
          httpPort: i.httpPort,
          pid: services[brokers + k]?.child.proc.pid,
        })),
      }
      if (flags.json === true) process.stdout.write(`${JSON.stringify(cluster)}\n`)
      else {
        const lines = [
          'qmq local cluster is up:',
          `  metaserver   ${metaUrl}   (clients use ${cluster.metaAddress})`,
          `  console      ${metaUrl}/console/`,
          ...cluster.brokers.map(
            (b) => `  ${String(b.group).padEnd(12)} ${b.address}   metrics ${b.httpAddress ?? '-'}`,
          ),
          ...cluster.delays.map(
            (d) => `  ${String(d.group).padEnd(12)} ${d.address}   metrics port ${d.httpPort ?? '-'}`,
          ),
          `  data         ${dataDir}`,
          'Local development only: plain TCP/HTTP on loopback, no TLS and no application authentication',
          '(anyone on this machine can produce and consume). See docs/security.md for a secured cluster.',
          'Press Ctrl-C to stop.',
        ]
        process.stdout.write(`${lines.join('\n')}\n`)
      }
      for (const c of slots) supervise(c)
      await signalled
      process.stdout.write('stopping the local cluster...\n')
      await stopAll()
      process.stdout.write('stopped.\n')
      return 0
    } catch (err) {
      await stopAll()
      throw err
    }
  },
}
