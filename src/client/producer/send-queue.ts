import type { Pending } from './batch'

/**
 * Messages waiting for room in a producer's send queue (producer.ts: `maxQueueSize` admitted messages
 * at most; the rest wait here, first come first served, until a settlement makes room or their deadline
 * passes).
 *
 * A FIFO array read from `head` (compacted when half of it is consumed), and one timer, at the first
 * waiter's deadline: deadlines are in arrival order, as every message's is its call time plus the
 * same sendTimeoutMs, so only the head can be due.
 */

/** A message waiting for room: encoded alone, `[u32 1][record]` (a SEND body of its own). */
export interface Waiter {
  p: Pending
  delayed: boolean
  /** Sent again after a failure: the group that may hold it (see producer.ts, Route.sticky). */
  sticky: string | undefined
  /** The order-key slot of a keyed message (producer.ts, orderSlot), -1 when unkeyed or delayed. */
  slot: number
  /** Set once admitted to the queue (an AbortSignal no longer withdraws it). */
  admitted?: boolean
}

export class WaitQueue {
  private items: (Waiter | undefined)[] = []
  private head = 0
  private timer: NodeJS.Timeout | undefined

  /** `onDue` runs when the first waiter's deadline has passed (it takes the due ones with `takeDue`). */
  constructor(private readonly onDue: () => void) {}

  get size(): number {
    return this.items.length - this.head
  }

  push(w: Waiter): void {
    this.items.push(w)
    this.arm()
  }

  /** The oldest waiter, removed. */
  shift(): Waiter | undefined {
    if (this.head >= this.items.length) return undefined
    const w = this.items[this.head]
    this.items[this.head++] = undefined
    this.compact()
    return w
  }

  /** The oldest waiter if its deadline is at or before `now`, removed. */
  takeDue(now: number): Waiter | undefined {
    const w = this.items[this.head]
    if (w === undefined || w.p.deadline > now) return undefined
    return this.shift()
  }

  private compact(): void {
    if (this.head === this.items.length) {
      this.items = []
      this.head = 0
      if (this.timer !== undefined) clearTimeout(this.timer)
      this.timer = undefined
      return
    }
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head)
      this.head = 0
    }
  }

  /**
   * A timer at the first waiter's deadline. Unref'd: while messages wait, the send queue is full, and
   * what is in it (requests, retry and linger timers) keeps the process alive.
   */
  arm(): void {
    const first = this.items[this.head]
    if (this.timer !== undefined || first === undefined) return
    this.timer = setTimeout(
      () => {
        this.timer = undefined
        this.onDue()
        this.arm()
      },
      Math.max(0, first.p.deadline - Date.now()) + 1,
    )
    this.timer.unref()
  }
}
