import { DelayTrace } from './trace'
import http from 'node:http'
import https from 'node:https'
import type { FsIo } from '../broker/store/fs-io'
import { type Clock, systemClock } from '../common/clock'
import { QmqError } from '../common/errors'
import { createLogger, type Logger } from '../common/logger'
import { MetaClient } from '../common/meta/meta-client'
import { clientTlsOf, ServerTls, tlsEnabled } from '../common/tls'
import { CLUSTER_APP, CredentialCache } from '../common/auth/credentials'
import { CredentialRefresher } from '../common/auth/refresher'
import { AuthGate } from '../common/server/auth-gate'
import { missingClusterSecret } from '../common/token'
import { createRegistry, type Registry, renderMetrics } from '../common/metrics'
import { validateGroup } from '../common/names'
import { tcpServerOptions } from '../common/server/options'
import { TcpServer } from '../common/server/tcp-server'
import { Dispatcher } from './dispatch/dispatcher'
import {
  BrokerSender,
  MetaRouteProvider,
  parseStaticRoutes,
  type RouteProvider,
  type Sender,
  StaticRouteProvider,
} from './dispatch/sender'
import { createDelayMetrics, type DelayMetrics } from './metrics'
import { type DelayOptions, resolveDelayOptions } from './options'
import { DelayStore } from './store/delay-store'
import { createDelayFrameHandler } from './tcp-handler'

export { delayOptionsSchema, type DelayOptions, resolveDelayOptions } from './options'

/**
 * The delay server: receives delayed messages over TCP (SEND, CANCEL, PING), stores them
 * (DelayStore), and when they are due sends them to their subject's broker groups (Dispatcher).
 * Registers with the metaserver as a group of kind 'delay' and heartbeats.
 *
 *   const server = new DelayServer({ port: 0, dataDir, metaserver: url })
 *   await server.start(); ... server.port ...; await server.close()
 *
 * A new DelayServer on the same dataDir resumes: pending messages are kept, delivered ones are not
 * sent again (except those delivered in the last checkpoint interval before a crash).
 */
export interface DelayServerDeps {
  clock?: Clock
  logger?: Logger
  registry?: Registry
  /** Replaces the TCP broker sender (tests). */
  sender?: Sender
  /** Routes when there is no metaserver, or to override it. */
  routes?: RouteProvider
  /** The store's fs layer for asynchronous fdatasyncs (tests inject I/O faults). */
  io?: FsIo
}

const LOADER_INTERVAL_MS = 200
const DEFAULT_HEARTBEAT_MS = 3_000

export class DelayServer {
  readonly options: Readonly<DelayOptions>
  readonly registry: Registry
  readonly metrics: DelayMetrics
  private readonly clock: Clock
  private readonly log: Logger
  private readonly deps: DelayServerDeps
  private tcp: TcpServer | undefined
  private tcpPort = 0
  private httpServer: http.Server | undefined
  private tls: ServerTls | undefined
  private refresher: CredentialRefresher | undefined
  private meta: MetaClient | undefined
  private sender: Sender | undefined
  private storeRef: DelayStore | undefined
  private trace: DelayTrace | undefined
  private dispatcherRef: Dispatcher | undefined
  private timers: NodeJS.Timeout[] = []
  private heartbeatTimer: NodeJS.Timeout | undefined
  private loadingNow = false
  private started = false
  private closing: Promise<void> | undefined
  private loadLabels = 0

  constructor(options: Partial<DelayOptions> = {}, deps: DelayServerDeps = {}) {
    this.options = resolveDelayOptions(options)
    validateGroup(this.options.group)
    if (this.options.metaserver !== undefined && this.options.clusterSecret === undefined)
      throw missingClusterSecret('delay server', 'the metaserver refuses heartbeats without it')
    if (this.options.auth && this.options.metaserver === undefined)
      throw new QmqError(
        'QMQ_ERR_CONFIG_INVALID',
        'Invalid delay options:\n  - auth: needs --metaserver and the cluster secret (the credentials come from the metaserver)',
      )
    this.deps = deps
    this.clock = deps.clock ?? systemClock
    this.log = (deps.logger ?? createLogger()).child({ service: 'delay', group: this.options.group })
    this.registry =
      deps.registry ??
      createRegistry({
        defaultLabels: { service: 'delay', group: this.options.group },
        processMetrics: true,
      })
    this.metrics = createDelayMetrics(this.registry, {
      store: () => this.storeRef,
      dispatcher: () => this.dispatcherRef,
      tcp: () => this.tcp?.stats(),
    })
  }

  get store(): DelayStore {
    if (this.storeRef === undefined) throw new QmqError('QMQ_ERR_INTERNAL', 'delay server not started')
    return this.storeRef
  }

  get dispatcher(): Dispatcher {
    if (this.dispatcherRef === undefined) throw new QmqError('QMQ_ERR_INTERNAL', 'delay server not started')
    return this.dispatcherRef
  }

  /** The bound TCP port. */
  get port(): number {
    return this.tcpPort
  }

  /** `host:port` announced to the metaserver and clients. */
  get address(): string {
    return this.options.advertisedAddress ?? `${this.options.host}:${this.port}`
  }

  get httpPort(): number {
    const a = this.httpServer?.address()
    return typeof a === 'object' && a !== null ? a.port : -1
  }

  async start(): Promise<void> {
    if (this.started) throw new QmqError('QMQ_ERR_INTERNAL', 'delay server already started')
    this.started = true
    const o = this.options
    const store = await DelayStore.open({
      dataDir: o.dataDir,
      clock: this.clock,
      log: this.log,
      bucketMinutes: o.bucketMinutes,
      horizonMs: o.horizonMs,
      loadAheadMs: o.loadAheadMs,
      tickMs: o.tickMs,
      wheelSize: o.wheelSize,
      segmentBytes: o.segmentBytes,
      maxMessageBytes: o.maxMessageBytes,
      fsync: o.fsync,
      io: this.deps.io,
    })
    this.storeRef = store
    const trace = await DelayTrace.open({ dataDir: o.dataDir, now: () => this.clock.now(), log: this.log })
    this.trace = trace
    store.onLoaded = (start, frames, ms) => {
      this.metrics.bucketLoad.observe(ms / 1000)
      if (++this.loadLabels > 48) {
        this.metrics.bucketLoadLast.reset()
        this.loadLabels = 1
      }
      this.metrics.bucketLoadLast.set({ bucket: new Date(start).toISOString() }, ms / 1000)
      this.log.info(
        { bucket: new Date(start).toISOString(), frames, ms: Math.round(ms) },
        'bucket loaded into the wheel',
      )
    }
    for (const r of store.recoveryReports) this.log.warn(r, 'recovery dropped data')

    if (o.metaserver !== undefined)
      this.meta = new MetaClient({ url: o.metaserver, clusterSecret: o.clusterSecret, ...clientTlsOf(o) })
    if (tlsEnabled(o)) {
      this.tls = new ServerTls(o, this.log)
      this.tls.watch()
    }
    let routes = this.deps.routes
    if (routes === undefined && o.brokers !== undefined)
      routes = new StaticRouteProvider(parseStaticRoutes(o.brokers))
    if (routes === undefined && this.meta !== undefined) {
      routes = new MetaRouteProvider(this.meta, o.routeTtlMs, `delay:${o.group}`)
    }
    this.sender =
      this.deps.sender ??
      new BrokerSender({
        routes: routes ?? {
          groups: async () => {
            throw new QmqError(
              'QMQ_ERR_NO_ROUTE',
              'delay server has neither a metaserver nor --brokers routes',
            )
          },
        },
        timeoutMs: o.sendTimeoutMs,
        log: this.log,
        maxFrameBytes: o.maxFrameBytes,
        ...clientTlsOf(o),
        ...(o.clusterSecret !== undefined ? { auth: { appCode: CLUSTER_APP, token: o.clusterSecret } } : {}),
      })
    this.dispatcherRef = new Dispatcher({
      store,
      sender: this.sender,
      clock: this.clock,
      log: this.log,
      batch: o.dispatchBatch,
      inFlight: o.dispatchInFlight,
      retryInitialMs: o.retryInitialMs,
      retryMaxMs: o.retryMaxMs,
      onDelivered: (lateMs, record, sentAt) => {
        trace.dispatched(record, sentAt)
        this.metrics.dispatched.inc()
        this.metrics.lateness.observe(Math.max(0, lateMs) / 1000)
      },
      onFailed: (_subject, _err, n) => this.metrics.dispatchFailures.inc(n),
      onTickError: () => this.metrics.tickErrors.inc(),
      onParked: (_subject, _err, record) => {
        trace.parked(record)
        this.metrics.deadLettered.inc()
      },
    })

    // The connection loop shared with the broker (common/server/): in-flight bound, write high-water
    // mark, first-frame, idle and frame deadlines, partial-frame budget.
    const handle = createDelayFrameHandler({
      store,
      metrics: this.metrics,
      log: this.log,
      maxMessageBytes: o.maxMessageBytes,
      clusterSecret: o.clusterSecret === undefined ? undefined : Buffer.from(o.clusterSecret, 'utf8'),
      trace,
      group: o.group,
      auth: undefined,
    })
    let gate: AuthGate | undefined
    if (o.auth && this.meta !== undefined) {
      gate = new AuthGate(
        new CredentialCache(o.clusterSecret === undefined ? undefined : Buffer.from(o.clusterSecret, 'utf8')),
        this.log,
        this.registry,
        'qmq_delay',
      )
      handle.context.auth = gate
      this.refresher = new CredentialRefresher(this.meta, gate.cache, o.authRefreshMs, this.log)
      await this.refresher.start()
    }
    if (o.clusterSecret === undefined)
      this.log.warn('no clusterSecret configured: CANCEL and the dead-letter requests are refused')
    const tcp = new TcpServer(
      tcpServerOptions(o, o.port, this.tls),
      {
        handle: gate === undefined ? handle.handle : gate.wrap(handle.handle),
        onClosedFor: (_c, reason) => this.metrics.connectionLoop.countClose(reason),
        onTlsError: () => this.metrics.connectionLoop.tlsHandshakeFailures.inc(),
      },
      this.log,
    )
    this.tcpPort = (await tcp.listen()).port
    this.tcp = tcp
    if (o.httpPort >= 0) await this.startHttp()

    this.timers.push(setInterval(() => this.dispatcherRef?.tick(), o.tickMs))
    this.timers.push(setInterval(() => this.loadBuckets(), LOADER_INTERVAL_MS))
    this.timers.push(
      setInterval(() => {
        this.storeRef?.checkpoint().catch((err: unknown) => this.log.error({ err }, 'checkpoint failed'))
      }, o.checkpointIntervalMs),
    )
    for (const t of this.timers) t.unref()
    this.dispatcherRef.tick()
    if (this.meta !== undefined) await this.heartbeat(true)
    // Like the brokers' start line: where its /metrics is (when the HTTP server runs).
    const httpAddress = this.httpServer ? `${this.options.host}:${this.httpPort}` : undefined
    this.log.info(
      {
        address: this.address,
        dataDir: o.dataDir,
        ...(httpAddress ? { httpAddress, metrics: `http://${httpAddress}/metrics` } : {}),
      },
      'delay server started',
    )
  }

  private loadBuckets(): void {
    if (this.loadingNow || this.storeRef === undefined) return
    this.loadingNow = true
    this.storeRef
      .loadDue()
      .catch((err: unknown) => this.log.error({ err }, 'bucket load failed'))
      .finally(() => {
        this.loadingNow = false
      })
  }

  /** Sends one heartbeat and schedules the next. The first one failing does not stop the start. */
  private async heartbeat(first = false): Promise<void> {
    const meta = this.meta
    if (meta === undefined || this.closing !== undefined) return
    let nextMs = DEFAULT_HEARTBEAT_MS
    try {
      const stats = this.storeRef?.stats()
      const res = await meta.heartbeat({
        group: this.options.group,
        kind: 'delay',
        role: 'master',
        address: this.address,
        ...(this.httpServer ? { httpAddress: `${this.options.host}:${this.httpPort}` } : {}),
        load: { backlog: stats?.pending ?? 0 },
      })
      nextMs = res.heartbeatIntervalMs
    } catch (err) {
      nextMs = 1_000
      this.log[first ? 'warn' : 'debug']({ err }, 'metaserver heartbeat failed')
    }
    if (this.closing !== undefined) return
    this.heartbeatTimer = setTimeout(() => void this.heartbeat(), nextMs)
    this.heartbeatTimer.unref()
  }

  private async startHttp(): Promise<void> {
    const handler: http.RequestListener = (req, res) => {
      const url = req.url ?? '/'
      if (req.method === 'GET' && url.startsWith('/metrics')) {
        renderMetrics(this.registry).then(
          ({ contentType, body }) => {
            res.writeHead(200, { 'content-type': contentType })
            res.end(body)
          },
          (err: unknown) => {
            res.writeHead(500)
            res.end(String(err))
          },
        )
        return
      }
      if (req.method === 'GET' && url.startsWith('/health')) {
        const stats = this.storeRef?.stats()
        const failure = this.storeRef?.failure()
        const status = failure !== undefined ? 'failed' : 'ok'
        const reason = failure !== undefined ? { reason: `${failure.code}: ${failure.message}` } : {}
        res.writeHead(failure !== undefined ? 503 : 200, { 'content-type': 'application/json' })
        res.end(
          JSON.stringify({ status, ...reason, group: this.options.group, address: this.address, ...stats }),
        )
        return
      }
      res.writeHead(404, { 'content-type': 'application/json' })
      res.end(JSON.stringify(new QmqError('QMQ_ERR_NOT_FOUND', `no such path ${url}`).toJSON()))
    }
    const tls = this.tls
    let server: http.Server
    if (tls === undefined) server = http.createServer(handler)
    else {
      const s = https.createServer(tls.options(), handler)
      tls.attach(s)
      server = s
    }
    this.httpServer = server
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(this.options.httpPort, this.options.host, () => {
        server.off('error', reject)
        resolve()
      })
    })
  }

  /** Stops taking requests, lets in-flight dispatches settle, syncs everything. Idempotent. */
  close(): Promise<void> {
    this.closing ??= this.doClose()
    return this.closing
  }

  private async doClose(): Promise<void> {
    for (const t of this.timers) clearInterval(t)
    this.timers = []
    this.refresher?.stop()
    if (this.heartbeatTimer) clearTimeout(this.heartbeatTimer)
    // Requests in flight (SENDs being stored) answer first, up to closeTimeoutMs.
    await this.tcp?.close(this.options.closeTimeoutMs)
    if (this.httpServer !== undefined) {
      const h = this.httpServer
      h.closeAllConnections()
      await new Promise<void>((resolve) => h.close(() => resolve()))
    }
    await this.dispatcherRef?.close()
    await this.sender?.close()
    await this.storeRef?.close()
    await this.trace?.close()
    this.tls?.close()
    if (this.meta !== undefined) {
      await this.meta
        .heartbeat({
          group: this.options.group,
          kind: 'delay',
          role: 'master',
          address: this.address,
          state: 'offline',
        })
        .catch(() => {})
      await this.meta.close()
    }
    this.log.info('delay server closed')
  }
}
