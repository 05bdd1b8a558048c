import { mkdirSync } from 'node:fs'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { type Clock, systemClock } from '../common/clock'
import { fsError } from '../common/errors'
import { createLogger, type Logger } from '../common/logger'
import { Counter, createRegistry, Gauge, type Registry } from '../common/metrics'
import { createRequestHandler } from './http-server'
import { type ResolvedMetaserverOptions, resolveMetaserverOptions } from './options'
import { MetaService } from './service'
import { SqliteMetaStore } from './sqlite-store'
import type { MetaStore } from './store'

export {
  metaserverOptionsSchema,
  resolveMetaserverOptions,
  type MetaserverOptions,
  type ResolvedMetaserverOptions,
} from './options'
export { MetaService } from './service'
export { SqliteMetaStore } from './sqlite-store'
export type { MetaStore } from './store'

export interface MetaserverDeps {
  clock?: Clock
  logger?: Logger
  /** Replaces the SQLite store at `dataDir/meta.db` (e.g. a shared PostgreSQL store). */
  store?: MetaStore
  registry?: Registry
}

/** Liveness sweep and client expiry run this often (ms): transitions are logged within it. */
const SWEEP_INTERVAL_MAX_MS = 1_000
/** close() waits this long (ms) for requests in flight before cutting connections. */
const CLOSE_GRACE_MS = 2_000

/**
 * A metaserver: HTTP API + store. `new Metaserver(options).start()` -> { port }; `close()` stops it.
 * Options are validated by resolveMetaserverOptions (unknown keys are rejected with hints).
 */
export class Metaserver {
  readonly options: ResolvedMetaserverOptions
  readonly registry: Registry
  readonly log: Logger
  private readonly clock: Clock
  private readonly storeGiven: MetaStore | undefined
  private store: MetaStore | undefined
  private svc: MetaService | undefined
  private server: Server | undefined
  private sweepTimer: NodeJS.Timeout | undefined
  private reloadTimer: NodeJS.Timeout | undefined
  private boundPort = 0
  private closing: Promise<void> | undefined

  constructor(input: unknown = {}, deps: MetaserverDeps = {}) {
    this.options = resolveMetaserverOptions(input)
    this.clock = deps.clock ?? systemClock
    this.log = (deps.logger ?? createLogger()).child({ service: 'metaserver' })
    this.registry =
      deps.registry ?? createRegistry({ defaultLabels: { service: 'metaserver' }, processMetrics: true })
    this.storeGiven = deps.store
  }

  /** The service (for in-process tests and the web console). */
  get service(): MetaService {
    if (this.svc === undefined) throw new Error('metaserver is not started')
    return this.svc
  }

  get port(): number {
    return this.boundPort
  }

  /** This server's own base URL. */
  get url(): string {
    const host = this.options.host.includes(':') ? `[${this.options.host}]` : this.options.host
    return `http://${host}:${this.boundPort}`
  }

  async start(): Promise<{ port: number; url: string }> {
    const o = this.options
    if (this.storeGiven !== undefined) this.store = this.storeGiven
    else {
      try {
        mkdirSync(o.dataDir, { recursive: true })
      } catch (err) {
        throw fsError(err, `cannot create metaserver data dir ${o.dataDir}`)
      }
      this.store = new SqliteMetaStore(join(o.dataDir, 'meta.db'))
    }
    const svc = new MetaService(o, this.store, this.clock, this.log)
    this.svc = svc
    await svc.load()
    this.registerMetrics(svc)

    const handler = createRequestHandler({
      service: svc,
      log: this.log,
      registry: this.registry,
      maxBodyBytes: o.maxBodyBytes,
      adminToken: o.adminToken,
      clusterSecret: o.clusterSecret,
      addresses: () => (o.advertisedAddresses.length > 0 ? [...o.advertisedAddresses] : [this.url]),
      startedAt: Date.now(),
    })
    const server = createServer({ keepAliveTimeout: 30_000, requestTimeout: 30_000 }, handler)
    this.server = server
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(o.port, o.host, () => {
        server.off('error', reject)
        resolve()
      })
    }).catch(async (err) => {
      await this.store?.close()
      throw err
    })
    this.boundPort = (server.address() as AddressInfo).port

    const sweepMs = Math.max(10, Math.min(SWEEP_INTERVAL_MAX_MS, Math.floor(o.heartbeatTimeoutMs / 4)))
    this.sweepTimer = setInterval(() => this.sweep(), sweepMs)
    this.sweepTimer.unref()
    if (o.reloadIntervalMs > 0) {
      this.reloadTimer = setInterval(() => {
        svc
          .refresh()
          .catch((err: unknown) =>
            this.log.error(err instanceof Error ? err : { err }, 'reload from store failed'),
          )
      }, o.reloadIntervalMs)
      this.reloadTimer.unref()
    }
    if (o.adminToken === undefined)
      this.log.warn('no adminToken configured: admin write endpoints are refused')
    this.log.info(
      { url: this.url, dataDir: o.dataDir, heartbeatTimeoutMs: o.heartbeatTimeoutMs },
      'metaserver started',
    )
    return { port: this.boundPort, url: this.url }
  }

  private transitions: Counter<'to'> | undefined
  private failovers: Counter<'group'> | undefined

  /** Runs the liveness sweep and client expiry once (the timer calls it; tests may too). */
  async sweep(): Promise<void> {
    const svc = this.svc
    if (svc === undefined) return
    for (const t of svc.sweepLiveness()) this.transitions?.inc({ to: t.alive ? 'alive' : 'dead' })
    try {
      for (const group of await svc.sweepFailover()) this.failovers?.inc({ group })
    } catch (err) {
      this.log.error(err instanceof Error ? err : { err }, 'failover sweep failed')
    }
    try {
      await svc.expireClients()
    } catch (err) {
      this.log.error(err instanceof Error ? err : { err }, 'client expiry failed')
    }
  }

  private registerMetrics(svc: MetaService): void {
    const registers = [this.registry]
    new Gauge({
      name: 'qmq_metaserver_groups',
      help: 'Registered groups by kind',
      labelNames: ['kind'],
      registers,
      collect() {
        const c = svc.counts()
        this.set({ kind: 'broker' }, c.groups.broker)
        this.set({ kind: 'delay' }, c.groups.delay)
      },
    })
    new Gauge({
      name: 'qmq_metaserver_groups_alive',
      help: 'Groups whose master heartbeated within heartbeatTimeoutMs, by kind',
      labelNames: ['kind'],
      registers,
      collect() {
        const c = svc.counts()
        this.set({ kind: 'broker' }, c.alive.broker)
        this.set({ kind: 'delay' }, c.alive.delay)
      },
    })
    new Gauge({
      name: 'qmq_metaserver_subjects',
      help: 'Subjects with a stored route',
      registers,
      collect() {
        this.set(svc.counts().subjects)
      },
    })
    new Gauge({
      name: 'qmq_metaserver_clients_online',
      help: 'Client registry entries seen within clientTimeoutMs',
      registers,
      collect() {
        this.set(svc.counts().clients)
      },
    })
    new Counter({
      name: 'qmq_metaserver_route_assignments_total',
      help: 'Subjects placed on groups for the first time',
      registers,
      collect() {
        this.reset()
        this.inc(svc.assignments)
      },
    })
    this.failovers = new Counter({
      name: 'qmq_metaserver_failovers_total',
      help: 'Slaves promoted to master (automatic and qmq failover), by group',
      labelNames: ['group'],
      registers,
    })
    this.transitions = new Counter({
      name: 'qmq_metaserver_group_transitions_total',
      help: 'Group liveness changes seen by the sweep, by new state',
      labelNames: ['to'],
      registers,
    })
  }

  async close(): Promise<void> {
    if (this.closing !== undefined) return this.closing
    this.closing = (async () => {
      if (this.sweepTimer !== undefined) clearInterval(this.sweepTimer)
      if (this.reloadTimer !== undefined) clearInterval(this.reloadTimer)
      const server = this.server
      if (server !== undefined) {
        await new Promise<void>((resolve) => {
          server.close(() => resolve())
          server.closeIdleConnections()
          // Requests still running after a grace period are cut (their clients retry elsewhere).
          setTimeout(() => server.closeAllConnections(), CLOSE_GRACE_MS).unref()
        })
      }
      await this.store?.close()
      this.log.info('metaserver stopped')
    })()
    return this.closing
  }
}

/** Starts a metaserver; resolves once it listens. */
export async function startMetaserver(input: unknown = {}, deps: MetaserverDeps = {}): Promise<Metaserver> {
  const m = new Metaserver(input, deps)
  await m.start()
  return m
}
