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
import { createRegistry, NO_LABELS, type Registry, renderMetrics } from '../common/metrics'
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
import { createDelayFrameHandler, type HandlerContext } from './tcp-handler'
import path from 'node:path'
import { Counter, Gauge } from 'prom-client'
import { type EpochState, readEpochs } from '../broker/replication/epochs'
import { refusedChunksCounter } from '../broker/replication/chunk-verifier'
import { type FollowerStatus, ReplicationFollower } from '../broker/replication/follower'
import { InSyncReport } from '../broker/replication/in-sync-report'
import { MasterLease } from '../broker/replication/lease'
import { beginMasterTerm, type SlaveStatus, ReplicationSource } from '../broker/replication/source'
import { MetaHeartbeat } from '../broker/server/meta-heartbeat'
import type { ServerHeartbeatResponse, ServerReplication } from '../common/meta/types'
import { RequestCode } from '../common/protocol/codes'
import type { Frame } from '../common/protocol/frame'
import type { ResponseBody, ServerConnection } from '../common/server/connection'
import { type DelayMirrorStatus, DelayMirror, forgetMirror } from './replication/mirror'
import { DelayReplicationSource } from './replication/source'
import { MESSAGE_DIR, TOMBSTONE_MARGIN_MS } from './store/delay-store'
import { checkRecord } from './store/message-log'
import { copyKeepFrom, type DelayDedupeOptions } from './store/dedupe-window'

/** /health's `replication`: a master's view of its slaves, or a slave's progress. */
export type DelayReplicationHealth =
  | {
      role: 'master' | 'slave'
      epoch: number
      mode: 'sync' | 'async'
      requiresSlave: boolean
      degraded: boolean
      inSync: boolean
      /** Per slave, besides its message-log copy: the checkpoint whose files it holds (-1: none). */
      slaves: (SlaveStatus & { checkpoint: number })[]
    }
  | {
      role: 'slave'
      epoch: number
      slave: FollowerStatus
      copy: DelayMirrorStatus | undefined
      /** False while a promotion would lose data (refused); the reason in `notPromotableReason`. */
      promotable: boolean
      notPromotableReason?: string
      /** The highest epoch whose promotion it refused (0: none). */
      refusedEpoch: number
    }

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
  private heartbeatLoop: MetaHeartbeat | undefined
  private gate: AuthGate | undefined
  private handlerContext: HandlerContext | undefined
  private masterHandle: ((f: Frame, c: ServerConnection) => Promise<ResponseBody>) | undefined
  /** The role now: the configured one until the metaserver promotes or demotes this server. */
  private role: 'master' | 'slave'
  private epochs: EpochState = { epoch: 0, history: [] }
  private readonly lease = new MasterLease()
  /** The in-sync set of the heartbeat in flight, handed to the source once answered. */
  private readonly inSyncReport = new InSyncReport()
  /** Promoted to this epoch: recorded (with the message log's end) once the store is open. */
  private promotedTo: number | undefined
  /**
   * The highest epoch whose promotion this server refused (0: none). It never serves that epoch or an
   * earlier one afterwards, and says so in its heartbeats, so the metaserver may give the epoch up.
   */
  private refusedEpoch = 0
  private switching: Promise<void> | undefined
  private replication: ReplicationSource | undefined
  private delayReplication: DelayReplicationSource | undefined
  private follower: ReplicationFollower | undefined
  private mirror: DelayMirror | undefined
  private readonly roleChanges: Counter<'to'>
  private refusedChunks: Counter<'log' | 'outcome'> | undefined
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
    this.role = this.options.role
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
    this.roleChanges = this.registerReplicationMetrics()
  }

  /** Replication gauges (the broker's names, docs/replication.md), read from the live state at each scrape. */
  private registerReplicationMetrics(): Counter<'to'> {
    const registers = [this.registry]
    const self = this
    new Gauge({
      name: 'qmq_replication_epoch',
      help: 'Epoch this server acts in (grows with every promotion in its group)',
      registers,
      collect() {
        this.set(self.epochs.epoch)
      },
    })
    new Gauge({
      name: 'qmq_replication_is_master',
      help: '1 while this server is its group master, 0 while it is a slave',
      registers,
      collect() {
        this.set(self.role === 'master' ? 1 : 0)
      },
    })
    new Gauge({
      name: 'qmq_replication_lag_bytes',
      help: 'Message-log bytes a slave is behind its master (a master: per slave)',
      labelNames: ['slave'],
      registers,
      collect() {
        this.reset()
        const f = self.follower?.status()
        if (f !== undefined) {
          this.set({ slave: self.address }, Math.max(0, f.masterMessageEnd - f.messageOffset))
          return
        }
        for (const x of self.replication?.status() ?? []) this.set({ slave: x.id }, x.lagBytes)
      },
    })
    this.refusedChunks = refusedChunksCounter(registers)
    return new Counter({
      name: 'qmq_replication_role_changes_total',
      help: 'Promotions and demotions of this server by the metaserver, by new role',
      labelNames: ['to'],
      registers,
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
    if (o.role === 'slave' && o.clusterSecret === undefined)
      throw missingClusterSecret('delay server', 'a slave authenticates to its master with it')
    if (o.role === 'slave' && o.masterAddress === undefined && o.metaserver === undefined)
      throw new QmqError(
        'QMQ_ERR_CONFIG_INVALID',
        'a slave needs --metaserver (or --master-address) to find its master',
      )
    if (o.metaserver !== undefined)
      this.meta = new MetaClient({ url: o.metaserver, clusterSecret: o.clusterSecret, ...clientTlsOf(o) })
    if (tlsEnabled(o)) {
      this.tls = new ServerTls(o, this.log)
      this.tls.watch()
    }
    if (this.role === 'master') await this.openMaster()

    // The connection loop shared with the broker (common/server/): in-flight bound, write high-water
    // mark, first-frame, idle and frame deadlines, partial-frame budget. The handler is the role's.
    const handle = (f: Frame, c: ServerConnection) => this.handle(f, c)
    if (o.auth && this.meta !== undefined) {
      this.gate = new AuthGate(
        new CredentialCache(o.clusterSecret === undefined ? undefined : Buffer.from(o.clusterSecret, 'utf8')),
        this.log,
        this.registry,
        'qmq_delay',
      )
      if (this.handlerContext !== undefined) this.handlerContext.auth = this.gate
      this.refresher = new CredentialRefresher(this.meta, this.gate.cache, o.authRefreshMs, this.log)
      await this.refresher.start()
    }
    if (o.clusterSecret === undefined)
      this.log.warn('no clusterSecret configured: CANCEL and the dead-letter requests are refused')
    const gate = this.gate
    const tcp = new TcpServer(
      tcpServerOptions(o, o.port, this.tls),
      {
        handle: gate === undefined ? handle : gate.wrap(handle),
        onClosedFor: (_c, reason) => this.metrics.connectionLoop.countClose(reason),
        onTlsError: () => this.metrics.connectionLoop.tlsHandshakeFailures.inc(),
      },
      this.log,
    )
    this.tcpPort = (await tcp.listen()).port
    this.tcp = tcp
    if (o.httpPort >= 0) await this.startHttp()
    if (this.role === 'slave') await this.openSlave()
    if (this.meta !== undefined) await this.startHeartbeat()
    // Like the brokers' start line: where its /metrics is (when the HTTP server runs).
    const httpAddress = this.httpServer ? `${this.options.host}:${this.httpPort}` : undefined
    this.log.info(
      {
        address: this.address,
        dataDir: o.dataDir,
        role: this.role,
        epoch: this.epochs.epoch,
        ...(httpAddress ? { httpAddress, metrics: `http://${httpAddress}/metrics` } : {}),
      },
      'delay server started',
    )
  }

  /** The role's request handler: a slave answers PING and refuses the rest (retriable). */
  private handle(f: Frame, c: ServerConnection): Promise<ResponseBody> {
    const h = this.masterHandle
    if (h !== undefined) return h(f, c)
    if (f.code === RequestCode.PING) return Promise.resolve([])
    return Promise.reject(new QmqError('QMQ_ERR_NOT_MASTER', 'this delay server is a slave'))
  }

  /**
   * Opens the store and starts dispatching (a master, or a slave the metaserver promoted: the store's
   * ordinary recovery replays the copied message log from the adopted checkpoint).
   */
  private async openMaster(): Promise<void> {
    const o = this.options
    this.epochs = readEpochs(o.dataDir)
    forgetMirror(o.dataDir)
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
      dedupe: this.dedupeOptions(),
    })
    this.storeRef = store
    if (this.promotedTo !== undefined) {
      // The new epoch begins where the copied message log ends after recovery (broker/replication/epochs.ts).
      const start = {
        epoch: this.promotedTo,
        messageOffset: store.messageSegmentLog?.endOffset ?? 0,
        actionOffset: 0,
      }
      // A new term starts with no known slave and a new run (as the broker's, broker.ts): the cancel
      // sequence, ring and slaves' adopted checkpoints of an earlier term are not this one's; a new
      // runId tells the slaves to copy the cancels and the dead-letter log afresh.
      this.epochs = beginMasterTerm(o.dataDir, this.epochs, start)
      this.replication?.close()
      this.replication = undefined
      this.delayReplication?.detach()
      this.delayReplication = undefined
      this.log.warn({ ...start }, 'promoted: this delay server is the master of a new epoch')
      this.promotedTo = undefined
    }
    const segLog = store.messageSegmentLog
    if (segLog !== undefined) {
      this.replication ??= new ReplicationSource(
        {
          mode: o.replication,
          ackTimeoutMs: o.replicationAckTimeoutMs,
          inSyncLagMs: o.replicationInSyncLagMs,
          degradedWrites: o.degradedWrites,
          stateDir: path.join(o.dataDir, 'replication'),
          epoch: () => this.epochs.epoch,
          history: () => this.epochs.history,
          slaveReady: (id) => this.delayReplication?.ready(id) ?? false,
          requestReport: () => this.heartbeatLoop?.reportNow(),
        },
        this.log,
      )
      this.delayReplication ??= new DelayReplicationSource({
        logs: this.replication,
        dataDir: o.dataDir,
        bucketMinutes: o.bucketMinutes,
        inSyncLagMs: o.replicationInSyncLagMs,
        ackTimeoutMs: o.replicationAckTimeoutMs,
      })
      this.replication.attach({ message: segLog, checkpointFile: path.join(o.dataDir, 'checkpoint.json') })
      this.delayReplication.attach(store)
    }
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
        this.metrics.dispatched.inc(NO_LABELS)
        this.metrics.lateness.observe(Math.max(0, lateMs) / 1000)
      },
      onFailed: (_subject, _err, n) => this.metrics.dispatchFailures.inc(n),
      onTickError: () => this.metrics.tickErrors.inc(),
      onParked: (_subject, _err, record) => {
        trace.parked(record)
        this.metrics.deadLettered.inc()
      },
    })
    const { handle, context } = createDelayFrameHandler({
      store,
      metrics: this.metrics,
      log: this.log,
      maxMessageBytes: o.maxMessageBytes,
      clusterSecret: o.clusterSecret === undefined ? undefined : Buffer.from(o.clusterSecret, 'utf8'),
      trace,
      group: o.group,
      auth: this.gate,
      replication:
        this.replication !== undefined && this.delayReplication !== undefined
          ? { logs: this.replication, delay: this.delayReplication }
          : undefined,
      checkLease: () => this.checkLease(),
    })
    this.handlerContext = context
    this.masterHandle = handle

    this.timers.push(setInterval(() => this.tick(), o.tickMs))
    this.timers.push(setInterval(() => this.loadBuckets(), LOADER_INTERVAL_MS))
    this.timers.push(
      setInterval(() => {
        this.storeRef?.checkpoint().catch((err: unknown) => this.log.error({ err }, 'checkpoint failed'))
      }, o.checkpointIntervalMs),
    )
    for (const t of this.timers) t.unref()
    this.tick()
  }

  /**
   * Dispatches due messages, only while this server may act as master: a replicated master that does
   * not hold its lease (a former master back before the metaserver demoted it, or one cut off) sends
   * nothing; the promoted slave may hold tombstones of cancels it never saw.
   */
  private tick(): void {
    if (this.dispatcherRef === undefined || !this.holdsLease()) return
    this.dispatcherRef.tick()
  }

  private holdsLease(): boolean {
    try {
      this.checkLease()
      return true
    } catch {
      return false
    }
  }

  /** Stops dispatching and closes the store (a master told to step down, or closing). */
  private async closeMaster(): Promise<void> {
    this.masterHandle = undefined
    for (const t of this.timers) clearInterval(t)
    this.timers = []
    this.replication?.detach()
    this.delayReplication?.detach()
    await this.dispatcherRef?.close()
    this.dispatcherRef = undefined
    await this.sender?.close()
    this.sender = undefined
    await this.storeRef?.close()
    this.storeRef = undefined
    await this.trace?.close()
    this.trace = undefined
  }

  private dedupeOptions(): DelayDedupeOptions {
    const o = this.options
    return {
      windowMs: o.dedupeWindowMs,
      maxEntries: o.dedupeMaxEntries,
      rebuildMaxBytes: o.dedupeRebuildMaxBytes,
    }
  }

  /** A slave: no store is opened; the master's message log and derived files are copied (replication/). */
  private async openSlave(): Promise<void> {
    const o = this.options
    this.epochs = readEpochs(o.dataDir)
    const secret = o.clusterSecret as string
    const mirror = new DelayMirror({
      dataDir: o.dataDir,
      slaveId: this.address,
      clusterSecret: secret,
      bucketMinutes: o.bucketMinutes,
      maxMessageBytes: o.maxMessageBytes,
      onChunkRefused: (file) => this.refusedChunks?.inc({ log: file, outcome: 'refetched' }),
      intervalMs: Math.min(1_000, o.checkpointIntervalMs),
      waitMs: o.replicationFetchWaitMs,
      chunkBytes: o.replicationFetchBytes,
      tombstoneKeepMs: o.horizonMs + TOMBSTONE_MARGIN_MS,
      // The store's retention: the segments that rebuild the dedupe window stay (dedupe-window.ts).
      messageKeepFrom: (cp) => copyKeepFrom(this.dedupeOptions(), path.join(o.dataDir, MESSAGE_DIR), cp),
      log: this.log,
    })
    mirror.prepare()
    const max = o.maxMessageBytes
    const follower = new ReplicationFollower(
      {
        dataDir: o.dataDir,
        slaveId: this.address,
        clusterSecret: secret,
        findMaster: () => this.findMaster(),
        maxMessageBytes: max,
        fetchBytes: o.replicationFetchBytes,
        fetchWaitMs: o.replicationFetchWaitMs,
        retryMs: 1_000,
        checkpointIntervalMs: o.checkpointIntervalMs,
        maxFrameBytes: o.maxFrameBytes,
        epoch: this.epochs.epoch,
        ...clientTlsOf(o),
        onChunkRefused: (log, copied) =>
          this.refusedChunks?.inc({ log, outcome: copied ? 'copied_damaged' : 'refetched' }),
        layout: {
          logs: [
            {
              kind: 0,
              dir: path.join(o.dataDir, MESSAGE_DIR),
              check: (b, p, e) => checkRecord(b, p, e, max),
            },
          ],
          sideLoop: (f) => mirror.run(f),
          onCut: (kind, offset) => mirror.onCut(kind, offset),
          onMasterChange: (master, epoch) => mirror.onMasterChange(master, epoch),
        },
      },
      this.log,
    )
    try {
      await follower.start()
    } catch (err) {
      // Its side loop (which closes the cancel log prepare() opened) never ran, or stopped with it.
      await follower.close().catch(() => {})
      await mirror.close()
      throw err
    }
    this.follower = follower
    this.mirror = mirror
  }

  private async closeSlave(): Promise<void> {
    await this.follower?.close()
    this.follower = undefined
    this.mirror = undefined
  }

  /** Where the group's master is: the configured address, or the metaserver's answer. */
  private async findMaster(): Promise<string | undefined> {
    const o = this.options
    if (o.masterAddress !== undefined) return o.masterAddress
    const meta = this.meta
    if (meta === undefined) return undefined
    try {
      const g = await meta.getGroup(o.group)
      if (!g.alive || g.address === '' || g.address === this.address) return undefined
      // A promoted slave that has not taken the role yet still reports as a slave (no in-sync set):
      // following it would drop this slave's copy of the derived files (mirror.ts onMasterChange), and
      // should it refuse the promotion, this slave could not be promoted in its place. Wait for it.
      const master = g.servers.find((s) => s.role === 'master' && s.address === g.address)
      if (master?.replication !== undefined && master.replication.inSyncSlaves === undefined) return undefined
      return g.address
    } catch (err) {
      this.log.warn({ err: String(err) }, 'slave: cannot ask the metaserver for the master')
      return undefined
    }
  }

  /** A replicated master stops acknowledging writes when its metaserver lease runs out (fencing). */
  private checkLease(): void {
    if (this.meta === undefined || this.role !== 'master') return
    this.lease.check(this.replication?.hasSlaves === true || this.epochs.epoch > 0)
  }

  private async startHeartbeat(): Promise<void> {
    const meta = this.meta
    if (meta === undefined) return
    const hb = new MetaHeartbeat(
      meta,
      {
        group: this.options.group,
        kind: 'delay',
        role: this.role,
        address: this.address,
        httpAddress: this.httpServer ? `${this.options.host}:${this.httpPort}` : undefined,
        intervalMs: DEFAULT_HEARTBEAT_MS,
        load: () => ({ backlog: this.storeRef?.stats().pending ?? 0 }),
        onReadOnly: () => {},
        replication: () => this.replicationReport(),
        onAnswer: (res, sentAt) => this.onMetaAnswer(res, sentAt),
      },
      this.log,
    )
    this.heartbeatLoop = hb
    await hb.start()
  }

  /** What this delay server tells the metaserver about replication with each heartbeat. */
  private replicationReport(): ServerReplication | undefined {
    this.inSyncReport.clear()
    // Closing: the sources are detached and would report no slave in sync, which would stop the
    // metaserver from promoting the slave when this master goes away.
    if (this.closing !== undefined) return undefined
    const f = this.follower?.status()
    if (f !== undefined) {
      const blocker = this.promotionBlocker()
      return {
        epoch: this.epochs.epoch,
        messageOffset: f.messageOffset,
        actionOffset: 0,
        lagBytes: Math.max(0, f.masterMessageEnd - f.messageOffset),
        ...(blocker !== undefined ? { promotable: false, notPromotableReason: blocker } : {}),
        ...(this.refusedEpoch > 0 ? { refusedEpoch: this.refusedEpoch } : {}),
      }
    }
    const r = this.replication
    if (r === undefined || this.storeRef === undefined) return undefined
    const inSyncSlaves = this.inSyncReport.report(r)
    return {
      epoch: this.epochs.epoch,
      messageOffset: this.storeRef.messageSegmentLog?.endOffset ?? 0,
      actionOffset: 0,
      inSyncSlaves,
      replicated: r.hasSlaves,
    }
  }

  /** The metaserver's answer: renews a master's lease, or promotes / demotes this delay server. */
  private onMetaAnswer(res: ServerHeartbeatResponse, sentAt: number): void {
    this.inSyncReport.accepted(res, this.role, this.replication)
    if (this.closing !== undefined || this.switching !== undefined) return
    this.switching = this.lease.changeRole(
      res,
      sentAt,
      this.role,
      this.epochs.epoch,
      (role, epoch) => this.switchRole(role, epoch),
      this.log,
      () => {
        this.switching = undefined
      },
    )
  }

  /** Changes role in place (same ports, same data dir, same group). */
  private async switchRole(role: 'master' | 'slave', epoch: number): Promise<void> {
    this.refuseUnsafePromotion(role, epoch)
    this.log.warn({ from: this.role, to: role, epoch }, "the metaserver changed this delay server's role")
    await this.heartbeatLoop?.stop(false)
    this.heartbeatLoop = undefined
    if (this.role === 'master') await this.closeMaster()
    else await this.closeSlave()
    const from = this.role
    const epochs = this.epochs
    this.role = role
    this.roleChanges.inc({ to: role })
    if (this.closing !== undefined) return
    try {
      if (role === 'master') {
        this.promotedTo = Math.max(epoch, this.epochs.epoch + 1)
        await this.openMaster()
      } else await this.openSlave()
    } catch (err) {
      // Half open: close what did open, and act in the former role again (serving nobody) so that
      // the metaserver's next answer asks for the change again: a retry each heartbeat.
      // The retry promotes to the same epoch (openMaster rewrites the epoch file's entry for it).
      this.promotedTo = undefined
      this.epochs = epochs
      await (role === 'master' ? this.closeMaster() : this.closeSlave()).catch((e: unknown) =>
        this.log.error({ err: String(e) }, 'closing after a failed role change failed'),
      )
      this.role = from
      throw err
    } finally {
      // The heartbeat goes on whatever happened: without it this server would be a silent zombie.
      if (this.closing === undefined) await this.startHeartbeat()
    }
  }

  /**
   * Why this slave cannot be promoted now, or undefined. A slave holding no adopted checkpoint (it
   * dropped its copy of the derived files, mirror.ts `forget`, and has not adopted one since) whose
   * message-log copy no longer starts at 0 would lose every pending message below that start as a
   * master. It says so with every heartbeat (ServerReplication.promotable false), and the metaserver
   * promotes no slave that says so; its master also counts it out of sync as soon as it hears of the
   * drop.
   */
  private promotionBlocker(): string | undefined {
    if (this.role !== 'slave' || this.follower === undefined) return undefined
    const start = this.follower.copyStart(0)
    const adopted = this.mirror?.status().checkpoint ?? -1
    if (adopted >= 0 || start === 0) return undefined
    return `holds no checkpoint of the derived files and its message-log copy starts at ${start}: as master it would lose pending messages`
  }

  /**
   * Refuses a promotion decided before the metaserver heard promotionBlocker() (a race), and for good
   * any promotion to an epoch refused before: the refused epoch goes out with the next heartbeat
   * (sent at once), and the metaserver then gives that epoch up (docs/replication.md, "A promotion
   * refused"). A later answer of that epoch (a metaserver that has not reloaded yet) is refused too,
   * so this server never serves an epoch the metaserver may have given to another.
   */
  private refuseUnsafePromotion(role: 'master' | 'slave', epoch: number): void {
    if (role !== 'master' || this.role !== 'slave') return
    const blocker =
      this.refusedEpoch > 0 && epoch <= this.refusedEpoch
        ? `refused epoch ${this.refusedEpoch} already`
        : this.promotionBlocker()
    if (blocker === undefined) return
    // An epoch above this server's own is a promotion's (an older metaserver sends none: the
    // server's own epoch stands in, and refusing it for good would refuse that metaserver forever).
    if (epoch > this.epochs.epoch) this.refusedEpoch = Math.max(this.refusedEpoch, epoch)
    this.log.error({ epoch, reason: blocker }, `promotion refused: this slave ${blocker}`)
    this.heartbeatLoop?.reportNow()
    throw new QmqError(
      'QMQ_ERR_NO_IN_SYNC_SLAVE',
      `this slave cannot be promoted to epoch ${epoch}: it ${blocker}`,
    )
  }

  /** The role now ('master' or 'slave'; the metaserver may change it). */
  get currentRole(): 'master' | 'slave' {
    return this.role
  }

  /** Replication as this delay server sees it: a master's slaves, or a slave's progress (/health). */
  replicationStatus(): DelayReplicationHealth {
    const f = this.follower?.status()
    if (f !== undefined) {
      const blocker = this.promotionBlocker()
      return {
        role: 'slave',
        epoch: this.epochs.epoch,
        slave: f,
        copy: this.mirror?.status(),
        promotable: blocker === undefined,
        ...(blocker !== undefined ? { notPromotableReason: blocker } : {}),
        refusedEpoch: this.refusedEpoch,
      }
    }
    const r = this.replication
    return {
      role: this.role,
      epoch: this.epochs.epoch,
      mode: this.options.replication,
      requiresSlave: r?.requiresSlave ?? false,
      degraded: r?.degraded ?? false,
      inSync: r?.anyInSync() ?? false,
      slaves: (r?.status() ?? []).map((s) => ({
        ...s,
        checkpoint: this.delayReplication?.adoptedBy(s.id) ?? -1,
      })),
    }
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
          JSON.stringify({
            status,
            ...reason,
            group: this.options.group,
            address: this.address,
            role: this.role,
            ...stats,
            replication: this.replicationStatus(),
          }),
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
  close(opts: { offline?: boolean } = {}): Promise<void> {
    this.closing ??= this.doClose(opts.offline ?? true)
    return this.closing
  }

  private async doClose(offline: boolean): Promise<void> {
    if (this.switching !== undefined) await this.switching
    for (const t of this.timers) clearInterval(t)
    this.timers = []
    this.refresher?.stop()
    // SENDs waiting for a slave fail (retriable), parked replication requests answer.
    this.replication?.detach()
    this.delayReplication?.detach()
    // Requests in flight (SENDs being stored) answer first, up to closeTimeoutMs.
    await this.tcp?.close(this.options.closeTimeoutMs)
    if (this.httpServer !== undefined) {
      const h = this.httpServer
      h.closeAllConnections()
      await new Promise<void>((resolve) => h.close(() => resolve()))
    }
    await this.closeSlave()
    await this.closeMaster()
    this.tls?.close()
    // One 'offline' heartbeat takes the group out of routes at once (unless `offline: false`: tests
    // of a master gone silent).
    await this.heartbeatLoop?.stop(offline)
    await this.meta?.close()
    this.log.info('delay server closed')
  }
}
