/**
 * A multiset of 32-bit hashes in one Uint32Array (open addressing, linear probing): which message ids
 * are pending, 4 to 10.7 bytes per pending message (load factor 3/8 to 3/4 after growing). Used to answer CANCEL
 * ("was it pending?") without an object per message.
 *
 * Slot values: 0 empty, 1 deleted, else the hash (hashes 0 and 1 are stored as 2 and 3: a collision
 * class like any other). A hash may be present several times (duplicate sends of one id).
 */
const EMPTY = 0
const DELETED = 1

export class IdHashSet {
  private table: Uint32Array
  private mask: number
  private used = 0 // live + deleted slots
  private live = 0

  constructor(initialSlots = 1024) {
    let n = 16
    while (n < initialSlots) n *= 2
    this.table = new Uint32Array(n)
    this.mask = n - 1
  }

  get size(): number {
    return this.live
  }

  get memoryBytes(): number {
    return this.table.byteLength
  }

  add(hash: number): void {
    if ((this.used + 1) * 4 > this.table.length * 3) this.rehash(this.live * 2 > this.table.length ? 2 : 1)
    const h = norm(hash)
    let i = mix(h) & this.mask
    for (;;) {
      const v = this.table[i] as number
      if (v === EMPTY || v === DELETED) {
        if (v === EMPTY) this.used++
        this.table[i] = h
        this.live++
        return
      }
      i = (i + 1) & this.mask
    }
  }

  has(hash: number): boolean {
    const h = norm(hash)
    let i = mix(h) & this.mask
    for (;;) {
      const v = this.table[i] as number
      if (v === EMPTY) return false
      if (v === h) return true
      i = (i + 1) & this.mask
    }
  }

  /** Removes one occurrence; false when absent. */
  delete(hash: number): boolean {
    const h = norm(hash)
    let i = mix(h) & this.mask
    for (;;) {
      const v = this.table[i] as number
      if (v === EMPTY) return false
      if (v === h) {
        this.table[i] = DELETED
        this.live--
        return true
      }
      i = (i + 1) & this.mask
    }
  }

  private rehash(factor: number): void {
    const old = this.table
    this.table = new Uint32Array(old.length * factor)
    this.mask = this.table.length - 1
    this.used = 0
    this.live = 0
    for (let k = 0; k < old.length; k++) {
      const v = old[k] as number
      if (v > DELETED) this.add(v)
    }
  }
}

function norm(hash: number): number {
  const h = hash >>> 0
  return h <= DELETED ? h + 2 : h
}

/** Spreads hash bits before masking (the hashes come from CRC32C, fine, but cheap insurance). */
function mix(h: number): number {
  return Math.imul(h ^ (h >>> 16), 0x45d9f3b) >>> 0
}
