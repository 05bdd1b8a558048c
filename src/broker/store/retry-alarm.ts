import type { GroupState } from './consumer-state'
import { MinHeap } from './min-heap'

/**
 * Makes nacked messages pullable when their redelivery time comes, not at the next sweep tick.
 *
 * Each group keeps its retries in its own heap (consumer-state.ts). The alarm keeps a heap of
 * (due, group) and one timer for its earliest entry. `watch(g)` is called after anything that may give
 * `g` an earlier retry; it adds an entry only when `g.nextDue()` is earlier than the entry already
 * armed for `g` (`armed`), so there is at most one live entry per group plus stale ones, each popped
 * once and skipped because its due no longer matches `armed`.
 * The periodic sweep still promotes due retries too: the alarm is for timeliness, not correctness.
 */
export class RetryAlarm {
  private readonly heap = new MinHeap<GroupState>()
  private readonly armed = new Map<GroupState, number>()
  private timer: NodeJS.Timeout | undefined
  private timerAt = Number.POSITIVE_INFINITY
  private closed = false

  constructor(
    private readonly now: () => number,
    /**
     * Promotes what is due in `g` at `now`; false when `g` is gone (forgotten since it was watched),
     * and the alarm then lets go of it.
     */
    private readonly fire: (g: GroupState, now: number) => boolean,
  ) {}

  watch(g: GroupState): void {
    const due = g.nextDue()
    if (this.closed || due === Number.POSITIVE_INFINITY) return
    if (due >= (this.armed.get(g) ?? Number.POSITIVE_INFINITY)) return
    this.armed.set(g, due)
    this.heap.push(due, g)
    if (due < this.timerAt) this.arm(due)
  }

  close(): void {
    this.closed = true
    if (this.timer !== undefined) clearTimeout(this.timer)
    this.timer = undefined
  }

  private arm(due: number): void {
    if (this.timer !== undefined) clearTimeout(this.timer)
    this.timerAt = due
    // At least 1 ms: an injected clock that stands still must not turn this into a busy loop.
    this.timer = setTimeout(() => this.run(), Math.max(1, due - this.now()))
    this.timer.unref()
  }

  private run(): void {
    this.timer = undefined
    this.timerAt = Number.POSITIVE_INFINITY
    if (this.closed) return
    const now = this.now()
    while (this.heap.size > 0 && this.heap.peekKey() <= now) {
      const [due, g] = this.heap.pop() as [number, GroupState]
      if (this.armed.get(g) !== due) continue
      this.armed.delete(g)
      if (this.fire(g, now)) this.watch(g)
    }
    if (this.heap.size > 0) this.arm(this.heap.peekKey())
  }
}
