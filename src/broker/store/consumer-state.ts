import {
  type Action,
  ACTION_FLAG_AT_MOST_ONCE,
  ACTION_FLAG_BROADCAST,
  ACTION_FLAG_KEYS,
  ACTION_FLAG_SEQS,
  ActionType,
} from './action-log'
import { MinHeap } from './min-heap'

/**
 * In-memory consumer progress of every (subject, group), changed only by `apply(action)` (live and
 * on replay alike). Memory is proportional to what is in flight, not to what was consumed:
 *
 * - `cursor`: next sequence of the subject never handed to this group. Everything below it is either
 *   acked (not stored at all) or listed in `inflight`.
 * - `inflight`: handed out and not acked: seq -> { delivery count, holder, state, dueAt }.
 *   A consumer's pull log is its `held` set (rebuilt from PULL/ACK/NACK/EXPIRE actions).
 * - `leases`: min-heap of (lease deadline, seq) of HELD messages. Every handed-out message has its
 *   own deadline (hand-out time + leaseMs), moved only by an explicit extension of that message
 *   (HEARTBEAT with its sequence, see extend()): pulls and acks no longer renew what a consumer
 *   holds, so a PULL answer the client never saw comes back after leaseMs. Entries are validated
 *   when popped (an extension pushes a new entry; the old one no longer matches `dueAt`).
 *   Deadlines are not persisted: on open every held message gets a fresh lease (refreshLeases).
 * - `ready`: sequences due for redelivery (retry time passed, lease expired, redriven), FIFO.
 * - `retry`: min-heap of (redeliverAt, seq) of nacked messages waiting for their time.
 * - `dead`: dead letters of this group: seq -> { delivery count, deadAt }; the message stays where
 *   it is in the message log (no copy).
 * - `keys`: ordered messages (records with an order key). For each key with an unsettled message, the
 *   queue of its unsettled sequences in the order the cursor passed them. Invariant: only the queue's
 *   head may be HELD, RETRY or READY; every other entry is WAITING (in `inflight`, no holder, never
 *   handed out). When the head is settled (acked, dead-lettered, dropped) the next one becomes READY:
 *   a key's messages go out one at a time, in order, and a retry stays in place (RETRY keeps the head).
 *   Keys are not persisted apart from the PULL actions that list keyed messages and the snapshot's
 *   `keyed`: the queues are rebuilt from the inflight entries (rebuildKeys) on restore.
 * - `broadcast`: for broadcast consumption, one cursor per consumer id; nothing is held.
 *   `broadcastSeen` is when each last pulled (not persisted: on open every one starts afresh, as leases do).
 */
export const HELD = 0
export const RETRY = 1
export const READY = 2
/** A keyed message behind an unsettled earlier one of its key: never handed out yet (dc 0). */
export const WAITING = 3
export type InflightState = typeof HELD | typeof RETRY | typeof READY | typeof WAITING

export interface Inflight {
  dc: number
  holder: string | undefined
  state: InflightState
  /** RETRY: redeliver-after time. HELD: lease deadline (0 = none set yet; not persisted). READY: 0. */
  dueAt: number
  /** The order key of a keyed message (see `keys`); undefined for the others. */
  key: string | undefined
}

/** The unsettled messages of one order key: `seqs[head..]`, the head first. */
export interface KeyQueue {
  seqs: number[]
  head: number
  /** When the current head became the head (action time; the open time after a restart). */
  since: number
}

export interface ConsumerEntry {
  held: Set<number>
  /**
   * ms since epoch: the consumer counts as present (forgetGroup refuses) until then; renewed by its
   * pulls, acks, nacks and heartbeats. Not persisted: every consumer is present again when the
   * store opens. The messages it holds have their own deadlines (Inflight.dueAt).
   */
  leaseUntil: number
}

export interface GroupSnapshot {
  subject: string
  group: string
  cursor: number
  created: boolean
  /** Flattened [seq, dc, state, dueAt, holderIndex(-1 none)] */
  inflight: number[]
  holders: string[]
  /** Flattened [seq, dc, deadAt] */
  dead: number[]
  broadcast: [string, number][]
  /** [seq, order key] of keyed inflight entries (absent in checkpoints from before order keys). */
  keyed?: [number, string][]
}

export class GroupState {
  readonly subject: string
  readonly group: string
  cursor = 0
  /** True once the group's start cursor was recorded (CURSOR) or it pulled: cursor 0 is a real cursor. */
  created = false
  readonly inflight = new Map<number, Inflight>()
  private ready: number[] = []
  private readyHead = 0
  private readonly retry = new MinHeap<number>()
  private leases = new MinHeap<number>()
  readonly dead = new Map<number, { dc: number; deadAt: number }>()
  readonly consumers = new Map<string, ConsumerEntry>()
  readonly broadcast = new Map<string, number>()
  readonly broadcastSeen = new Map<string, number>()
  readonly keys = new Map<string, KeyQueue>()
  /** Entries in all key queues (Σ seqs.length - head): `waiting` is this less one head per key. */
  private queued = 0
  /** Counts keyed messages made deliverable by the settling of their predecessor (the store notifies). */
  keyReleases = 0

  constructor(subject: string, group: string) {
    this.subject = subject
    this.group = group
  }

  /**
   * Only broadcast consumers ever used this group: its group cursor never moves (it stays 0), so
   * backlog, retention and cursor resets go by the consumers' cursors instead.
   */
  get broadcastOnly(): boolean {
    return !this.created && this.broadcast.size > 0
  }

  consumer(id: string, now?: number, leaseMs?: number): ConsumerEntry {
    let c = this.consumers.get(id)
    if (!c) {
      c = { held: new Set(), leaseUntil: 0 }
      this.consumers.set(id, c)
    }
    if (now !== undefined && leaseMs !== undefined) c.leaseUntil = now + leaseMs
    return c
  }

  private pushReady(seq: number): void {
    this.ready.push(seq)
  }

  /** Next sequence ready for redelivery (validated: stale queue entries are skipped). */
  popReady(): number | undefined {
    while (this.readyHead < this.ready.length) {
      const s = this.ready[this.readyHead++] as number
      if (this.readyHead > 1024 && this.readyHead * 2 > this.ready.length) {
        this.ready = this.ready.slice(this.readyHead)
        this.readyHead = 0
      }
      if (this.inflight.get(s)?.state === READY) return s
    }
    return undefined
  }

  /** Puts back sequences popped by popReady but not handed out (front of the queue). */
  unpopReady(seqs: number[]): void {
    if (seqs.length === 0) return
    this.ready = [...seqs, ...this.ready.slice(this.readyHead)]
    this.readyHead = 0
  }

  get readyCount(): number {
    let n = 0
    for (let i = this.readyHead; i < this.ready.length; i++) {
      if (this.inflight.get(this.ready[i] as number)?.state === READY) n++
    }
    return n
  }

  /** Moves retries whose time has come to the ready queue; returns how many. */
  promoteDue(now: number): number {
    let n = 0
    while (this.retry.size > 0 && this.retry.peekKey() <= now) {
      const [due, seq] = this.retry.pop() as [number, number]
      const f = this.inflight.get(seq)
      if (f && f.state === RETRY && f.dueAt === due) {
        f.state = READY
        f.dueAt = 0
        this.pushReady(seq)
        n++
      }
    }
    return n
  }

  nextDue(): number {
    return this.retry.peekKey()
  }

  /** Sets the lease deadline of a HELD message (hand-out, hand-back, extension); false if not HELD. */
  lease(seq: number, until: number): boolean {
    const f = this.inflight.get(seq)
    if (f === undefined || f.state !== HELD) return false
    if (f.dueAt === until) return true
    f.dueAt = until
    this.leases.push(until, seq)
    // Acked messages and extended deadlines leave stale entries until their time: rebuild the heap
    // from the HELD messages when stale ones dominate, so it stays proportional to what is in flight.
    if (this.leases.size > 2 * this.inflight.size + 4096) {
      const fresh = new MinHeap<number>()
      for (const [s, x] of this.inflight) if (x.state === HELD && x.dueAt > 0) fresh.push(x.dueAt, s)
      this.leases = fresh
    }
    return true
  }

  /**
   * Extends the leases of messages `consumerId` holds to `until`: exactly `seqs` (others' or
   * unknown sequences are ignored), or everything it holds when `seqs` is undefined (the HEARTBEAT
   * of a client from before per-message leases). Returns how many were extended.
   */
  extend(consumerId: string, seqs: readonly number[] | undefined, until: number): number {
    const c = this.consumers.get(consumerId)
    if (c === undefined || c.held.size === 0) return 0
    let n = 0
    for (const s of seqs ?? [...c.held]) {
      if (this.inflight.get(s)?.holder === consumerId && this.lease(s, until)) n++
    }
    return n
  }

  /** Gives every HELD message the lease deadline `until` (on open: deadlines are not persisted). */
  refreshLeases(until: number): void {
    for (const [s, f] of this.inflight) if (f.state === HELD) this.lease(s, until)
  }

  /** HELD messages whose lease deadline is at or before `now`, by sequence (taken off the heap). */
  expiredLeases(now: number): number[] {
    const out: number[] = []
    while (this.leases.size > 0 && this.leases.peekKey() <= now) {
      const [due, seq] = this.leases.pop() as [number, number]
      const f = this.inflight.get(seq)
      if (f !== undefined && f.state === HELD && f.dueAt === due) out.push(seq)
    }
    return out.sort((x, y) => x - y)
  }

  /** Keyed messages passed over and waiting behind their key's head (WAITING entries), in O(1). */
  get waiting(): number {
    return this.queued - this.keys.size
  }

  /**
   * A keyed message the cursor passed joins its key's queue: the head when the key has nothing
   * unsettled (READY: the PULL that lists it hands it out, or queues it for delivery), else WAITING.
   */
  private enqueueKeyed(seq: number, key: string, time: number): boolean {
    if (this.inflight.has(seq)) return false // a cursor reset met it again: in its key's queue already
    const q = this.keys.get(key)
    if (q !== undefined && q.head < q.seqs.length) {
      q.seqs.push(seq)
      this.queued++
      this.inflight.set(seq, { dc: 0, holder: undefined, state: WAITING, dueAt: 0, key })
      return false
    }
    this.keys.set(key, { seqs: [seq], head: 0, since: time })
    this.queued++
    // Queued for delivery by the PULL's application unless that PULL hands it out (no stale entry).
    this.inflight.set(seq, { dc: 0, holder: undefined, state: READY, dueAt: 0, key })
    return true
  }

  /**
   * A keyed message left `inflight` (acked, dead-lettered, dropped): it leaves its key's queue and,
   * when it was the head, the next one becomes deliverable (READY).
   */
  private settleKeyed(seq: number, key: string, time: number): void {
    const q = this.keys.get(key)
    if (q === undefined) return
    if (q.seqs[q.head] !== seq) {
      const i = q.seqs.indexOf(seq, q.head)
      if (i >= 0) {
        q.seqs.splice(i, 1) // not the head (retention dropped a waiting one): rare
        this.queued--
      }
      return
    }
    q.head++
    this.queued--
    if (q.head >= q.seqs.length) {
      this.keys.delete(key)
      return
    }
    if (q.head > 64 && q.head * 2 > q.seqs.length) {
      q.seqs = q.seqs.slice(q.head)
      q.head = 0
    }
    q.since = time
    const next = q.seqs[q.head] as number
    const f = this.inflight.get(next)
    if (f !== undefined && f.state === WAITING) {
      f.state = READY
      this.pushReady(next)
      this.keyReleases++
    }
  }

  /** Removes an inflight entry (keeping the key queues whole); for recovery and retention. */
  drop(seq: number, time: number): void {
    const f = this.inflight.get(seq)
    if (f === undefined) return
    this.release(seq, f)
    this.inflight.delete(seq)
    if (f.key !== undefined) this.settleKeyed(seq, f.key, time)
  }

  /**
   * Rebuilds the key queues from the inflight entries (after a restore or recovery): per key, the
   * entry already out (HELD, RETRY, READY) first, then the waiting ones by sequence; a key left with
   * only waiting entries gets its first one deliverable.
   */
  rebuildKeys(time: number): void {
    this.keys.clear()
    this.queued = 0
    const byKey = new Map<string, number[]>()
    for (const [s, f] of this.inflight) {
      if (f.key === undefined) continue
      let l = byKey.get(f.key)
      if (l === undefined) {
        l = []
        byKey.set(f.key, l)
      }
      l.push(s)
    }
    for (const [key, seqs] of byKey) {
      seqs.sort((x, y) => {
        const wx = this.inflight.get(x)?.state === WAITING ? 1 : 0
        const wy = this.inflight.get(y)?.state === WAITING ? 1 : 0
        return wx - wy || x - y
      })
      this.keys.set(key, { seqs, head: 0, since: time })
      this.queued += seqs.length
      const first = this.inflight.get(seqs[0] as number)
      if (first !== undefined && first.state === WAITING) {
        first.state = READY
        this.pushReady(seqs[0] as number)
      }
    }
  }

  /** Keys with messages waiting behind their head, and when the longest-blocked head became one. */
  blockedKeys(): { keysBlocked: number; oldestBlockedSince: number } {
    let keysBlocked = 0
    let oldestBlockedSince = 0
    for (const q of this.keys.values()) {
      if (q.seqs.length - q.head < 2) continue
      keysBlocked++
      if (oldestBlockedSince === 0 || q.since < oldestBlockedSince) oldestBlockedSince = q.since
    }
    return { keysBlocked, oldestBlockedSince }
  }

  private release(seq: number, f: Inflight): void {
    if (f.holder !== undefined) this.consumers.get(f.holder)?.held.delete(seq)
    f.holder = undefined
  }

  /** Applies one action; returns the number of sequences it affected that `consumerId` held. */
  apply(a: Action): number {
    switch (a.type) {
      case ActionType.CURSOR:
        if (a.flags & ACTION_FLAG_BROADCAST) {
          this.broadcast.set(a.consumerId, a.cursor)
          this.broadcastSeen.set(a.consumerId, a.time)
        } else {
          this.cursor = a.cursor
          this.created = true
        }
        return 0
      case ActionType.PULL: {
        if (a.flags & ACTION_FLAG_BROADCAST) {
          if (a.cursor >= 0) this.broadcast.set(a.consumerId, a.cursor)
          this.broadcastSeen.set(a.consumerId, a.time)
          return 0
        }
        this.created = true
        if (a.cursor >= 0) this.cursor = a.cursor
        // A dead letter handed out again (a cursor reset re-read it) is no longer dead.
        if (this.dead.size > 0) for (const s of a.seqs) this.dead.delete(s)
        let heads: number[] | undefined
        if (a.flags & ACTION_FLAG_KEYS && a.keyed !== undefined) {
          if (this.dead.size > 0) for (const [s] of a.keyed) this.dead.delete(s)
          for (const [s, key] of a.keyed) {
            if (!this.enqueueKeyed(s, key, a.time)) continue
            heads ??= []
            heads.push(s)
          }
        }
        if (a.flags & ACTION_FLAG_AT_MOST_ONCE) {
          for (const s of a.seqs) {
            const f = this.inflight.get(s)
            if (f) this.drop(s, a.time)
          }
          return a.seqs.length
        }
        const c = this.consumer(a.consumerId)
        for (const s of a.seqs) {
          const f = this.inflight.get(s)
          if (f) {
            this.release(s, f)
            f.dc++
            f.holder = a.consumerId
            f.state = HELD
            f.dueAt = 0
          } else {
            this.inflight.set(s, { dc: 1, holder: a.consumerId, state: HELD, dueAt: 0, key: undefined })
          }
          c.held.add(s)
        }
        // Heads the pull passed without handing them out (past its room): deliverable next.
        if (heads !== undefined)
          for (const s of heads) if (this.inflight.get(s)?.state === READY) this.pushReady(s)
        return a.seqs.length
      }
      case ActionType.ACK: {
        let n = 0
        for (const s of a.seqs) {
          const f = this.inflight.get(s)
          if (!f) continue
          if (f.holder === a.consumerId) n++
          else if (f.holder !== undefined)
            continue // held by another consumer now: its ack counts
          else if (f.state === WAITING && a.consumerId !== '') continue // never handed out
          this.release(s, f)
          this.inflight.delete(s)
          if (f.key !== undefined) this.settleKeyed(s, f.key, a.time)
        }
        return n
      }
      case ActionType.NACK: {
        let n = 0
        const due = a.dueAts ?? []
        for (let i = 0; i < a.seqs.length; i++) {
          const s = a.seqs[i] as number
          const f = this.inflight.get(s)
          if (!f || f.holder !== a.consumerId) continue
          n++
          this.release(s, f)
          const d = due[i] ?? -1
          if (d < 0) {
            this.inflight.delete(s)
            this.dead.set(s, { dc: f.dc, deadAt: a.time })
            if (f.key !== undefined) this.settleKeyed(s, f.key, a.time)
          } else {
            f.state = RETRY
            f.dueAt = d
            this.retry.push(d, s)
          }
        }
        return n
      }
      case ActionType.EXPIRE: {
        if (a.flags & ACTION_FLAG_SEQS) {
          let n = 0
          for (const s of a.seqs) {
            const f = this.inflight.get(s)
            if (f === undefined || f.state !== HELD) continue
            if (a.consumerId !== '' && f.holder !== a.consumerId) continue
            this.release(s, f)
            f.state = READY
            f.dueAt = 0
            this.pushReady(s)
            n++
          }
          return n
        }
        const c = this.consumers.get(a.consumerId)
        if (!c) return 0
        const held = [...c.held].sort((x, y) => x - y)
        for (const s of held) {
          const f = this.inflight.get(s)
          if (!f) continue
          f.holder = undefined
          f.state = READY
          f.dueAt = 0
          this.pushReady(s)
        }
        c.held.clear()
        return held.length
      }
      case ActionType.REDRIVE: {
        let n = 0
        for (const s of a.seqs) {
          if (!this.dead.delete(s)) continue
          // A redriven dead letter is delivered on its own, outside its key's order (its successors
          // went on when it died).
          this.inflight.set(s, { dc: 0, holder: undefined, state: READY, dueAt: 0, key: undefined })
          this.pushReady(s)
          n++
        }
        return n
      }
      default:
        return 0
    }
  }

  /** Forgets consumers that are no longer present and hold nothing. */
  pruneIdleConsumers(now: number): void {
    for (const [id, c] of this.consumers)
      if (c.leaseUntil <= now && c.held.size === 0) this.consumers.delete(id)
  }

  /** In flight counts every message passed by the cursor and not settled, WAITING ones included. */
  counts(): { inFlight: number; retrying: number; waiting: number } {
    let retrying = 0
    let waiting = 0
    for (const f of this.inflight.values()) {
      if (f.state === RETRY) retrying++
      else if (f.state === WAITING) waiting++
    }
    return { inFlight: this.inflight.size, retrying, waiting }
  }

  snapshot(): GroupSnapshot {
    const holders: string[] = []
    const holderIdx = new Map<string, number>()
    const inflight: number[] = []
    const keyed: [number, string][] = []
    for (const [s, f] of this.inflight) {
      if (f.key !== undefined) keyed.push([s, f.key])
      let h = -1
      if (f.holder !== undefined) {
        h = holderIdx.get(f.holder) ?? -1
        if (h < 0) {
          h = holders.length
          holders.push(f.holder)
          holderIdx.set(f.holder, h)
        }
      }
      // A HELD message's lease deadline is not persisted (refreshLeases on open).
      inflight.push(s, f.dc, f.state, f.state === HELD ? 0 : f.dueAt, h)
    }
    const dead: number[] = []
    for (const [s, d] of this.dead) dead.push(s, d.dc, d.deadAt)
    return {
      subject: this.subject,
      group: this.group,
      cursor: this.cursor,
      created: this.created,
      inflight,
      holders,
      dead,
      broadcast: [...this.broadcast],
      ...(keyed.length > 0 ? { keyed } : {}),
    }
  }

  static restore(snap: GroupSnapshot): GroupState {
    const g = new GroupState(snap.subject, snap.group)
    g.cursor = snap.cursor
    g.created = snap.created
    const fl = snap.inflight
    for (let i = 0; i + 4 < fl.length; i += 5) {
      const seq = fl[i] as number
      const h = fl[i + 4] as number
      const holder = h >= 0 ? snap.holders[h] : undefined
      const state = fl[i + 2] as InflightState
      const f: Inflight = {
        dc: fl[i + 1] as number,
        holder,
        state,
        dueAt: fl[i + 3] as number,
        key: undefined,
      }
      g.inflight.set(seq, f)
      if (holder !== undefined) g.consumer(holder).held.add(seq)
      if (state === READY) g.pushReady(seq)
      else if (state === RETRY) g.retry.push(f.dueAt, seq)
    }
    for (let i = 0; i + 2 < snap.dead.length; i += 3) {
      g.dead.set(snap.dead[i] as number, {
        dc: snap.dead[i + 1] as number,
        deadAt: snap.dead[i + 2] as number,
      })
    }
    for (const [id, c] of snap.broadcast) g.broadcast.set(id, c)
    if (snap.keyed !== undefined) {
      for (const [s, key] of snap.keyed) {
        const f = g.inflight.get(s)
        if (f !== undefined) f.key = key
      }
      g.rebuildKeys(0)
    }
    return g
  }
}

/** Every group of every subject. */
export class ConsumerState {
  readonly groups = new Map<string, Map<string, GroupState>>()

  get(subject: string, group: string): GroupState | undefined {
    return this.groups.get(subject)?.get(group)
  }

  getOrCreate(subject: string, group: string): GroupState {
    let m = this.groups.get(subject)
    if (!m) {
      m = new Map()
      this.groups.set(subject, m)
    }
    let g = m.get(group)
    if (!g) {
      g = new GroupState(subject, group)
      m.set(group, g)
    }
    return g
  }

  apply(a: Action): number {
    if (a.type === ActionType.MARK) return 0
    if (a.type === ActionType.FORGET) {
      if (a.flags & ACTION_FLAG_BROADCAST)
        return this.forgetBroadcast(a.subject, a.group, a.consumerId) ? 1 : 0
      return this.forget(a.subject, a.group) ? 1 : 0
    }
    return this.getOrCreate(a.subject, a.group).apply(a)
  }

  /** Removes a group and everything it held; true when it existed. */
  private forget(subject: string, group: string): boolean {
    const m = this.groups.get(subject)
    if (!m?.delete(group)) return false
    if (m.size === 0) this.groups.delete(subject)
    return true
  }

  /**
   * Removes one broadcast consumer's cursor. A group left with nothing (broadcast only, no cursor, nothing
   * in flight) goes too: with no cursor at all its backlog and retention would count from sequence 0.
   */
  private forgetBroadcast(subject: string, group: string, consumerId: string): boolean {
    const g = this.get(subject, group)
    if (!g?.broadcast.delete(consumerId)) return false
    g.broadcastSeen.delete(consumerId)
    if (!g.created && g.broadcast.size === 0 && g.inflight.size === 0 && g.dead.size === 0)
      this.forget(subject, group)
    return true
  }

  *all(): IterableIterator<GroupState> {
    for (const m of this.groups.values()) yield* m.values()
  }

  snapshot(): GroupSnapshot[] {
    return [...this.all()].map((g) => g.snapshot())
  }

  static restore(snaps: readonly GroupSnapshot[]): ConsumerState {
    const s = new ConsumerState()
    for (const snap of snaps) {
      let m = s.groups.get(snap.subject)
      if (!m) {
        m = new Map()
        s.groups.set(snap.subject, m)
      }
      m.set(snap.group, GroupState.restore(snap))
    }
    return s
  }
}
