/**
 * A multiset of 32-bit hashes: which message ids are pending. Used to answer CANCEL ("was it pending?")
 * without an object per message.
 *
 * Layout: a Robin Hood hash table (linear probing) of 2^k slots over H = mix(hash), a bijection of
 * the 32-bit hash. An entry's home slot is the top k bits of H; its slot stores only the other
 * 32 - k bits (`rems`: a Uint8Array from 2^24 slots up, a Uint16Array from 2^16, else a Uint32Array)
 * and its distance from home plus one (`dists`, u8; 0 = empty). Home and remainder give back H
 * exactly, so the set answers as a table of whole hashes would, in 2 bytes per slot at 2^24 slots
 * (32 MiB for up to 12.6M pending; a table of whole u32 hashes took 64 MiB there) and 3 bytes per
 * slot from 2^16 to 2^23. Load factor at most 3/4 (then the table doubles).
 *
 * Robin Hood order: along a run of occupied slots, homes never decrease, so a lookup stops at the
 * first slot whose entry sits nearer its home than the probe does; a delete shifts the rest of its
 * run back by one slot. Not in the table, counted in `extra` (hash -> copies): the copies of a hash
 * beyond the first (duplicate sends of one id) and an entry that would sit 255 or more slots from its
 * home (only ids crafted to collide get there: they cost a Map entry each, not a bigger table).
 */
const MIN_BITS = 4
const MAX_DIST = 255 // stored distance + 1 fits a u8

type Rems = Uint8Array | Uint16Array | Uint32Array

export class IdHashSet {
  private bits: number
  private shift: number
  private remMask: number
  private mask: number
  private rems: Rems
  private dists: Uint8Array
  /** Entries in the table (each a distinct H). */
  private count = 0
  private live = 0
  private readonly extra = new Map<number, number>()

  constructor(initialSlots = 1024) {
    let bits = MIN_BITS
    while (2 ** bits < initialSlots) bits++
    this.bits = bits
    this.shift = 0
    this.remMask = 0
    this.mask = 0
    this.rems = new Uint8Array(0)
    this.dists = new Uint8Array(0)
    this.allocate(bits)
  }

  get size(): number {
    return this.live
  }

  get memoryBytes(): number {
    return this.rems.byteLength + this.dists.byteLength
  }

  add(hash: number): void {
    const h = mix(hash >>> 0)
    if (this.extra.size > 0 && this.extra.has(h)) {
      this.extra.set(h, (this.extra.get(h) as number) + 1)
    } else if (this.find(h) >= 0) {
      this.extra.set(h, 1)
    } else {
      if ((this.count + 1) * 4 > this.dists.length * 3) this.grow()
      this.place(h)
    }
    this.live++
  }

  has(hash: number): boolean {
    const h = mix(hash >>> 0)
    return this.find(h) >= 0 || (this.extra.size > 0 && this.extra.has(h))
  }

  /** Removes one occurrence; false when absent. */
  delete(hash: number): boolean {
    const h = mix(hash >>> 0)
    if (this.extra.size > 0) {
      const n = this.extra.get(h)
      if (n !== undefined) {
        if (n === 1) this.extra.delete(h)
        else this.extra.set(h, n - 1)
        this.live--
        return true
      }
    }
    let i = this.find(h)
    if (i < 0) return false
    // Backward shift: the entries after it in its run move one slot nearer their homes.
    const { rems, dists, mask } = this
    let j = (i + 1) & mask
    while ((dists[j] as number) > 1) {
      dists[i] = (dists[j] as number) - 1
      rems[i] = rems[j] as number
      i = j
      j = (j + 1) & mask
    }
    dists[i] = 0
    this.count--
    this.live--
    return true
  }

  /** Slot of H in the table, or -1. */
  private find(h: number): number {
    const { rems, dists, mask } = this
    const r = h & this.remMask
    let i = h >>> this.shift
    for (let d = 1; d <= MAX_DIST; d++) {
      const sd = dists[i] as number
      // Empty, or an entry nearer its home than H would be: H would have taken its slot.
      if (sd < d) return -1
      if (sd === d && rems[i] === r) return i
      i = (i + 1) & mask
    }
    return -1
  }

  /** Inserts H (not in the table) in Robin Hood order. */
  private place(h: number): void {
    const { rems, dists, mask } = this
    let r = h & this.remMask
    let i = h >>> this.shift
    for (let d = 1; d <= MAX_DIST; d++) {
      const sd = dists[i] as number
      if (sd === 0) {
        dists[i] = d
        rems[i] = r
        this.count++
        return
      }
      if (sd < d) {
        // Take the slot of the entry nearer its home; carry that one on.
        const sr = rems[i] as number
        dists[i] = d
        rems[i] = r
        r = sr
        d = sd
      }
      i = (i + 1) & mask
    }
    // The carried entry would sit MAX_DIST or more slots from home: counted beside the table.
    const home = (i - MAX_DIST) & mask
    const carried = ((home << this.shift) | r) >>> 0
    this.extra.set(carried, (this.extra.get(carried) ?? 0) + 1)
  }

  private allocate(bits: number): void {
    const slots = 2 ** bits
    this.bits = bits
    this.shift = 32 - bits
    this.remMask = 2 ** this.shift - 1
    this.mask = slots - 1
    this.rems =
      this.shift <= 8
        ? new Uint8Array(slots)
        : this.shift <= 16
          ? new Uint16Array(slots)
          : new Uint32Array(slots)
    this.dists = new Uint8Array(slots)
    this.count = 0
  }

  private grow(): void {
    const oldRems = this.rems
    const oldDists = this.dists
    const oldShift = this.shift
    const oldMask = this.mask
    this.allocate(this.bits + 1)
    for (let i = 0; i < oldDists.length; i++) {
      const sd = oldDists[i] as number
      if (sd === 0) continue
      const home = (i - (sd - 1)) & oldMask
      this.place(((home << oldShift) | (oldRems[i] as number)) >>> 0)
    }
  }
}

/** Spreads hash bits: a bijection of u32 (xor-shift, odd multiplier) whose top bits pick the home slot. */
function mix(h: number): number {
  return Math.imul(h ^ (h >>> 16), 0x45d9f3b) >>> 0
}
