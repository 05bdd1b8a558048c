import type {
  AbandonRequest,
  AbandonResult,
  PromoteRequest,
  PromoteResult,
  StoredReplication,
  StoredServer,
} from './store'

/**
 * The promotion rule (issue 14; docs/replication.md), one implementation for both stores: each reads
 * the group's rows inside its promotion transaction (with the group locked against heartbeats and
 * other promotions) and asks this which slave to promote, if any.
 */

/** A group's stored rows as a promotion transaction read them. */
export interface PromotionState {
  /** The stored epoch (0 without a group_epochs row). */
  epoch: number
  /** The stored master's last-seen (0 without a master row, or after its clean 'offline'). */
  masterLastSeenAt: number
  /** The stored master's address (undefined without a master row). */
  masterAddress?: string
  replication: StoredReplication | undefined
  slaves: StoredServer[]
}

/** More data first: the message log's durable end, then the action log's; then by address (stable). */
export function byMostData(a: StoredServer, b: StoredServer): number {
  return (
    (b.messageOffset ?? 0) - (a.messageOffset ?? 0) ||
    (b.actionOffset ?? 0) - (a.actionOffset ?? 0) ||
    (a.address < b.address ? -1 : a.address > b.address ? 1 : 0)
  )
}

/**
 * The slave to promote, or why none: the epoch must be the expected one; the master silent since
 * deadBefore unless a step-down stored at or before stepDownBefore is due; the candidates are the
 * slaves seen after slaveSeenAfter that the master's report of this very epoch names in sync and that
 * did not say they cannot be promoted (StoredServer.notPromotable), and the one with the most data wins (under `sync` a SEND waits for every slave the master counts in sync,
 * so any of them holds every acknowledged record; the most data keeps the most unacknowledged tail).
 */
export function choosePromotion(
  req: PromoteRequest,
  state: PromotionState,
): { slave: StoredServer; priorInSync: string[] } | Extract<PromoteResult, { refused: string }> {
  if (state.epoch !== req.expectedEpoch) return { refused: 'epoch' }
  const r = state.replication
  const stepDownDue =
    req.stepDownBefore !== undefined && r?.stepDownAt !== undefined && r.stepDownAt <= req.stepDownBefore
  if (!stepDownDue && state.masterLastSeenAt > req.deadBefore) return { refused: 'master-alive' }
  if (r === undefined || r.epoch !== state.epoch) return { refused: 'no-in-sync-slave' }
  const candidates = state.slaves
    .filter(
      (s) =>
        s.lastSeenAt > req.slaveSeenAfter && r.inSync.includes(s.address) && s.notPromotable === undefined,
    )
    .sort(byMostData)
  const best = candidates[0]
  if (best === undefined) return { refused: 'no-in-sync-slave' }
  // Should the promoted slave refuse (abandonPromotion), these are in sync in the next epoch: the other
  // candidates' peers in the report, and a master that stepped down (`qmq failover`: it stopped
  // acknowledging when told, and heartbeats on as a slave, holding everything it acknowledged).
  const prior = r.inSync.filter((a) => a !== best.address)
  if (stepDownDue && state.masterAddress !== undefined && !prior.includes(state.masterAddress))
    prior.push(state.masterAddress)
  return { slave: best, priorInSync: prior }
}

/**
 * Whether a refused promotion may be given up (store.abandonPromotion), from the stored epoch and
 * master row, and whether the epoch was served: `{ inSync }` when it may (the new epoch's in-sync
 * set), `{ refused }` when not.
 */
export function chooseAbandon(
  req: AbandonRequest,
  storedEpoch: number,
  masterAddress: string | undefined,
  replication: StoredReplication | undefined,
): Extract<AbandonResult, { refused: string }> | { inSync: string[] } {
  if (storedEpoch !== req.epoch) return { refused: 'epoch' }
  if (masterAddress !== req.slave.address) return { refused: 'not-master' }
  if (replication?.epoch === req.epoch && replication.served === true) return { refused: 'served' }
  const prior = replication?.epoch === req.epoch ? (replication.priorInSync ?? []) : []
  return { inSync: prior.filter((a) => a !== req.slave.address) }
}
