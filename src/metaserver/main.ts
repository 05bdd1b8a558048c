import { randomUUID } from 'node:crypto'
import { mkdirSync } from 'node:fs'
import { createServer, type Server } from 'node:http'
import { createServer as createHttpsServer } from 'node:https'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { type Clock, systemClock } from '../common/clock'
import { CLUSTER_APP } from '../common/auth/credentials'
import { fsError, QmqError } from '../common/errors'
import { createLogger, type Logger } from '../common/logger'
import { Counter, createRegistry, Gauge, type Registry } from '../common/metrics'
import { ConsoleApi } from './console/api'
import { clientTlsOf, ServerTls, tlsEnabled } from '../common/tls'
import { createRequestHandler } from './http-server'
import { ClientAuth } from './client-auth'
import { type ResolvedMetaserverOptions, resolveMetaserverOptions } from './options'
import { QueryFanout } from './query-fanout'
import { MetaService } from './service'
import { PostgresMetaStore, redactUrl } from './postgres-store'
import { SqliteMetaStore } from './sqlite-store'
import type { MetaStore } from './store'

export {
  metaserverOptionsSchema,
  resolveMetaserverOptions,
  type MetaserverOptions,
  type ResolvedMetaserverOptions,
} from './options'
export { MetaService } from './service'
export { PostgresMetaStore } from './postgres-store'
export { SqliteMetaStore } from './sqlite-store'
export type { MetaStore } from './store'

export interface MetaserverDeps {
  clock?: Clock
  logger?: Logger
  /** Replaces the SQLite store at `dataDir/meta.db` (e.g. a shared PostgreSQL store). */
  store?: MetaStore
  registry?: Registry
  /**
   * Measure the store's clock and keep times on it (default true). Tests that drive time with a
   * ManualClock across restarts set false: their clock is then the only one.
   */
  storeClock?: boolean
}

/** Liveness sweep and client expiry run this often (ms): transitions are logged within it. */
const SWEEP_INTERVAL_MAX_MS = 1_000
/** A metaserver writes its row in the store this often (ms); rows older than META_TTL_MS are not listed. */
const META_BEAT_MS = 2_000
const META_TTL_MS = 3 * META_BEAT_MS
/** reloadIntervalMs 0 with a shared store means this (ms). */
const DEFAULT_SHARED_RELOAD_MS = 1_000
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
  private consoleApi: ConsoleApi | undefined
  private readonly storeGiven: MetaStore | undefined
  private readonly storeClock: boolean
  private store: MetaStore | undefined
  private svc: MetaService | undefined
  private fanout: QueryFanout | undefined
  private clientAuth: ClientAuth | undefined
  private server: Server | undefined
  private tls: ServerTls | undefined
  private sweepTimer: NodeJS.Timeout | undefined
  private reloadTimer: NodeJS.Timeout | undefined
  private beatTimer: NodeJS.Timeout | undefined
  private sweeping = false
  private beating = false
  /** This metaserver's row in the store's metaservers table. */
  private readonly id = randomUUID()
  private startedAt = 0
  private boundPort = 0
  private closing: Promise<void> | undefined

  constructor(input: unknown = {}, deps: MetaserverDeps = {}) {
    this.options = resolveMetaserverOptions(input)
    this.clock = deps.clock ?? systemClock
    this.log = (deps.logger ?? createLogger()).child({ service: 'metaserver' })
    this.registry =
      deps.registry ?? createRegistry({ defaultLabels: { service: 'metaserver' }, processMetrics: true })
    this.storeGiven = deps.store
    this.storeClock = deps.storeClock ?? true
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
    return `${tlsEnabled(this.options) ? 'https' : 'http'}://${host}:${this.boundPort}`
  }

  async start(): Promise<{ port: number; url: string }> {
    const o = this.options
    if (this.storeGiven !== undefined) this.store = this.storeGiven
    else if (o.store !== undefined && o.store !== '') {
      if (!/^postgres(ql)?:\/\//.test(o.store))
        throw new QmqError(
          'QMQ_ERR_CONFIG_INVALID',
          'metaserver store must be a postgres:// or postgresql:// URL (unset for SQLite in dataDir)',
        )
      this.store = await PostgresMetaStore.open(o.store)
    } else {
      try {
        mkdirSync(o.dataDir, { recursive: true })
      } catch (err) {
        throw fsError(err, `cannot create metaserver data dir ${o.dataDir}`)
      }
      this.store = new SqliteMetaStore(join(o.dataDir, 'meta.db'))
    }
    const store = this.store
    const svc = new MetaService(o, store, this.clock, this.log, this.storeClock)
    this.svc = svc
    // The metaserver's connections to brokers and delay servers (console, query fan-out) use the client
    // side of its TLS files and authenticate as the cluster app.
    const peerTls = clientTlsOf(o).tls
    if (o.console) this.consoleApi = new ConsoleApi(svc, o.clusterSecret, () => this.clock.now(), peerTls)
    try {
      await svc.load()
    } catch (err) {
      await store.close()
      throw err
    }
    this.registerMetrics(svc)

    this.fanout = new QueryFanout({
      tls: peerTls,
      auth: { appCode: CLUSTER_APP, token: o.clusterSecret },
      groups: () => svc.listGroups(),
      routeOf: (subject) => {
        try {
          return svc.getSubject(subject).groups
        } catch {
          return undefined
        }
      },
    })
    if (o.auth) {
      this.clientAuth = new ClientAuth(this.store.apps, o.clusterSecret, o.authRefreshMs, this.log)
      await this.clientAuth.start()
    }
    const handler = createRequestHandler({
      clientAuth: this.clientAuth,
      fanout: this.fanout,
      service: svc,
      log: this.log,
      registry: this.registry,
      maxBodyBytes: o.maxBodyBytes,
      adminToken: o.adminToken,
      clusterSecret: o.clusterSecret,
      apps: this.store.apps,
      clock: this.clock,
      addresses: () =>
        o.advertisedAddresses.length > 0 ? [...o.advertisedAddresses] : svc.metaserverUrls(this.selfUrl),
      startedAt: Date.now(),
      console: this.consoleApi,
    })
    const httpOptions = { keepAliveTimeout: 30_000, requestTimeout: 30_000 }
    let server: Server
    if (!tlsEnabled(o)) server = createServer(httpOptions, handler)
    else {
      const tls = new ServerTls(o, this.log)
      const s = createHttpsServer({ ...httpOptions, ...tls.options() }, handler)
      tls.attach(s)
      tls.watch()
      this.tls = tls
      server = s
    }
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

    this.startedAt = svc.now()
    await this.beat()
    this.beatTimer = setInterval(() => void this.beat(), META_BEAT_MS)
    this.beatTimer.unref()
    const sweepMs = Math.max(10, Math.min(SWEEP_INTERVAL_MAX_MS, Math.floor(o.heartbeatTimeoutMs / 4)))
    this.sweepTimer = setInterval(() => void this.sweep(), sweepMs)
    this.sweepTimer.unref()
    const reloadMs = o.reloadIntervalMs > 0 ? o.reloadIntervalMs : store.shared ? DEFAULT_SHARED_RELOAD_MS : 0
    if (reloadMs > 0) {
      let reloading = false
      this.reloadTimer = setInterval(() => {
        // One at a time (a slow or unreachable database must not pile them up). A failure is logged
        // once per outage by the service; the next reload tries again.
        if (reloading) return
        reloading = true
        svc
          .refresh()
          .catch(() => {})
          .finally(() => {
            reloading = false
          })
      }, reloadMs)
      this.reloadTimer.unref()
    }
    if (o.adminToken === undefined)
      this.log.warn('no adminToken configured: admin write endpoints are refused')
    this.log.info(
      {
        url: this.url,
        store: store.kind === 'postgres' && o.store !== undefined ? redactUrl(o.store) : o.dataDir,
        heartbeatTimeoutMs: o.heartbeatTimeoutMs,
      },
      'metaserver started',
    )
    return { port: this.boundPort, url: this.url }
  }

  private transitions: Counter<'to'> | undefined
  private failovers: Counter<'group'> | undefined

  /** The URL this metaserver registers in the store (advertisedUrl, else its bound address). */
  get selfUrl(): string {
    return this.options.advertisedUrl ?? this.url
  }

  /** Writes this metaserver's row and reads the live ones (the timer calls it; tests may too). */
  async beat(): Promise<void> {
    const svc = this.svc
    if (svc === undefined || this.closing !== undefined || this.beating) return
    this.beating = true
    await svc
      .beat({ id: this.id, url: this.selfUrl, startedAt: this.startedAt, lastSeenAt: 0 }, META_TTL_MS)
      .catch(() => {}) // the store down: logged once by the service; the last list stays
      .finally(() => {
        this.beating = false
      })
  }

  /** Runs the liveness sweep and client expiry once (the timer calls it; tests may too). */
  async sweep(): Promise<void> {
    const svc = this.svc
    if (svc === undefined || this.sweeping) return
    this.sweeping = true
    try {
      for (const group of await svc.sweepFailover()) this.failovers?.inc({ group })
    } catch (err) {
      this.log.error(err instanceof Error ? err : { err }, 'failover sweep failed')
    }
    try {
      for (const t of await svc.sweepLiveness()) this.transitions?.inc({ to: t.alive ? 'alive' : 'dead' })
      await svc.expireClients()
      await svc.expireSlaves()
    } catch (err) {
      if (!svc.storeDown) this.log.error(err instanceof Error ? err : { err }, 'sweep failed')
    } finally {
      this.sweeping = false
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
    new Gauge({
      name: 'qmq_metaserver_store_up',
      help: '1 while the metadata store answers, 0 while it is unreachable (routes from memory, changes refused)',
      registers,
      collect() {
        this.set(svc.storeDown ? 0 : 1)
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
      if (this.beatTimer !== undefined) clearInterval(this.beatTimer)
      this.clientAuth?.stop()
      // The console's broker connections first: its requests in flight fail fast instead of waiting.
      await this.consoleApi?.close()
      const server = this.server
      if (server !== undefined) {
        await new Promise<void>((resolve) => {
          server.close(() => resolve())
          server.closeIdleConnections()
          // Requests still running after a grace period are cut (their clients retry elsewhere).
          setTimeout(() => server.closeAllConnections(), CLOSE_GRACE_MS).unref()
        })
      }
      await this.svc?.leave(this.id).catch(() => {}) // else it drops out of the list after META_TTL_MS
      await this.fanout?.close()
      await this.store?.close()
      this.tls?.close()
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
