import { validateConsumerId, validateGroup, validateSubject } from '../../common/names'
import { readOrderKey } from '../../common/record'
import { ACTION_FLAG_AT_MOST_ONCE, ACTION_FLAG_BROADCAST, ACTION_FLAG_KEYS, ActionType } from './action-log'
import { type GroupState, HELD, READY } from './consumer-state'
import type { FileMessageStore } from './file-message-store'
import { readSeqs, scanNew } from './subjects'
import type { PullOptions, StoredMessage } from './types'

/** Records a scan reads at a time once it met keyed messages that wait (their key is busy). */
const READ_AHEAD = 256

/** The order key of a stored record (its framing was verified on receipt); undefined when unkeyed. */
function orderKeyOf(record: Buffer): string | undefined {
  try {
    return readOrderKey(record)
  } catch {
    return undefined // damaged past its CRC check: delivered unordered rather than never
  }
}

/**
 * Whether a scanned record of order key `key` would be passed over (provisional, for the scan loop):
 * its key has an unsettled message or a head among the records scanned before (`heads`).
 */
function waits(g: GroupState, key: string, heads: Set<string>): boolean {
  const q = g.keys.get(key)
  if ((q !== undefined && q.head < q.seqs.length) || heads.has(key)) return true
  heads.add(key)
  return false
}

function limits(store: FileMessageStore, o: PullOptions, max: number, maxBytes = o.maxBytes) {
  return { maxMessages: max, maxBytes: Math.max(1, maxBytes), maxScan: store.options.maxScanPerPull }
}

/**
 * A pull, under the group's lock: (1) with resumeHeld, what the consumer still holds (no new
 * delivery); (2) redeliveries that are due; (3) new messages from the group's cursor (tag filter:
 * mask, then record header). One PULL action records the hand-out and the new cursor; it is applied
 * before the lock is released, and (at-most-once only) written before the messages are returned.
 */
export async function pullMessages(store: FileMessageStore, o: PullOptions): Promise<StoredMessage[]> {
  validateSubject(o.subject)
  validateGroup(o.group)
  validateConsumerId(o.consumerId)
  const max = Math.max(1, Math.floor(o.maxMessages))
  const g = store.state.getOrCreate(o.subject, o.group)
  let written: Promise<number> | undefined
  const out = await store.withLock(g, async () => {
    const now = store.clock.now()
    if (o.broadcast) {
      let cursor = g.broadcast.get(o.consumerId)
      if (cursor === undefined) {
        cursor = await store.startCursor(o.subject, o.start, o.startTime)
        store.record(
          store.action(ActionType.CURSOR, o.subject, o.group, o.consumerId, {
            cursor,
            flags: ACTION_FLAG_BROADCAST,
          }),
        )
      }
      g.broadcastSeen.set(o.consumerId, now) // every pull, even one that finds nothing new
      const s = store.subjectsIndex.get(o.subject)
      if (!s) return []
      const { picked, next } = await scanNew(store.mlog, s, cursor, limits(store, o, max), o, o.hold)
      if (next !== cursor) {
        written = store.record(
          store.action(ActionType.PULL, o.subject, o.group, o.consumerId, {
            cursor: next,
            flags: ACTION_FLAG_BROADCAST,
          }),
        ).written
      }
      return picked.map((p) => ({
        subject: o.subject,
        sequence: p.seq,
        deliveryCount: 1,
        record: p.record,
      }))
    }
    if (!g.created) {
      const cursor = await store.startCursor(o.subject, o.start, o.startTime)
      store.record(store.action(ActionType.CURSOR, o.subject, o.group, '', { cursor }))
    }
    const consumer = g.consumer(o.consumerId, now, store.options.leaseMs)
    store.sweepGroup(g, now)
    const s = store.subjectsIndex.get(o.subject)
    const result: StoredMessage[] = []
    let bytes = 0
    // 1. What this consumer still holds (it reconnected): handed back, no new delivery.
    if (o.resumeHeld && s && consumer.held.size > 0) {
      const held = [...consumer.held].sort((a, b) => a - b).slice(0, max)
      const recs = await readSeqs(store.mlog, s, held, o.hold)
      const gone: number[] = []
      for (let i = 0; i < held.length; i++) {
        const rec = recs[i]
        const f = g.inflight.get(held[i] as number)
        if (!f || f.holder !== o.consumerId || f.state !== HELD) continue
        if (!rec) {
          gone.push(held[i] as number)
          continue
        }
        // maxBytes bounds this part as it does the others (one message may go past it); the rest
        // comes back with the next pull.
        if (result.length > 0 && bytes >= o.maxBytes) break
        result.push({ subject: o.subject, sequence: held[i] as number, deliveryCount: f.dc, record: rec })
        bytes += rec.length
        // Handed out again: a fresh lease from now.
        g.lease(held[i] as number, now + store.options.leaseMs)
      }
      // Held messages removed by retention can never be handed back (so never acked): drop them,
      // or they would stay in flight for as long as this consumer keeps its lease.
      if (gone.length > 0)
        store.record(store.action(ActionType.ACK, o.subject, o.group, o.consumerId, { seqs: gone }))
    }
    // 2. Redeliveries that are due. What is popped off the ready queue is on no queue until the PULL
    // records it: if a read fails before that, it goes back (or it would never be redelivered).
    const redeliver: number[] = []
    const redeliverRecs: Buffer[] = []
    let unrecorded: number[] = []
    let next = -1
    let fresh: { seq: number; record: Buffer }[] = []
    try {
      if (s) {
        const popped: number[] = []
        while (result.length + popped.length < max) {
          const seq = g.popReady()
          if (seq === undefined) break
          popped.push(seq)
        }
        unrecorded = popped
        if (popped.length > 0) {
          const recs = await readSeqs(store.mlog, s, popped, o.hold)
          const gone: number[] = []
          const back: number[] = []
          for (let i = 0; i < popped.length; i++) {
            const seq = popped[i] as number
            const rec = recs[i]
            if (g.inflight.get(seq)?.state !== READY) continue // acked meanwhile
            if (!rec) gone.push(seq)
            else if (bytes >= o.maxBytes && result.length + redeliver.length > 0) back.push(seq)
            else {
              redeliver.push(seq)
              redeliverRecs.push(rec)
              bytes += rec.length
            }
          }
          g.unpopReady(back)
          unrecorded = redeliver
          // Messages removed by retention cannot be redelivered: drop them from the group.
          if (gone.length > 0)
            store.record(store.action(ActionType.ACK, o.subject, o.group, '', { seqs: gone }))
        }
      }
      // 3. New messages from the group's cursor. Keyed messages whose key has an unsettled message
      // are passed over (they wait in their key's queue): while a scan finds only those, it goes on,
      // up to maxScanPerPull entries, so one blocked key never makes a pull come back empty early.
      const room = max - result.length - redeliver.length
      if (s && room > 0 && bytes < o.maxBytes) {
        // After a cursor reset the scan can meet messages this pull already hands out (held and resumed,
        // or due for redelivery): each goes out once, by the earlier path.
        // (Made only when something was: most pulls hand out new messages alone.)
        const taken =
          result.length + redeliver.length > 0
            ? new Set<number>([...result.map((m) => m.sequence), ...redeliver])
            : undefined
        let from = g.cursor
        let examined = 0
        let handedBytes = 0 // waiting records take no room in the answer
        let handed = 0 // provisional: the decision is taken again before the PULL is recorded
        let heads: Set<string> | undefined // keys met in this scan (made at the first keyed record)
        for (;;) {
          // Past a first scan that met waiting messages, read ahead (the room is checked again below).
          const want = handed === fresh.length ? room - handed : Math.max(room - handed, READ_AHEAD)
          const budget = limits(store, o, want, o.maxBytes - bytes - handedBytes)
          const scanned = await scanNew(store.mlog, s, from, budget, o, o.hold)
          const picked =
            taken === undefined ? scanned.picked : scanned.picked.filter((p) => !taken.has(p.seq))
          fresh = fresh.length > 0 ? fresh.concat(picked) : picked
          for (const p of picked) {
            const key = o.atMostOnce ? undefined : orderKeyOf(p.record)
            if (key !== undefined) {
              heads ??= new Set()
              if (waits(g, key, heads)) continue
            }
            handed++
            handedBytes += p.record.length
          }
          examined += scanned.next - from
          if (scanned.next !== g.cursor) next = scanned.next
          from = scanned.next
          if (
            handed >= room ||
            picked.length === 0 ||
            from >= s.consume.nextSeq ||
            examined >= store.options.maxScanPerPull ||
            bytes + handedBytes >= o.maxBytes
          )
            break
        }
      }
    } catch (err) {
      g.unpopReady(unrecorded.filter((q) => g.inflight.get(q)?.state === READY))
      throw err
    }
    // An ack may have come while the scan above awaited (a READY message is acked by anyone, e.g.
    // its former holder whose lease ended): hand out only what is still waiting for redelivery, or an
    // acked message would go out again as a first delivery.
    for (let i = redeliver.length - 1; i >= 0; i--) {
      if (g.inflight.get(redeliver[i] as number)?.state === READY) continue
      redeliver.splice(i, 1)
      redeliverRecs.splice(i, 1)
    }
    // Order keys, decided now (synchronously with the PULL's application below: acks that came while
    // the scan awaited are seen). A keyed message goes out only as its key's head; the others wait.
    // The scan may have read past the room (looking for keys that are free): the pull stops at the
    // first record it has no room for, and the cursor stays there (that record and the ones after it
    // are scanned again by the next pull).
    let keyed: [number, string][] | undefined
    if (!o.atMostOnce && fresh.length > 0) {
      const capacity = max - redeliver.length - result.length
      const out: { seq: number; record: Buffer }[] = []
      let heads: Set<string> | undefined // keys given out by this pull (made at the first keyed one)
      let outBytes = 0
      let cut = -1
      // Passed-over keyed messages cost memory until their key moves: past maxWaitingKeyed the cursor
      // stops at the next one that would wait (the group's later messages wait too) until some settle.
      let waitRoom = store.options.maxWaitingKeyed - g.waiting
      for (let i = 0; i < fresh.length; i++) {
        const f = fresh[i] as { seq: number; record: Buffer }
        const key = orderKeyOf(f.record)
        let waits = false
        if (key !== undefined) {
          if (g.inflight.has(f.seq))
            waits = true // met again after a cursor reset: in its key's queue
          else {
            const q = g.keys.get(key)
            waits = (q !== undefined && q.head < q.seqs.length) || heads?.has(key) === true
          }
        }
        if (!waits && (out.length >= capacity || (out.length > 0 && bytes + outBytes >= o.maxBytes))) {
          cut = i
          break
        }
        if (waits && !g.inflight.has(f.seq) && waitRoom-- <= 0) {
          cut = i
          break
        }
        if (key !== undefined) {
          keyed ??= []
          keyed.push([f.seq, key])
          if (waits) continue
          heads ??= new Set()
          heads.add(key)
        }
        out.push(f)
        outBytes += f.record.length
      }
      if (cut >= 0) {
        const at = (fresh[cut] as { seq: number }).seq
        next = at !== g.cursor ? at : -1
      }
      fresh = out
    }
    const seqs = [...redeliver, ...fresh.map((f) => f.seq)]
    if (seqs.length === 0 && next < 0) return result
    const dcs = seqs.map((seq) => (g.inflight.get(seq)?.dc ?? 0) + 1)
    const pulled = store.action(ActionType.PULL, o.subject, o.group, o.consumerId, {
      cursor: next,
      seqs,
      flags: (o.atMostOnce ? ACTION_FLAG_AT_MOST_ONCE : 0) | (keyed !== undefined ? ACTION_FLAG_KEYS : 0),
      ...(keyed !== undefined ? { keyed } : {}),
    })
    // Only an at-most-once answer waits for the write (below).
    if (o.atMostOnce) written = store.record(pulled).written
    else store.recordUnawaited(pulled)
    // Everything passed over and nothing handed out: more may wait past the cursor (a long poll
    // would otherwise sleep until the next append).
    if (seqs.length === 0 && s !== undefined && g.cursor < s.consume.nextSeq) {
      setImmediate(() => store.notify(o.subject))
    }
    // Each handed-out message has its own lease deadline: it comes back to the group then unless the
    // consumer extends exactly it (HEARTBEAT). Nothing else renews it (see consumer-state.ts).
    if (!o.atMostOnce) {
      const until = store.clock.now() + store.options.leaseMs
      for (const seq of seqs) g.lease(seq, until)
    }
    for (let i = 0; i < redeliver.length; i++) {
      const seq = redeliver[i] as number
      result.push({
        subject: o.subject,
        sequence: seq,
        deliveryCount: dcs[i] as number,
        record: redeliverRecs[i] as Buffer,
      })
    }
    for (let i = 0; i < fresh.length; i++) {
      const f = fresh[i] as { seq: number; record: Buffer }
      result.push({
        subject: o.subject,
        sequence: f.seq,
        deliveryCount: dcs[redeliver.length + i] as number,
        record: f.record,
      })
    }
    return result
  })
  // At-most-once must not hand out what it has not recorded: its answer waits for the action-log
  // write (and fails with it). An at-least-once answer does not: the hand-out is applied in memory and
  // queued in order; a crash that loses it only makes the messages deliverable again (with the same
  // delivery count), which at-least-once allows. This keeps a disk write off the delivery path.
  if (written && o.atMostOnce) await written
  return out
}
