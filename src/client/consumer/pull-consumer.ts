import { QmqError, toQmqError } from '../../common/errors'
import type { RouteGroup } from '../../common/meta/types'
import { validateGroup, validateSubject } from '../../common/names'
import { RequestCode } from '../../common/protocol/codes'
import { encodePullRequest, MAX_PULL_MESSAGES } from '../../common/protocol/commands'
import { type StartFrom, startPosition } from './start-from'
import { SubscriptionMetrics } from '../metrics'
import { sleep } from '../retry'
import { type AckSender, newAckSender } from './ack-sender'
import { ConsumedMessage } from './consumed-message'
import { readPullAnswer } from './pull-decode'
import { type ConsumerContext, PULL_MAX_BYTES } from './subscription'
import { untilDeadline } from './until-deadline'

/** Options of `getOrCreatePullConsumer(subject, group, options)`. */
export interface PullConsumerOptions {
  isBroadcast?: boolean
  tags?: string[]
  tagType?: 'any' | 'all'
  /** Where the group starts if it is new (start-from.ts): 'latest' (default), 'earliest' or a time. */
  startFrom?: StartFrom
}

/**
 * QMQ's pull API: `pull(max, timeoutMs)` returns up to `max` messages, waiting up to `timeoutMs` for
 * the first; each message is settled with `ack()` or `nack()`. Iterating with `for await` pulls
 * batches and yields messages one by one until the consumer (or its provider) is closed.
 *
 * A pull asks every broker group of the subject at once and returns as soon as one has messages.
 * Messages that arrive from the others afterwards are kept for the next pull. Every message received
 * and not yet settled (kept for the next pull, or returned and not acked/nacked) is held: the
 * provider's heartbeats extend its lease on the broker, so settle each one (or close the consumer);
 * a message the SDK never received (a PULL answer that came after its deadline) is redelivered by
 * the broker after its lease.
 */
export class PullConsumer implements AsyncIterable<ConsumedMessage> {
  private readonly buffered: ConsumedMessage[] = []
  private readonly inFlight = new Map<string, Promise<void>>()
  private readonly acks = new Map<string, AckSender>()
  private readonly abort = new AbortController()
  private readonly wireConsumerId: string
  private arrivals: (() => void)[] = []
  private closed = false
  /** Set by close() once it gave back what it held: later PULL answers are not taken. */
  private released = false
  /** Broker groups pulled from, as the route last named them (heartbeats and acks go there). */
  private readonly groups = new Map<string, RouteGroup>()
  private readonly metrics: SubscriptionMetrics | undefined
  private readonly unsubscribe: () => void
  /** The maxHoldMs warning was logged (once per pull consumer). */
  private warnedHold = false

  /** @internal use provider.getOrCreatePullConsumer() */
  constructor(
    readonly subject: string,
    readonly group: string,
    private readonly options: PullConsumerOptions,
    private readonly ctx: ConsumerContext,
  ) {
    validateSubject(subject)
    validateGroup(group)
    startPosition(options.startFrom) // a bad startFrom fails here, not at the first pull
    this.wireConsumerId = this.broadcast ? ctx.instanceName : ctx.consumerId
    if (ctx.registry !== undefined) this.metrics = new SubscriptionMetrics(ctx.registry, subject, group)
    // A broker group's address changes on a failover (issue 14): acks and heartbeats of messages held
    // from it follow at once, also while the application is not pulling (e.g. awaiting an ack).
    this.unsubscribe = ctx.rt.routes.onChange((q, groups) => {
      if (q.kind !== 'consumer' || q.subject !== subject || q.group !== group) return
      for (const g of groups) if (this.groups.has(g.name)) this.groups.set(g.name, g)
    })
  }

  get broadcast(): boolean {
    return this.options.isBroadcast === true
  }

  /** Broker groups this consumer has pulled from (what its heartbeats keep leases on). */
  get brokerGroups(): RouteGroup[] {
    return [...this.groups.values()]
  }

  /**
   * The sequences received from a broker group and not settled yet (what its HEARTBEAT extends),
   * except those held longer than maxHoldMs: those are dropped, so the broker redelivers them after
   * their lease (an application that pulls and never settles does not pin messages forever).
   */
  heldOn(brokerGroup: string): number[] {
    const a = this.acks.get(brokerGroup)
    if (a === undefined) return []
    const { sequences, expired } = a.heldSequences(this.broadcast ? 0 : this.ctx.maxHoldMs)
    if (expired > 0 && !this.warnedHold) {
      this.warnedHold = true
      this.ctx.log.warn(
        { subject: this.subject, group: this.group, expired, maxHoldMs: this.ctx.maxHoldMs },
        'pull consumer: messages held unsettled longer than maxHoldMs are no longer extended; the broker redelivers them after their lease (ack or nack every pulled message)',
      )
    }
    return sequences
  }

  /**
   * Up to `max` messages; waits at most `timeoutMs` for the first one (QMQ requires >= 1000 ms; any
   * value >= 0 works here). Resolves with an empty array when nothing came in time. When `signal`
   * aborts first, rejects with QMQ_ERR_ABORTED; messages that arrive afterwards from the PULLs still in
   * flight are kept (held) for the next pull.
   */
  async pull(
    max: number,
    timeoutMs: number,
    options: { signal?: AbortSignal } = {},
  ): Promise<ConsumedMessage[]> {
    if (this.closed) throw new QmqError('QMQ_ERR_CLIENT_CLOSED', 'pull consumer is closed')
    const signal = options.signal
    const aborted = (): QmqError => new QmqError('QMQ_ERR_ABORTED', 'pull aborted by its signal')
    if (signal?.aborted) throw aborted()
    if (!Number.isSafeInteger(max) || max < 1 || max > MAX_PULL_MESSAGES) {
      throw new QmqError('QMQ_ERR_INVALID_ARGUMENT', `max must be 1 to ${MAX_PULL_MESSAGES} (got ${max})`)
    }
    if (!Number.isFinite(timeoutMs) || timeoutMs < 0) {
      throw new QmqError('QMQ_ERR_INVALID_ARGUMENT', `timeoutMs must be >= 0 (got ${timeoutMs})`)
    }
    if (this.buffered.length > 0) return this.buffered.splice(0, max)
    const groups = await this.ctx.rt.routes.get('consumer', this.subject, this.group)
    if (signal?.aborted) throw aborted()
    for (const g of groups) this.groups.set(g.name, g)
    const deadline = Date.now() + timeoutMs
    for (const g of groups) {
      if (!this.inFlight.has(g.name)) this.startPull(g, max, timeoutMs)
    }
    const wakeOnAbort = (): void => this.wake()
    signal?.addEventListener('abort', wakeOnAbort, { once: true })
    try {
      await this.waitForArrivals(groups, max, deadline, signal)
    } finally {
      signal?.removeEventListener('abort', wakeOnAbort)
    }
    if (signal?.aborted) throw aborted()
    return this.buffered.splice(0, max)
  }

  /** Waits until messages are buffered, the deadline passed with no pull in flight, or an abort. */
  private async waitForArrivals(
    groups: readonly RouteGroup[],
    max: number,
    deadline: number,
    signal: AbortSignal | undefined,
  ): Promise<void> {
    const stop = signal === undefined ? this.abort.signal : AbortSignal.any([this.abort.signal, signal])
    while (this.buffered.length === 0 && !this.closed && !stop.aborted) {
      const left = deadline - Date.now()
      if (left <= 0 && this.inFlight.size === 0) break
      if (this.inFlight.size === 0) {
        // every group answered empty before the deadline (e.g. errors): ask again after a pause
        await sleep(Math.min(left, 100), stop)
        if (Date.now() >= deadline || stop.aborted) break
        // At the groups' latest addresses (a failover may have moved one meanwhile).
        for (const g of groups)
          this.startPull(this.groups.get(g.name) ?? g, max, Math.max(0, deadline - Date.now()))
        continue
      }
      await new Promise<void>((resolve) => this.arrivals.push(resolve))
      if (Date.now() >= deadline && this.buffered.length === 0 && this.inFlight.size === 0) break
    }
  }

  /** Yields messages until closed; pulls batches of `batchSize` with long polls of `timeoutMs`. */
  async *messages(options: { batchSize?: number; timeoutMs?: number } = {}): AsyncGenerator<ConsumedMessage> {
    const batch = options.batchSize ?? this.ctx.pullBatchSize
    const timeout = options.timeoutMs ?? this.ctx.pullTimeoutMs
    while (!this.closed) {
      let got: ConsumedMessage[]
      try {
        got = await this.pull(batch, timeout)
      } catch (err) {
        if (this.closed) return
        throw err
      }
      for (const m of got) yield m
    }
  }

  [Symbol.asyncIterator](): AsyncIterator<ConsumedMessage> {
    return this.messages()
  }

  /**
   * Stops pulling, waits for pulls in flight (at most 1 s, and until 3/4 of the way to `deadline`,
   * or an abort: the broker hands a long poll's messages back itself when the connection closes), then
   * gives back every message still held (not yet returned, or returned and not settled) for
   * redelivery at once, and flushes acks and those nacks (bounded by `deadline`; by 1 s after an
   * abort). Settling a message afterwards fails with QMQ_ERR_CLIENT_CLOSED.
   */
  async close(deadline = Date.now() + 10_000, signal?: AbortSignal): Promise<void> {
    if (this.closed) return
    this.closed = true
    this.unsubscribe()
    this.abort.abort()
    this.wake()
    const now = Date.now()
    const waitPulls = Math.min(now + 1_000, now + Math.floor(((deadline - now) * 3) / 4))
    await untilDeadline(Promise.all(this.inFlight.values()), waitPulls, signal)
    this.released = true
    for (const m of this.buffered.splice(0)) m.markSettled()
    for (const a of this.acks.values()) a.releaseHeld()
    const flushBy = signal?.aborted ? Math.min(deadline, Date.now() + 1_000) : deadline
    await Promise.all([...this.acks.values()].map((a) => a.flush(flushBy)))
    for (const a of this.acks.values()) a.close()
  }

  private acksFor(g: RouteGroup): AckSender {
    let a = this.acks.get(g.name)
    if (a === undefined) {
      a = newAckSender(
        this.ctx,
        {
          subject: this.subject,
          group: this.group,
          consumerId: this.wireConsumerId,
          broadcast: this.broadcast,
        },
        () => (this.groups.get(g.name) ?? g).address,
      )
      this.acks.set(g.name, a)
    }
    return a
  }

  private startPull(g: RouteGroup, max: number, timeoutMs: number): void {
    const body = encodePullRequest({
      subject: this.subject,
      group: this.group,
      consumerId: this.wireConsumerId,
      maxMessages: max,
      maxBytes: PULL_MAX_BYTES,
      timeoutMs: Math.round(timeoutMs),
      broadcast: this.broadcast,
      atMostOnce: false,
      tagsAll: this.options.tagType === 'all',
      ...startPosition(this.options.startFrom),
      tags: this.options.tags ?? [],
    })
    const p = this.ctx.rt.pool
      .get(g.address)
      .request(RequestCode.PULL, body, { timeoutMs: timeoutMs + this.ctx.pullRequestMarginMs })
      .then(
        (frame) => this.take(g, frame.body),
        (err: unknown) => {
          this.metrics?.pullFailed()
          this.ctx.log.debug({ brokerGroup: g.name, err: toQmqError(err).message }, 'pull failed')
          // The group may have moved (a failover): the next pulls go where the metaserver says now.
          if (!this.closed)
            void this.ctx.rt.routes.refresh('consumer', this.subject, this.group).catch(() => {})
        },
      )
      .finally(() => {
        this.inFlight.delete(g.name)
        this.wake()
      })
    this.inFlight.set(g.name, p)
  }

  /**
   * Takes a PULL answer's messages into the buffer. Never throws: an answer whose framing is broken
   * is dropped as a whole (logged, counted as a failed pull; the broker redelivers its messages after
   * their lease, since none is held here), and a single bad record is logged and nacked (the broker
   * redelivers it, and dead-letters it after its maxRetries) while the others are kept.
   */
  private take(g: RouteGroup, body: Buffer): void {
    // Came after close() released what it held: taken by nobody (the broker redelivers after the lease).
    if (this.released) return
    const acks = this.acksFor(g)
    try {
      const n = readPullAnswer(
        body,
        (sequence, deliveryCount, header, bytes) => {
          this.buffered.push(
            new ConsumedMessage(sequence, deliveryCount, header, bytes, acks, g.name, this.group),
          )
        },
        (sequence, deliveryCount, err) => {
          this.ctx.log.error(
            {
              subject: this.subject,
              brokerGroup: g.name,
              sequence,
              deliveryCount,
              err: err.message,
              code: err.code,
            },
            'unreadable record in a PULL answer; nacked for redelivery',
          )
          this.metrics?.consumed('corrupt', undefined)
          acks.nack(sequence).catch(() => {}) // failures are logged by the ack sender
        },
      )
      this.metrics?.pulled(n)
    } catch (err) {
      this.metrics?.pullFailed()
      this.ctx.log.error(
        { subject: this.subject, brokerGroup: g.name, err: toQmqError(err).message },
        'malformed PULL answer dropped; its messages come back after their lease',
      )
    }
  }

  private wake(): void {
    const w = this.arrivals
    this.arrivals = []
    for (const f of w) f()
  }
}
