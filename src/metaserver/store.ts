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
 * - `promote` decides from stored rows only (promotion.ts), one transaction per group: of several
 *   metaservers promoting at once one wins. `recordHeartbeat` writes no master row or report for a
 *   caller whose epoch is older than the stored one (a promotion it has not reloaded yet).
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
  /** A slave: the durable ends of its copies (message log, action log) as it last reported them. */
  messageOffset?: number
  actionOffset?: number
  /** A slave: its last heartbeat, an 'offline' one included (expiry, `expireSlaves`). */
  heardAt?: number
  /**
   * A slave that said, in its newest heartbeat, it cannot be promoted (ServerReplication.promotable
   * false): why. Such a slave is never promoted (promotion.ts). Absent: promotable.
   */
  notPromotable?: string
}

/** A slave row deleted (expired or removed by an admin). */
export interface SlaveKey {
  group: string
  address: string
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

/**
 * A replicated group's state that a promotion needs (issue 14), as its master last reported it and
 * `qmq failover` asked; absent for a group whose master never reported a slave.
 */
export interface StoredReplication {
  group: string
  /** The master has (had) a slave: it holds a lease and the group fails over. */
  replicated: boolean
  /** The group epoch the report was made in: only a report of the current epoch names promotable slaves. */
  epoch: number
  /** The slaves (`host:port`) the master reported in sync. */
  inSync: string[]
  reportedAt: number
  /** The master's order of the report (ServerReplication.reportSeq); 0: it sent none. */
  reportSeq: number
  /** `qmq failover` asked the master to step down at this time; undefined: not asked. */
  stepDownAt: number | undefined
  /**
   * Set by a promotion: the other slaves of the in-sync set it chose from (they hold everything of
   * the former epoch). Should the promoted slave refuse (abandonPromotion), they are the in-sync set
   * of the next epoch, since nothing was written in the refused one. Absent or []: none.
   */
  priorInSync?: string[]
  /**
   * A master heartbeated as master in this epoch (stored as prior_in_sync_json 'null'): the epoch was
   * served, so a later refusal of it cannot be given up (writes were acknowledged in it; the prior
   * in-sync set no longer holds everything).
   */
  served?: boolean
}

/** A master's replication report, written with its heartbeat. */
export interface ReplicationReport {
  replicated: boolean
  inSync: string[]
  /** ServerReplication.reportSeq; 0 or absent: the master sent none (ordered by arrival then). */
  seq?: number
}

/**
 * `report` is older than `stored` (the same epoch, a lower reportSeq): it must not replace it. Reports
 * without a reportSeq (older servers) are never refused.
 */
export function staleReport(
  stored: StoredReplication | undefined,
  epoch: number,
  report: ReplicationReport,
): boolean {
  return (
    stored !== undefined &&
    stored.epoch === epoch &&
    (report.seq ?? 0) > 0 &&
    stored.reportSeq > (report.seq ?? 0)
  )
}

export interface HeartbeatResult {
  /**
   * False when the group's stored epoch is newer than the caller's (another metaserver promoted a
   * slave meanwhile): the server row and report were not written (the group's load was).
   */
  written: boolean
  /** The group's stored epoch (0 before its first promotion). */
  epoch: number
  /** The group's stored replication state after the write (a step-down asked elsewhere shows here). */
  replication: StoredReplication | undefined
  /** The report was older than the stored one (`staleReport`): nothing was written. */
  staleReport?: boolean
}

export interface PromoteRequest {
  group: string
  /** The stored epoch must be this; a promotion moves it to expectedEpoch + 1. */
  expectedEpoch: number
  now: number
  /** The stored master must be silent: last seen at or before this (any metaserver may have heard it). */
  deadBefore: number
  /**
   * Or: a step-down (`qmq failover`) stored at or before this (the master's lease ran out since) is
   * enough, whatever the master's last-seen (it keeps heartbeating, as a slave-to-be).
   */
  stepDownBefore?: number
  /** A slave is promotable only when its stored last-seen is after this. */
  slaveSeenAfter: number
}

export type PromoteResult =
  | { promoted: StoredServer }
  | {
      /**
       * 'epoch': another metaserver promoted first; 'master-alive': the master was heard after
       * deadBefore (and no step-down is due); 'no-in-sync-slave': no alive slave that the master
       * reported in sync in this epoch.
       */
      refused: 'epoch' | 'master-alive' | 'no-in-sync-slave'
    }

/**
 * The master recorded for `epoch` (the slave promoted to it) said it refused that promotion and
 * will never serve that epoch (ServerReplication.refusedEpoch): the epoch is given up.
 */
export interface AbandonRequest {
  group: string
  /** The stored epoch must be this, and its master row `slave.address`. */
  epoch: number
  now: number
  /** The refusing server's row as a slave (its offsets, times, and notPromotable). */
  slave: StoredServer
}

export type AbandonResult =
  | {
      /** The group's epoch now (epoch + 1): no master, the prior in-sync set in sync in it. */
      abandoned: number
    }
  | {
      /**
       * 'epoch': the stored epoch moved on; 'not-master': the epoch's master row is another server;
       * 'served': a master served the epoch (StoredReplication.served).
       */
      refused: 'epoch' | 'not-master' | 'served'
    }

export interface MetaSnapshot {
  replication: StoredReplication[]
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
  /**
   * Upserts a group (its load) and one of its servers (address, last seen; a slave's offsets), and a
   * master's replication `report`, in one transaction. `epoch` is the group epoch the caller believes:
   * when the stored one is newer, only the load is written (see HeartbeatResult). A master row is the
   * group's one master (a new address replaces it); a slave row is one of its slaves (by address).
   * A report older than the stored one (lower epoch, or same epoch and earlier `server.lastSeenAt`)
   * does not replace it; a stored step-down is kept.
   */
  recordHeartbeat(
    group: StoredGroup,
    server: StoredServer,
    epoch: number,
    report?: ReplicationReport,
  ): Promise<HeartbeatResult>
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
   * Replication (issue 14): decides and makes a promotion in one transaction, from the stored state
   * only (promotion.ts: choosePromotion): the stored epoch must be `expectedEpoch`, the stored master
   * silent since `deadBefore` (or a step-down due, see PromoteRequest), and the slave promoted is the
   * alive one the master reported in sync in this epoch with the most data (offsets). Then the epoch
   * moves by one (failovers + 1), the master row becomes that slave (the other slaves stay), its slave
   * row is deleted and the replication state starts the new epoch (no in-sync slave, no step-down).
   * Among several metaservers racing, one promotion per epoch wins; the others are refused 'epoch'.
   */
  promote(req: PromoteRequest): Promise<PromoteResult>
  /**
   * A promotion refused by the promoted slave (AbandonRequest), in one transaction: the stored epoch
   * must be `epoch` and its master row the refusing server. Then the epoch moves by one (failovers
   * unchanged: nothing was served in the refused epoch, so the new one continues the epoch before
   * it), the master row is deleted (the group has no master: the next sweep promotes another slave,
   * or the former master coming back takes the group over), the refusing server is stored as a slave
   * (with its notPromotable reason), and the replication state starts the new epoch with the
   * promotion's prior in-sync set (StoredReplication.priorInSync) as its in-sync set.
   */
  abandonPromotion(req: AbandonRequest): Promise<AbandonResult>
  /**
   * `qmq failover`: stores a step-down of the group's master at `at`, or at the stored master's
   * last-seen when that is later (so it is after every heartbeat of the master answered as master:
   * its lease runs out leaseMs after the step-down, whichever metaserver it heartbeats to); an earlier
   * stored step-down is kept; undefined clears it. Answers the stored replication state (undefined:
   * the group has none).
   */
  setStepDown(group: string, at: number | undefined): Promise<StoredReplication | undefined>
  /** Deletes the slave rows last heard from before `heardBefore` (gone for good); answers them. */
  expireSlaves(heardBefore: number): Promise<SlaveKey[]>
  /**
   * `qmq remove-slave`: deletes one slave row unless it heartbeated at or after `seenBefore` (it is
   * alive: it would come back with its next heartbeat). 'unknown': no such row.
   */
  removeSlave(group: string, address: string, seenBefore: number): Promise<'removed' | 'alive' | 'unknown'>
  close(): Promise<void>
  /** Application credentials (issue 18, app-store.ts): every store keeps them. */
  readonly apps: AppCredentialStore
}
