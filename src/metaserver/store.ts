import type { ClientKind, GroupKind, ServerLoad, ServerRole } from '../common/meta/types'
import type { AppCredentialStore } from './app-store'

/**
 * The metaserver's persistent state, behind one interface with two implementations: SqliteMetaStore
 * (sqlite-store.ts, one file, the embedded default) and PostgresMetaStore (postgres-store.ts, shared by
 * any number of metaservers). test/metaserver/store-conformance.test.ts runs the same checks on both:
 * a method added here gets a case there.
 *
 * Methods are async (a network database needs it) even though SQLite answers synchronously.
 * Invariants every implementation keeps:
 * - `assignRouteIfAbsent` is atomic: when two callers (in one process or several sharing the
 *   database) assign the same subject at once, exactly one route is stored and both get it back.
 * - `updateRoute` is a compare-and-set on `version`: it changes nothing and answers undefined when the
 *   stored version is not `expectedVersion` (someone else changed the route first).
 * - Route group lists only grow (placement never removes a group: consumers must drain it).
 * - `decideLiveness` is a compare-and-set on the stored liveness of a group: of several metaservers
 *   deciding the same transition at once, exactly one gets `changed: true` (and the liveness version
 *   grows by one). A "dead" decision is refused while the stored master last-seen is recent.
 * - Times are milliseconds since the epoch on the store's clock: a metaserver adds `clockOffsetMs()`
 *   to its own clock before writing or comparing them, so metaservers with clocks apart agree.
 * - Errors are QmqError QMQ_ERR_METASERVER_STORE (retriable): the database may come back.
 */

export interface StoredGroup {
  name: string
  kind: GroupKind
  firstSeenAt: number
  load: ServerLoad
}

/** A group's liveness as last decided (decideLiveness); absent for a group never decided. */
export interface StoredLiveness {
  group: string
  alive: boolean
  /** Grows by one at each decided transition. */
  version: number
  changedAt: number
}

export interface LivenessDecision {
  /** True for the one caller whose compare-and-set made the transition. */
  changed: boolean
  /** The stored state after the call. */
  alive: boolean
  version: number
  /** The stored master last-seen (0 when none): a refused "dead" decision learns from it. */
  masterLastSeenAt: number
}

/** A metaserver registered in the store (GET /meta/address lists the live ones). */
export interface StoredMetaserver {
  id: string
  url: string
  startedAt: number
  lastSeenAt: number
}

export interface StoredServer {
  group: string
  role: ServerRole
  /** `host:port` (TCP). */
  address: string
  httpAddress: string | undefined
  /** Last heartbeat; 0 after a clean 'offline'. */
  lastSeenAt: number
}

export interface StoredRoute {
  subject: string
  /** Group names in placement order; never shrinks. */
  groups: string[]
  version: number
  createdAt: number
  updatedAt: number
}

export interface StoredReadOnly {
  group: string
  /** A subject, or '*' for every subject. */
  subject: string
  createdAt: number
}

export interface StoredClient {
  clientId: string
  kind: ClientKind
  subject: string
  /** '' for producers. */
  consumerGroup: string
  appCode: string
  lastSeenAt: number
}

/** A replicated group's epoch (issue 14): absent until its first promotion (epoch 0). */
export interface StoredEpoch {
  group: string
  epoch: number
  /** Promotions so far. */
  failovers: number
  updatedAt: number
}

export interface MetaSnapshot {
  epochs: StoredEpoch[]
  groups: StoredGroup[]
  servers: StoredServer[]
  routes: StoredRoute[]
  readOnly: StoredReadOnly[]
  clients: StoredClient[]
  liveness: StoredLiveness[]
}

export interface MetaStore {
  /** 'sqlite' or 'postgres', for logs and health. */
  readonly kind: string
  /** True when several metaservers may share this store (refresh from it periodically). */
  readonly shared: boolean
  /** The store's clock minus this process's (ms); 0 for an embedded store. */
  clockOffsetMs(localNow: number): Promise<number>
  /** Everything, to build the in-memory view at start (and to refresh it from a shared store). */
  loadAll(): Promise<MetaSnapshot>
  /** Upserts a group (its load) and one of its servers (address, last seen), in one transaction. */
  recordHeartbeat(group: StoredGroup, server: StoredServer): Promise<void>
  getRoute(subject: string): Promise<StoredRoute | undefined>
  /** Stores `groups` as the subject's route unless it has one; answers the stored route either way. */
  assignRouteIfAbsent(subject: string, groups: readonly string[], now: number): Promise<StoredRoute>
  /** Compare-and-set on version; undefined when the stored version differs (or no route exists). */
  updateRoute(
    subject: string,
    groups: readonly string[],
    expectedVersion: number,
    now: number,
  ): Promise<StoredRoute | undefined>
  setReadOnly(group: string, subject: string, readOnly: boolean, now: number): Promise<void>
  upsertClient(client: StoredClient): Promise<void>
  deleteClient(key: Pick<StoredClient, 'clientId' | 'kind' | 'subject' | 'consumerGroup'>): Promise<void>
  /** Deletes client entries last seen before `before`; answers how many. */
  deleteClientsSeenBefore(before: number): Promise<number>
  /**
   * Compare-and-set of a group's liveness: sets it to `alive` unless it is so already. A dead decision
   * is refused (changed false) while the stored master last-seen is after `deadBefore`.
   */
  decideLiveness(group: string, alive: boolean, now: number, deadBefore: number): Promise<LivenessDecision>
  /** Upserts this metaserver's row (its URL and last-seen time). */
  registerMetaserver(m: StoredMetaserver): Promise<void>
  /** Metaservers last seen after `seenAfter`, oldest start first. */
  listMetaservers(seenAfter: number): Promise<StoredMetaserver[]>
  removeMetaserver(id: string): Promise<void>
  /**
   * Replication (issue 14): promotes `master` (the group's slave) in one transaction: a
   * compare-and-set of the group's epoch from `expectedEpoch` to `expectedEpoch + 1` (failovers + 1),
   * the master row replaced by `master`, the slave row deleted. False (nothing changed) when the stored
   * epoch is not `expectedEpoch` (another metaserver promoted first), or when the stored master
   * row's last-seen is after `deadBefore` (another metaserver heard the master recently: promoting
   * would make two masters), checked in the same transaction.
   */
  promote(
    group: string,
    expectedEpoch: number,
    master: StoredServer,
    now: number,
    deadBefore: number,
  ): Promise<boolean>
  close(): Promise<void>
  /** Application credentials (issue 18, app-store.ts): every store keeps them. */
  readonly apps: AppCredentialStore
}
