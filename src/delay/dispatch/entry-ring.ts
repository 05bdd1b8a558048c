/**
 * A growable FIFO of due wheel entries in typed arrays: (due f64, offset f64, slot u32, length u32),
 * 24 bytes per entry, no object per message. A power-of-two ring; `head` is the oldest entry.
 *
 *   [ . . h x x x x t . . ]   size = t - h (mod capacity); grows (doubling, unwrapped) when full
 */
export class EntryRing {
  private cap: number
  private due: Float64Array
  private off: Float64Array
  private slot: Uint32Array
  private len: Uint32Array
  private head = 0
  private count = 0

  constructor(initial = 1024) {
    let c = 16
    while (c < initial) c *= 2
    this.cap = c
    this.due = new Float64Array(c)
    this.off = new Float64Array(c)
    this.slot = new Uint32Array(c)
    this.len = new Uint32Array(c)
  }

  get size(): number {
    return this.count
  }

  push(due: number, offset: number, slot: number, length: number): void {
    if (this.count === this.cap) this.grow()
    const i = (this.head + this.count) & (this.cap - 1)
    this.due[i] = due
    this.off[i] = offset
    this.slot[i] = slot
    this.len[i] = length
    this.count++
  }

  /** Fields of the k-th oldest entry (0 = head); valid until the next push/shift. */
  dueAt(k: number): number {
    return this.due[(this.head + k) & (this.cap - 1)] as number
  }
  offsetAt(k: number): number {
    return this.off[(this.head + k) & (this.cap - 1)] as number
  }
  slotAt(k: number): number {
    return this.slot[(this.head + k) & (this.cap - 1)] as number
  }
  lengthAt(k: number): number {
    return this.len[(this.head + k) & (this.cap - 1)] as number
  }

  /** Drops the n oldest entries. */
  shift(n: number): void {
    const k = Math.min(n, this.count)
    this.head = (this.head + k) & (this.cap - 1)
    this.count -= k
    if (this.count === 0) this.head = 0
  }

  private grow(): void {
    const c = this.cap * 2
    const move = <A extends Float64Array | Uint32Array>(a: A, make: (n: number) => A): A => {
      const b = make(c)
      for (let k = 0; k < this.count; k++) b[k] = a[(this.head + k) & (this.cap - 1)] as number
      return b
    }
    this.due = move(this.due, (n) => new Float64Array(n))
    this.off = move(this.off, (n) => new Float64Array(n))
    this.slot = move(this.slot, (n) => new Uint32Array(n))
    this.len = move(this.len, (n) => new Uint32Array(n))
    this.head = 0
    this.cap = c
  }
}
