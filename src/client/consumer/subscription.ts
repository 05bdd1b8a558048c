import { type QmqError, toQmqError } from '../../common/errors'
import { untilDeadline } from './until-deadline'
import type { Registry } from 'prom-client'
import type { Logger } from '../../common/logger'
import type { RouteGroup } from '../../common/meta/types'
import { RequestCode } from '../../common/protocol/codes'
import { encodePullRequest, MAX_PULL_MESSAGES } from '../../common/protocol/commands'
import { type StartFrom, startPosition } from './start-from'
import type { ClientRuntime } from '../options'
import { type ConsumeResult, SubscriptionMetrics } from '../metrics'
import { Backoff, RETRY_MAX_MS, sleep } from '../retry'
import { type AckSender, newAckSender } from './ack-sender'
import { ConsumedMessage } from './consumed-message'
import { isNonRetriable, type MessageHandler } from './decorators'
import { readPullAnswer } from './pull-decode'

/**
 * PULL requests each loop keeps in flight against its broker group: while the handlers work through
 * one answer, the broker already reads the next (the broker serves one consumer's pulls in turn).
 */
export const PULLS_IN_FLIGHT = 2
/**
 * Soft cap on the record bytes of one PULL answer. Larger answers only cost more: the frame is
 * copied together from the socket's 64 KiB reads into one fresh buffer; two answers of 1 MiB in
 * flight keep a broker group's pipe full.
 */
export const PULL_MAX_BYTES = 1024 * 1024

/** What every subscription and pull consumer of one provider share. */
export interface ConsumerContext {
  rt: ClientRuntime
  consumerId: string
  instanceName: string
  pullBatchSize: number
  pullTimeoutMs: number
  /** Extra time a PULL request gets beyond its long-poll wait before it counts as timed out. */
  pullRequestMarginMs: number
  requestTimeoutMs: number
  ackBatchSize: number
  /** Pull consumers: a message held unsettled longer is no longer extended by heartbeats (0 = no limit). */
  maxHoldMs: number
  log: Logger
  /** Where subscriptions and pull consumers put their metrics (metrics.ts), if anywhere. */
  registry: Registry | undefined
}

export interface SubscriptionSpec {
  subject: string
  group: string
  handler: MessageHandler
  /** Where the handler came from (`Class.method`, or `listener`): on every log line of the subscription. */
  name: string
  consumeMostOnce: boolean
  broadcast: boolean
  concurrency: number
  prefetch: number
  tags: string[]
  tagsAll: boolean
  maxRetries: number
  startFrom: StartFrom
  /** A handler running longer has its message nacked and its result ignored; 0 = no limit. */
  handlerTimeoutMs: number
}

/**
 * One (subject, consumer group) handled by a handler: one pull loop per broker group of the subject,
 * a shared bounded buffer, and at most `concurrency` handlers running.
 *
 * Flow control: a pull loop reserves room before it pulls (room = prefetch - buffered - running -
 * reserved), so however many broker groups there are, the messages held by this process never
 * exceed `prefetch`. A loop with no room waits until at least half a batch is free.
 *
 * Outcome of a handler: return = ack; throw = nack (the broker redelivers after its backoff);
 * NonRetriableError, or a failure on delivery number maxRetries or later = nack with DEAD_LETTER.
 * A message delivered more than maxRetries times is dead-lettered without running the handler.
 * With consumeMostOnce the broker acks on delivery and the SDK neither acks nor nacks; a message
 * that comes again anyway (deliveryCount > 1) is dropped.
 */
export class Subscription {
  private readonly loops = new Map<string, PullLoop>()
  private readonly acks = new Map<string, AckSender>()
  private buffer: ConsumedMessage[] = []
  private head = 0
  private running = 0
  /** The messages whose handler runs now, each with what abandons its run (close past its deadline). */
  private readonly active = new Map<ConsumedMessage, () => void>()
  /** Set when stop() gave up on the handlers: nothing more is taken or run. */
  private released = false
  /** pause(): no PULL is sent and no handler started (running ones finish) until resume(). */
  private pausedFlag = false
  private reserved = 0
  /**
   * Broadcast and consume-at-most-once subscriptions (the broker does not hold back a key's next
   * message for them): per order key with a handler running, the messages of that key waiting for it,
   * in order. Clustering subscriptions never have two messages of a key at once (the broker's order).
   */
  private readonly keyed = new Map<string, ConsumedMessage[]>()
  private deferred = 0
  private roomWaiters: (() => void)[] = []
  private idleWaiters: (() => void)[] = []
  private unsubscribe: (() => void) | undefined
  readonly abort = new AbortController()
  readonly log: Logger
  readonly wireConsumerId: string
  private readonly minPull: number
  readonly metrics: SubscriptionMetrics | undefined

  constructor(
    readonly spec: SubscriptionSpec,
    readonly ctx: ConsumerContext,
  ) {
    this.log = ctx.log.child({ subject: spec.subject, consumerGroup: spec.group, handler: spec.name })
    this.wireConsumerId = spec.broadcast ? ctx.instanceName : ctx.consumerId
    this.minPull = Math.max(1, Math.floor(Math.min(ctx.pullBatchSize, spec.prefetch / PULLS_IN_FLIGHT) / 2))
    if (ctx.registry !== undefined) {
      this.metrics = new SubscriptionMetrics(
        ctx.registry,
        spec.subject,
        spec.group,
        () => this.buffer.length - this.head + this.running,
      )
    }
  }

  get stopping(): boolean {
    return this.abort.signal.aborted
  }

  get paused(): boolean {
    return this.pausedFlag
  }

  /**
   * Stops pulling and starting handlers; running handlers finish. Messages an in-flight PULL brings
   * afterwards wait in the buffer, held (their leases extended by heartbeats) until resume().
   */
  pause(): void {
    this.pausedFlag = true
  }

  resume(): void {
    if (!this.pausedFlag) return
    this.pausedFlag = false
    this.pump()
    this.wakeRoom()
  }

  /** Broker groups this subscription pulls from. */
  get brokerGroups(): RouteGroup[] {
    return [...this.loops.values()].map((l) => l.group)
  }

  /** Looks the route up (bounded) and starts one pull loop per broker group. */
  async start(): Promise<void> {
    const groups = await this.ctx.rt.routes.get('consumer', this.spec.subject, this.spec.group)
    this.addGroups(groups)
    // The first pull of each loop answers at once; waiting for it means the broker knows the group
    // (and fixed its start position) when start() resolves, so nothing sent afterwards is missed.
    await Promise.all([...this.loops.values()].map((l) => l.firstPull))
    this.unsubscribe = this.ctx.rt.routes.onChange((q, g) => {
      if (q.kind === 'consumer' && q.subject === this.spec.subject && q.group === this.spec.group)
        this.addGroups(g)
    })
  }

  /** Starts loops for new groups; a group that left the route keeps its loop (it may hold a backlog). */
  addGroups(groups: readonly RouteGroup[]): void {
    if (this.stopping) return
    for (const g of groups) {
      const loop = this.loops.get(g.name)
      if (loop !== undefined) {
        loop.moveTo(g)
        continue
      }
      const l = new PullLoop(this, g)
      this.loops.set(g.name, l)
      l.start()
    }
  }

  acksFor(group: RouteGroup): AckSender {
    let a = this.acks.get(group.name)
    if (a === undefined) {
      a = newAckSender(
        this.ctx,
        {
          subject: this.spec.subject,
          group: this.spec.group,
          consumerId: this.wireConsumerId,
          broadcast: this.spec.broadcast,
        },
        () => (this.loops.get(group.name)?.group ?? group).address,
      )
      this.acks.set(group.name, a)
    }
    return a
  }

  // ------------------------------------------------------------------ flow control

  /** The most room one pull may hold, so every loop (and each of its pulls) gets its share. */
  private share(): number {
    return Math.max(1, Math.ceil(this.spec.prefetch / (Math.max(1, this.loops.size) * PULLS_IN_FLIGHT)))
  }

  room(): number {
    return (
      this.spec.prefetch - (this.buffer.length - this.head) - this.running - this.deferred - this.reserved
    )
  }

  /** Reserves up to `max` messages of room, waiting until at least half a batch is free. 0 = stopping. */
  async reserve(max: number): Promise<number> {
    // A loop takes at most its fair share of the prefetch, so a loop long-polling an idle broker
    // group never starves the loops of busy ones.
    while (!this.stopping && (this.pausedFlag || this.room() < Math.min(this.minPull, max, this.share()))) {
      await new Promise<void>((resolve) => this.roomWaiters.push(resolve))
    }
    if (this.stopping) return 0
    const n = Math.min(max, this.room(), this.share())
    this.reserved += n
    return n
  }

  release(n: number): void {
    this.reserved -= n
    this.wakeRoom()
  }

  private wakeRoom(): void {
    if (this.roomWaiters.length === 0) return
    if (!this.stopping && (this.pausedFlag || this.room() < Math.min(this.minPull, this.share()))) return
    const w = this.roomWaiters
    this.roomWaiters = []
    for (const f of w) f()
  }

  // ------------------------------------------------------------------ dispatch

  /** The sequences this subscription holds from a broker group (what its HEARTBEAT extends). */
  heldOn(brokerGroup: string): number[] {
    return this.acks.get(brokerGroup)?.heldSequences().sequences ?? []
  }

  /**
   * Verifies a PULL answer and takes its messages (the caller released its reservation first);
   * throws (taking none) when the answer's framing is broken. A single bad record (CRC) is reported
   * and nacked (its broker redelivers it, and dead-letters it after maxRetries); the rest go on.
   */
  deliver(group: RouteGroup, body: Buffer): void {
    // After close gave up (a PULL answer that came late): take nothing; not held, the broker hands
    // these out again after their lease.
    if (this.released) return
    const atMostOnce = this.spec.consumeMostOnce
    const acks = atMostOnce ? undefined : this.acksFor(group)
    const consumerGroup = this.spec.group
    const maxRetries = this.spec.maxRetries
    const onBad = (sequence: number, deliveryCount: number, err: QmqError): void => {
      const dead = deliveryCount >= maxRetries
      this.log.error(
        { brokerGroup: group.name, sequence, deliveryCount, err: err.message, code: err.code },
        atMostOnce
          ? 'unreadable record in a PULL answer; dropped (consumeMostOnce)'
          : dead
            ? 'unreadable record in a PULL answer; dead-lettered'
            : 'unreadable record in a PULL answer; nacked for redelivery',
      )
      this.metrics?.consumed('corrupt', undefined)
      if (acks !== undefined) acks.nack(sequence, { deadLetter: dead }).catch(() => {}) // logged by the sender
    }
    const n = readPullAnswer(
      body,
      (sequence, deliveryCount, header, bytes) => {
        const m = new ConsumedMessage(
          sequence,
          deliveryCount,
          header,
          bytes,
          acks,
          group.name,
          consumerGroup,
          maxRetries,
        )
        if (atMostOnce) {
          m.markSettled()
          if (deliveryCount > 1) {
            this.metrics?.consumed('dropped', undefined)
            return
          }
        } else if (deliveryCount > maxRetries) {
          this.log.warn(
            { messageId: m.getMessageId(), deliveryCount },
            'message exceeded maxRetries; dead-lettered without running the handler',
          )
          void m.nack({ deadLetter: true })
          this.metrics?.consumed('dead_letter', undefined)
          return
        }
        this.buffer.push(m)
      },
      onBad,
    )
    this.metrics?.pulled(n)
    if (n > 0) this.pump()
  }

  private pumping = false

  private pump(): void {
    // Synchronous handlers finish inside run(): without this guard pump -> run -> finish -> pump
    // would recurse once per message.
    if (this.pumping) return
    this.pumping = true
    try {
      this.drain()
    } finally {
      this.pumping = false
    }
  }

  private drain(): void {
    // Paused: nothing new starts, unless stopping (close() runs what is held, as without a pause).
    while (
      (!this.pausedFlag || this.stopping) &&
      this.running < this.spec.concurrency &&
      this.head < this.buffer.length
    ) {
      const m = this.buffer[this.head] as ConsumedMessage
      this.buffer[this.head++] = undefined as unknown as ConsumedMessage
      if (this.head === this.buffer.length) {
        this.buffer = []
        this.head = 0
      } else if (this.head > 1024) {
        this.buffer = this.buffer.slice(this.head)
        this.head = 0
      }
      if (this.serializesKeys) {
        const key = m.getOrderKey()
        if (key !== undefined) {
          const waiting = this.keyed.get(key)
          if (waiting !== undefined) {
            waiting.push(m) // runs when the key's running handler ends (nextOfKey)
            this.deferred++
            continue
          }
          this.keyed.set(key, [])
        }
      }
      this.run(m)
    }
  }

  private get serializesKeys(): boolean {
    return this.spec.broadcast || this.spec.consumeMostOnce
  }

  /** A handler of `m` ended: the next message of its key, if one waits, runs now (in order). */
  private nextOfKey(m: ConsumedMessage): void {
    if (!this.serializesKeys) return
    const key = m.getOrderKey()
    if (key === undefined) return
    const waiting = this.keyed.get(key)
    const next = waiting?.shift()
    if (next === undefined) {
      this.keyed.delete(key)
      return
    }
    // Next turn, not here: a run of synchronous handlers would recurse once per waiting message.
    queueMicrotask(() => {
      this.deferred--
      if (!this.released) this.run(next)
    })
  }

  /**
   * Runs the handler of one message. Its run ends once: when the handler settles, when
   * handlerTimeoutMs passes (the message is nacked; what the handler does later is ignored), or when
   * stop() abandons it (the message is released); whatever comes after the end is ignored.
   */
  private run(m: ConsumedMessage): void {
    this.running++
    const started = this.metrics !== undefined ? performance.now() : 0
    let ended = false
    let timer: NodeJS.Timeout | undefined
    const end = (err: unknown, failed: boolean): void => {
      if (ended) return
      ended = true
      if (timer !== undefined) clearTimeout(timer)
      this.active.delete(m)
      this.finish(m, err, failed, started)
    }
    this.active.set(m, () => {
      if (ended) return
      ended = true
      if (timer !== undefined) clearTimeout(timer)
      this.active.delete(m)
      this.running--
      m.markSettled() // released by stop() (acks.releaseHeld), never acked afterwards
    })
    let r: unknown
    try {
      r = this.spec.handler(m)
    } catch (err) {
      end(err, true)
      return
    }
    if (r !== null && typeof r === 'object' && typeof (r as PromiseLike<unknown>).then === 'function') {
      const limit = this.spec.handlerTimeoutMs
      if (limit > 0) {
        timer = setTimeout(() => {
          // nacked (or dead-lettered on its last delivery) as a throw is; counted as one
          end(
            new Error(`handler timed out after ${limit} ms (handlerTimeoutMs); its result is ignored`),
            true,
          )
        }, limit)
        timer.unref() // the handler's own work keeps the process alive, not this timer
      }
      ;(r as PromiseLike<unknown>).then(
        () => end(undefined, false),
        (err: unknown) => end(err, true),
      )
    } else end(undefined, false)
  }

  /** `started`: performance.now() when the handler was called (only with metrics). */
  private finish(m: ConsumedMessage, err: unknown, failed: boolean, started: number): void {
    this.running--
    this.nextOfKey(m)
    let result: ConsumeResult = 'ack'
    if (!m.isSettled()) {
      if (!failed) void m.ack()
      else {
        const dead = isNonRetriable(err) || m.getDeliveryCount() >= this.spec.maxRetries
        result = dead ? 'dead_letter' : 'retry'
        this.log.warn(
          {
            messageId: m.getMessageId(),
            deliveryCount: m.getDeliveryCount(),
            err: err instanceof Error ? err.message : String(err),
            deadLetter: dead,
          },
          dead ? 'handler failed; message dead-lettered' : 'handler failed; message will be redelivered',
        )
        void m.nack({ deadLetter: dead })
      }
    } else if (failed) {
      // Settled already (by the broker on delivery with consumeMostOnce, or by the handler itself).
      result = 'dropped'
      if (this.spec.consumeMostOnce) {
        this.log.warn(
          { messageId: m.getMessageId(), err: String(err) },
          'handler failed (consumeMostOnce: dropped)',
        )
      }
    }
    this.metrics?.consumed(result, (performance.now() - started) / 1000)
    this.pump()
    this.wakeRoom()
    if (this.running === 0 && this.head >= this.buffer.length && this.idleWaiters.length > 0) {
      const w = this.idleWaiters
      this.idleWaiters = []
      for (const f of w) f()
    }
  }

  /**
   * Stops pulling, lets the pulls in flight come back, runs every message already held through its
   * handler, then flushes acks (bounded by `flushDeadline`). Waiting for pulls and handlers ends at
   * `handlersDeadline` or when `signal` aborts, whatever the handlers do: then the messages still
   * held (running or not started) are released for redelivery at once (acks.releaseHeld) and
   * whatever their handlers do afterwards is ignored.
   */
  async stop(handlersDeadline: number, flushDeadline: number, signal?: AbortSignal): Promise<void> {
    this.unsubscribe?.()
    this.abort.abort()
    this.wakeRoom()
    this.pump() // what a pause kept in the buffer runs now
    const idle = (async () => {
      await Promise.all([...this.loops.values()].map((l) => l.done))
      if (this.running > 0 || this.head < this.buffer.length) {
        await new Promise<void>((resolve) => this.idleWaiters.push(resolve))
      }
    })()
    if ((await untilDeadline(idle, handlersDeadline, signal)) !== 'done') {
      flushDeadline = signal?.aborted ? Math.min(flushDeadline, Date.now() + 1_000) : flushDeadline
      this.releaseAll()
    }
    await Promise.all([...this.acks.values()].map((a) => a.flush(flushDeadline)))
    for (const a of this.acks.values()) a.close()
    this.metrics?.close()
  }

  /** close() stopped waiting: abandons running handlers and gives every held message back. */
  private releaseAll(): void {
    this.released = true
    const running = this.active.size
    for (const abandon of [...this.active.values()]) abandon()
    let buffered = 0
    for (let i = this.head; i < this.buffer.length; i++) {
      ;(this.buffer[i] as ConsumedMessage).markSettled()
      buffered++
    }
    this.buffer = []
    this.head = 0
    let released = 0
    for (const a of this.acks.values()) released += a.releaseHeld()
    this.log.warn(
      { running, buffered, released },
      'close: handlers did not finish in time; held messages released for redelivery (later results ignored)',
    )
  }
}

/**
 * One long-polling pull loop of a subscription against one broker group: PULLS_IN_FLIGHT workers,
 * each pulling in turn, so a PULL is always on its way while the handlers run.
 */
export class PullLoop {
  done: Promise<void> = Promise.resolve()
  /** Settles after the first pull came back (or failed). */
  readonly firstPull: Promise<void>
  private firstPullDone: () => void = () => {}
  /** Ends the workers' waits after failed pulls (the group moved: pull from its new address now). */
  private wake = new AbortController()

  constructor(
    private readonly sub: Subscription,
    public group: RouteGroup,
  ) {
    this.firstPull = new Promise((resolve) => {
      this.firstPullDone = resolve
    })
  }

  /** The route's latest word on this group: a new address (a failover) ends the backoff waits. */
  moveTo(g: RouteGroup): void {
    const moved = g.address !== this.group.address
    this.group = g
    if (!moved) return
    this.wake.abort()
    this.wake = new AbortController()
  }

  start(): void {
    const workers: Promise<void>[] = []
    for (let i = 0; i < PULLS_IN_FLIGHT; i++) {
      workers.push(
        this.run().catch((err: unknown) => {
          this.sub.log.error(err as Error, 'pull loop crashed')
          this.firstPullDone()
        }),
      )
    }
    this.done = Promise.all(workers).then(() => {})
  }

  private async run(): Promise<void> {
    const { sub } = this
    const { ctx, spec } = sub
    const backoff = new Backoff({ initialMs: 100, maxMs: RETRY_MAX_MS })
    let first = true
    while (!sub.stopping) {
      const n = await sub.reserve(Math.min(ctx.pullBatchSize, MAX_PULL_MESSAGES))
      if (n === 0) break
      let reserved = true
      try {
        const body = encodePullRequest({
          subject: spec.subject,
          group: spec.group,
          consumerId: sub.wireConsumerId,
          maxMessages: n,
          maxBytes: PULL_MAX_BYTES,
          timeoutMs: first ? 0 : ctx.pullTimeoutMs,
          broadcast: spec.broadcast,
          atMostOnce: spec.consumeMostOnce,
          tagsAll: spec.tagsAll,
          ...startPosition(spec.startFrom),
          tags: spec.tags,
        })
        const frame = await ctx.rt.pool.get(this.group.address).request(RequestCode.PULL, body, {
          timeoutMs: ctx.pullTimeoutMs + ctx.pullRequestMarginMs,
        })
        reserved = false
        sub.release(n)
        sub.deliver(this.group, frame.body)
      } catch (e) {
        if (reserved) sub.release(n)
        if (first) {
          first = false
          this.firstPullDone()
        }
        if (sub.stopping) break
        sub.metrics?.pullFailed()
        const err = toQmqError(e)
        const wait = backoff.next()
        sub.log.debug({ brokerGroup: this.group.name, err: err.message, retryInMs: wait }, 'pull failed')
        // The group may have moved (a failover): ask the metaserver (at most a few times a second);
        // a new address ends this wait (moveTo).
        const from = this.group.address
        void ctx.rt.routes.refresh('consumer', spec.subject, spec.group).catch(() => {})
        if (this.group.address === from) {
          await sleep(wait, AbortSignal.any([sub.abort.signal, this.wake.signal]))
        }
        if (this.group.address !== from) backoff.reset()
        continue
      }
      backoff.reset()
      if (first) {
        first = false
        this.firstPullDone()
      }
    }
    this.firstPullDone()
  }
}
