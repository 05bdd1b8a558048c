/**
 * The message log's hot cache: the newest batches exactly as they were written (frame headers and
 * records), in one ring buffer of `capacity` bytes, so pulls of the hot tail never touch the disk.
 *
 * A batch is laid out in its ring space before it is written (`reserve`), written from there, and
 * becomes readable when it is acknowledged (`commit`, with its log offset). There is no object per
 * record and no allocation per batch: the garbage collector sees one small entry per batch.
 *
 * Invariants:
 * - Entries are in ring order, which is formation order, which is log order: reserved (in flight)
 *   entries are all newer than committed ones, and batches commit in order.
 * - Live entries occupy one contiguous span of the ring, possibly wrapped once: from the oldest
 *   entry's position up to `tailPos` (a batch never wraps itself; the ring's unused end is skipped).
 * - Space is reclaimed from the oldest entry only. A reserved entry is never reclaimed (its bytes may
 *   still be in flight to the disk): a batch that finds no room without that is not cached.
 * - A cancelled entry (its batch was not stored) is removed at once and never readable.
 */

/** One batch in the ring: bytes [pos, pos + len) of the ring hold log bytes [start, start + len). */
export interface HotEntry {
  readonly pos: number
  readonly len: number
  /** Log offset of the batch's first byte once committed; -1 while reserved; -2 once cancelled. */
  start: number
}

const RESERVED = -1
const CANCELLED = -2

export class HotCache {
  readonly capacity: number
  private ring: Buffer | undefined
  private entries: HotEntry[] = []
  private head = 0
  /** Entries [head, committedTo) are committed (readable); those after are reserved or cancelled. */
  private committedTo = 0
  private tailPos = 0
  /** Bytes of committed entries. */
  private committedBytes = 0

  constructor(capacity: number) {
    this.capacity = Math.max(0, Math.floor(capacity))
  }

  get bytes(): number {
    return this.committedBytes
  }

  /**
   * Ring space for a batch of `len` bytes (the oldest committed batches make room), or undefined:
   * caching disabled, the batch bigger than half the ring, or no room without reclaiming a batch
   * still in flight. The caller writes the batch into the returned buffer.
   */
  reserve(len: number): { entry: HotEntry; buf: Buffer } | undefined {
    const cap = this.capacity
    if (len <= 0 || len > cap / 2) return undefined
    let pos: number
    for (;;) {
      if (this.head >= this.entries.length) {
        this.tailPos = 0
        pos = 0
        break
      }
      const headPos = (this.entries[this.head] as HotEntry).pos
      if (this.tailPos > headPos) {
        // Live span [headPos, tailPos): room after it, or at the start of the ring before it.
        if (cap - this.tailPos >= len) {
          pos = this.tailPos
          break
        }
        if (headPos >= len) {
          pos = 0
          break
        }
      } else if (headPos - this.tailPos >= len) {
        // Wrapped: the live span is [headPos, end) + [0, tailPos); the room is [tailPos, headPos).
        pos = this.tailPos
        break
      }
      if (!this.reclaimOldest()) return undefined
    }
    this.ring ??= Buffer.allocUnsafeSlow(cap)
    const entry: HotEntry = { pos, len, start: RESERVED }
    this.entries.push(entry)
    this.tailPos = pos + len
    return { entry, buf: this.ring.subarray(pos, pos + len) }
  }

  /** The batch of `entry` is stored at log offset `start`: readable from now on. */
  commit(entry: HotEntry, start: number): void {
    // Batches commit in order; anything else (not expected) is simply not cached.
    if (entry.start !== RESERVED || this.entries[this.committedTo] !== entry) {
      this.cancel(entry)
      return
    }
    entry.start = start
    this.committedTo++
    this.committedBytes += entry.len
  }

  /**
   * The batch of `entry` will not be stored: it is never readable and its entry goes at once. Its
   * space is free again when it was the newest (the usual case: failed batches go newest first),
   * otherwise when the ring comes round to it.
   */
  cancel(entry: HotEntry): void {
    if (entry.start !== RESERVED) return
    entry.start = CANCELLED
    for (let i = this.entries.length - 1; i >= this.committedTo; i--) {
      if (this.entries[i] === entry) {
        this.entries.splice(i, 1)
        break
      }
    }
    const last = this.entries[this.entries.length - 1]
    this.tailPos = last !== undefined && this.entries.length > this.head ? last.pos + last.len : 0
  }

  /**
   * The record of `size` bytes at log offset `offset` (a record's offset, just after its frame
   * header) if its batch is cached: a view of the ring (callers must not modify it, nor keep it past
   * a later append: the space is reused once the batch is reclaimed).
   */
  get(offset: number, size: number): Buffer | undefined {
    let lo = this.head
    let hi = this.committedTo - 1
    if (lo > hi || this.ring === undefined) return undefined
    if (offset < (this.entries[lo] as HotEntry).start) return undefined
    // Last committed batch starting at or before `offset`.
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1
      if ((this.entries[mid] as HotEntry).start <= offset) lo = mid
      else hi = mid - 1
    }
    const e = this.entries[lo] as HotEntry
    const rel = offset - e.start
    if (rel + size > e.len) return undefined
    return this.ring.subarray(e.pos + rel, e.pos + rel + size)
  }

  /** Drops committed batches that end at or before `offset` (retention deleted them). */
  evictBefore(offset: number): void {
    while (this.head < this.committedTo) {
      const e = this.entries[this.head] as HotEntry
      if (e.start + e.len > offset) break
      this.reclaimOldest()
    }
  }

  /** Forgets everything (the ring's memory included). */
  clear(): void {
    this.entries = []
    this.head = 0
    this.committedTo = 0
    this.tailPos = 0
    this.committedBytes = 0
    this.ring = undefined
  }

  /** Frees the oldest entry unless it is still reserved; false when it is. */
  private reclaimOldest(): boolean {
    const e = this.entries[this.head] as HotEntry
    if (e.start === RESERVED) return false
    this.committedBytes -= e.len
    this.head++
    if (this.head > 1024 && this.head * 2 > this.entries.length) {
      this.entries = this.entries.slice(this.head)
      this.committedTo -= this.head
      this.head = 0
    }
    return true
  }
}
