import type { Clock } from '../common/clock'
import { QmqError } from '../common/errors'
import type { Logger } from '../common/logger'
import type {
  ClientHeartbeatRequest,
  ClientHeartbeatResponse,
  ClientInfo,
  ClientKind,
  GroupInfo,
  GroupKind,
  ReadOnlySetting,
  RouteGroup,
  RouteResponse,
  ServerHeartbeatRequest,
  ServerHeartbeatResponse,
  ServerLoad,
  ServerReplication,
  ServerRole,
  SubjectInfo,
} from '../common/meta/types'
import { parseDeadLetterSubject } from '../common/names'
import type { MetaserverOptions } from './options'
import { type ClientFilter, ClientRegistry } from './client-registry'
import { byMostData } from './promotion'
import type {
  MetaStore,
  ReplicationReport,
  SlaveKey,
  StoredMetaserver,
  StoredReplication,
  StoredRoute,
  StoredServer,
} from './store'

/** The store-clock offset is measured again at most this often (ms, local time). */
const CLOCK_OFFSET_REFRESH_MS = 60_000

/**
 * The metaserver's logic: group registry and liveness, subject placement, routes, read-only marks,
 * client registry. Inputs are already validated (http-server.ts does that).
 *
 * State lives in memory, written through to the MetaStore, and is rebuilt from the store at start.
 * Liveness is computed, never stored as a flag: alive = lastSeen(master) > 0 and
 * now - lastSeen(master) <= heartbeatTimeoutMs. Last-seen times are persisted, so a restarted
 * metaserver knows at once which groups died while it was down.
 *
 * Several metaservers may share one store (PostgreSQL). Then every decision is the store's, made by
 * compare-and-set or an atomic insert: placement (assignRouteIfAbsent), route changes (updateRoute),
 * liveness transitions (decideLiveness: one metaserver logs and counts each), read-only marks (rows).
 * Memory is a cache of the store refreshed every reloadIntervalMs. Times are on the store's clock:
 * `now()` adds the measured offset of the store's clock to the local one, so metaservers whose clocks
 * are apart agree on who is alive.
 *
 * The store down: routes are answered from memory, groups alive at the last decision stay in routes
 * (their heartbeats may be going to another metaserver that cannot tell us), heartbeats that only
 * refresh a last-seen time are answered, and every change (placement, route change, read-only mark,
 * new group) is refused with QMQ_ERR_METASERVER_STORE (retriable). The first store call that succeeds
 * again ends the outage.
 */

const ALL_SUBJECTS = '*'

interface ServerState {
  role: ServerRole
  address: string
  httpAddress: string | undefined
  lastSeenAt: number
  /** lastSeenAt as last written to the store. */
  persistedAt: number
  /** Its last replication report (brokers of replicated groups). */
  replication?: ServerReplication
  /** A slave: the durable ends of its copies, as last reported (stored: promotion takes the most). */
  messageOffset?: number
  actionOffset?: number
  /** A slave: its last heartbeat, an 'offline' one included (expiry after slaveExpiryMs). */
  heardAt?: number
  /** A slave that said it cannot be promoted (stored): why. Never promoted while set. */
  notPromotable?: string
}

interface GroupState {
  name: string
  kind: GroupKind
  firstSeenAt: number
  load: ServerLoad
  /** The group's one master (absent until one heartbeated). */
  master: ServerState | undefined
  /** Its slaves by address (issue 14: any number). */
  slaves: Map<string, ServerState>
  /** Alive as last observed by the sweep (for transition logs and metrics). */
  wasAlive: boolean
  // Replication (issue 14; docs/replication.md):
  /** Grows with every promotion (stored with a compare-and-set). */
  epoch: number
  failovers: number
  // The master's last report and a step-down are kept in the store too (group_replication), so that
  // any metaserver, or one restarted while the master is down, promotes from them.
  /** The master reported a slave: it holds a lease, and its group fails over. */
  replicated: boolean
  /** The slaves the master last reported in sync (only these are promoted), in epoch inSyncEpoch. */
  inSync: string[]
  inSyncEpoch: number
  /** When the master reported inSync (the store keeps the newest report). */
  reportedAt: number
  /** The master's reportSeq of that report (0: none sent); an older one of the epoch is refused. */
  reportSeq: number
  /** `qmq failover`: the master was told to step down at this time (promotion after its lease). */
  stepDownAt: number | undefined
  /** Logged once per outage: the master is gone and no slave can be promoted. */
  stuckLogged: boolean
}

export interface LivenessTransition {
  group: string
  alive: boolean
}

/**
 * `%DEAD_RETRY%<subject>%<group>` -> `<subject>`; any other subject as it is. User subjects and groups
 * hold no '%' (common/names.ts), so the name splits at its one '%' after the prefix.
 */
export function realSubject(subject: string): string {
  return parseDeadLetterSubject(subject)?.subject ?? subject
}

function newReplicationState(): Pick<
  GroupState,
  | 'master'
  | 'slaves'
  | 'epoch'
  | 'failovers'
  | 'replicated'
  | 'inSync'
  | 'inSyncEpoch'
  | 'reportedAt'
  | 'reportSeq'
  | 'stepDownAt'
  | 'stuckLogged'
> {
  return {
    master: undefined,
    slaves: new Map(),
    epoch: 0,
    failovers: 0,
    replicated: false,
    inSync: [],
    inSyncEpoch: 0,
    reportedAt: 0,
    reportSeq: 0,
    stepDownAt: undefined,
    stuckLogged: false,
  }
}

function staleReportError(seq: number, stored: number): QmqError {
  return new QmqError(
    'QMQ_ERR_STALE_REPORT',
    `in-sync report ${seq} is older than the stored report ${stored}: refused (a late retry)`,
  )
}

function sameList(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i])
}

function serverState(s: StoredServer): ServerState {
  const out: ServerState = {
    role: s.role,
    address: s.address,
    httpAddress: s.httpAddress,
    lastSeenAt: s.lastSeenAt,
    persistedAt: s.lastSeenAt,
  }
  if (s.messageOffset !== undefined) out.messageOffset = s.messageOffset
  if (s.actionOffset !== undefined) out.actionOffset = s.actionOffset
  if (s.heardAt !== undefined) out.heardAt = s.heardAt
  if (s.notPromotable !== undefined) out.notPromotable = s.notPromotable
  return out
}

/** A slave's heartbeat report: why it cannot be promoted, or undefined (promotable; older servers). */
function notPromotableOf(rep: ServerReplication): string | undefined {
  return rep.promotable === false ? (rep.notPromotableReason ?? 'the slave refuses promotion') : undefined
}

/** Puts a stored server into a group's memory (the master, or one of its slaves). */
function placeServer(g: GroupState, s: ServerState): void {
  if (s.role === 'master') {
    g.master = s
    g.slaves.delete(s.address)
  } else if (g.master?.address !== s.address) g.slaves.set(s.address, s)
}

/** Takes the stored replication state unless memory holds a newer report (a step-down: as stored). */
function applyReplication(g: GroupState, r: StoredReplication | undefined): void {
  if (r === undefined) return
  const newer = r.reportSeq > 0 && g.reportSeq > 0 ? r.reportSeq >= g.reportSeq : r.reportedAt >= g.reportedAt
  if (r.epoch > g.inSyncEpoch || (r.epoch === g.inSyncEpoch && newer)) {
    g.replicated = r.replicated
    g.inSync = r.inSync
    g.inSyncEpoch = r.epoch
    g.reportedAt = r.reportedAt
    g.reportSeq = r.reportSeq
  }
  if (r.epoch >= g.epoch) g.stepDownAt = r.stepDownAt
}

export class MetaService {
  private readonly groups = new Map<string, GroupState>()
  /** Per group, an epoch whose refusal the store would not give up (served): not asked again. */
  private readonly servedRefusals = new Map<string, number>()
  /** Per group, the epoch this metaserver stored a master's report in (the store marked it served). */
  private readonly servedMarked = new Map<string, number>()
  private readonly routes = new Map<string, StoredRoute>()
  /** group -> subjects it is read-only for ('*' = all), with the time of the mark. */
  private readonly readOnly = new Map<string, Map<string, number>>()
  /** group -> number of routes that include it. */
  private readonly subjectCounts = new Map<string, number>()
  private readonly clients: ClientRegistry
  /** Placement in flight per subject, so concurrent first lookups share one. */
  private readonly pendingAssign = new Map<string, Promise<StoredRoute>>()
  private delayRotation = 0
  /** Store clock minus local clock (ms); see now(). */
  private clockOffset = 0
  private clockOffsetAt = 0
  /** Set while store calls fail (see the class comment). */
  private storeDownSince: number | undefined
  /** When the last outage ended (Date.now()); see holdingLiveness(). */
  private storeBackAt = 0
  /** Live metaservers sharing the store, as last read (GET /meta/address). */
  private metaservers: StoredMetaserver[] = []
  /** Counters read by metrics. */
  assignments = 0

  constructor(
    private readonly options: Readonly<MetaserverOptions>,
    private readonly store: MetaStore,
    private readonly clock: Clock,
    private readonly log: Logger,
    /** Keep times on the store's clock (see now()); false: on `clock` alone. */
    private readonly storeClock = true,
  ) {
    this.clients = new ClientRegistry(options, store, log)
  }

  /** Now on the store's clock (ms). */
  now(): number {
    return this.clock.now() + this.clockOffset
  }

  /** 'sqlite' or 'postgres'. */
  get storeKind(): string {
    return this.store.kind
  }

  /** True while the store is unreachable (changes are refused, routes come from memory). */
  get storeDown(): boolean {
    return this.storeDownSince !== undefined
  }

  /** Runs a store call, tracking outages: the first failure and the recovery are logged once. */
  private async stored<T>(call: () => Promise<T>): Promise<T> {
    try {
      const out = await call()
      if (this.storeDownSince !== undefined) {
        this.log.info(
          { store: this.store.kind, downMs: Date.now() - this.storeDownSince },
          'metadata store reachable again: changes accepted',
        )
        this.storeDownSince = undefined
        this.storeBackAt = Date.now()
      }
      return out
    } catch (err) {
      if (
        err instanceof QmqError &&
        err.code === 'QMQ_ERR_METASERVER_STORE' &&
        this.storeDownSince === undefined
      ) {
        this.storeDownSince = Date.now()
        this.log.error(
          { store: this.store.kind, err: err.message },
          'metadata store unreachable: answering routes from memory, refusing changes',
        )
      }
      throw err
    }
  }

  private async measureClockOffset(): Promise<void> {
    if (!this.storeClock) return
    this.clockOffset = await this.stored(() => this.store.clockOffsetMs(this.clock.now()))
    this.clockOffsetAt = Date.now()
    if (Math.abs(this.clockOffset) > 1_000)
      this.log.warn(
        { offsetMs: this.clockOffset },
        'this clock is apart from the store clock: times and liveness use the store clock',
      )
  }

  /** Builds the in-memory view from the store. */
  async load(): Promise<void> {
    await this.measureClockOffset()
    const snap = await this.store.loadAll()
    for (const g of snap.groups) {
      this.groups.set(g.name, {
        name: g.name,
        kind: g.kind,
        firstSeenAt: g.firstSeenAt,
        load: g.load,
        wasAlive: false,
        ...newReplicationState(),
      })
    }
    for (const e of snap.epochs) {
      const g = this.groups.get(e.group)
      if (g === undefined) continue
      g.epoch = e.epoch
      g.failovers = e.failovers
      g.replicated = true
    }
    for (const s of snap.servers) {
      const g = this.groups.get(s.group)
      if (g !== undefined) placeServer(g, serverState(s))
    }
    for (const r of snap.replication) {
      const g = this.groups.get(r.group)
      if (g !== undefined) applyReplication(g, r)
    }
    for (const r of snap.routes) this.setRoute(r)
    for (const r of snap.readOnly) this.readOnlyOf(r.group).set(r.subject, r.createdAt)
    this.clients.merge(snap.clients)
    const decided = new Map(snap.liveness.map((l) => [l.group, l.alive]))
    const now = this.now()
    for (const g of this.groups.values()) {
      // The decided state: a transition since then is found (and decided once) by the next sweep.
      g.wasAlive = decided.get(g.name) ?? this.isAlive(g, now)
      const lastSeen = g.master?.lastSeenAt ?? 0
      this.log.info(
        {
          group: g.name,
          kind: g.kind,
          alive: g.wasAlive,
          lastSeenAgoMs: lastSeen > 0 ? now - lastSeen : null,
        },
        g.wasAlive ? 'group loaded: alive' : 'group loaded: dead (no recent heartbeat)',
      )
    }
  }

  /**
   * Merges the store's state into memory, for several metaservers sharing one store: routes with a
   * higher version replace ours, read-only marks are taken as stored, and a server's last-seen time is
   * the later of ours and the stored one (a heartbeat to any metaserver keeps a group alive for all).
   */
  async refresh(): Promise<void> {
    if (Date.now() - this.clockOffsetAt >= CLOCK_OFFSET_REFRESH_MS) await this.measureClockOffset()
    const snap = await this.stored(() => this.store.loadAll())
    const added: GroupState[] = []
    for (const g of snap.groups) {
      const mine = this.groups.get(g.name)
      if (mine === undefined) {
        const state: GroupState = { ...g, wasAlive: false, ...newReplicationState() }
        this.groups.set(g.name, state)
        added.push(state)
      } else if (mine.kind === g.kind) mine.load = g.load
    }
    for (const e of snap.epochs) {
      const g = this.groups.get(e.group)
      if (g === undefined || e.epoch <= g.epoch) continue
      // Another metaserver promoted: its master and slave rows (below) are the ones to believe.
      g.epoch = e.epoch
      g.failovers = e.failovers
      g.replicated = true
      g.master = undefined
      g.slaves.clear()
    }
    for (const s of snap.servers) {
      const g = this.groups.get(s.group)
      if (g === undefined) continue
      const mine = s.role === 'master' ? g.master : g.slaves.get(s.address)
      if (mine === undefined) placeServer(g, serverState(s))
      else if (s.lastSeenAt > mine.lastSeenAt) {
        mine.lastSeenAt = s.lastSeenAt
        mine.persistedAt = Math.max(mine.persistedAt, s.lastSeenAt)
        mine.address = s.address
        mine.httpAddress = s.httpAddress
        if (s.messageOffset !== undefined) mine.messageOffset = s.messageOffset
        if (s.actionOffset !== undefined) mine.actionOffset = s.actionOffset
        if (s.role === 'slave') mine.notPromotable = s.notPromotable
        if (s.role === 'master') g.slaves.delete(s.address)
      }
      if (mine !== undefined && s.heardAt !== undefined && s.heardAt > (mine.heardAt ?? 0))
        mine.heardAt = s.heardAt
    }
    // A slave row another metaserver deleted (expired, or `qmq remove-slave`) goes from memory too;
    // one never written yet (persistedAt -1: its first heartbeat here is being stored) stays.
    const storedSlaves = new Set(
      snap.servers.filter((s) => s.role === 'slave').map((s) => `${s.group}\u0000${s.address}`),
    )
    for (const g of this.groups.values()) {
      for (const [address, s] of g.slaves)
        if (s.persistedAt >= 0 && !storedSlaves.has(`${g.name}\u0000${address}`)) g.slaves.delete(address)
    }
    for (const r of snap.replication) {
      const g = this.groups.get(r.group)
      if (g !== undefined) applyReplication(g, r)
    }
    for (const r of snap.routes) this.setRoute(r)
    this.readOnly.clear()
    for (const r of snap.readOnly) this.readOnlyOf(r.group).set(r.subject, r.createdAt)
    this.clients.merge(snap.clients)
    // A group new to us starts as the store decided it, else as its stored last-seen says (not a
    // transition); the next sweep decides any difference.
    const now = this.now()
    for (const g of added) g.wasAlive = this.isAlive(g, now)
    for (const l of snap.liveness) {
      const g = this.groups.get(l.group)
      if (g !== undefined) g.wasAlive = l.alive
    }
  }

  // ---------------------------------------------------------------- metaservers

  /** Writes this metaserver's row and reads the live ones (GET /meta/address). */
  async beat(self: StoredMetaserver, ttlMs: number): Promise<void> {
    const now = this.now()
    await this.stored(() => this.store.registerMetaserver({ ...self, lastSeenAt: now }))
    this.metaservers = await this.stored(() => this.store.listMetaservers(now - ttlMs))
  }

  /** URLs of the live metaservers sharing the store, `self` always among them. */
  metaserverUrls(self: string): string[] {
    const urls = this.metaservers.map((m) => m.url)
    if (!urls.includes(self)) urls.unshift(self)
    return [...new Set(urls)]
  }

  leave(id: string): Promise<void> {
    return this.store.removeMetaserver(id)
  }

  // ---------------------------------------------------------------- liveness

  private isAlive(g: GroupState, now: number): boolean {
    const master = g.master
    return (
      master !== undefined &&
      master.lastSeenAt > 0 &&
      now - master.lastSeenAt <= this.options.heartbeatTimeoutMs
    )
  }

  /**
   * Alive for routes: heartbeats seen in time, or, while the store is down, alive at the last decision
   * (its heartbeats may go to another metaserver, which cannot tell us without the store).
   */
  private inRoutes(g: GroupState, now: number): boolean {
    return this.isAlive(g, now) || (this.holdingLiveness() && g.wasAlive)
  }

  /**
   * True while the store is down and for heartbeatTimeoutMs after it is back: heartbeats that other
   * metaservers could not write during the outage need that long to reach the store again, so no group
   * is declared dead (or left out of routes) from times the outage made stale.
   */
  private holdingLiveness(): boolean {
    return (
      this.storeDownSince !== undefined || Date.now() - this.storeBackAt < this.options.heartbeatTimeoutMs
    )
  }

  isGroupAlive(name: string): boolean {
    const g = this.groups.get(name)
    return g !== undefined && this.inRoutes(g, this.now())
  }

  /**
   * Finds groups whose liveness changed since the last decision and decides each transition in the
   * store (compare-and-set): of several metaservers sweeping at once, one gets each transition (it is
   * returned, logged and counted there only). A dead decision refused because another metaserver heard
   * the master recently brings that last-seen time into memory. The store down: nothing is decided.
   */
  async sweepLiveness(): Promise<LivenessTransition[]> {
    const now = this.now()
    const out: LivenessTransition[] = []
    const holding = this.holdingLiveness()
    for (const g of this.groups.values()) {
      const alive = this.isAlive(g, now)
      if (alive === g.wasAlive || (holding && !alive)) continue
      let d: Awaited<ReturnType<MetaStore['decideLiveness']>>
      try {
        d = await this.stored(() =>
          this.store.decideLiveness(g.name, alive, now, now - this.options.heartbeatTimeoutMs),
        )
      } catch (err) {
        if (err instanceof QmqError && err.code === 'QMQ_ERR_METASERVER_STORE') return out
        throw err
      }
      g.wasAlive = d.alive
      const master = g.master
      if (master !== undefined && d.masterLastSeenAt > master.lastSeenAt) {
        master.lastSeenAt = d.masterLastSeenAt
        master.persistedAt = Math.max(master.persistedAt, d.masterLastSeenAt)
      }
      if (!d.changed) continue
      out.push({ group: g.name, alive })
      if (alive) this.log.info({ group: g.name }, 'group is alive again: back in routes')
      else {
        const lastSeen = master?.lastSeenAt ?? 0
        this.log.warn(
          { group: g.name, lastSeenAgoMs: now - lastSeen },
          'group heartbeats stopped: out of routes',
        )
      }
    }
    return out
  }

  /**
   * A broker's or delay server's heartbeat. `retry`: once, after the store said another metaserver
   * promoted meanwhile (the answer is then made from the reloaded state).
   */
  async heartbeat(req: ServerHeartbeatRequest, retry = true): Promise<ServerHeartbeatResponse> {
    const now = this.now()
    let g = this.groups.get(req.group)
    if (g !== undefined && g.kind !== req.kind) {
      throw new QmqError(
        'QMQ_ERR_GROUP_CONFLICT',
        `group ${JSON.stringify(req.group)} is registered as a ${g.kind} group; a ${req.kind} server cannot join it`,
      )
    }
    let changed = false
    const isNew = g === undefined
    if (g === undefined) {
      g = {
        name: req.group,
        kind: req.kind,
        firstSeenAt: now,
        load: {},
        wasAlive: false,
        ...newReplicationState(),
      }
      this.groups.set(req.group, g)
      changed = true
      this.log.info(
        { group: req.group, kind: req.kind, role: req.role, address: req.address },
        'new group registered',
      )
    }
    if (this.refusedPromotion(g, req)) {
      await this.abandonPromotion(g, req, now)
      g = this.groups.get(req.group) ?? g
    }
    if (req.load !== undefined) g.load = req.load
    const offline = req.state === 'offline'
    const wasAlive = this.isAlive(g, now)
    const role = this.roleOf(g, req, now)
    // A late retry of an older heartbeat of the master (its report older than the one stored in this
    // epoch) is refused before anything changes: it must not bring back a larger in-sync set, nor
    // renew a lease (the master sent newer heartbeats since). Another metaserver may have stored a
    // newer one: the store checks again (HeartbeatResult.staleReport).
    const seq = req.replication?.reportSeq ?? 0
    if (role === 'master' && req.role === 'master' && !offline && seq > 0) {
      if (g.inSyncEpoch === g.epoch && g.reportSeq > seq) throw staleReportError(seq, g.reportSeq)
    }
    let server = role === 'master' ? g.master : g.slaves.get(req.address)
    if (server === undefined) {
      server = {
        role,
        address: req.address,
        httpAddress: req.httpAddress,
        lastSeenAt: 0,
        persistedAt: -1,
      }
      placeServer(g, server)
      changed = true
    }
    if (server.address !== req.address || server.httpAddress !== req.httpAddress) {
      if (server.address !== req.address && role === 'master' && wasAlive) {
        this.log.warn(
          { group: g.name, from: server.address, to: req.address },
          'master address changed while alive',
        )
      }
      server.address = req.address
      server.httpAddress = req.httpAddress
      if (role === 'master') g.slaves.delete(req.address)
      changed = true
    }
    /** Restored when the store refuses the heartbeat as a stale report (another metaserver's newer one). */
    const before = { lastSeenAt: server.lastSeenAt, replication: server.replication }
    server.lastSeenAt = offline ? 0 : now
    if (role === 'slave') server.heardAt = now
    let report: ReplicationReport | undefined
    let reportChanged = false
    let offsetsChanged = false
    const rep = req.replication
    if (rep !== undefined) {
      server.replication = rep
      // Only a server acting as master reports its in-sync slaves (a stepped-down one no longer does).
      // Memory takes the report only once it is stored (below): memory is the last STORED report, so a
      // report differing from it is written before the heartbeat is answered, also when an earlier
      // write of the same report failed. The answer tells the master its set was accepted (it stops
      // waiting for a slave that left it), and promotion picks from the stored report.
      if (role === 'master' && req.role === 'master' && !offline) {
        report = {
          replicated: rep.replicated === true,
          inSync: rep.inSyncSlaves ?? [],
          seq: rep.reportSeq ?? 0,
        }
        reportChanged =
          report.replicated !== g.replicated ||
          g.inSyncEpoch !== g.epoch ||
          !sameList(report.inSync, g.inSync)
      }
      if (role === 'slave') {
        offsetsChanged =
          server.messageOffset !== rep.messageOffset || server.actionOffset !== rep.actionOffset
        server.messageOffset = rep.messageOffset
        server.actionOffset = rep.actionOffset
        // Stored before the answer (a change must be written: the store promotes from its rows).
        const notPromotable = notPromotableOf(rep)
        if (notPromotable !== server.notPromotable) {
          changed = true
          if (notPromotable !== undefined)
            this.log.warn(
              { group: g.name, slave: server.address, reason: notPromotable },
              'slave says it cannot be promoted: it is not a promotion candidate until it says otherwise',
            )
          else this.log.info({ group: g.name, slave: server.address }, 'slave can be promoted again')
        }
        server.notPromotable = notPromotable
      }
    }
    if (role === 'master' && wasAlive !== this.isAlive(g, now)) changed = true
    if (isNew) g.wasAlive = this.isAlive(g, now) // registration is not a liveness transition
    if (offline) this.log.info({ group: g.name, role }, 'server went offline')
    // A replicated master's heartbeat renews its lease: with a shared store it is written every time
    // (other metaservers judge the master by the stored last-seen, and its answer must see a step-down
    // stored by another metaserver), and never answered when it could not be written.
    const fenced = role === 'master' && (g.replicated || g.epoch > 0) && !offline
    // The first report of a master in an epoch marks the epoch served in the store (abandonPromotion
    // never gives up a served epoch): written before the answer that gives it a lease.
    const servedUnmarked = report !== undefined && this.servedMarked.get(g.name) !== g.epoch
    const mustWrite = changed || offline || reportChanged || servedUnmarked || (fenced && this.store.shared)
    if (mustWrite || offsetsChanged || now - server.persistedAt >= this.options.lastSeenWriteIntervalMs) {
      const srv = server
      const group = g
      try {
        const written = await this.stored(() =>
          this.store.recordHeartbeat(
            { name: group.name, kind: group.kind, firstSeenAt: group.firstSeenAt, load: group.load },
            {
              group: group.name,
              role,
              address: srv.address,
              httpAddress: srv.httpAddress,
              lastSeenAt: srv.lastSeenAt,
              ...(role === 'slave'
                ? {
                    messageOffset: srv.messageOffset ?? 0,
                    actionOffset: srv.actionOffset ?? 0,
                    heardAt: srv.heardAt ?? now,
                    ...(srv.notPromotable !== undefined ? { notPromotable: srv.notPromotable } : {}),
                  }
                : {}),
            },
            group.epoch,
            report,
          ),
        )
        if (written.staleReport === true) {
          // Another metaserver stored a newer report of this master: refused, nothing written.
          server.lastSeenAt = before.lastSeenAt
          server.replication = before.replication
          applyReplication(g, written.replication)
          throw staleReportError(report?.seq ?? 0, written.replication?.reportSeq ?? 0)
        }
        if (!written.written) {
          // Another metaserver promoted a slave since our last reload: answer from its state.
          this.log.info(
            { group: g.name, epoch: g.epoch, stored: written.epoch },
            'newer epoch in the store: reloading',
          )
          await this.refresh()
          if (retry) return this.heartbeat(req, false)
          throw new QmqError('QMQ_ERR_METASERVER_STORE', `group ${g.name} changed epoch during its heartbeat`)
        }
        server.persistedAt = server.lastSeenAt
        if (report !== undefined) {
          this.servedMarked.set(g.name, g.epoch)
          g.replicated = report.replicated
          g.inSync = report.inSync
          g.inSyncEpoch = g.epoch
          g.reportedAt = now
          g.reportSeq = report.seq ?? 0
        }
        applyReplication(g, written.replication)
      } catch (err) {
        // A heartbeat that only refreshes a last-seen time is answered with the store down (memory
        // keeps the group alive; the time is written by a later heartbeat); a change is refused.
        if (mustWrite || !(err instanceof QmqError) || err.code !== 'QMQ_ERR_METASERVER_STORE') throw err
      }
    }
    const marks = this.readOnly.get(g.name)
    return {
      group: g.name,
      heartbeatIntervalMs: this.options.heartbeatIntervalMs,
      heartbeatTimeoutMs: this.options.heartbeatTimeoutMs,
      readOnly: marks?.has(ALL_SUBJECTS) ?? false,
      readOnlySubjects: marks === undefined ? [] : [...marks.keys()].filter((s) => s !== ALL_SUBJECTS),
      serverTime: now,
      // A master told to step down (`qmq failover`) hears 'slave' and gets no lease.
      role: role === 'master' && g.stepDownAt !== undefined ? 'slave' : role,
      epoch: g.epoch,
      masterAddress: this.isAlive(g, now) ? (g.master?.address ?? '') : '',
      leaseMs: this.leaseMs,
    }
  }

  /** How long a replicated master may acknowledge writes after a heartbeat it sent: before a promotion. */
  get leaseMs(): number {
    return Math.floor(this.options.heartbeatTimeoutMs / 2)
  }

  /**
   * The role a heartbeating server has, whatever it believes: the recorded master's address is the
   * master (a promoted slave learns it from the answer); another server claiming to be master of a
   * replicated group whose master is alive is its slave (a former master coming back). An unreplicated
   * group keeps the old rule: a master heartbeating from a new address replaces the old one. The same
   * for broker and delay groups: a group is replicated once its master reports a slave.
   */
  private roleOf(g: GroupState, req: ServerHeartbeatRequest, now: number): ServerRole {
    const master = g.master
    if (master === undefined) return req.role
    if (req.address === master.address) return 'master'
    if (req.role === 'master' && (g.replicated || g.epoch > 0) && this.serverAlive(master, now)) {
      if (req.state !== 'offline')
        this.log.warn(
          { group: g.name, address: req.address, master: master.address, epoch: g.epoch },
          'a former master is back: it joins as a slave',
        )
      return 'slave'
    }
    return req.role
  }

  private serverAlive(s: ServerState, now: number): boolean {
    return s.lastSeenAt > 0 && now - s.lastSeenAt <= this.options.heartbeatTimeoutMs
  }

  /**
   * The heartbeat of the server recorded as the master of the group's epoch, which says it refused
   * that promotion (it acts as a slave and will never serve the epoch: ServerReplication.refusedEpoch).
   * An older server never says so (it keeps refusing, as before).
   */
  private refusedPromotion(g: GroupState, req: ServerHeartbeatRequest): boolean {
    return (
      g.epoch > 0 &&
      req.role === 'slave' &&
      g.master?.address === req.address &&
      (req.replication?.refusedEpoch ?? 0) >= g.epoch &&
      this.servedRefusals.get(g.name) !== g.epoch
    )
  }

  /**
   * Gives up the epoch whose promoted slave refused it (store.abandonPromotion): the group gets the
   * next epoch with no master, the refusing server is stored as a slave that cannot be promoted, and
   * the slaves that were in sync with it when it was chosen are in sync in the new epoch (nothing was
   * written in the refused one). The next sweep promotes one of them, or, with none, the former
   * master coming back takes the group over (roleOf: no master). Memory is reloaded from the store.
   */
  private async abandonPromotion(g: GroupState, req: ServerHeartbeatRequest, now: number): Promise<void> {
    const rep = req.replication
    const slave: StoredServer = {
      group: g.name,
      role: 'slave',
      address: req.address,
      httpAddress: req.httpAddress,
      lastSeenAt: req.state === 'offline' ? 0 : now,
      messageOffset: rep?.messageOffset ?? 0,
      actionOffset: rep?.actionOffset ?? 0,
      heardAt: now,
      notPromotable:
        (rep === undefined ? undefined : notPromotableOf(rep)) ?? `refused promotion to epoch ${g.epoch}`,
    }
    const res = await this.stored(() =>
      this.store.abandonPromotion({ group: g.name, epoch: g.epoch, now, slave }),
    )
    if ('abandoned' in res)
      this.log.error(
        {
          group: g.name,
          refusedEpoch: g.epoch,
          epoch: res.abandoned,
          slave: req.address,
          reason: slave.notPromotable,
        },
        'the promoted slave refused its promotion: epoch given up, the group has no master until another slave is promoted or the former master is back',
      )
    else if (res.refused === 'served') {
      // Not asked again in this epoch (each heartbeat of the refuser would reload the store).
      this.servedRefusals.set(g.name, g.epoch)
      this.log.error(
        { group: g.name, epoch: g.epoch, slave: req.address },
        'the master of this epoch heartbeats as a slave that cannot serve it, but the epoch was served: not given up (its in-sync set may lag); an operator must act (docs/replication.md "A promotion refused")',
      )
    } else
      this.log.info(
        { group: g.name, epoch: g.epoch, refused: res.refused },
        'a refused promotion was already given up or superseded: reloading',
      )
    await this.refresh()
  }

  /**
   * The slaves that may be promoted as memory knows them: alive, in sync in this epoch, not saying
   * they cannot be promoted; most data first.
   */
  private promotable(g: GroupState, now: number): ServerState[] {
    if (g.inSyncEpoch !== g.epoch) return []
    return [...g.slaves.values()]
      .filter(
        (s) => this.serverAlive(s, now) && g.inSync.includes(s.address) && s.notPromotable === undefined,
      )
      .sort((a, b) => byMostData({ ...a, group: g.name }, { ...b, group: g.name }))
  }

  /**
   * Promotes slaves (issue 14): a replicated group whose master is silent past heartbeatTimeoutMs
   * (its lease, half that, ran out before), or that was told to step down (`qmq failover`) a lease
   * ago, gets its in-sync slave with the most data as master, with the next epoch. Memory only says
   * when to try: the store decides whether and which slave from its own rows (store.promote, one
   * transaction: the epoch compare-and-set, the master silent in the store, the in-sync report of this
   * epoch, the slaves' stored offsets), so any metaserver sharing it, or one restarted while the master
   * is down, promotes the same way. Returns the groups promoted.
   * Nothing is promoted while liveness is held (holdingLiveness(): the store down or just back, so
   * last-seen times in memory may be stale while the master heartbeats to another metaserver).
   */
  async sweepFailover(): Promise<string[]> {
    const now = this.now()
    const promoted: string[] = []
    if (this.holdingLiveness()) return promoted
    for (const g of this.groups.values()) {
      if (!(g.replicated || g.epoch > 0)) continue
      const master = g.master
      const stepDownDue = g.stepDownAt !== undefined && now - g.stepDownAt > this.leaseMs
      const masterGone = master === undefined || !this.serverAlive(master, now)
      if (!masterGone && !stepDownDue) {
        g.stuckLogged = false
        continue
      }
      if (this.promotable(g, now).length === 0) {
        if (!masterGone) {
          // A step-down with no slave left to take over: the master is told to be master again.
          const r = await this.stored(() => this.store.setStepDown(g.name, undefined))
          g.stepDownAt = r?.stepDownAt
          this.log.error({ group: g.name, inSync: g.inSync }, 'failover cancelled: no alive in-sync slave')
          continue
        }
        if (!g.stuckLogged)
          this.log.error(
            { group: g.name, slaves: [...g.slaves.keys()], inSync: g.inSync },
            'master is gone and no in-sync slave is alive to promote',
          )
        g.stuckLogged = true
        continue
      }
      const timeout = this.options.heartbeatTimeoutMs
      const result = await this.stored(() =>
        this.store.promote({
          group: g.name,
          expectedEpoch: g.epoch,
          now,
          deadBefore: now - timeout,
          ...(stepDownDue ? { stepDownBefore: now - this.leaseMs } : {}),
          slaveSeenAfter: now - timeout,
        }),
      )
      if ('refused' in result) {
        // 'epoch': another metaserver promoted; else the store knows better than memory (a master
        // heard by another metaserver, a newer report): reload either way.
        this.log.warn(
          { group: g.name, epoch: g.epoch, refused: result.refused },
          'promotion refused by the store: reloading',
        )
        await this.refresh()
        continue
      }
      const slave = result.promoted
      const former = g.master?.address
      g.epoch++
      g.failovers++
      // Its last report stays listed (a slave's, without inSyncSlaves) until it heartbeats as master:
      // followers tell a master that has not taken the role yet from one that serves (GroupInfo).
      const report = g.slaves.get(slave.address)?.replication
      g.slaves.delete(slave.address)
      g.master = {
        ...serverState(slave),
        role: 'master',
        ...(report !== undefined ? { replication: report } : {}),
      }
      g.inSync = []
      g.inSyncEpoch = g.epoch
      g.reportedAt = now
      g.reportSeq = 0
      g.stepDownAt = undefined
      g.stuckLogged = false
      this.log.warn(
        {
          group: g.name,
          epoch: g.epoch,
          master: slave.address,
          former,
          manual: stepDownDue,
          messageOffset: slave.messageOffset,
        },
        'promoted the in-sync slave to master',
      )
      promoted.push(g.name)
    }
    return promoted
  }

  /**
   * `qmq failover <group>`: the master is told to step down on its next heartbeat (it stops
   * acknowledging writes and rejoins as a slave); the in-sync slave is promoted once the master's
   * lease has run out. The step-down is stored: whichever metaserver the master heartbeats to tells
   * it, and whichever sweeps promotes.
   */
  async failover(name: string): Promise<GroupInfo> {
    const g = await this.requireSharedGroup(name)
    const now = this.now()
    const alive = [...g.slaves.values()].filter((s) => this.serverAlive(s, now))
    if (alive.length === 0) throw new QmqError('QMQ_ERR_NO_IN_SYNC_SLAVE', `group ${name} has no alive slave`)
    if (this.promotable(g, now).length === 0)
      throw new QmqError(
        'QMQ_ERR_NO_IN_SYNC_SLAVE',
        `no slave of ${name} (${alive.map((s) => s.address).join(', ')}) is in sync`,
      )
    const r = await this.stored(() => this.store.setStepDown(g.name, now))
    if (r?.stepDownAt === undefined)
      throw new QmqError('QMQ_ERR_NO_IN_SYNC_SLAVE', `the store holds no replication report of ${name}`)
    g.stepDownAt = r.stepDownAt
    this.log.warn({ group: name, inSync: g.inSync }, 'failover asked: the master steps down')
    return this.groupInfo(g, this.now())
  }

  // ---------------------------------------------------------------- routes and placement

  private setRoute(r: StoredRoute): void {
    const old = this.routes.get(r.subject)
    if (old !== undefined && old.version >= r.version) return
    for (const name of old?.groups ?? [])
      this.subjectCounts.set(name, (this.subjectCounts.get(name) ?? 1) - 1)
    for (const name of r.groups) this.subjectCounts.set(name, (this.subjectCounts.get(name) ?? 0) + 1)
    this.routes.set(r.subject, r)
  }

  private readOnlyOf(group: string): Map<string, number> {
    let m = this.readOnly.get(group)
    if (m === undefined) {
      m = new Map()
      this.readOnly.set(group, m)
    }
    return m
  }

  private isReadOnly(group: string, subject: string): boolean {
    const m = this.readOnly.get(group)
    return m !== undefined && (m.has(ALL_SUBJECTS) || m.has(subject))
  }

  /** Alive broker groups that take new subjects, least loaded first, excluding `exclude`. */
  private placementCandidates(exclude: readonly string[], now: number): string[] {
    const out: GroupState[] = []
    for (const g of this.groups.values()) {
      if (g.kind !== 'broker' || exclude.includes(g.name) || !this.inRoutes(g, now)) continue
      if (this.readOnly.get(g.name)?.has(ALL_SUBJECTS)) continue
      out.push(g)
    }
    out.sort(
      (a, b) =>
        (this.subjectCounts.get(a.name) ?? 0) - (this.subjectCounts.get(b.name) ?? 0) ||
        (a.load.messagesInPerSecond ?? 0) - (b.load.messagesInPerSecond ?? 0) ||
        (a.load.backlog ?? 0) - (b.load.backlog ?? 0) ||
        (a.name < b.name ? -1 : a.name > b.name ? 1 : 0),
    )
    return out.map((g) => g.name)
  }

  /** The stored route of a subject, assigning one on first use (concurrent callers share it). */
  private async ensureRoute(subject: string): Promise<StoredRoute> {
    const existing = this.routes.get(subject)
    if (existing !== undefined) return existing
    let pending = this.pendingAssign.get(subject)
    if (pending === undefined) {
      pending = this.assign(subject).finally(() => this.pendingAssign.delete(subject))
      this.pendingAssign.set(subject, pending)
    }
    return pending
  }

  private async assign(subject: string): Promise<StoredRoute> {
    const now = this.now()
    const chosen = this.placementCandidates([], now).slice(0, this.options.minGroupsPerSubject)
    if (chosen.length === 0) {
      throw new QmqError(
        'QMQ_ERR_NO_ROUTE',
        `no alive writable broker group to place subject ${JSON.stringify(subject)}`,
        {
          details: { subject },
        },
      )
    }
    const stored = await this.stored(() => this.store.assignRouteIfAbsent(subject, chosen, now))
    this.setRoute(stored)
    this.assignments++
    this.log.info({ subject, groups: stored.groups }, 'subject placed')
    return stored
  }

  /** Adds groups to a route with compare-and-set, retrying on a concurrent change. */
  private async addGroups(
    subject: string,
    pick: (route: StoredRoute) => string[],
    why: string,
  ): Promise<StoredRoute> {
    let route = await this.ensureRoute(subject)
    for (let attempt = 0; attempt < 5; attempt++) {
      const extra = pick(route).filter((g) => !route.groups.includes(g))
      if (extra.length === 0) return route
      const next = [...route.groups, ...extra]
      const version = route.version
      const updated = await this.stored(() => this.store.updateRoute(subject, next, version, this.now()))
      if (updated !== undefined) {
        this.setRoute(updated)
        this.log.info({ subject, added: extra, groups: updated.groups, why }, 'route extended')
        return updated
      }
      const fresh = await this.stored(() => this.store.getRoute(subject))
      if (fresh === undefined) break
      this.setRoute(fresh)
      route = fresh
    }
    return this.routes.get(subject) ?? route
  }

  /** Answers a route query; see RouteQuery in common/meta/types.ts. */
  async route(subject: string, kind: ClientKind): Promise<RouteResponse> {
    const now = this.now()
    if (kind === 'delay-producer') return this.delayRoute(subject, now)
    const routeSubject = realSubject(subject)
    let route = await this.ensureRoute(routeSubject)
    const min = this.options.minGroupsPerSubject
    if (route.groups.length < min) {
      const candidates = this.placementCandidates(route.groups, now)
      if (candidates.length > 0) {
        route = await this.addGroups(
          routeSubject,
          (r) => candidates.slice(0, Math.max(0, min - r.groups.length)),
          'top-up',
        )
      }
    }
    let groups = this.routeGroups(route, kind, now)
    if (groups.length === 0 && kind === 'producer' && this.options.extendOnOutage) {
      const candidates = this.placementCandidates(route.groups, now)
      if (candidates.length > 0) {
        route = await this.addGroups(routeSubject, () => candidates.slice(0, 1), 'outage')
        groups = this.routeGroups(route, kind, now)
      }
    }
    if (groups.length === 0) {
      throw new QmqError(
        'QMQ_ERR_NO_ROUTE',
        `no alive ${kind === 'producer' ? 'writable ' : ''}group serves subject ${JSON.stringify(routeSubject)} (route: ${route.groups.join(', ')})`,
        { details: { subject: routeSubject, groups: route.groups } },
      )
    }
    return {
      subject,
      routeSubject,
      kind,
      groups,
      version: route.version,
      updatedAt: route.updatedAt,
      serverTime: now,
    }
  }

  private routeGroups(route: StoredRoute, kind: ClientKind, now: number): RouteGroup[] {
    const out: RouteGroup[] = []
    for (const name of route.groups) {
      const g = this.groups.get(name)
      if (g === undefined || !this.inRoutes(g, now)) continue
      const readOnly = this.isReadOnly(name, route.subject)
      if (readOnly && kind === 'producer') continue
      out.push(this.routeGroup(g, readOnly ? 'r' : 'rw'))
    }
    return out
  }

  private routeGroup(g: GroupState, state: 'rw' | 'r'): RouteGroup {
    const master = g.master
    const rg: RouteGroup = { name: g.name, address: master?.address ?? '', state }
    if (master?.httpAddress !== undefined) rg.httpAddress = master.httpAddress
    return rg
  }

  private delayRoute(subject: string, now: number): RouteResponse {
    const alive: GroupState[] = []
    for (const g of this.groups.values()) {
      if (g.kind === 'delay' && this.inRoutes(g, now) && !this.isReadOnly(g.name, subject)) alive.push(g)
    }
    if (alive.length === 0) {
      throw new QmqError('QMQ_ERR_NO_ROUTE', 'no alive writable delay group', { details: { subject } })
    }
    alive.sort((a, b) => (a.name < b.name ? -1 : 1))
    const start = this.delayRotation++ % alive.length
    const groups = [...alive.slice(start), ...alive.slice(0, start)].map((g) => this.routeGroup(g, 'rw'))
    return {
      subject,
      routeSubject: subject,
      kind: 'delay-producer',
      groups,
      version: 0,
      updatedAt: 0,
      serverTime: now,
    }
  }

  // ---------------------------------------------------------------- admin

  private requireGroup(name: string): GroupState {
    const g = this.groups.get(name)
    if (g === undefined) {
      throw new QmqError(
        'QMQ_ERR_NOT_FOUND',
        `unknown group ${JSON.stringify(name)}: it has never sent a heartbeat`,
      )
    }
    return g
  }

  /** requireGroup, after a refresh when the group is new to us and another metaserver may know it. */
  private async requireSharedGroup(name: string): Promise<GroupState> {
    if (!this.groups.has(name) && this.store.shared) await this.refresh()
    return this.requireGroup(name)
  }

  async extendSubject(subject: string, group: string): Promise<SubjectInfo> {
    const g = await this.requireSharedGroup(group)
    if (g.kind !== 'broker') {
      throw new QmqError(
        'QMQ_ERR_INVALID_ARGUMENT',
        `group ${JSON.stringify(group)} is a delay group; routes hold broker groups`,
      )
    }
    const route = await this.addGroups(realSubject(subject), () => [group], 'admin')
    return this.subjectInfo(route)
  }

  async setReadOnly(
    group: string,
    subject: string | undefined,
    readOnly: boolean,
  ): Promise<ReadOnlySetting[]> {
    await this.requireSharedGroup(group)
    const target = subject === undefined || subject === '' ? ALL_SUBJECTS : subject
    const now = this.now()
    await this.stored(() => this.store.setReadOnly(group, target, readOnly, now))
    const marks = this.readOnlyOf(group)
    if (readOnly) {
      if (!marks.has(target)) marks.set(target, now)
    } else marks.delete(target)
    this.log.info({ group, subject: target, readOnly }, 'read-only mark changed')
    return this.listReadOnly()
  }

  listReadOnly(): ReadOnlySetting[] {
    const out: ReadOnlySetting[] = []
    for (const [group, marks] of this.readOnly) {
      for (const [subject, createdAt] of marks) out.push({ group, subject, createdAt })
    }
    return out.sort((a, b) => (a.group + a.subject < b.group + b.subject ? -1 : 1))
  }

  private subjectInfo(r: StoredRoute): SubjectInfo {
    return {
      subject: r.subject,
      groups: [...r.groups],
      version: r.version,
      createdAt: r.createdAt,
      updatedAt: r.updatedAt,
    }
  }

  listSubjects(): SubjectInfo[] {
    return [...this.routes.values()]
      .map((r) => this.subjectInfo(r))
      .sort((a, b) => (a.subject < b.subject ? -1 : 1))
  }

  getSubject(subject: string): SubjectInfo {
    const r = this.routes.get(realSubject(subject))
    if (r === undefined)
      throw new QmqError('QMQ_ERR_NOT_FOUND', `subject ${JSON.stringify(subject)} has no route yet`)
    return this.subjectInfo(r)
  }

  private groupInfo(g: GroupState, now: number): GroupInfo {
    const master = g.master
    const slaves = [...g.slaves.values()].sort((a, b) => (a.address < b.address ? -1 : 1))
    const marks = this.readOnly.get(g.name)
    const info: GroupInfo = {
      name: g.name,
      kind: g.kind,
      address: master?.address ?? '',
      alive: this.inRoutes(g, now),
      lastSeenAt: master?.lastSeenAt ?? 0,
      firstSeenAt: g.firstSeenAt,
      readOnly: marks?.has(ALL_SUBJECTS) ?? false,
      readOnlySubjects: marks === undefined ? [] : [...marks.keys()].filter((s) => s !== ALL_SUBJECTS),
      subjects: this.subjectCounts.get(g.name) ?? 0,
      load: g.load,
      servers: [...(master === undefined ? [] : [master]), ...slaves].map((s) => {
        const out: GroupInfo['servers'][number] = {
          role: s.role,
          address: s.address,
          lastSeenAt: s.lastSeenAt,
          alive: s.lastSeenAt > 0 && now - s.lastSeenAt <= this.options.heartbeatTimeoutMs,
        }
        if (s.heardAt !== undefined) out.lastHeardAt = s.heardAt
        if (s.notPromotable !== undefined) out.notPromotable = s.notPromotable
        if (s.httpAddress !== undefined) out.httpAddress = s.httpAddress
        if (s.replication !== undefined) out.replication = s.replication
        return out
      }),
      epoch: g.epoch,
      failovers: g.failovers,
    }
    if (master?.httpAddress !== undefined) info.httpAddress = master.httpAddress
    return info
  }

  listGroups(): GroupInfo[] {
    const now = this.now()
    return [...this.groups.values()]
      .map((g) => this.groupInfo(g, now))
      .sort((a, b) => (a.name < b.name ? -1 : 1))
  }

  getGroup(name: string): GroupInfo {
    return this.groupInfo(this.requireGroup(name), this.now())
  }

  counts(): {
    groups: Record<GroupKind, number>
    alive: Record<GroupKind, number>
    subjects: number
    clients: number
  } {
    const now = this.now()
    const groups = { broker: 0, delay: 0 }
    const alive = { broker: 0, delay: 0 }
    for (const g of this.groups.values()) {
      groups[g.kind]++
      if (this.inRoutes(g, now)) alive[g.kind]++
    }
    return { groups, alive, subjects: this.routes.size, clients: this.clients.countOnline(now) }
  }

  // ---------------------------------------------------------------- clients

  async clientHeartbeat(req: ClientHeartbeatRequest): Promise<ClientHeartbeatResponse> {
    const now = this.now()
    try {
      await this.stored(() => this.clients.record(req, now))
    } catch (err) {
      // The registry is informational: the store down, memory still has the entry.
      if (!(err instanceof QmqError) || err.code !== 'QMQ_ERR_METASERVER_STORE') throw err
    }
    const routes: RouteResponse[] = []
    if (req.includeRoutes === true && req.state !== 'offline') {
      const seen = new Set<string>()
      for (const sub of req.subscriptions) {
        if (seen.has(sub.subject)) continue
        seen.add(sub.subject)
        try {
          routes.push(await this.route(sub.subject, req.kind))
        } catch (err) {
          if (!(err instanceof QmqError) || err.code !== 'QMQ_ERR_NO_ROUTE') throw err
        }
      }
    }
    return {
      heartbeatIntervalMs: this.options.clientHeartbeatIntervalMs,
      clientTimeoutMs: this.options.clientTimeoutMs,
      routes,
      serverTime: now,
    }
  }

  /**
   * Deletes the slaves not heard from for slaveExpiryMs (0: never), in the store and in memory:
   * gone for good, they would stay listed (not alive) forever. Answers them.
   */
  async expireSlaves(): Promise<SlaveKey[]> {
    const o = this.options
    if (o.slaveExpiryMs <= 0) return []
    // A live slave's heard-at is written at least every lastSeenWriteIntervalMs: never expire sooner.
    const expiry = Math.max(o.slaveExpiryMs, 2 * o.heartbeatTimeoutMs + o.lastSeenWriteIntervalMs)
    const gone = await this.stored(() => this.store.expireSlaves(this.now() - expiry))
    for (const k of gone) {
      this.groups.get(k.group)?.slaves.delete(k.address)
      this.log.info({ group: k.group, slave: k.address, expiryMs: expiry }, 'slave not heard from: removed')
    }
    return gone
  }

  /**
   * `qmq remove-slave` (admin): forgets a slave that is not alive (one alive would come back with its
   * next heartbeat: QMQ_ERR_GROUP_ACTIVE). Answers the group.
   */
  async removeSlave(name: string, address: string): Promise<GroupInfo> {
    const g = this.requireGroup(name)
    const now = this.now()
    const mine = g.slaves.get(address)
    if (mine !== undefined && this.serverAlive(mine, now))
      throw new QmqError('QMQ_ERR_GROUP_ACTIVE', `slave ${address} of ${name} is alive: stop it first`)
    const res = await this.stored(() =>
      this.store.removeSlave(name, address, now - this.options.heartbeatTimeoutMs),
    )
    if (res === 'alive')
      throw new QmqError('QMQ_ERR_GROUP_ACTIVE', `slave ${address} of ${name} is alive: stop it first`)
    if (res === 'unknown' && mine === undefined)
      throw new QmqError('QMQ_ERR_NOT_FOUND', `group ${name} has no slave ${address}`)
    g.slaves.delete(address)
    this.log.warn({ group: name, slave: address }, 'slave removed by an admin')
    return this.groupInfo(g, now)
  }

  /** Drops client entries silent for clientTimeoutMs; answers how many. */
  expireClients(): Promise<number> {
    return this.stored(() => this.clients.expire(this.now()))
  }

  listClients(filter: ClientFilter): ClientInfo[] {
    return this.clients.list(filter, this.now())
  }
}
