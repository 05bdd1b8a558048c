/**
 * Message ids stored recently: (subject, id) -> the subject sequence of the first copy.
 *
 * No strings and no Maps on the hot path. The key of a record is its own bytes [28, 32 + idLength +
 * subjectLength): the idLength and subjectLength fields, then the id and the subject (the common record
 * layout, src/common/record.ts), so two keys are equal exactly when (subject, id) are. `keyEnd()`
 * finds it in a record.
 *
 * Layout, all typed arrays:
 * - a **ring** of entries in insertion (= time) order, indexed by entry number & ringMask: the key's
 *   32-bit hash, sequence, time, key position in the arena, key length and the table slot it sits in.
 *   The oldest entries leave from the head (window expiry, `maxEntries`, arena space); a failed batch
 *   removes the newest from the tail (`rollbackTo`).
 * - an **open-addressing table** (linear probing, load <= 1/2) of ring indexes + 1 (0 = empty) with
 *   the hash beside them. Deletion shifts the following run back (no tombstones).
 * - an **arena**: the key bytes, a ring buffer in the same order as the entries. A hash match is
 *   confirmed by comparing bytes, so a collision never makes a new message a "duplicate".
 *
 * Entries whose write is under way (the delay store's, which learns a record's sequence, its
 * message-log end, only once the record is durable) are added with the sequence PENDING and settled
 * later by entry number (`settle`, or `discard` when the write failed); a discarded entry, like one
 * `forget` names, stays in the ring until it leaves in order but no lookup finds it. A PENDING entry
 * never leaves: neither the window (`expire` stops at it) nor room (cap, arena: the ring and arena
 * grow past their bounds while the oldest entry is pending, which lasts one write) drops it, or a
 * second copy sent during the write would be written too. Deleted entries (discarded, forgotten) do
 * not count toward `maxEntries` (`deleted`), so a run of failed writes does not shorten the window;
 * the ring holds at most 2 x maxEntries entries in all (more only while the oldest is pending). Their
 * keys still take arena space, so a long run of them can make the arena cap drop live entries early
 * (counted in effectiveWindowMs as any early drop). Entry numbers
 * (`mark` before the add) are never reused while entries are only added and expired; `rollbackTo`
 * (the broker's, whose batches are serial) reuses them, so the two are not mixed on one index.
 *
 * Everything grows by doubling, up to `maxEntries` entries a lookup can find (and an arena of maxEntries x 64 bytes,
 * at least 1 MiB); past that the oldest entries are forgotten first. An entry forgotten before its
 * window ended (cap, arena, or a rebuild on open that could not reach back: `forgetBefore`) shortens
 * the window really covered: `effectiveWindowMs(now)` = min(window, now - time of the newest entry
 * forgotten early). Entries leave in time order, so every id stored after that time is remembered.
 */
const MIN_RING = 64 * 1024
const KEY_START = 28
/** The sequence of an entry no lookup finds (discarded or forgotten). */
const DELETED = -1

export class DedupeIndex {
  /** The sequence of an entry whose write is under way: `find` returns it; `settle` replaces it. */
  static readonly PENDING = -2
  private readonly windowMs: number
  private readonly maxEntries: number
  private readonly maxArena: number
  // Ring of entries: absolute entry numbers [head, tail); index = number & ringMask.
  private ringMask = -1
  private rHash = new Uint32Array(0)
  private rSeq = new Float64Array(0)
  private rTime = new Float64Array(0)
  private rKeyOff = new Float64Array(0)
  private rKeyLen = new Uint16Array(0)
  private rSlot = new Int32Array(0)
  private head = 0
  private tail = 0
  /** Entries in [head, tail) with the sequence DELETED (no lookup finds them). */
  private deleted = 0
  // Table: slot i holds [2i] ring index + 1 (0 = empty) and [2i + 1] the hash (side by side: one
  // cache line per probe).
  private tMask = -1
  private tab = new Int32Array(0)
  // Arena: key bytes at absolute positions; physical = position & (arena.length - 1).
  private arena = Buffer.alloc(0)
  private arenaPos = 0
  /** Time of the newest entry forgotten before its window ended (-Infinity: none). */
  private forgottenUpTo = Number.NEGATIVE_INFINITY
  /** Why the last early forgetting happened. */
  forgottenBy: 'maxEntries' | 'rebuild' | undefined

  constructor(windowMs: number, maxEntries: number) {
    this.windowMs = windowMs
    this.maxEntries = maxEntries
    let a = 1024 * 1024
    while (a < Math.min(maxEntries * 64, 2 ** 30)) a *= 2
    this.maxArena = a
  }

  get enabled(): boolean {
    return this.windowMs > 0 && this.maxEntries > 0
  }

  get size(): number {
    return this.tail - this.head
  }

  /** How far back (ms) every id stored is remembered at `now`: the window, unless entries were forgotten early. */
  effectiveWindowMs(now: number): number {
    if (!this.enabled) return 0
    return Math.max(0, Math.min(this.windowMs, now - this.forgottenUpTo))
  }

  /** Ids stored at or before `time` may be missing (a rebuild on open did not reach back that far). */
  forgetBefore(time: number): void {
    if (time <= this.forgottenUpTo) return
    this.forgottenUpTo = time
    this.forgottenBy = 'rebuild'
  }

  /** Position after the newest entry: `rollbackTo(mark)` removes what was added after it. */
  get mark(): number {
    return this.tail
  }

  /** End of the dedupe key of the record at `pos` (the key is [pos + 28, end)). */
  static keyEnd(rec: Buffer, pos: number): number {
    return pos + 32 + rec.readUInt16BE(pos + 28) + rec.readUInt16BE(pos + 30)
  }

  /** Sequence stored for the key of the record at `pos` (PENDING: its write is under way), or -1. */
  find(rec: Buffer, pos: number): number {
    if (this.tail === this.head) return -1
    return this.lookup(rec, pos + KEY_START, DedupeIndex.keyEnd(rec, pos), hashOf(rec, pos))
  }

  /** The pending entry number `entry` (`mark` before its add) was stored: its sequence is `seq`. */
  settle(entry: number, seq: number): void {
    // Left already: its ring slot may hold a newer entry now (the ring reuses slots).
    if (entry < this.head || entry >= this.tail) return
    const ri = entry & this.ringMask
    if (this.rSeq[ri] !== DedupeIndex.PENDING) return
    this.rSeq[ri] = seq
    if (seq === DELETED) this.deleted++
  }

  /** The pending entry number `entry` was not stored: no lookup finds it any more. */
  discard(entry: number): void {
    this.settle(entry, DELETED)
  }

  /** The entry of key bytes `buf[start, end)` with sequence `seq` (if any) is found by no lookup any more. */
  forget(buf: Buffer, start: number, end: number, seq: number): void {
    if (this.tail === this.head) return
    const h = hashBytes(buf, start, end)
    const mask = this.tMask
    const amask = this.arena.length - 1
    const len = end - start
    const tab = this.tab
    const hs = h | 0
    for (let i = h & mask; ; i = (i + 1) & mask) {
      const ref = tab[2 * i] as number
      if (ref === 0) return
      const ri = ref - 1
      if (tab[2 * i + 1] !== hs || this.rKeyLen[ri] !== len || this.rSeq[ri] !== seq) continue
      const off = (this.rKeyOff[ri] as number) & amask
      if (this.arena.compare(buf, start, end, off, off + len) === 0) {
        this.rSeq[ri] = DELETED
        this.deleted++
        return
      }
    }
  }

  /**
   * The sequence stored for the key of the record at `pos` (or PENDING); when there is none, adds it with `seq`
   * and returns -1 (one hash, one probe).
   */
  findOrAdd(rec: Buffer, pos: number, seq: number, time: number): number {
    const start = pos + KEY_START
    const end = DedupeIndex.keyEnd(rec, pos)
    const h = hashBytes(rec, start, end)
    if (this.tail !== this.head) {
      const found = this.lookup(rec, start, end, h)
      if (found !== -1) return found // a sequence, or PENDING
    }
    this.insertKey(rec, start, end, h, seq, time)
    return -1
  }

  private lookup(rec: Buffer, start: number, end: number, h: number): number {
    const mask = this.tMask
    const amask = this.arena.length - 1
    const len = end - start
    const tab = this.tab
    const hs = h | 0
    let i = h & mask
    for (;;) {
      const ref = tab[2 * i] as number
      if (ref === 0) return -1
      if (tab[2 * i + 1] === hs) {
        const ri = ref - 1
        const seq = this.rSeq[ri] as number
        if (this.rKeyLen[ri] === len && seq !== DELETED) {
          const off = (this.rKeyOff[ri] as number) & amask
          if (this.arena.compare(rec, start, end, off, off + len) === 0) return seq
        }
      }
      i = (i + 1) & mask
    }
  }

  private insertKey(rec: Buffer, start: number, end: number, h: number, seq: number, time: number): void {
    if (!this.enabled) return
    const len = end - start
    // The cap counts the entries a lookup can find (and pending ones); deleted ones up to as many more.
    while (
      (this.tail - this.head - this.deleted >= this.maxEntries ||
        this.tail - this.head >= 2 * this.maxEntries) &&
      this.dropOldest(true)
    ) {}
    if (this.tail - this.head > this.ringMask) this.growRing()
    const keyOff = this.reserveArena(len)
    const arena = this.arena
    const at = keyOff & (arena.length - 1)
    // Keys are short: a loop beats Buffer#copy's per-call overhead.
    if (len <= 64) for (let k = 0; k < len; k++) arena[at + k] = rec[start + k] as number
    else rec.copy(arena, at, start, end)
    const ri = this.tail & this.ringMask
    this.tail++
    this.rHash[ri] = h
    this.rSeq[ri] = seq
    this.rTime[ri] = time
    this.rKeyOff[ri] = keyOff
    this.rKeyLen[ri] = len
    this.arenaPos = keyOff + len
    this.insert(ri, h)
  }

  /** Removes the entries added after `mark` (newest first): a batch that could not be stored. */
  rollbackTo(mark: number): void {
    while (this.tail > Math.max(mark, this.head)) {
      this.tail--
      const ri = this.tail & this.ringMask
      if (this.rSeq[ri] === DELETED) this.deleted--
      this.remove(this.rSlot[ri] as number)
      this.arenaPos = this.rKeyOff[ri] as number
    }
  }

  /** Forgets entries older than the window (up to the oldest pending one). */
  expire(now: number): void {
    const limit = now - this.windowMs
    while (
      this.head < this.tail &&
      (this.rTime[this.head & this.ringMask] as number) < limit &&
      this.dropOldest(false)
    ) {}
  }

  /**
   * Drops the oldest entry unless it is pending; false when nothing was dropped. `early`: for room
   * (cap, arena), not because the window passed.
   */
  private dropOldest(early: boolean): boolean {
    if (this.head >= this.tail) return false
    const ri = this.head & this.ringMask
    const seq = this.rSeq[ri] as number
    if (seq === DedupeIndex.PENDING) return false
    if (seq === DELETED) this.deleted--
    else if (early) {
      // An entry already past the window does not shorten it: effectiveWindowMs caps at the window.
      // (Nor does a deleted one: no lookup found it anyway.)
      const time = this.rTime[ri] as number
      if (time > this.forgottenUpTo) this.forgottenUpTo = time
      this.forgottenBy = 'maxEntries'
    }
    this.remove(this.rSlot[ri] as number)
    this.head++
    return true
  }

  private insert(ri: number, h: number): void {
    const mask = this.tMask
    const tab = this.tab
    let i = h & mask
    while (tab[2 * i] !== 0) i = (i + 1) & mask
    tab[2 * i] = ri + 1
    tab[2 * i + 1] = h
    this.rSlot[ri] = i
  }

  /** Empties slot `i`, shifting back the entries of the run after it that may move (linear probing). */
  private remove(i: number): void {
    const mask = this.tMask
    const tab = this.tab
    let hole = i
    let j = i
    for (;;) {
      j = (j + 1) & mask
      const ref = tab[2 * j] as number
      if (ref === 0) break
      const home = (tab[2 * j + 1] as number) & mask
      // The entry at j may fill the hole unless its home lies cyclically in (hole, j].
      const stays = hole <= j ? hole < home && home <= j : hole < home || home <= j
      if (stays) continue
      tab[2 * hole] = ref
      tab[2 * hole + 1] = tab[2 * j + 1] as number
      this.rSlot[ref - 1] = hole
      hole = j
    }
    tab[2 * hole] = 0
  }

  /** Absolute arena position for `len` key bytes that do not straddle the arena's end. */
  private reserveArena(len: number): number {
    for (;;) {
      const cap = this.arena.length
      let pos = this.arenaPos
      if (cap > 0 && (pos % cap) + len > cap) pos = Math.ceil(pos / cap) * cap
      const oldest = this.head < this.tail ? (this.rKeyOff[this.head & this.ringMask] as number) : pos
      if (cap > 0 && pos + len - oldest <= cap) return pos
      // maxArena >= 1 MiB, so an empty arena grows; past maxArena only while the oldest is pending.
      if (cap >= this.maxArena && this.dropOldest(true)) continue
      this.growArena()
    }
  }

  private growArena(): void {
    const old = this.arena
    if (old.length === 0) {
      this.arena = Buffer.allocUnsafe(64 * 1024)
      return
    }
    // A live byte at absolute position p sits at p & (cap - 1) and moves to p & (2 cap - 1): the same
    // place or cap further. Two copies of the old arena put every live byte where it belongs.
    const next = Buffer.allocUnsafe(old.length * 2)
    next.set(old, 0)
    next.set(old, old.length)
    this.arena = next
  }

  private growRing(): void {
    // Grows only when full: its size is bounded by insertKey's cap (2 x maxEntries in all).
    const size = this.ringMask < 0 ? MIN_RING : (this.ringMask + 1) * 2
    const oldMask = this.ringMask
    const hash = new Uint32Array(size)
    const seq = new Float64Array(size)
    const time = new Float64Array(size)
    const keyOff = new Float64Array(size)
    const keyLen = new Uint16Array(size)
    const mask = size - 1
    for (let n = this.head; n < this.tail; n++) {
      const o = n & oldMask
      const ni = n & mask
      hash[ni] = this.rHash[o] as number
      seq[ni] = this.rSeq[o] as number
      time[ni] = this.rTime[o] as number
      keyOff[ni] = this.rKeyOff[o] as number
      keyLen[ni] = this.rKeyLen[o] as number
    }
    this.rHash = hash
    this.rSeq = seq
    this.rTime = time
    this.rKeyOff = keyOff
    this.rKeyLen = keyLen
    this.rSlot = new Int32Array(size)
    this.ringMask = mask
    // The table holds ring indexes: rebuild it, twice the ring's size.
    this.tab = new Int32Array(size * 4)
    this.tMask = size * 2 - 1
    for (let n = this.head; n < this.tail; n++) this.insert(n & mask, hash[n & mask] as number)
  }
}

function hashOf(rec: Buffer, pos: number): number {
  return hashBytes(rec, pos + KEY_START, DedupeIndex.keyEnd(rec, pos))
}

/** murmur3 (x86, 32-bit) of bytes [start, end). */
export function hashBytes(b: Buffer, start: number, end: number): number {
  let h = 0x9747b28c
  let i = start
  const stop = end - 3
  for (; i < stop; i += 4) {
    let k =
      (b[i] as number) |
      ((b[i + 1] as number) << 8) |
      ((b[i + 2] as number) << 16) |
      ((b[i + 3] as number) << 24)
    k = Math.imul(k, 0xcc9e2d51)
    k = (k << 15) | (k >>> 17)
    h ^= Math.imul(k, 0x1b873593)
    h = (h << 13) | (h >>> 19)
    h = (Math.imul(h, 5) + 0xe6546b64) | 0
  }
  const rest = end - i
  if (rest > 0) {
    let k = b[i] as number
    if (rest > 1) k |= (b[i + 1] as number) << 8
    if (rest > 2) k |= (b[i + 2] as number) << 16
    k = Math.imul(k, 0xcc9e2d51)
    k = (k << 15) | (k >>> 17)
    h ^= Math.imul(k, 0x1b873593)
  }
  h ^= end - start
  h ^= h >>> 16
  h = Math.imul(h, 0x85ebca6b)
  h ^= h >>> 13
  h = Math.imul(h, 0xc2b2ae35)
  h ^= h >>> 16
  return h >>> 0
}
