/**
 * The server-wide budget of bytes held in partial frames (bytes of frames whose end has not arrived
 * yet), shared by every connection of one TcpServer.
 *
 * Each connection reports what its FrameDecoder holds after every read (`update`). When the total would
 * exceed the limit, the holders whose partial frame started longest ago are evicted, oldest first, until
 * the total fits again; the holder being updated may be among them. Oldest first because a frame that
 * has been incomplete the longest is the likeliest to belong to a slow or stalled client, while a
 * well-behaved client's frame completes within one round trip of its last byte.
 *
 * Invariant: after every `update` returns, `bytes <= limit`. The overshoot before the eviction is at
 * most one socket read (Node reads at most 64 KiB at a time).
 */
export interface BudgetHolder {
  /** When the holder's current partial frame started (ms since epoch). */
  readonly partialSince: number
  /** Close the holder: its partial frame no longer counts (called after it was removed). */
  evictForBudget(): void
}

export class PartialFrameBudget {
  readonly limit: number
  private total = 0
  private readonly held = new Map<BudgetHolder, number>()

  constructor(limit: number) {
    this.limit = limit
  }

  /** Bytes held in partial frames across all holders. */
  get bytes(): number {
    return this.total
  }

  /**
   * Records that `holder` now holds `bytes` (0 = nothing). Returns false if the holder itself was
   * evicted to make the total fit.
   */
  update(holder: BudgetHolder, bytes: number): boolean {
    const before = this.held.get(holder) ?? 0
    if (bytes === before) return true
    this.total += bytes - before
    if (bytes === 0) this.held.delete(holder)
    else this.held.set(holder, bytes)
    if (this.total <= this.limit) return true
    let selfEvicted = false
    while (this.total > this.limit) {
      let oldest: BudgetHolder | undefined
      for (const h of this.held.keys()) {
        if (oldest === undefined || h.partialSince < oldest.partialSince) oldest = h
      }
      if (oldest === undefined) break
      this.remove(oldest)
      if (oldest === holder) selfEvicted = true
      oldest.evictForBudget()
    }
    return !selfEvicted
  }

  /** The holder is gone (closed): its bytes no longer count. */
  remove(holder: BudgetHolder): void {
    const bytes = this.held.get(holder)
    if (bytes === undefined) return
    this.held.delete(holder)
    this.total -= bytes
  }
}
