import type { StoredMessage } from '../store/types'

/**
 * Long polls: PULLs that found nothing and wait (up to their timeout) for `store.onAvailable(subject)`.
 *
 * Fairness:
 * - Waiters of a subject are kept in arrival order. A wake walks them in that order and lets each try
 *   one pull, one at a time: a waiter that gets messages is answered and leaves (its next PULL joins at
 *   the back), so a batch of new messages is spread round-robin over the waiting consumers instead of
 *   going to whoever asked first every time.
 * - Waiters with the same view of the subject (same group, tag filter and, for broadcast, consumer)
 *   share a `viewKey`: once one of them pulled nothing, the others of that view are not tried in this
 *   pass. Other groups of the subject still are: a busy group never hides messages from another.
 * - Wakes of one subject never overlap (pulls are awaited in turn); a notification that comes during a
 *   pass makes one more pass. Different subjects wake independently.
 *
 * Race-free registration: a PULL reads `epoch(subject)` before its first, immediate store pull; if a
 * notification came since (the epoch moved), registering the waiter triggers a wake at once.
 */
export type PullAttempt = () => Promise<StoredMessage[]>

interface Waiter {
  subject: string
  viewKey: string
  attempt: PullAttempt
  isAlive: () => boolean
  isReady: (() => boolean) | undefined
  resolve: (messages: StoredMessage[]) => void
  reject: (err: unknown) => void
  timer: NodeJS.Timeout | undefined
  state: 'waiting' | 'pulling' | 'done'
  /** The timeout passed (or the server is closing) while a pull was running: answer when it returns. */
  expired: boolean
}

export interface WaitRequest {
  subject: string
  viewKey: string
  timeoutMs: number
  /** `epoch(subject)` read before the caller's own first pull. */
  epochBefore: number
  attempt: PullAttempt
  /** False once the requester's connection is gone: the waiter is dropped without pulling for it. */
  isAlive: () => boolean
  /**
   * False while the requester's connection cannot take an answer (write high-water mark): the waiter
   * is skipped in this pass without counting as an empty pull of its view; the caller notifies the
   * subject again once it can.
   */
  isReady?: () => boolean
}

export class LongPollRegistry {
  private readonly bySubject = new Map<string, Waiter[]>()
  private readonly epochs = new Map<string, number>()
  private readonly waking = new Set<string>()
  private readonly again = new Set<string>()
  private readonly scheduled = new Set<string>()
  private count = 0
  private closed = false

  /** Number of PULLs currently waiting. */
  get waiters(): number {
    return this.count
  }

  epoch(subject: string): number {
    return this.epochs.get(subject) ?? 0
  }

  /** Something may be pullable on `subject`: wake its waiters (coalesced per turn of the event loop). */
  notify(subject: string): void {
    this.epochs.set(subject, (this.epochs.get(subject) ?? 0) + 1)
    if (!this.bySubject.has(subject)) return
    this.schedule(subject)
  }

  wait(req: WaitRequest): Promise<StoredMessage[]> {
    if (this.closed) return Promise.resolve([])
    return new Promise<StoredMessage[]>((resolve, reject) => {
      const w: Waiter = {
        subject: req.subject,
        viewKey: req.viewKey,
        attempt: req.attempt,
        isAlive: req.isAlive,
        isReady: req.isReady,
        resolve,
        reject,
        timer: undefined,
        state: 'waiting',
        expired: false,
      }
      w.timer = setTimeout(() => this.expire(w), req.timeoutMs)
      let list = this.bySubject.get(req.subject)
      if (list === undefined) {
        list = []
        this.bySubject.set(req.subject, list)
      }
      list.push(w)
      this.count++
      if (this.epoch(req.subject) !== req.epochBefore) this.schedule(req.subject)
    })
  }

  /** Answers every waiting PULL with an empty list (pulls already running answer when they return). */
  close(): void {
    this.closed = true
    for (const list of this.bySubject.values()) {
      for (const w of [...list]) this.expire(w)
    }
  }

  private schedule(subject: string): void {
    if (this.scheduled.has(subject)) return
    this.scheduled.add(subject)
    setImmediate(() => {
      this.scheduled.delete(subject)
      void this.wake(subject)
    })
  }

  private expire(w: Waiter): void {
    if (w.state === 'done') return
    if (w.state === 'pulling') {
      w.expired = true
      return
    }
    this.settle(w, [])
  }

  private settle(w: Waiter, messages: StoredMessage[] | Error): void {
    if (w.state === 'done') return
    w.state = 'done'
    if (w.timer !== undefined) clearTimeout(w.timer)
    const list = this.bySubject.get(w.subject)
    if (list !== undefined) {
      const i = list.indexOf(w)
      if (i >= 0) list.splice(i, 1)
      if (list.length === 0) this.bySubject.delete(w.subject)
    }
    this.count--
    if (messages instanceof Error) w.reject(messages)
    else w.resolve(messages)
  }

  private async wake(subject: string): Promise<void> {
    if (this.waking.has(subject)) {
      this.again.add(subject)
      return
    }
    this.waking.add(subject)
    try {
      do {
        this.again.delete(subject)
        const snapshot = [...(this.bySubject.get(subject) ?? [])]
        const exhausted = new Set<string>()
        for (const w of snapshot) {
          if (w.state !== 'waiting' || exhausted.has(w.viewKey)) continue
          if (!w.isAlive()) {
            this.settle(w, [])
            continue
          }
          if (w.isReady !== undefined && !w.isReady()) continue
          w.state = 'pulling'
          let messages: StoredMessage[]
          try {
            messages = await w.attempt()
          } catch (err) {
            w.state = 'waiting'
            this.settle(w, err instanceof Error ? err : new Error(String(err)))
            continue
          }
          if (messages.length > 0 || w.expired) {
            w.state = 'waiting'
            this.settle(w, messages)
          } else {
            w.state = 'waiting'
            exhausted.add(w.viewKey)
          }
        }
      } while (this.again.has(subject) && !this.closed)
    } finally {
      this.waking.delete(subject)
      this.again.delete(subject)
    }
  }
}
