import type { AddressInfo } from 'node:net'
import { type Clock, systemClock } from '../common/clock'
import { type OptionsSchema, resolveOptions } from '../common/config'
import { QmqError } from '../common/errors'
import { createLogger, type Logger } from '../common/logger'
import { MetaClient } from '../common/meta/meta-client'
import { missingClusterSecret } from '../common/token'
import type { ServerLoad } from '../common/meta/types'
import { createRegistry, type Registry } from '../common/metrics'
import { tcpServerOptions } from '../common/server/options'
import { TcpServer } from '../common/server/tcp-server'
import { Connection } from './server/connection'
import { createFrameHandler, type ServerContext } from './server/handlers'
import { BrokerHttpServer, type BrokerHealth } from './server/http-server'
import { LongPollRegistry } from './server/long-poll'
import { type HeartbeatClient, MetaHeartbeat } from './server/meta-heartbeat'
import { BrokerMetrics } from './server/metrics'
import { type BrokerServerOptions, brokerServerOptionsSchema } from './server/options'
import { createMessageStore } from './store/file-message-store'
import { type MessageStoreOptions, messageStoreOptionsSchema } from './store/options'
import type { MessageStore } from './store/types'

/**
 * An in-process broker: the TCP server of the qmq protocol over a MessageStore, an HTTP port for
 * /metrics and /health, and metaserver registration. Used by `qmq broker` and by tests and embedders:
 *
 *   const broker = new Broker({ port: 0, httpPort: 0, dataDir })
 *   const { port } = await broker.start()
 *   ...
 *   await broker.close()      // answers what is in flight, closes the store; start() again reopens it
 */
export type BrokerOptions = BrokerServerOptions & Omit<MessageStoreOptions, 'dataDir' | 'maxMessageBytes'>

/** Every option of a broker: its network side and its store, one flat schema (flags map onto it). */
export const brokerOptionsSchema: OptionsSchema<BrokerOptions> = {
  ...messageStoreOptionsSchema,
  ...brokerServerOptionsSchema,
}

const STORE_KEYS = Object.keys(messageStoreOptionsSchema) as (keyof MessageStoreOptions)[]

/** The store's share of the broker options. */
export function storeOptionsOf(options: Readonly<BrokerOptions>): MessageStoreOptions {
  const out: Record<string, unknown> = {}
  for (const k of STORE_KEYS) out[k] = (options as unknown as Record<string, unknown>)[k]
  return out as unknown as MessageStoreOptions
}

export interface StoreFactoryContext {
  options: MessageStoreOptions
  logger: Logger
  registry: Registry
  clock: Clock
}

export interface BrokerDeps {
  logger?: Logger
  /** Metrics registry; default: a fresh one for this broker. */
  registry?: Registry
  clock?: Clock
  /** Opens the store on the data dir (called on every start); default: the file store (src/broker/store). */
  createStore?: (ctx: StoreFactoryContext) => MessageStore
  /** Metaserver client; default: a MetaClient on `options.metaserver` when set. */
  metaClient?: HeartbeatClient & { close?(): Promise<void> }
}

function defaultStore(ctx: StoreFactoryContext): MessageStore {
  return createMessageStore({ ...ctx.options, clock: ctx.clock, logger: ctx.logger, registry: ctx.registry })
}

export interface BrokerAddresses {
  /** `host:port` clients connect to (what is registered with the metaserver). */
  address: string
  host: string
  port: number
  /** HTTP port of /metrics and /health, when enabled. */
  httpPort: number | undefined
  httpAddress: string | undefined
}

export class Broker {
  readonly options: Readonly<BrokerOptions>
  readonly registry: Registry
  readonly log: Logger
  private readonly deps: BrokerDeps
  private readonly clock: Clock
  private readonly metrics: BrokerMetrics
  private readonly readOnly = { all: false, subjects: new Set<string>() as ReadonlySet<string> }
  private readonly stats = { received: 0 }
  private store: MessageStore | undefined
  private polls = new LongPollRegistry()
  private tcp: TcpServer<Connection> | undefined
  private http: BrokerHttpServer | undefined
  private heartbeat: MetaHeartbeat | undefined
  private metaClient: (HeartbeatClient & { close?(): Promise<void> }) | undefined
  private unsubscribe: (() => void) | undefined
  private state: 'stopped' | 'starting' | 'running' | 'closing' = 'stopped'
  private startedAt = 0
  private boundPort: number | undefined
  private current: BrokerAddresses | undefined

  constructor(options: Partial<BrokerOptions> | Record<string, unknown> = {}, deps: BrokerDeps = {}) {
    this.options = resolveOptions('broker', brokerOptionsSchema, options)
    if (this.options.metaserver !== undefined && this.options.clusterSecret === undefined && !deps.metaClient)
      throw missingClusterSecret('broker', 'the metaserver refuses heartbeats without it')
    this.deps = deps
    this.clock = deps.clock ?? systemClock
    this.registry =
      deps.registry ??
      createRegistry({
        defaultLabels: { service: 'broker', group: this.options.group },
        processMetrics: true,
      })
    this.log = (deps.logger ?? createLogger()).child({ service: 'broker', group: this.options.group })
    this.metrics = new BrokerMetrics(this.registry, {
      backlog: () => this.store?.backlog() ?? [],
      waiters: () => this.polls.waiters,
      connections: () => this.tcp?.connectionCount ?? 0,
      tcp: () => this.tcp?.stats(),
    })
  }

  /** Addresses of the running broker. */
  get addresses(): BrokerAddresses {
    if (this.current === undefined) throw new QmqError('QMQ_ERR_SHUTTING_DOWN', 'broker is not running')
    return this.current
  }

  get isRunning(): boolean {
    return this.state === 'running'
  }

  /** The open store (for embedding and tests). */
  get messageStore(): MessageStore {
    if (this.store === undefined) throw new QmqError('QMQ_ERR_SHUTTING_DOWN', 'broker is not running')
    return this.store
  }

  /**
   * Opens the store (recovering it), then listens. After a close(), start() reopens the same data dir;
   * a broker that was on an OS-chosen port (port 0) asks for the same port again, so clients can
   * reconnect to the address they know.
   */
  async start(): Promise<BrokerAddresses> {
    if (this.state !== 'stopped') throw new QmqError('QMQ_ERR_INVALID_ARGUMENT', `broker is ${this.state}`)
    this.state = 'starting'
    const o = this.options
    try {
      // The store registers its metrics on every open: drop those of a previous run (restart).
      for (const m of this.registry.getMetricsAsArray()) {
        if (m.name.startsWith('qmq_store_')) this.registry.removeSingleMetric(m.name)
      }
      const createStore = this.deps.createStore ?? defaultStore
      const store = createStore({
        options: storeOptionsOf(o),
        logger: this.log.child({ component: 'store' }),
        registry: this.registry,
        clock: this.clock,
      })
      const report = await store.open()
      this.store = store
      this.log.info({ recovery: report }, 'store open')
      this.polls = new LongPollRegistry()
      const polls = this.polls
      this.unsubscribe = store.onAvailable((subject) => polls.notify(subject))

      const ctx: ServerContext = {
        store,
        metrics: this.metrics,
        polls,
        log: this.log,
        limits: { maxMessageBytes: o.maxMessageBytes, maxPullBytes: o.maxPullBytes, maxPollMs: o.maxPollMs },
        readOnly: this.readOnly,
        isClosing: () => this.state === 'closing',
        stats: this.stats,
        adminToken: o.adminToken === undefined ? undefined : Buffer.from(o.adminToken, 'utf8'),
        group: o.group,
      }
      const tcp = new TcpServer<Connection>(
        tcpServerOptions(o, o.port === 0 && this.boundPort !== undefined ? this.boundPort : o.port),
        {
          handle: createFrameHandler(ctx),
          onConnection: () => this.metrics.connectionsTotal.inc(),
          onProtocolError: (_c, err) => {
            if (err.code === 'QMQ_ERR_BAD_MAGIC' || err.code === 'QMQ_ERR_FRAME_TOO_LARGE') {
              this.metrics.protocolErrors.inc({ code: err.code })
            }
          },
          onClosedFor: (_c, reason) => this.metrics.connectionLoop.countClose(reason),
        },
        this.log,
        (socket, options, hooks, log, budget) => new Connection(socket, options, hooks, log, budget),
      )
      let tcpAddress: AddressInfo
      try {
        tcpAddress = await tcp.listen()
      } catch (err) {
        if (o.port !== 0 || this.boundPort === undefined) throw err
        // The previous port was taken meanwhile: any free port will do.
        this.boundPort = undefined
        return await this.retryStartOnAnyPort(store, err)
      }
      this.tcp = tcp
      this.boundPort = tcpAddress.port
      const host = o.advertisedHost ?? (o.host === '0.0.0.0' || o.host === '::' ? '127.0.0.1' : o.host)

      let httpPort: number | undefined
      let httpAddress: string | undefined
      if (o.httpPort >= 0) {
        const http = new BrokerHttpServer(this.registry, () => this.health(), this.log)
        const addr = await http.listen(o.httpHost, o.httpPort)
        this.http = http
        httpPort = addr.port
        // Announce an address others can reach: a wildcard bind is reached through the advertised host.
        const wildcard = o.httpHost === '0.0.0.0' || o.httpHost === '::'
        httpAddress = `${wildcard ? host : o.httpHost}:${addr.port}`
      }
      this.current = {
        address: `${host}:${tcpAddress.port}`,
        host,
        port: tcpAddress.port,
        httpPort,
        httpAddress,
      }

      this.metaClient =
        this.deps.metaClient ??
        (o.metaserver !== undefined
          ? new MetaClient({ url: o.metaserver, clusterSecret: o.clusterSecret })
          : undefined)
      if (this.metaClient !== undefined) {
        this.heartbeat = new MetaHeartbeat(
          this.metaClient,
          {
            group: o.group,
            role: o.role,
            address: this.current.address,
            httpAddress,
            intervalMs: o.heartbeatIntervalMs,
            load: () => this.load(),
            onReadOnly: (all, subjects) => {
              this.readOnly.all = all
              this.readOnly.subjects = new Set(subjects)
            },
          },
          this.log,
        )
        this.heartbeat.start()
      }
      this.startedAt = Date.now()
      this.state = 'running'
      this.log.info({ ...this.current }, 'broker listening')
      if (o.adminToken === undefined)
        this.log.warn(
          'no adminToken configured: cursor resets, dead-letter redrives and forget-group are not authenticated',
        )
      return this.current
    } catch (err) {
      this.state = 'running'
      await this.close().catch(() => {})
      throw err
    }
  }

  private async retryStartOnAnyPort(store: MessageStore, cause: unknown): Promise<BrokerAddresses> {
    this.log.warn({ err: String(cause) }, 'previous port is taken; listening on a new one')
    this.unsubscribe?.()
    await store.close()
    this.store = undefined
    this.state = 'stopped'
    return this.start()
  }

  private load(): ServerLoad {
    const store = this.store
    if (store === undefined) return {}
    let backlog = 0
    try {
      for (const b of store.backlog()) backlog += b.pending
    } catch {
      // a closing store: report without backlog
    }
    const seconds = Math.max(1, (Date.now() - this.startedAt) / 1000)
    return { subjects: store.subjects().length, backlog, messagesInPerSecond: this.stats.received / seconds }
  }

  private health(): BrokerHealth {
    const failure = this.state === 'running' ? this.store?.failure?.() : undefined
    return {
      status: this.state !== 'running' ? 'closing' : failure !== undefined ? 'failed' : 'ok',
      ...(failure !== undefined
        ? { reason: `${failure.code}: the ${failure.log} log failed closed: ${failure.message}` }
        : this.state !== 'running'
          ? { reason: `broker is ${this.state}` }
          : {}),
      group: this.options.group,
      role: this.options.role,
      address: this.current?.address ?? '',
      uptimeMs: this.startedAt === 0 ? 0 : Date.now() - this.startedAt,
      connections: this.tcp?.connectionCount ?? 0,
      subjects: this.store?.subjects().length ?? 0,
      longPollWaiters: this.polls.waiters,
      metaserver: {
        configured: this.heartbeat !== undefined,
        lastHeartbeatOkAt: this.heartbeat?.lastOkAt ?? 0,
        lastError: this.heartbeat?.lastError,
      },
    }
  }

  /**
   * Graceful close: refuses new SENDs, answers waiting long polls with an empty list, lets requests in
   * flight finish (up to closeTimeoutMs), says 'offline' to the metaserver, then closes the store.
   */
  async close(): Promise<void> {
    if (this.state === 'stopped' || this.state === 'closing') return
    this.state = 'closing'
    try {
      this.polls.close()
      if (this.tcp !== undefined) await this.tcp.close(this.options.closeTimeoutMs)
      this.tcp = undefined
      if (this.heartbeat !== undefined) await this.heartbeat.stop()
      this.heartbeat = undefined
      if (this.metaClient !== undefined && this.deps.metaClient === undefined) await this.metaClient.close?.()
      this.metaClient = undefined
      if (this.http !== undefined) await this.http.close()
      this.http = undefined
      this.unsubscribe?.()
      this.unsubscribe = undefined
      if (this.store !== undefined) await this.store.close()
      this.store = undefined
    } finally {
      this.current = undefined
      this.state = 'stopped'
    }
  }

  /** close() then start(): same data dir, same port. */
  async restart(): Promise<BrokerAddresses> {
    await this.close()
    return this.start()
  }
}
