import { join, resolve } from 'node:path'
import { type FlagSpec, flagsHelp, intFlag, parseArgs, stringFlag } from '../args'
import { type ChildService, startChildService, stopChildService } from '../child-service'
import type { Command } from './command'

/**
 * `qmq dev`: a local cluster as separate processes (the same `qmq metaserver|broker|delay` commands
 * an operator runs): one metaserver on SQLite, N broker groups and M delay groups, data under
 * --data-dir. Each child reports readiness with its "started" log line, which carries the addresses
 * it bound (so port 0 works). Ctrl-C (or SIGTERM) stops brokers and delay servers first, then the
 * metaserver, each with a clean close.
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
groups, with data under --data-dir. Stop it with Ctrl-C.

Options:
${flagsHelp(DEV_FLAGS)}`
}

function portPlus(base: number, k: number): number {
  return base === 0 ? 0 : base + k
}

function startChild(name: string, args: string[], verbose: boolean): ChildService {
  return startChildService(name, args, {
    startTimeoutMs: START_TIMEOUT_MS,
    onLine: (line, parsed) => {
      const level = typeof parsed?.level === 'string' ? parsed.level : 'warn'
      if (verbose || level === 'warn' || level === 'error' || level === 'fatal')
        process.stderr.write(`[${name}] ${line}\n`)
    },
  })
}

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

    const children: ChildService[] = []
    let stopping = false
    const stopAll = async () => {
      stopping = true
      const services = children.filter((c) => c.name !== 'metaserver')
      await Promise.all(services.map((c) => stopChildService(c)))
      const meta = children.find((c) => c.name === 'metaserver')
      if (meta) await stopChildService(meta)
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

    try {
      const meta = startChild(
        'metaserver',
        ['metaserver', '--port', String(metaserverPort), '--data-dir', join(dataDir, 'metaserver')],
        verbose,
      )
      children.push(meta)
      const metaInfo = await Promise.race([meta.started, signalled.then(() => undefined)])
      if (metaInfo === undefined) {
        await stopAll()
        return 0
      }
      const metaUrl = String(metaInfo.url)
      // Group k of a kind listens on base + 10(k-1), its HTTP port one above.
      const group = (kind: 'broker' | 'delay', k: number, basePort: number): ChildService => {
        const name = `${kind}-${k + 1}`
        const port = portPlus(basePort, 10 * k)
        const args = [kind, '--group', name, '--port', String(port), '--http-port', String(portPlus(port, 1))]
        args.push('--data-dir', join(dataDir, name), '--metaserver', metaUrl)
        return startChild(name, args, verbose)
      }
      const services: ChildService[] = [
        ...Array.from({ length: brokers }, (_, k) => group('broker', k, brokerPort)),
        ...Array.from({ length: delays }, (_, k) => group('delay', k, delayPort)),
      ]
      children.push(...services)
      const infos = await Promise.race([
        Promise.all(services.map((s) => s.started)),
        signalled.then(() => undefined),
      ])
      if (infos === undefined) {
        await stopAll()
        return 0
      }
      const cluster = {
        metaAddress: `${metaUrl}/meta/address`,
        metaserver: metaUrl,
        dataDir,
        brokers: infos
          .slice(0, brokers)
          .map((i) => ({ group: i.group, address: i.address, httpAddress: i.httpAddress })),
        delays: infos
          .slice(brokers)
          .map((i) => ({ group: i.group, address: i.address, httpPort: i.httpPort })),
      }
      if (flags.json === true) process.stdout.write(`${JSON.stringify(cluster)}\n`)
      else {
        const lines = [
          'qmq local cluster is up:',
          `  metaserver   ${metaUrl}   (clients use ${cluster.metaAddress})`,
          ...cluster.brokers.map(
            (b) => `  ${String(b.group).padEnd(12)} ${b.address}   metrics ${b.httpAddress ?? '-'}`,
          ),
          ...cluster.delays.map(
            (d) => `  ${String(d.group).padEnd(12)} ${d.address}   metrics port ${d.httpPort ?? '-'}`,
          ),
          `  data         ${dataDir}`,
          'Press Ctrl-C to stop.',
        ]
        process.stdout.write(`${lines.join('\n')}\n`)
      }
      // Run until a signal, or until a service dies on its own (then stop the rest and fail).
      const died = new Promise<string>((r) => {
        for (const c of children)
          c.proc.once('exit', (code, sig) => !stopping && r(`${c.name} exited (${code ?? sig})`))
      })
      const why = await Promise.race([signalled, died])
      if (why.startsWith('SIG')) {
        process.stdout.write('stopping the local cluster...\n')
        await stopAll()
        process.stdout.write('stopped.\n')
        return 0
      }
      process.stderr.write(`qmq dev: ${why}; stopping the others\n`)
      await stopAll()
      return 1
    } catch (err) {
      await stopAll()
      throw err
    }
  },
}
