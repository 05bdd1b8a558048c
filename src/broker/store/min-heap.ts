/**
 * Binary min-heap of (key, value) pairs, keyed by a number (a due time). Keys and values live in two
 * parallel arrays, so a heap of numbers allocates nothing per entry.
 */
export class MinHeap<T> {
  private readonly keys: number[] = []
  private readonly values: T[] = []

  get size(): number {
    return this.keys.length
  }

  /** The smallest key; +Infinity when empty. */
  peekKey(): number {
    return this.keys[0] ?? Number.POSITIVE_INFINITY
  }

  push(key: number, value: T): void {
    const k = this.keys
    const v = this.values
    let i = k.length
    k.push(key)
    v.push(value)
    while (i > 0) {
      const p = (i - 1) >> 1
      if ((k[p] as number) <= key) break
      k[i] = k[p] as number
      v[i] = v[p] as T
      i = p
    }
    k[i] = key
    v[i] = value
  }

  pop(): [number, T] | undefined {
    const k = this.keys
    const v = this.values
    if (k.length === 0) return undefined
    const top: [number, T] = [k[0] as number, v[0] as T]
    const lastK = k.pop() as number
    const lastV = v.pop() as T
    const n = k.length
    if (n > 0) {
      let i = 0
      for (;;) {
        let c = 2 * i + 1
        if (c >= n) break
        if (c + 1 < n && (k[c + 1] as number) < (k[c] as number)) c++
        if ((k[c] as number) >= lastK) break
        k[i] = k[c] as number
        v[i] = v[c] as T
        i = c
      }
      k[i] = lastK
      v[i] = lastV
    }
    return top
  }
}
