import type { FileMessageStore } from './file-message-store'
import { FRAME_BYTES, readFrame } from './message-log'

/**
 * Retention: deletes whole message-log segments, oldest first, never the active (last) one, while
 * the oldest is older than `retentionMs` (by its mtime: the time of its last write, i.e. of its
 * newest message) or the log is larger than `retentionBytes`. Then each subject's consume log drops
 * the segments whose entries all point below the new start, and the store counts the messages that
 * went before every group had consumed them (past a group's cursor, or still in flight or dead for
 * it; broadcast consumers count as groups): qmq_store_retention_unconsumed_messages_total.
 */
export async function runRetention(store: FileMessageStore): Promise<number> {
  const o = store.options
  const log = store.mlog.log
  const segs = log.segments()
  let total = 0
  for (const s of segs) total += s.size
  const wallNow = Date.now()
  let deleted = 0
  let deletedBytes = 0
  while (segs.length > 1) {
    const oldest = segs[0]
    if (!oldest) break
    const byAge = o.retentionMs > 0 && oldest.mtimeMs < wallNow - o.retentionMs
    const bySize = o.retentionBytes > 0 && total > o.retentionBytes
    if (!byAge && !bySize) break
    log.deleteOldest()
    segs.shift()
    total -= oldest.size
    deleted++
    deletedBytes += oldest.size
    store.log.info({ file: oldest.file, bytes: oldest.size, byAge, bySize }, 'retention deleted a segment')
  }
  if (deleted === 0) return 0
  const start = log.startOffset
  store.mlog.evictBefore(start)
  if (store.index) {
    // Index segments written before the oldest retained message go with the message segments.
    let firstStoredAt = Date.now()
    try {
      const head = await log.read(start, FRAME_BYTES)
      if (head.length === FRAME_BYTES) firstStoredAt = readFrame(head, 0).storedAt
    } catch {
      // the log is empty past `start`: everything before now can go
    }
    const n = store.index.retain(firstStoredAt)
    if (n > 0) store.log.info({ segments: n }, 'retention deleted index segments')
  }
  let unconsumed = 0
  for (const s of store.subjectsIndex.map.values()) {
    const prevLow = s.lowSeq
    const first = await s.consume.search((e) => e.offset >= start)
    if (first <= prevLow) continue
    s.lowSeq = first
    const groups = store.state.groups.get(s.name)
    if (groups && groups.size > 0) {
      let minCursor = Number.POSITIVE_INFINITY
      const pending = new Set<number>()
      for (const g of groups.values()) {
        // A broadcast-only group has no group cursor (it stays 0): only its consumers' count.
        if (!g.broadcastOnly) minCursor = Math.min(minCursor, g.cursor)
        for (const c of g.broadcast.values()) minCursor = Math.min(minCursor, c)
        for (const seq of g.inflight.keys()) if (seq >= prevLow && seq < first) pending.add(seq)
        for (const seq of g.dead.keys()) if (seq >= prevLow && seq < first) pending.add(seq)
      }
      const from = Math.max(prevLow, minCursor)
      let n = Math.max(0, first - from)
      for (const seq of pending) if (seq < from) n++
      unconsumed += n
      // Dead letters whose message is gone can be neither inspected nor redriven: drop them (recovery
      // does the same, so the state after a restart agrees without an action).
      for (const g of groups.values())
        for (const seq of [...g.dead.keys()]) if (seq < first) g.dead.delete(seq)
    }
    s.consume.deleteBefore(first)
  }
  if (unconsumed > 0) {
    store.log.warn({ messages: unconsumed }, 'retention deleted messages not yet consumed by every group')
  }
  store.metrics.retention(deleted, deletedBytes, unconsumed)
  return deleted
}
