import type { AddressInfo } from 'node:net'
import path from 'node:path'
import { type Clock, systemClock } from '../common/clock'
import { type OptionsSchema, resolveOptions } from '../common/config'
import { QmqError } from '../common/errors'
import { RequestCode } from '../common/protocol/codes'
import { createLogger, type Logger } from '../common/logger'
import { MetaClient } from '../common/meta/meta-client'
import { checkTlsOptions, clientTlsOf, ServerTls, tlsEnabled } from '../common/tls'
import { CredentialCache } from '../common/auth/credentials'
import { CredentialRefresher, type CredentialSource } from '../common/auth/refresher'
import { AuthGate } from '../common/server/auth-gate'
import { missingClusterSecret } from '../common/token'
import type { ServerHeartbeatResponse, ServerLoad, ServerReplication } from '../common/meta/types'
import { Counter, createRegistry, Gauge, type Registry } from '../common/metrics'
import { tcpServerOptions } from '../common/server/options'
import { TcpServer } from '../common/server/tcp-server'
import type { Frame } from '../common/protocol/frame'
import { Connection, type ResponseBody } from './server/connection'
import { createFrameHandler, type ServerContext } from './server/handlers'
import { BrokerHttpServer, type BrokerHealth, type ReplicationHealth } from './server/http-server'
import { LongPollRegistry } from './server/long-poll'
import { type HeartbeatClient, MetaHeartbeat } from './server/meta-heartbeat'
import { BrokerMetrics } from './server/metrics'
import { type BrokerServerOptions, brokerServerOptionsSchema } from './server/options'
import { type EpochState, readEpochs } from './replication/epochs'
import { refusedChunksCounter } from './replication/chunk-verifier'
import { ReplicationFollower } from './replication/follower'
import { beginMasterTerm, ReplicationSource } from './replication/source'
import { InSyncReport } from './replication/in-sync-report'
import { MasterLease } from './replication/lease'
import { checkpointPath } from './store/checkpoint'
import { createMessageStore, FileMessageStore } from './store/file-message-store'
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
  metaClient?: BrokerMetaClient
  /** Where application credentials come from with `auth`; default: the metaserver client. */
  credentials?: CredentialSource
}

/** What the broker asks the metaserver: heartbeats, and (a slave) where its group's master is. */
export type BrokerMetaClient = HeartbeatClient & {
  close?(): Promise<void>
  getGroup?(name: string): Promise<{ address: string; alive: boolean }>
}

function defaultStore(ctx: StoreFactoryContext): MessageStore {
  return createMessageStore({ ...ctx.options, clock: ctx.clock, logger: ctx.logger, registry: ctx.registry })
}

const NO_BODY: readonly Buffer[] = []

/** A slave's TCP port: PING answers (liveness probes), everything else is refused. */
function slaveFrameHandler(frame: Frame): Promise<ResponseBody> {
  if (frame.code === RequestCode.PING) return Promise.resolve(NO_BODY)
  return Promise.reject(new QmqError('QMQ_ERR_NOT_MASTER'))
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
  private metaClient: BrokerMetaClient | undefined
  private replication: ReplicationSource | undefined
  private follower: ReplicationFollower | undefined
  /** The role now: the configured one until the metaserver promotes or demotes this broker. */
  private role: 'master' | 'slave'
  private epochs: EpochState = { epoch: 0, history: [] }
  /** A master of a replicated group acknowledges writes while it holds its metaserver lease. */
  private readonly lease = new MasterLease()
  /** The in-sync set of the heartbeat in flight, handed to the source once answered. */
  private readonly inSyncReport = new InSyncReport()
  /** Promoted to this epoch: recorded (with the log ends) once the store is open. */
  private promotedTo: number | undefined
  private switching: Promise<void> | undefined
  /** close() was called: a role change in progress does not start the broker again. */
  private closeRequested = false
  private roleChanges: Counter<'to'> | undefined
  private refusedChunks: Counter<'log' | 'outcome'> | undefined
  private unsubscribe: (() => void) | undefined
  private state: 'stopped' | 'starting' | 'running' | 'closing' = 'stopped'
  private startedAt = 0
  private boundPort: number | undefined
  private current: BrokerAddresses | undefined
  private tls: ServerTls | undefined
  /** Kept across restarts (its metrics are registered once). */
  private authGate: AuthGate | undefined
  private refresher: CredentialRefresher | undefined

  constructor(options: Partial<BrokerOptions> | Record<string, unknown> = {}, deps: BrokerDeps = {}) {
    this.options = resolveOptions('broker', brokerOptionsSchema, options)
    checkTlsOptions('broker', this.options)
    if (
      this.options.auth &&
      (this.options.metaserver === undefined || this.options.clusterSecret === undefined) &&
      !deps.credentials
    )
      throw new QmqError(
        'QMQ_ERR_CONFIG_INVALID',
        'Invalid broker options:\n  - auth: needs --metaserver and the cluster secret (the credentials come from the metaserver)',
      )
    this.role = this.options.role
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
    this.registerReplicationMetrics()
  }

  /** Replication gauges (docs/replication.md): collected from the live state at each scrape. */
  private registerReplicationMetrics(): void {
    const registers = [this.registry]
    const self = this
    new Gauge({
      name: 'qmq_replication_epoch',
      help: 'Epoch this broker acts in (grows with every promotion in its group)',
      registers,
      collect() {
        this.set(self.epochs.epoch)
      },
    })
    new Gauge({
      name: 'qmq_replication_is_master',
      help: '1 while this broker is its group master, 0 while it is a slave',
      registers,
      collect() {
        this.set(self.role === 'master' ? 1 : 0)
      },
    })
    new Gauge({
      name: 'qmq_replication_in_sync_slaves',
      help: 'Master: slaves in sync now',
      registers,
      collect() {
        this.set(self.replication?.status().filter((x) => x.inSync).length ?? 0)
      },
    })
    new Gauge({
      name: 'qmq_replication_lag_bytes',
      help: 'Bytes a slave is behind its master (a master: per slave; a slave: its own copies)',
      labelNames: ['slave'],
      registers,
      collect() {
        this.reset()
        const f = self.follower?.status()
        if (f !== undefined) {
          const lag =
            Math.max(0, f.masterMessageEnd - f.messageOffset) +
            Math.max(0, f.masterActionEnd - f.actionOffset)
          this.set({ slave: self.current?.address ?? 'self' }, lag)
          return
        }
        for (const x of self.replication?.status() ?? []) this.set({ slave: x.id }, x.lagBytes)
      },
    })
    new Gauge({
      name: 'qmq_replication_lag_seconds',
      help: 'How long a slave has not held everything its master had (a master: per slave)',
      labelNames: ['slave'],
      registers,
      collect() {
        this.reset()
        for (const x of self.replication?.status() ?? []) this.set({ slave: x.id }, x.lagMs / 1000)
      },
    })
    this.refusedChunks = refusedChunksCounter(registers)
    this.roleChanges = new Counter({
      name: 'qmq_replication_role_changes_total',
      help: 'Promotions and demotions of this broker by the metaserver, by new role',
      labelNames: ['to'],
      registers,
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
    this.closeRequested = false
    const o = this.options
    try {
      // The store registers its metrics on every open: drop those of a previous run (restart).
      for (const m of this.registry.getMetricsAsArray()) {
        if (m.name.startsWith('qmq_store_')) this.registry.removeSingleMetric(m.name)
      }
      this.epochs = readEpochs(o.dataDir)
      this.lease.revoke()
      if (this.role === 'slave') return await this.startSlave()
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
      const fileStore = store instanceof FileMessageStore ? store : undefined
      if (this.promotedTo !== undefined && fileStore !== undefined) {
        // The new epoch begins where the copied logs end after recovery (epochs.ts).
        const start = {
          epoch: this.promotedTo,
          messageOffset: fileStore.recoveredEnds?.message ?? fileStore.mlog.log.endOffset,
          actionOffset: fileStore.recoveredEnds?.action ?? fileStore.alog.log.endOffset,
        }
        this.epochs = beginMasterTerm(o.dataDir, this.epochs, start)
        this.replication?.close()
        this.replication = undefined
        this.log.warn({ ...start }, 'promoted: this broker is the master of a new epoch')
      }
      this.promotedTo = undefined
      if (fileStore !== undefined) {
        this.replication ??= new ReplicationSource(
          {
            mode: o.replication,
            ackTimeoutMs: o.replicationAckTimeoutMs,
            inSyncLagMs: o.replicationInSyncLagMs,
            degradedWrites: o.degradedWrites,
            stateDir: path.join(o.dataDir, 'replication'),
            epoch: () => this.epochs.epoch,
            history: () => this.epochs.history,
            requestReport: () => this.heartbeat?.reportNow(),
          },
          this.log,
        )
        this.replication.attach({
          message: fileStore.mlog.log,
          action: fileStore.alog.log,
          checkpointFile: checkpointPath(fileStore.dirs.checkpoint),
          recoveredEnds: fileStore.recoveredEnds,
          readPool: fileStore.readPool,
        })
      }

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
        auth: undefined,
        replication: fileStore === undefined ? undefined : this.replication,
        checkLease: () => this.checkLease(),
        clusterSecret: o.clusterSecret === undefined ? undefined : Buffer.from(o.clusterSecret, 'utf8'),
      }
      if (o.auth) {
        this.authGate ??= new AuthGate(
          new CredentialCache(
            o.clusterSecret === undefined ? undefined : Buffer.from(o.clusterSecret, 'utf8'),
          ),
          this.log,
          this.registry,
          'qmq_broker',
        )
        ctx.auth = this.authGate
      }
      const frameHandler = createFrameHandler(ctx)
      return await this.listen(ctx.auth === undefined ? frameHandler : ctx.auth.wrap(frameHandler), store)
    } catch (err) {
      this.state = 'running'
      await this.shutdown({}).catch(() => {})
      throw err
    }
  }

  /**
   * A slave: no store is opened (nothing is served from it); the master's logs are copied into the
   * data dir (replication/follower.ts). The TCP port answers PING and refuses everything else with
   * QMQ_ERR_NOT_MASTER; the slave registers with the metaserver as the group's slave.
   */
  private async startSlave(): Promise<BrokerAddresses> {
    const o = this.options
    if (o.clusterSecret === undefined)
      throw missingClusterSecret('broker', 'a slave authenticates to its master with it')
    if (o.masterAddress === undefined && o.metaserver === undefined && this.deps.metaClient === undefined)
      throw new QmqError(
        'QMQ_ERR_CONFIG_INVALID',
        'a slave needs --metaserver (or --master-address) to find its master',
      )
    const addresses = await this.listen(slaveFrameHandler, undefined)
    const follower = new ReplicationFollower(
      {
        dataDir: o.dataDir,
        slaveId: addresses.address,
        clusterSecret: o.clusterSecret,
        findMaster: () => this.findMaster(),
        maxMessageBytes: o.maxMessageBytes,
        fetchBytes: o.replicationFetchBytes,
        fetchWaitMs: o.replicationFetchWaitMs,
        retryMs: Math.min(1_000, o.heartbeatIntervalMs),
        checkpointIntervalMs: storeOptionsOf(o).checkpointIntervalMs,
        consumeLogSegmentEntries: storeOptionsOf(o).consumeLogSegmentEntries,
        maxFrameBytes: o.maxFrameBytes,
        epoch: this.epochs.epoch,
        ...clientTlsOf(o),
        onChunkRefused: (log, copied) =>
          this.refusedChunks?.inc({ log, outcome: copied ? 'copied_damaged' : 'refetched' }),
      },
      this.log,
    )
    await follower.start()
    this.follower = follower
    return addresses
  }

  /** Where the group's master is: the configured address, or the metaserver's answer. */
  private async findMaster(): Promise<string | undefined> {
    const o = this.options
    if (o.masterAddress !== undefined) return o.masterAddress
    const meta = this.metaClient
    if (meta?.getGroup === undefined) return undefined
    try {
      const g = await meta.getGroup(o.group)
      return g.alive && g.address !== '' && g.address !== this.current?.address ? g.address : undefined
    } catch (err) {
      this.log.warn({ err: String(err) }, 'slave: cannot ask the metaserver for the master')
      return undefined
    }
  }

  /** Listens (TCP, then HTTP), registers with the metaserver; the broker is then running. */
  private async listen(
    handle: (frame: Frame, conn: Connection) => Promise<ResponseBody>,
    store: MessageStore | undefined,
  ): Promise<BrokerAddresses> {
    const o = this.options
    if (tlsEnabled(o) && this.tls === undefined) {
      this.tls = new ServerTls(o, this.log)
      this.tls.watch()
    }
    const tcp = new TcpServer<Connection>(
      tcpServerOptions(o, o.port === 0 && this.boundPort !== undefined ? this.boundPort : o.port, this.tls),
      {
        handle,
        onTlsError: () => this.metrics.connectionLoop.tlsHandshakeFailures.inc(),
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
      if (o.port !== 0 || this.boundPort === undefined || store === undefined) throw err
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
      const http = new BrokerHttpServer(this.registry, () => this.health(), this.log, this.tls)
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
        ? new MetaClient({ url: o.metaserver, clusterSecret: o.clusterSecret, ...clientTlsOf(o) })
        : undefined)
    const source: CredentialSource | undefined =
      this.deps.credentials ?? (this.metaClient instanceof MetaClient ? this.metaClient : undefined)
    if (this.authGate !== undefined && source !== undefined && this.refresher === undefined) {
      this.refresher = new CredentialRefresher(source, this.authGate.cache, o.authRefreshMs, this.log)
      await this.refresher.start()
    }
    if (this.metaClient !== undefined) {
      this.heartbeat = new MetaHeartbeat(
        this.metaClient,
        {
          group: o.group,
          role: this.role,
          address: this.current.address,
          httpAddress,
          intervalMs: o.heartbeatIntervalMs,
          load: () => this.load(),
          onReadOnly: (all, subjects) => {
            this.readOnly.all = all
            this.readOnly.subjects = new Set(subjects)
          },
          replication: () => this.replicationReport(),
          onAnswer: (res, sentAt) => this.onMetaAnswer(res, sentAt),
        },
        this.log,
      )
      void this.heartbeat.start()
    }
    this.startedAt = Date.now()
    this.state = 'running'
    this.log.info({ ...this.current, role: this.role, epoch: this.epochs.epoch }, 'broker listening')
    if (o.adminToken === undefined && this.role === 'master')
      this.log.warn(
        'no adminToken configured: cursor resets, dead-letter redrives and forget-group are not authenticated',
      )
    return this.current
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
      role: this.role,
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
      replication: this.replicationStatus(),
    }
  }

  /** What this broker tells the metaserver about replication with each heartbeat. */
  private replicationReport(): ServerReplication | undefined {
    this.inSyncReport.clear()
    if (this.follower !== undefined) {
      const f = this.follower.status()
      return {
        epoch: this.epochs.epoch,
        messageOffset: f.messageOffset,
        actionOffset: f.actionOffset,
        lagBytes:
          Math.max(0, f.masterMessageEnd - f.messageOffset) + Math.max(0, f.masterActionEnd - f.actionOffset),
      }
    }
    const store = this.store
    const r = this.replication
    if (!(store instanceof FileMessageStore) || r === undefined) return undefined
    const inSyncSlaves = this.inSyncReport.report(r)
    return {
      epoch: this.epochs.epoch,
      messageOffset: store.mlog.log.endOffset,
      actionOffset: store.alog.log.endOffset,
      inSyncSlaves,
      replicated: r.hasSlaves,
    }
  }

  /** A replicated master stops acknowledging writes when its metaserver lease runs out (fencing). */
  private checkLease(): void {
    if (this.heartbeat === undefined || this.role !== 'master') return
    this.lease.check(this.replication?.hasSlaves === true || this.epochs.epoch > 0)
  }

  /** The metaserver's answer: renews a master's lease, or promotes / demotes this broker. */
  private onMetaAnswer(res: ServerHeartbeatResponse, sentAt: number): void {
    this.inSyncReport.accepted(res, this.role, this.replication)
    if (this.state !== 'running' || this.switching !== undefined || this.closeRequested) return
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

  /** Restarts in the role the metaserver gave (same data dir, same port; stays in its group). */
  private async switchRole(role: 'master' | 'slave', epoch: number): Promise<void> {
    this.log.warn({ from: this.role, to: role, epoch }, "the metaserver changed this broker's role")
    await this.shutdown({ offline: false })
    this.roleChanges?.inc({ to: role })
    this.role = role
    if (role === 'master') this.promotedTo = Math.max(epoch, this.epochs.epoch + 1)
    if (this.closeRequested) return // closed meanwhile: the new role applies at the next start()
    await this.start()
  }

  /** The role now ('master' or 'slave'; the metaserver may change it). */
  get currentRole(): 'master' | 'slave' {
    return this.role
  }

  /** Replication as this broker sees it: a master's slaves, or a slave's progress. */
  replicationStatus(): ReplicationHealth {
    if (this.follower !== undefined)
      return { role: 'slave', epoch: this.epochs.epoch, slave: this.follower.status() }
    const r = this.replication
    return {
      role: this.role,
      epoch: this.epochs.epoch,
      mode: this.options.replication,
      requiresSlave: r?.requiresSlave ?? false,
      degraded: r?.degraded ?? false,
      inSync: r?.anyInSync() ?? false,
      slaves: r?.status() ?? [],
    }
  }

  /**
   * Graceful close: refuses new SENDs, answers waiting long polls with an empty list, lets requests in
   * flight finish (up to closeTimeoutMs), says 'offline' to the metaserver, then closes the store.
   */
  async close(opts: { offline?: boolean } = {}): Promise<void> {
    // A role change in progress finishes first (it restarts the broker), then this close stops it.
    this.closeRequested = true
    if (this.switching !== undefined) await this.switching
    return this.shutdown(opts)
  }

  private async shutdown(opts: { offline?: boolean }): Promise<void> {
    if (this.state === 'stopped' || this.state === 'closing') return
    this.state = 'closing'
    try {
      this.polls.close()
      this.refresher?.stop()
      this.refresher = undefined
      // SENDs waiting for a slave fail (retriable; producers resend them), parked fetches answer.
      this.replication?.detach()
      if (this.follower !== undefined) await this.follower.close()
      this.follower = undefined
      if (this.tcp !== undefined) await this.tcp.close(this.options.closeTimeoutMs)
      this.tcp = undefined
      if (this.heartbeat !== undefined) await this.heartbeat.stop(opts.offline ?? true)
      this.heartbeat = undefined
      if (this.metaClient !== undefined && this.deps.metaClient === undefined) await this.metaClient.close?.()
      this.metaClient = undefined
      if (this.http !== undefined) await this.http.close()
      this.http = undefined
      this.unsubscribe?.()
      this.unsubscribe = undefined
      if (this.store !== undefined) await this.store.close()
      this.store = undefined
      this.tls?.close()
      this.tls = undefined
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
