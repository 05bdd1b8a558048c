/**
 * A hashed timing wheel over typed arrays: no object per entry, no timers, no clock of its own.
 * The caller passes `now` to `advance()`, so tests drive time by hand and the same code serves the
 * delay server (schedule-log index entries) and the broker's redelivery timers (sequences).
 *
 * An entry is (due, ref, x, y): `due` in ms since the epoch, `ref` a caller-defined safe integer
 * (a schedule-log offset, a sequence), `x` and `y` caller-defined u32 (a bucket slot and a record
 * size, a group id and a delivery count). 40 bytes per entry in total, in parallel arrays:
 *
 *   entry i:  due[i] f64 | ref[i] f64 | x[i] u32 | y[i] u32 | next[i] i32 | prev[i] i32 | slotOf[i] i32 | gen[i] u32
 *
 * Slots: `wheelSize` doubly linked lists (head/tail per slot); slot of an entry = tick(due) mod
 * wheelSize, tick(t) = floor(t / tickMs). One turn of the wheel spans tickMs * wheelSize; an entry due
 * later stays in its slot for several turns and is skipped until its tick comes (no rounds counter
 * needed: `due` is compared directly). Entries added with a tick the wheel has already passed go to
 * the `late` list and fire at the next advance.
 *
 *   cursorTick ─┐ (first tick not yet fully expired)
 *   slots:  [..][c ][c+1][c+2] ... [c+wheelSize-1]   (indices mod wheelSize)
 *   advance(now): visit ticks cursorTick..tick(now) (at most wheelSize slots), fire due <= now.
 *
 * Free entries form a singly linked free list through `next`. Capacity doubles when full; memory is
 * the peak number of pending entries times 40 bytes (plus the slot heads).
 *
 * Order: advance() reports due entries sorted by due time; entries with equal due times in the
 * order they were added.
 */

export const DEFAULT_TICK_MS = 10
export const DEFAULT_WHEEL_SIZE = 4096 // slots: one turn = 40.96 s at 10 ms
export const DEFAULT_INITIAL_CAPACITY = 1024 // entries
/** Handles are gen * HANDLE_SPAN + index: at most 2^26 (67M) entries, 2^26 generations per slot. */
const HANDLE_SPAN = 2 ** 26
const NIL = -1
const LATE_SLOT = -2

export interface HashWheelOptions {
  tickMs?: number
  wheelSize?: number
  initialCapacity?: number
}

export type DueCallback = (due: number, ref: number, x: number, y: number) => void

export class HashWheel {
  readonly tickMs: number
  readonly wheelSize: number
  private capacity: number
  private due: Float64Array
  private ref: Float64Array
  private xs: Uint32Array
  private ys: Uint32Array
  private next: Int32Array
  private prev: Int32Array
  private slotOf: Int32Array
  private gen: Uint32Array
  private readonly heads: Int32Array
  private readonly tails: Int32Array
  private lateHead = NIL
  private lateTail = NIL
  private freeHead = NIL
  /** Entries never used yet start here (indices >= highWater are free without being on the list). */
  private highWater = 0
  private count = 0
  private cursorTick: number
  /** Scratch list of fired indices, reused between advances. */
  private fired: Int32Array

  constructor(startMs: number, options: HashWheelOptions = {}) {
    this.tickMs = options.tickMs ?? DEFAULT_TICK_MS
    this.wheelSize = options.wheelSize ?? DEFAULT_WHEEL_SIZE
    if (!Number.isInteger(this.tickMs) || this.tickMs < 1)
      throw new RangeError('tickMs must be an integer >= 1')
    if (!Number.isInteger(this.wheelSize) || this.wheelSize < 2)
      throw new RangeError('wheelSize must be >= 2')
    this.capacity = Math.max(16, options.initialCapacity ?? DEFAULT_INITIAL_CAPACITY)
    this.due = new Float64Array(this.capacity)
    this.ref = new Float64Array(this.capacity)
    this.xs = new Uint32Array(this.capacity)
    this.ys = new Uint32Array(this.capacity)
    this.next = new Int32Array(this.capacity)
    this.prev = new Int32Array(this.capacity)
    this.slotOf = new Int32Array(this.capacity)
    this.gen = new Uint32Array(this.capacity)
    this.heads = new Int32Array(this.wheelSize).fill(NIL)
    this.tails = new Int32Array(this.wheelSize).fill(NIL)
    this.fired = new Int32Array(256)
    this.cursorTick = Math.floor(startMs / this.tickMs)
  }

  /** Pending entries. */
  get size(): number {
    return this.count
  }

  /** Bytes held by the entry arrays (for metrics and memory tests). */
  get memoryBytes(): number {
    return this.capacity * 40 + this.wheelSize * 8 + this.fired.byteLength
  }

  /**
   * Adds an entry; returns a handle for cancel(). `ref` must be a safe integer or any finite number,
   * `x` and `y` are stored as u32.
   */
  add(due: number, ref: number, x = 0, y = 0): number {
    if (!Number.isFinite(due)) throw new RangeError(`due time ${due} is not finite`)
    const i = this.allocate()
    this.due[i] = due
    this.ref[i] = ref
    this.xs[i] = x
    this.ys[i] = y
    const tick = Math.floor(due / this.tickMs)
    if (tick < this.cursorTick) this.linkLate(i)
    else this.linkSlot(i, tick % this.wheelSize)
    this.count++
    return (this.gen[i] as number) * HANDLE_SPAN + i
  }

  /** Removes a pending entry; false when it already fired or was cancelled. */
  cancel(handle: number): boolean {
    const i = handle % HANDLE_SPAN
    const g = Math.floor(handle / HANDLE_SPAN)
    if (i < 0 || i >= this.highWater || this.gen[i] !== g || this.slotOf[i] === NIL) return false
    this.unlink(i)
    this.release(i)
    this.count--
    return true
  }

  /**
   * Fires every entry due at or before `now`, in due order, through `onDue`. Returns how many fired.
   * `now` going backwards is harmless (nothing fires). `limit` caps how many fire in this call (the
   * rest fire at the next call); the cap is applied after sorting, so the earliest go first.
   * `onDue` must not call add() or cancel() on this wheel (queue the work and do it afterwards).
   */
  advance(now: number, onDue: DueCallback, limit = Number.POSITIVE_INFINITY): number {
    let n = 0
    const nowTick = Math.floor(now / this.tickMs)
    const last = Math.min(nowTick, this.cursorTick + this.wheelSize - 1)
    for (let t = this.cursorTick; t <= last; t++) {
      const s = t % this.wheelSize
      for (let i = this.heads[s] as number; i !== NIL; ) {
        const nx = this.next[i] as number
        if ((this.due[i] as number) <= now) n = this.pushFired(i, n)
        i = nx
      }
    }
    // Late entries last: each was added after every slot entry of equal due time, so the stable
    // sort below keeps insertion order among equal due times.
    for (let i = this.lateHead; i !== NIL; ) {
      const nx = this.next[i] as number
      if ((this.due[i] as number) <= now) n = this.pushFired(i, n)
      i = nx
    }
    // Ticks strictly before now's tick are fully expired; now's tick may still get entries due later in it.
    if (nowTick > this.cursorTick) this.cursorTick = nowTick
    if (n === 0) return 0
    this.sortFired(n)
    const take = Math.min(n, limit)
    for (let k = 0; k < take; k++) {
      const i = this.fired[k] as number
      this.unlink(i)
      this.count--
      const d = this.due[i] as number
      const r = this.ref[i] as number
      const x = this.xs[i] as number
      const y = this.ys[i] as number
      this.release(i)
      onDue(d, r, x, y)
    }
    // Due but over the limit: their ticks are behind the cursor now, so they wait in the late list
    // (in due order) for the next advance.
    for (let k = take; k < n; k++) {
      const i = this.fired[k] as number
      this.unlink(i)
      this.linkLate(i)
    }
    return take
  }

  /** Earliest due time among pending entries, or undefined when empty. O(size): for tests and metrics. */
  earliestDue(): number | undefined {
    if (this.count === 0) return undefined
    let min = Number.POSITIVE_INFINITY
    for (let i = 0; i < this.highWater; i++) {
      if (this.slotOf[i] !== NIL && (this.due[i] as number) < min) min = this.due[i] as number
    }
    return min
  }

  /** Drops every entry (handles become invalid). Keeps the allocated capacity. */
  clear(): void {
    for (let i = 0; i < this.highWater; i++) {
      if (this.slotOf[i] !== NIL) {
        this.slotOf[i] = NIL
        this.gen[i] = ((this.gen[i] as number) + 1) % HANDLE_SPAN
      }
    }
    this.heads.fill(NIL)
    this.tails.fill(NIL)
    this.lateHead = NIL
    this.lateTail = NIL
    this.freeHead = NIL
    this.highWater = 0
    this.count = 0
  }

  // ---------------------------------------------------------------- internals

  private pushFired(i: number, n: number): number {
    if (n === this.fired.length) {
      const bigger = new Int32Array(this.fired.length * 2)
      bigger.set(this.fired)
      this.fired = bigger
    }
    this.fired[n] = i
    return n + 1
  }

  /**
   * Sorts fired[0..n) by due time, stable. Collection order already keeps equal-due entries in
   * insertion order (they share a slot, and late ones come after), and is most often sorted
   * already (one tick per advance, or a burst with one due time): check before sorting.
   */
  private sortFired(n: number): void {
    let sorted = true
    for (let k = 1; k < n; k++) {
      if ((this.due[this.fired[k - 1] as number] as number) > (this.due[this.fired[k] as number] as number)) {
        sorted = false
        break
      }
    }
    if (sorted) return
    const idx = Array.from(this.fired.subarray(0, n))
    const due = this.due
    idx.sort((a, b) => (due[a] as number) - (due[b] as number)) // Array#sort is stable
    this.fired.set(idx)
  }

  private allocate(): number {
    if (this.freeHead !== NIL) {
      const i = this.freeHead
      this.freeHead = this.next[i] as number
      return i
    }
    if (this.highWater === this.capacity) this.grow()
    const i = this.highWater++
    this.slotOf[i] = NIL
    return i
  }

  private release(i: number): void {
    this.slotOf[i] = NIL
    this.gen[i] = ((this.gen[i] as number) + 1) % HANDLE_SPAN
    this.next[i] = this.freeHead
    this.freeHead = i
  }

  private grow(): void {
    const cap = this.capacity * 2
    if (cap > HANDLE_SPAN) throw new RangeError(`hash wheel is full (${this.capacity} entries)`)
    const growF = (a: Float64Array) => {
      const b = new Float64Array(cap)
      b.set(a)
      return b
    }
    const growU = (a: Uint32Array) => {
      const b = new Uint32Array(cap)
      b.set(a)
      return b
    }
    const growI = (a: Int32Array) => {
      const b = new Int32Array(cap)
      b.set(a)
      return b
    }
    this.due = growF(this.due)
    this.ref = growF(this.ref)
    this.xs = growU(this.xs)
    this.ys = growU(this.ys)
    this.gen = growU(this.gen)
    this.next = growI(this.next)
    this.prev = growI(this.prev)
    this.slotOf = growI(this.slotOf)
    this.capacity = cap
  }

  private linkSlot(i: number, s: number): void {
    this.slotOf[i] = s
    this.next[i] = NIL
    const tail = this.tails[s] as number
    this.prev[i] = tail
    if (tail === NIL) this.heads[s] = i
    else this.next[tail] = i
    this.tails[s] = i
  }

  private linkLate(i: number): void {
    this.slotOf[i] = LATE_SLOT
    this.next[i] = NIL
    this.prev[i] = this.lateTail
    if (this.lateTail === NIL) this.lateHead = i
    else this.next[this.lateTail] = i
    this.lateTail = i
  }

  private unlink(i: number): void {
    const s = this.slotOf[i] as number
    const p = this.prev[i] as number
    const nx = this.next[i] as number
    if (s === LATE_SLOT) {
      if (p === NIL) this.lateHead = nx
      else this.next[p] = nx
      if (nx === NIL) this.lateTail = p
      else this.prev[nx] = p
      return
    }
    if (p === NIL) this.heads[s] = nx
    else this.next[p] = nx
    if (nx === NIL) this.tails[s] = p
    else this.prev[nx] = p
  }
}
