/**
 * Message ids stored recently, per subject: (subject, id) -> the subject sequence of the first copy.
 * Entries are kept in insertion (= time) order; the oldest go when they leave the window or when
 * the count passes `maxEntries`. One map per subject (no concatenated keys on the hot path).
 */
export class DedupeIndex {
  private readonly bySubject = new Map<string, Map<string, number>>()
  /**
   * Ids, their subject maps and insertion times in insertion order (arrays + head). The oldest entry
   * is taken from here, not with `map.keys().next()`, which scans the deleted slots V8 keeps at the
   * front of a map.
   */
  private ids: string[] = []
  private maps: Map<string, number>[] = []
  private times: number[] = []
  private head = 0
  private count = 0
  private readonly windowMs: number
  private readonly maxEntries: number

  constructor(windowMs: number, maxEntries: number) {
    this.windowMs = windowMs
    this.maxEntries = maxEntries
  }

  get enabled(): boolean {
    return this.windowMs > 0 && this.maxEntries > 0
  }

  get size(): number {
    return this.count
  }

  get(subject: string, id: string): number | undefined {
    return this.bySubject.get(subject)?.get(id)
  }

  add(subject: string, id: string, seq: number, time: number): void {
    if (!this.enabled) return
    let m = this.bySubject.get(subject)
    if (!m) {
      m = new Map()
      this.bySubject.set(subject, m)
    }
    if (m.has(id)) return
    m.set(id, seq)
    this.ids.push(id)
    this.maps.push(m)
    this.times.push(time)
    this.count++
    if (this.count > this.maxEntries) this.dropOldest()
  }

  private dropOldest(): void {
    if (this.head >= this.ids.length) return
    ;(this.maps[this.head] as Map<string, number>).delete(this.ids[this.head] as string)
    this.head++
    this.count--
    if (this.head > 65536 && this.head * 2 > this.ids.length) {
      this.ids = this.ids.slice(this.head)
      this.maps = this.maps.slice(this.head)
      this.times = this.times.slice(this.head)
      this.head = 0
    }
  }

  expire(now: number): void {
    const limit = now - this.windowMs
    while (this.head < this.times.length && (this.times[this.head] as number) < limit) this.dropOldest()
  }
}
