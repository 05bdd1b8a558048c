import { QmqError, toQmqError } from '../../common/errors'
import type { Logger } from '../../common/logger'
import { RequestCode } from '../../common/protocol/codes'
import { encodeAckRequest, encodeNackRequest } from '../../common/protocol/commands'
import { Backoff, RETRY_MAX_MS, sleep } from '../retry'
import type { Connection } from '../transport/connection'
import type { ConsumerContext } from './subscription'

/**
 * Sends the acks and nacks of one (broker group, subject, consumer group, consumer) in batches.
 *
 * Acks made in one turn of the event loop go out as one ACK request (or several of at most
 * `maxBatch` sequences). Acks are per message and in any order (the broker keeps no prefix), so one
 * slow message never holds others back. A batch that fails in transport is sent again after a
 * growing backoff (acks are idempotent: sequences not held are ignored), until it
 * succeeds, a non-retriable error comes back, or close() gives up at its deadline. Nacks are sent
 * the same way, batched per (deadLetter, retryAfterMs).
 *
 * Every ack()/nack() returns the promise of its batch. Those promises always have a handler attached,
 * so ignoring them never causes an unhandled rejection.
 *
 * It also keeps the messages this consumer holds from its broker group (`hold()` when a message is
 * taken from a PULL answer, dropped again on ack/nack): the provider's HEARTBEAT lists exactly those,
 * and the broker extends the lease of exactly those. A message the SDK never took (a PULL answer that
 * came too late, or could not be read) is not listed, so the broker redelivers it after its lease.
 */
export interface AckHead {
  subject: string
  group: string
  consumerId: string
  broadcast: boolean
}

interface Batch {
  sequences: number[]
  promise: Promise<void>
  resolve: () => void
  reject: (err: QmqError) => void
  attempts: number
}

function newBatch(): Batch {
  let resolve!: () => void
  let reject!: (err: QmqError) => void
  const promise = new Promise<void>((res, rej) => {
    resolve = res
    reject = rej
  })
  promise.catch(() => {})
  return { sequences: [], promise, resolve, reject, attempts: 0 }
}

/**
 * The ack sender of one broker group for a subscription or pull consumer. `address()` is asked on
 * every request, so acks follow a broker group whose address changed in the route.
 */
export function newAckSender(ctx: ConsumerContext, head: AckHead, address: () => string): AckSender {
  return new AckSender(() => ctx.rt.pool.get(address()), head, {
    maxBatch: ctx.ackBatchSize,
    requestTimeoutMs: ctx.requestTimeoutMs,
    log: ctx.log,
  })
}

/** Batch kind: 'ack', or a nack kind `nack:<deadLetter 0|1>:<retryAfterMs>`. */
type Kind = string

export class AckSender {
  private readonly open = new Map<Kind, Batch>()
  /** Held sequence -> when it was taken (Date.now()). */
  private readonly held = new Map<number, number>()
  private scheduled = false
  private inFlight = 0
  private idleWaiters: (() => void)[] = []
  private readonly abort = new AbortController()
  private giveUpAt = Number.POSITIVE_INFINITY

  constructor(
    private readonly conn: () => Connection,
    private readonly head: AckHead,
    private readonly options: { maxBatch: number; requestTimeoutMs: number; log: Logger },
  ) {}

  /** Acks and nacks not yet confirmed by the broker. */
  get pending(): number {
    let n = this.inFlight
    for (const b of this.open.values()) n += b.sequences.length
    return n
  }

  /** A message was taken from a PULL answer and is held until ack/nack (its lease is extended). */
  hold(sequence: number): void {
    if (!this.abort.signal.aborted) this.held.set(sequence, Date.now())
  }

  /**
   * The sequences held now (what the next HEARTBEAT extends). With `maxHoldMs` > 0, those held longer
   * are dropped (no longer extended: the broker redelivers them after their lease; a later ack/nack of
   * one is still sent) and counted in `expired`.
   */
  heldSequences(maxHoldMs = 0): { sequences: number[]; expired: number } {
    const sequences: number[] = []
    let expired = 0
    const oldest = maxHoldMs > 0 ? Date.now() - maxHoldMs : Number.NEGATIVE_INFINITY
    for (const [sequence, at] of this.held) {
      if (at < oldest) {
        this.held.delete(sequence)
        expired++
      } else sequences.push(sequence)
    }
    return { sequences, expired }
  }

  ack(sequence: number): Promise<void> {
    return this.add('ack', sequence)
  }

  nack(sequence: number, options: { deadLetter?: boolean; retryAfterMs?: number } = {}): Promise<void> {
    const retryAfterMs = Math.max(0, Math.min(0xffffffff, Math.round(options.retryAfterMs ?? 0)))
    return this.add(`nack:${options.deadLetter ? 1 : 0}:${retryAfterMs}`, sequence)
  }

  /**
   * Gives back every message still held (received, not settled) for redelivery right away (a NACK
   * with retryAfterMs 1, not counted as a handler failure by the SDK): close() releases what it
   * could not finish, so another consumer gets it now instead of after the lease.
   */
  releaseHeld(): number {
    const held = [...this.held.keys()]
    for (const sequence of held) this.nack(sequence, { retryAfterMs: 1 }).catch(() => {}) // logged
    return held.length
  }

  /** Sends everything now and resolves once all acks/nacks are confirmed or given up (by `deadline`). */
  async flush(deadline = Number.POSITIVE_INFINITY): Promise<void> {
    this.giveUpAt = deadline
    this.sendAll()
    if (this.pending === 0) return
    await new Promise<void>((resolve) => {
      this.idleWaiters.push(resolve)
      if (deadline !== Number.POSITIVE_INFINITY) {
        const t = setTimeout(resolve, Math.max(0, deadline - Date.now()))
        t.unref()
      }
    })
  }

  /** Stops retrying: what is still unconfirmed fails with QMQ_ERR_CLIENT_CLOSED. */
  close(): void {
    this.abort.abort()
    this.held.clear()
    for (const b of this.open.values()) b.reject(new QmqError('QMQ_ERR_CLIENT_CLOSED', 'ack sender closed'))
    this.open.clear()
    this.maybeIdle()
  }

  private add(kind: Kind, sequence: number): Promise<void> {
    this.held.delete(sequence)
    if (this.abort.signal.aborted) {
      return Promise.reject(new QmqError('QMQ_ERR_CLIENT_CLOSED', 'consumer is closed; cannot ack'))
    }
    let b = this.open.get(kind)
    if (b === undefined) {
      b = newBatch()
      this.open.set(kind, b)
    }
    b.sequences.push(sequence)
    const p = b.promise
    if (b.sequences.length >= this.options.maxBatch) this.send(kind, b)
    else if (!this.scheduled) {
      this.scheduled = true
      setImmediate(() => {
        this.scheduled = false
        this.sendAll()
      })
    }
    return p
  }

  private sendAll(): void {
    for (const [kind, b] of [...this.open]) this.send(kind, b)
  }

  private send(kind: Kind, b: Batch): void {
    if (this.open.get(kind) === b) this.open.delete(kind)
    if (b.sequences.length === 0) {
      b.resolve()
      return
    }
    this.inFlight += b.sequences.length
    void this.attempt(kind, b)
  }

  private async attempt(kind: Kind, b: Batch): Promise<void> {
    const backoff = new Backoff({ initialMs: 100, maxMs: RETRY_MAX_MS })
    for (;;) {
      b.attempts++
      try {
        const body =
          kind === 'ack'
            ? encodeAckRequest({ ...this.head, sequences: b.sequences })
            : encodeNackRequest({
                ...this.head,
                sequences: b.sequences,
                deadLetter: kind.startsWith('nack:1'),
                retryAfterMs: Number(kind.split(':')[2]),
              })
        await this.conn().request(kind === 'ack' ? RequestCode.ACK : RequestCode.NACK, body, {
          timeoutMs: this.options.requestTimeoutMs,
        })
        this.done(b)
        b.resolve()
        return
      } catch (e) {
        const err = toQmqError(e)
        const wait = backoff.next()
        if (!err.retriable || this.abort.signal.aborted || Date.now() + wait >= this.giveUpAt) {
          this.options.log.warn(
            { err: err.message, kind, n: b.sequences.length, subject: this.head.subject },
            'acks not confirmed; the broker redelivers them after the lease',
          )
          this.done(b)
          b.reject(err)
          return
        }
        await sleep(wait, this.abort.signal)
      }
    }
  }

  private done(b: Batch): void {
    this.inFlight -= b.sequences.length
    this.maybeIdle()
  }

  private maybeIdle(): void {
    if (this.pending !== 0 || this.idleWaiters.length === 0) return
    const w = this.idleWaiters
    this.idleWaiters = []
    for (const f of w) f()
  }
}
