import type { ClientKind, GroupKind, ServerLoad, ServerRole } from '../common/meta/types'

/**
 * The metaserver's persistent state, behind an interface so that a PostgreSQL store can later let
 * several metaservers share one database. The default is SqliteMetaStore (sqlite-store.ts).
 *
 * Methods are async (a network database needs it) even though SQLite answers synchronously.
 * Invariants every implementation keeps:
 * - `assignRouteIfAbsent` is atomic: when two callers (in one process or several sharing the
 *   database) assign the same subject at once, exactly one route is stored and both get it back.
 * - `updateRoute` is a compare-and-set on `version`: it changes nothing and answers undefined when the
 *   stored version is not `expectedVersion` (someone else changed the route first).
 * - Route group lists only grow (placement never removes a group: consumers must drain it).
 */

export interface StoredGroup {
  name: string
  kind: GroupKind
  firstSeenAt: number
  load: ServerLoad
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
}

export interface MetaStore {
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
   * Replication (issue 14): promotes `master` (the group's slave) in one transaction: a
   * compare-and-set of the group's epoch from `expectedEpoch` to `expectedEpoch + 1` (failovers + 1),
   * the master row replaced by `master`, the slave row deleted. False (nothing changed) when the stored
   * epoch is not `expectedEpoch` (another metaserver promoted first).
   */
  promote(group: string, expectedEpoch: number, master: StoredServer, now: number): Promise<boolean>
  close(): Promise<void>
}
