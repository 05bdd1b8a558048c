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
import type { MetaStore, StoredMetaserver, StoredRoute, StoredServer } from './store'

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
}

interface GroupState {
  name: string
  kind: GroupKind
  firstSeenAt: number
  load: ServerLoad
  servers: Map<ServerRole, ServerState>
  /** Alive as last observed by the sweep (for transition logs and metrics). */
  wasAlive: boolean
  // Replication (issue 14; docs/replication.md):
  /** Grows with every promotion (stored with a compare-and-set). */
  epoch: number
  failovers: number
  /** The master reported a slave: it holds a lease, and its group fails over. */
  replicated: boolean
  /** The slaves the master last reported in sync (only these are promoted). */
  inSync: string[]
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
  'epoch' | 'failovers' | 'replicated' | 'inSync' | 'stepDownAt' | 'stuckLogged'
> {
  return { epoch: 0, failovers: 0, replicated: false, inSync: [], stepDownAt: undefined, stuckLogged: false }
}

export class MetaService {
  private readonly groups = new Map<string, GroupState>()
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
        servers: new Map(),
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
      if (g === undefined) continue
      g.servers.set(s.role, { ...s, persistedAt: s.lastSeenAt })
    }
    for (const r of snap.routes) this.setRoute(r)
    for (const r of snap.readOnly) this.readOnlyOf(r.group).set(r.subject, r.createdAt)
    this.clients.merge(snap.clients)
    const decided = new Map(snap.liveness.map((l) => [l.group, l.alive]))
    const now = this.now()
    for (const g of this.groups.values()) {
      // The decided state: a transition since then is found (and decided once) by the next sweep.
      g.wasAlive = decided.get(g.name) ?? this.isAlive(g, now)
      const lastSeen = g.servers.get('master')?.lastSeenAt ?? 0
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
        const state = { ...g, servers: new Map(), wasAlive: false, ...newReplicationState() }
        this.groups.set(g.name, state)
        added.push(state)
      } else if (mine.kind === g.kind) mine.load = g.load
    }
    for (const e of snap.epochs) {
      const g = this.groups.get(e.group)
      if (g === undefined || e.epoch <= g.epoch) continue
      // Another metaserver promoted: its master row (below) is the one to believe.
      g.epoch = e.epoch
      g.failovers = e.failovers
      g.replicated = true
      g.servers.delete('master')
      g.servers.delete('slave')
    }
    for (const s of snap.servers) {
      const g = this.groups.get(s.group)
      if (g === undefined) continue
      const mine = g.servers.get(s.role)
      if (mine === undefined) g.servers.set(s.role, { ...s, persistedAt: s.lastSeenAt })
      else if (s.lastSeenAt > mine.lastSeenAt) {
        mine.lastSeenAt = s.lastSeenAt
        mine.persistedAt = Math.max(mine.persistedAt, s.lastSeenAt)
        mine.address = s.address
        mine.httpAddress = s.httpAddress
      }
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
    const master = g.servers.get('master')
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
      const master = g.servers.get('master')
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

  async heartbeat(req: ServerHeartbeatRequest): Promise<ServerHeartbeatResponse> {
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
        servers: new Map(),
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
    if (req.load !== undefined) g.load = req.load
    const offline = req.state === 'offline'
    const wasAlive = this.isAlive(g, now)
    const role = this.roleOf(g, req, now)
    let server = g.servers.get(role)
    if (server === undefined) {
      server = {
        role,
        address: req.address,
        httpAddress: req.httpAddress,
        lastSeenAt: 0,
        persistedAt: -1,
      }
      g.servers.set(role, server)
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
      changed = true
    }
    server.lastSeenAt = offline ? 0 : now
    if (req.replication !== undefined) {
      server.replication = req.replication
      // Only a broker acting as master reports its in-sync slaves (a stepped-down one no longer does).
      if (role === 'master' && req.role === 'master') {
        g.inSync = req.replication.inSyncSlaves ?? []
        if (req.replication.replicated === true) g.replicated = true
      }
    }
    if (role === 'master' && wasAlive !== this.isAlive(g, now)) changed = true
    if (isNew) g.wasAlive = this.isAlive(g, now) // registration is not a liveness transition
    if (offline) this.log.info({ group: g.name, role }, 'server went offline')
    if (changed || offline || now - server.persistedAt >= this.options.lastSeenWriteIntervalMs) {
      const srv = server
      try {
        await this.stored(() =>
          this.store.recordHeartbeat(
            { name: g.name, kind: g.kind, firstSeenAt: g.firstSeenAt, load: g.load },
            {
              group: g.name,
              role,
              address: srv.address,
              httpAddress: srv.httpAddress,
              lastSeenAt: srv.lastSeenAt,
            },
          ),
        )
        server.persistedAt = server.lastSeenAt
      } catch (err) {
        // A heartbeat that only refreshes a last-seen time is answered with the store down (memory
        // keeps the group alive; the time is written by a later heartbeat); a change is refused.
        if (changed || offline || !(err instanceof QmqError) || err.code !== 'QMQ_ERR_METASERVER_STORE')
          throw err
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
      masterAddress: this.isAlive(g, now) ? (g.servers.get('master')?.address ?? '') : '',
      leaseMs: this.leaseMs,
    }
  }

  /** How long a replicated master may acknowledge writes after a heartbeat it sent: before a promotion. */
  get leaseMs(): number {
    return Math.floor(this.options.heartbeatTimeoutMs / 2)
  }

  /**
   * The role a heartbeating broker has, whatever it believes: the recorded master's address is the
   * master (a promoted slave learns it from the answer); another server claiming to be master of a
   * replicated group whose master is alive is its slave (a former master coming back). An unreplicated
   * group keeps the old rule: a master heartbeating from a new address replaces the old one.
   */
  private roleOf(g: GroupState, req: ServerHeartbeatRequest, now: number): ServerRole {
    const master = g.servers.get('master')
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
   * Promotes slaves (issue 14): a replicated group whose master is silent past heartbeatTimeoutMs
   * (its lease, half that, ran out before), or that was told to step down (`qmq failover`) a lease
   * ago, gets its in-sync slave as master, with the next epoch (a compare-and-set in the store:
   * among several metaservers one promotion wins). Returns the groups promoted.
   * Nothing is promoted while liveness is held (holdingLiveness(): the store down or just back, so
   * last-seen times in memory may be stale while the master heartbeats to another metaserver), and the
   * store refuses a promotion for a silent master whose stored last-seen is recent (two masters).
   */
  async sweepFailover(): Promise<string[]> {
    const now = this.now()
    const promoted: string[] = []
    if (this.holdingLiveness()) return promoted
    for (const g of this.groups.values()) {
      if (!(g.replicated || g.epoch > 0)) continue
      const master = g.servers.get('master')
      const stepDownDue = g.stepDownAt !== undefined && now - g.stepDownAt > this.leaseMs
      const masterGone = master === undefined || !this.serverAlive(master, now)
      if (!masterGone && !stepDownDue) {
        g.stuckLogged = false
        continue
      }
      const slave = g.servers.get('slave')
      if (slave === undefined || !this.serverAlive(slave, now) || !g.inSync.includes(slave.address)) {
        if (!g.stuckLogged && masterGone)
          this.log.error(
            { group: g.name, slave: slave?.address, inSync: g.inSync },
            'master is gone and no in-sync slave is alive to promote',
          )
        g.stuckLogged = true
        continue
      }
      const next: StoredServer = {
        group: g.name,
        role: 'master',
        address: slave.address,
        httpAddress: slave.httpAddress,
        lastSeenAt: slave.lastSeenAt,
      }
      // A step-down (`qmq failover`) is asked of a live master that keeps heartbeating (as a slave-to-be);
      // its safety is the lease that ran out, so its last-seen does not count against it. Otherwise the
      // master must be silent in the store too (no metaserver heard it within heartbeatTimeoutMs).
      const deadBefore = stepDownDue ? Number.MAX_SAFE_INTEGER : now - this.options.heartbeatTimeoutMs
      if (!(await this.store.promote(g.name, g.epoch, next, now, deadBefore))) {
        this.log.warn({ group: g.name, epoch: g.epoch }, 'promotion lost a race: reloading')
        await this.refresh()
        continue
      }
      g.epoch++
      g.failovers++
      g.servers.set('master', { ...slave, role: 'master' })
      g.servers.delete('slave')
      g.inSync = []
      g.stepDownAt = undefined
      g.stuckLogged = false
      this.log.warn(
        {
          group: g.name,
          epoch: g.epoch,
          master: slave.address,
          former: master?.address,
          manual: stepDownDue,
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
   * lease has run out.
   */
  failover(name: string): GroupInfo {
    const now = this.now()
    const g = this.groups.get(name)
    if (g === undefined) throw new QmqError('QMQ_ERR_NOT_FOUND', `no group ${JSON.stringify(name)}`)
    const slave = g.servers.get('slave')
    if (slave === undefined || !this.serverAlive(slave, now))
      throw new QmqError('QMQ_ERR_NO_IN_SYNC_SLAVE', `group ${name} has no alive slave`)
    if (!g.inSync.includes(slave.address))
      throw new QmqError('QMQ_ERR_NO_IN_SYNC_SLAVE', `the slave of ${name} (${slave.address}) is not in sync`)
    g.stepDownAt ??= now
    this.log.warn({ group: name, slave: slave.address }, 'failover asked: the master steps down')
    return this.groupInfo(g, now)
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
    const master = g.servers.get('master')
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
    const master = g.servers.get('master')
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
      servers: [...g.servers.values()].map((s) => {
        const out: GroupInfo['servers'][number] = {
          role: s.role,
          address: s.address,
          lastSeenAt: s.lastSeenAt,
          alive: s.lastSeenAt > 0 && now - s.lastSeenAt <= this.options.heartbeatTimeoutMs,
        }
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

  /** Drops client entries silent for clientTimeoutMs; answers how many. */
  expireClients(): Promise<number> {
    return this.stored(() => this.clients.expire(this.now()))
  }

  listClients(filter: ClientFilter): ClientInfo[] {
    return this.clients.list(filter, this.now())
  }
}
