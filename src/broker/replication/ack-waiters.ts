import { QmqError, toQmqError } from '../../common/errors'

interface Waiter {
  target: number
  resolve: () => void
  reject: (err: QmqError) => void
  timer: NodeJS.Timeout
}

/**
 * Writes waiting under `sync` for their slaves, for both replication sources (the broker's SENDs by
 * message-log end, source.ts; a delay group's CANCELs by cancel sequence, delay/replication/source.ts):
 * each waits until the position every counted slave holds reaches its `target` (`release`), or fails
 * after `timeoutMs` with the retriable QMQ_ERR_REPLICATION_TIMEOUT (the producer resends). When to
 * look again (slaves dropping out of sync) stays with each source.
 */
export class AckWaiters {
  private waiters: Waiter[] = []
  private readonly timeoutMs: number

  constructor(timeoutMs: number) {
    this.timeoutMs = timeoutMs
  }

  get size(): number {
    return this.waiters.length
  }

  /** The lowest target still waiting (+Infinity with none). */
  lowest(): number {
    let lowest = Number.POSITIVE_INFINITY
    for (const w of this.waiters) lowest = Math.min(lowest, w.target)
    return lowest
  }

  wait(target: number): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const w: Waiter = {
        target,
        resolve,
        reject,
        timer: setTimeout(() => {
          this.waiters = this.waiters.filter((x) => x !== w)
          reject(new QmqError('QMQ_ERR_REPLICATION_TIMEOUT'))
        }, this.timeoutMs),
      }
      this.waiters.push(w)
    })
  }

  /** Resolves every waiter whose target is at or below `upTo`; answers the highest one released (-1: none). */
  release(upTo: number): number {
    let highest = -1
    const keep: Waiter[] = []
    for (const w of this.waiters) {
      if (w.target <= upTo) {
        clearTimeout(w.timer)
        highest = Math.max(highest, w.target)
        w.resolve()
      } else keep.push(w)
    }
    this.waiters = keep
    return highest
  }

  /** Fails every waiter (the source is closing). */
  rejectAll(err: QmqError): void {
    const waiters = this.waiters
    this.waiters = []
    for (const w of waiters) {
      clearTimeout(w.timer)
      w.reject(err)
    }
  }
}

/**
 * The answer to a producer write that is in this master's log but was not confirmed: the wait for a
 * slave timed out or failed, or the lease ran out meanwhile (the check before answering). The records
 * may still be delivered (by this master, or by a promoted slave that copied them), so the answer is
 * QMQ_ERR_REPLICATION_TIMEOUT whatever the cause: the SDK resends them to this same group with the
 * same ids (dedupe answers a stored copy as stored), never to another group. QMQ_ERR_NOT_MASTER is
 * only ever answered before storing (nothing stored: the SDK may move the batch).
 */
export function storedUnconfirmed(err: unknown): QmqError {
  const cause = toQmqError(err)
  if (cause.code === 'QMQ_ERR_REPLICATION_TIMEOUT') return cause
  return new QmqError(
    'QMQ_ERR_REPLICATION_TIMEOUT',
    `stored by this master but not confirmed (${cause.message}); resend to the same group with the same ids`,
    { cause },
  )
}
