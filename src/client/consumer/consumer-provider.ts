import { integer, type OptionsSchema, optionalString, resolveOptions } from '../../common/config'
import { QmqError } from '../../common/errors'
import { validateConsumerId } from '../../common/names'
import { RequestCode } from '../../common/protocol/codes'
import {
  decodeHeartbeatResponse,
  encodeHeartbeatRequest,
  type HeartbeatSubscription,
} from '../../common/protocol/commands'
import { defaultInstanceName } from '../client-id'
import {
  type ClientRuntime,
  type CommonClientOptions,
  closeRuntime,
  commonClientSchema,
  createRuntime,
  requireMetaServer,
} from '../options'
import {
  consumerBindings,
  type MessageHandler,
  type QmqConsumerOptions,
  validateConsumerOptions,
} from './decorators'
import { PullConsumer, type PullConsumerOptions } from './pull-consumer'
import { type ConsumerContext, Subscription, type SubscriptionSpec } from './subscription'
import { resetCursor } from './reset-cursor'
import type { StartFrom } from './start-from'
import { untilDeadline } from './until-deadline'
import { ClientBase, type ClientExtras } from '../client-base'

export interface ConsumerOptions extends CommonClientOptions {
  /** Id of this consumer in its groups (default: clientId, i.e. `hostname@pid@random`). */
  consumerId: string | undefined
  /** Broadcast identity; must survive redeploys of the same instance (default: the hostname). */
  instanceName: string | undefined
  /** Default handlers running at once per subscription. */
  concurrency: number
  /** Default messages held ahead of handlers per subscription (0 = 10 x concurrency). */
  prefetch: number
  /** Largest number of messages asked for in one PULL. */
  pullBatchSize: number
  /** Long-poll wait of a PULL (the broker answers when messages arrive or after this). */
  pullTimeoutMs: number
  /** Extra time a PULL request gets beyond its long-poll wait. */
  pullRequestMarginMs: number
  /** Deadline of ACK, NACK and HEARTBEAT requests. */
  requestTimeoutMs: number
  /** Largest number of sequences in one ACK request. */
  ackBatchSize: number
  /** Default maxRetries of subscriptions. */
  maxRetries: number
  /**
   * HEARTBEAT to every broker this often: it extends the leases of exactly the messages this consumer
   * holds (more often when a broker's lease is shorter than 3 intervals).
   */
  heartbeatIntervalMs: number
  /**
   * Longest time a pull consumer's message is kept leased while the application holds it unsettled
   * (neither acked nor nacked): heartbeats stop extending it after this, so the broker redelivers it
   * once its lease ends (a warning is logged once per pull consumer). 0 = no limit. Listener
   * subscriptions and broadcast consumers are not capped (use handlerTimeoutMs).
   */
  maxHoldMs: number
  /**
   * Bound on close(): handlers get the first 3/4 of it (then the messages still held are released for
   * redelivery and the handlers' results ignored), flushing acks the rest.
   */
  closeTimeoutMs: number
  /**
   * Default handlerTimeoutMs of subscriptions: a handler running longer has its message nacked (as a
   * throw) and its result ignored. 0 = no limit.
   */
  handlerTimeoutMs: number
  /**
   * The brokers' admin token, sent with resetCursor() (QMQ_ERR_UNAUTHORIZED without it when the brokers
   * have one). Only resetCursor() uses it; leave it unset in applications that do not reset cursors.
   */
  adminToken: string | undefined
}

export const consumerSchema: OptionsSchema<ConsumerOptions> = {
  ...commonClientSchema,
  consumerId: optionalString({ doc: 'consumer id; default: clientId' }),
  instanceName: optionalString({ doc: 'broadcast instance name; default: hostname' }),
  concurrency: integer({ default: 20, min: 1, max: 10_000, doc: 'handlers at once per subscription' }),
  prefetch: integer({ default: 0, min: 0, max: 100_000, doc: 'messages held ahead (0 = 10 x concurrency)' }),
  pullBatchSize: integer({ default: 256, min: 1, max: 10_000, doc: 'messages per PULL' }),
  pullTimeoutMs: integer({ default: 2_000, min: 0, max: 60_000, doc: 'long-poll wait (ms)' }),
  pullRequestMarginMs: integer({ default: 5_000, min: 100, doc: 'PULL deadline beyond the wait (ms)' }),
  requestTimeoutMs: integer({ default: 5_000, min: 10, doc: 'ACK/NACK/HEARTBEAT deadline (ms)' }),
  ackBatchSize: integer({ default: 2_000, min: 1, max: 100_000, doc: 'sequences per ACK' }),
  maxRetries: integer({ default: 16, min: 1, max: 65_535, doc: 'deliveries before dead letter' }),
  heartbeatIntervalMs: integer({ default: 10_000, min: 100, doc: 'broker heartbeat interval (ms)' }),
  maxHoldMs: integer({
    default: 300_000,
    min: 0,
    doc: 'pull consumers: leases of unsettled messages kept (ms; 0 = no limit)',
  }),
  closeTimeoutMs: integer({ default: 10_000, min: 10, doc: 'bound on close (ms)' }),
  handlerTimeoutMs: integer({ default: 0, min: 0, doc: 'handler time limit (ms; 0 = none)' }),
  adminToken: optionalString({ doc: "brokers' admin token, sent with resetCursor()" }),
}

export type ConsumerInit = Partial<ConsumerOptions> & ClientExtras

/**
 * QMQ's MessageConsumerProvider: register decorated instances (or add listeners), start(), close().
 *
 * @example
 * const consumer = new MessageConsumerProvider({ appCode: 'billing', metaServer })
 * consumer.register(new OrderListener())
 * await consumer.start()
 * // ...
 * await consumer.close()
 */
export class MessageConsumerProvider extends ClientBase {
  private opts: Readonly<ConsumerOptions> | undefined
  private rt: ClientRuntime | undefined
  private ctx: ConsumerContext | undefined
  private readonly specs: SubscriptionSpec[] = []
  private readonly subscriptions: Subscription[] = []
  private readonly pullConsumers = new Map<string, PullConsumer>()
  private heartbeatTimer: NodeJS.Timeout | undefined
  /** The shortest message lease a broker announced (HEARTBEAT answers); 0 = none yet. */
  private brokerLeaseMs = 0
  private metaHeartbeatTimer: NodeJS.Timeout | undefined
  private started = false
  private closePromise: Promise<void> | undefined
  /** Aborted when a signal given to close() aborts. */
  private readonly closeAbort = new AbortController()

  constructor(options: ConsumerInit = {}) {
    super(options, 'qmq-consumer')
  }

  /** Checks options and prepares discovery and connections (start() calls it). Contacts nobody. */
  async init(): Promise<void> {
    this.initSync()
  }

  /** The id this consumer uses in its groups. */
  get consumerId(): string | undefined {
    return this.ctx?.consumerId
  }

  /** Registers every `@QmqConsumer` method of the instances. Before or after start(). */
  register(...instances: object[]): this {
    for (const instance of instances) {
      const bindings = consumerBindings(instance)
      if (bindings.length === 0) {
        throw new QmqError(
          'QMQ_ERR_INVALID_ARGUMENT',
          `${instance?.constructor?.name ?? 'object'} has no @QmqConsumer methods`,
        )
      }
      for (const b of bindings)
        this.addListener(b.options.subject, b.options.consumerGroup, b.handler, b.options, b.name)
    }
    return this
  }

  /** QMQ's addListener: `handler` receives the messages of `subject` for `consumerGroup`. */
  addListener(
    subject: string,
    consumerGroup: string | undefined,
    handler: MessageHandler,
    options: Omit<QmqConsumerOptions, 'subject' | 'consumerGroup'> = {},
    name = 'listener',
  ): this {
    if (this.closePromise) throw new QmqError('QMQ_ERR_CLIENT_CLOSED', 'consumer provider is closed')
    const full: QmqConsumerOptions = { ...options, subject }
    if (consumerGroup !== undefined) full.consumerGroup = consumerGroup
    validateConsumerOptions(full)
    const timeout = options.handlerTimeoutMs
    if (timeout !== undefined && (!Number.isSafeInteger(timeout) || timeout < 0)) {
      throw new QmqError(
        'QMQ_ERR_INVALID_ARGUMENT',
        `handlerTimeoutMs of ${subject} must be an integer >= 0 (got ${timeout})`,
      )
    }
    const o = this.initSync()
    const group = consumerGroup ?? o.appCode
    if (
      this.specs.some(
        (s) => s.subject === subject && s.group === group && s.broadcast === !!options.isBroadcast,
      )
    ) {
      throw new QmqError(
        'QMQ_ERR_INVALID_ARGUMENT',
        `subject ${subject} already has a handler for group ${group}`,
      )
    }
    const concurrency = options.concurrency ?? o.concurrency
    const spec: SubscriptionSpec = {
      subject,
      group,
      handler: options.idempotent ? options.idempotent.wrapHandler(handler, group) : handler,
      name,
      consumeMostOnce: !!options.consumeMostOnce,
      broadcast: !!options.isBroadcast,
      concurrency,
      prefetch: options.prefetch ?? (o.prefetch > 0 ? o.prefetch : concurrency * 10),
      tags: options.tags ? [...options.tags] : [],
      tagsAll: options.tagType === 'all',
      maxRetries: options.maxRetries ?? o.maxRetries,
      startFrom: options.startFrom ?? 'latest',
      handlerTimeoutMs: timeout ?? o.handlerTimeoutMs,
    }
    this.specs.push(spec)
    if (this.started)
      void this.startSubscription(spec).catch((err: unknown) =>
        this.log.error(err as Error, 'subscription failed to start'),
      )
    return this
  }

  /**
   * Looks up the route of every subscription (bounded by firstLookupTimeoutMs) and starts pulling.
   * If a route cannot be found, everything started is stopped again and start() rejects.
   */
  async start(): Promise<void> {
    if (this.closePromise) throw new QmqError('QMQ_ERR_CLIENT_CLOSED', 'consumer provider is closed')
    if (this.started) return
    this.initSync()
    this.started = true
    try {
      await Promise.all(this.specs.map((s) => this.startSubscription(s)))
    } catch (err) {
      this.started = false
      const subs = this.subscriptions.splice(0)
      await Promise.all(subs.map((s) => s.stop(Date.now() + 1_000, Date.now() + 1_000)))
      throw err
    }
    this.startHeartbeats()
  }

  /**
   * Pauses the subscriptions (push API) of `subject` for `consumerGroup` (default: appCode, as for
   * broadcast listeners): no more PULLs and no new handler runs; running handlers finish, and messages a
   * PULL in flight brings wait, held, until resume(). True if a started subscription was paused.
   * A listener added while started but not yet running is not affected.
   */
  pause(subject: string, consumerGroup?: string): boolean {
    const subs = this.subscriptionsOf(subject, consumerGroup)
    for (const s of subs) s.pause()
    return subs.length > 0
  }

  /** Resumes what pause() paused; true if a paused subscription was found. */
  resume(subject: string, consumerGroup?: string): boolean {
    const subs = this.subscriptionsOf(subject, consumerGroup)
    for (const s of subs) s.resume()
    return subs.length > 0
  }

  /** Whether the subscriptions of `subject` for `consumerGroup` are paused. */
  isPaused(subject: string, consumerGroup?: string): boolean {
    const subs = this.subscriptionsOf(subject, consumerGroup)
    return subs.length > 0 && subs.every((s) => s.paused)
  }

  private subscriptionsOf(subject: string, consumerGroup: string | undefined): Subscription[] {
    const group = consumerGroup ?? this.opts?.appCode
    return this.subscriptions.filter((s) => s.spec.subject === subject && s.spec.group === group)
  }

  /**
   * Moves the cursor of `consumerGroup` on `subject`, on every broker group of its route (an admin
   * operation: needs the brokers' admin token, the `adminToken` option or `options.adminToken`).
   * `to`: 'earliest', 'latest', or a time (Date or ms since the epoch): the first message each broker
   * stored at or after it. The group's running consumers (of any process) get the messages from there
   * on their next PULL, including ones they had already acked; messages handed out before the reset
   * stay in flight. Creates the group's cursor if the broker does not know the group yet. Resolves with
   * the broker groups reset; see reset-cursor.ts for partial failures (a reset is idempotent: retry).
   */
  async resetCursor(
    subject: string,
    consumerGroup: string,
    to: StartFrom,
    options: { adminToken?: string } = {},
  ): Promise<string[]> {
    if (this.closePromise) throw new QmqError('QMQ_ERR_CLIENT_CLOSED', 'consumer provider is closed')
    const o = this.initSync()
    const rt = this.rt as ClientRuntime
    const request = (address: string, code: number, body: Buffer) =>
      rt.pool.get(address).request(code, body, { timeoutMs: o.requestTimeoutMs })
    const token = options.adminToken ?? o.adminToken
    return resetCursor({ meta: rt.meta, request, token }, subject, consumerGroup, to)
  }

  /** QMQ's pull API: a consumer you call `pull()` on (one per subject and group). */
  getOrCreatePullConsumer(
    subject: string,
    consumerGroup: string,
    options: PullConsumerOptions = {},
  ): PullConsumer {
    if (this.closePromise) throw new QmqError('QMQ_ERR_CLIENT_CLOSED', 'consumer provider is closed')
    this.initSync()
    const key = `${subject}\u0000${consumerGroup}\u0000${options.isBroadcast ? 1 : 0}`
    let pc = this.pullConsumers.get(key)
    if (pc === undefined) {
      pc = new PullConsumer(subject, consumerGroup, options, this.ctx as ConsumerContext)
      this.pullConsumers.set(key, pc)
      this.startHeartbeats()
    }
    return pc
  }

  /**
   * Stops pulling, waits for running handlers (and for the messages already pulled to be handled),
   * flushes acks, says goodbye to the metaserver and closes connections. Resolves within
   * closeTimeoutMs whatever the handlers do: handlers get the first 3/4 of it; then (or as soon as
   * `signal` aborts) the messages still held are nacked for redelivery at once and whatever their
   * handlers do afterwards is ignored. After an abort, the nacks get at most 1 s more. Nothing is left
   * running afterwards. Idempotent (a later call's signal also cuts the wait short).
   */
  close(options: { signal?: AbortSignal } = {}): Promise<void> {
    const signal = options.signal
    if (signal !== undefined) {
      if (signal.aborted) this.closeAbort.abort()
      else signal.addEventListener('abort', () => this.closeAbort.abort(), { once: true })
    }
    this.closePromise ??= (async () => {
      if (this.heartbeatTimer) clearTimeout(this.heartbeatTimer)
      if (this.metaHeartbeatTimer) clearTimeout(this.metaHeartbeatTimer)
      const rt = this.rt
      if (rt === undefined) return
      const total = (this.opts as ConsumerOptions).closeTimeoutMs
      const start = Date.now()
      const handlersDeadline = start + Math.floor((total * 3) / 4)
      const deadline = start + total
      const abort = this.closeAbort.signal
      await Promise.all([
        ...this.subscriptions.map((s) => s.stop(handlersDeadline, deadline, abort)),
        ...[...this.pullConsumers.values()].map((p) => p.close(deadline, abort)),
      ])
      // Goodbye to the metaserver within what is left (it drops this consumer after missed heartbeats
      // anyway).
      await untilDeadline(this.metaHeartbeat('offline'), Math.max(deadline, Date.now() + 200), abort)
      await closeRuntime(rt)
    })()
    return this.closePromise
  }

  /** `await using consumer = new MessageConsumerProvider(...)`: close() at the end of the scope. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close()
  }

  // ------------------------------------------------------------------ internals

  private initSync(): Readonly<ConsumerOptions> {
    if (this.opts !== undefined) return this.opts
    const opts = resolveOptions('consumer', consumerSchema, this.input)
    requireMetaServer('consumer', opts)
    const rt = createRuntime(opts, this.log, this.emitEvent)
    const consumerId = validateConsumerId(opts.consumerId ?? rt.clientId)
    const instanceName = validateConsumerId(opts.instanceName ?? defaultInstanceName())
    this.opts = opts
    this.rt = rt
    this.ctx = {
      rt,
      consumerId,
      instanceName,
      pullBatchSize: opts.pullBatchSize,
      pullTimeoutMs: opts.pullTimeoutMs,
      pullRequestMarginMs: opts.pullRequestMarginMs,
      requestTimeoutMs: opts.requestTimeoutMs,
      ackBatchSize: opts.ackBatchSize,
      maxHoldMs: opts.maxHoldMs,
      log: this.log,
      registry: this.registry,
    }
    return opts
  }

  private async startSubscription(spec: SubscriptionSpec): Promise<void> {
    const sub = new Subscription(spec, this.ctx as ConsumerContext)
    try {
      await sub.start()
    } catch (err) {
      sub.metrics?.close() // it never ran: nothing else of it to stop
      throw err
    }
    this.subscriptions.push(sub)
  }

  private startHeartbeats(): void {
    const o = this.opts as ConsumerOptions
    // The first one soon: its answer tells the broker's lease (the interval may have to be shorter).
    if (this.heartbeatTimer === undefined)
      this.scheduleBrokerHeartbeats(Math.min(o.heartbeatIntervalMs, 1_000))
    if (this.metaHeartbeatTimer === undefined) this.scheduleMetaHeartbeat(0)
  }

  /**
   * Heartbeats run every heartbeatIntervalMs, or every third of the shortest lease a broker announced
   * if that is shorter (a held message's lease is extended at least twice before it would end); at
   * most 1 s apart until a broker told its lease.
   */
  private scheduleBrokerHeartbeats(ms: number): void {
    if (this.closePromise) return
    this.heartbeatTimer = setTimeout(() => {
      this.brokerHeartbeats()
      const o = this.opts as ConsumerOptions
      const lease = this.brokerLeaseMs
      const next = lease > 0 ? Math.max(50, Math.floor(lease / 3)) : 1_000
      this.scheduleBrokerHeartbeats(Math.min(o.heartbeatIntervalMs, next))
    }, ms)
    this.heartbeatTimer.unref()
  }

  /**
   * HEARTBEAT to every broker a subscription or pull consumer pulls from, listing exactly the messages
   * this consumer holds there (received and not settled): the broker extends their leases, and only
   * theirs. At-most-once subscriptions hold nothing; broadcast consumers hold nothing on the broker.
   */
  private brokerHeartbeats(): void {
    const rt = this.rt as ClientRuntime
    const ctx = this.ctx as ConsumerContext
    const holders = [
      ...this.subscriptions
        .filter((s) => !s.spec.consumeMostOnce)
        .map((s) => ({
          subject: s.spec.subject,
          group: s.spec.group,
          broadcast: s.spec.broadcast,
          on: s.brokerGroups,
          held: (g: string) => s.heldOn(g),
        })),
      ...[...this.pullConsumers.values()].map((p) => ({
        subject: p.subject,
        group: p.group,
        broadcast: p.broadcast,
        on: p.brokerGroups,
        held: (g: string) => p.heldOn(g),
      })),
    ]
    const byAddress = new Map<string, HeartbeatSubscription[]>()
    for (const { on, held, ...sub } of holders) {
      for (const g of on) {
        let list = byAddress.get(g.address)
        if (list === undefined) {
          list = []
          byAddress.set(g.address, list)
        }
        list.push(sub.broadcast ? sub : { ...sub, sequences: held(g.name) })
      }
    }
    for (const [address, subscriptions] of byAddress) {
      // Broadcast subscriptions are held under the instance name; send them in their own heartbeat.
      for (const broadcast of [false, true]) {
        const subs = subscriptions.filter((s) => s.broadcast === broadcast)
        if (subs.length === 0) continue
        const body = encodeHeartbeatRequest({
          consumerId: broadcast ? ctx.instanceName : ctx.consumerId,
          subscriptions: subs,
        })
        rt.pool
          .get(address)
          .request(RequestCode.HEARTBEAT, body, {
            timeoutMs: (this.opts as ConsumerOptions).requestTimeoutMs,
          })
          .then((frame) => {
            const { leaseMs } = decodeHeartbeatResponse(frame.body)
            if (leaseMs > 0 && (this.brokerLeaseMs === 0 || leaseMs < this.brokerLeaseMs))
              this.brokerLeaseMs = leaseMs
          })
          .catch((err: unknown) =>
            this.log.debug({ address, err: (err as Error).message }, 'heartbeat failed'),
          )
      }
    }
  }

  private scheduleMetaHeartbeat(ms: number): void {
    if (this.closePromise) return
    this.metaHeartbeatTimer = setTimeout(() => {
      this.metaHeartbeat('online')
        .then((interval) => this.scheduleMetaHeartbeat(interval))
        .catch(() => this.scheduleMetaHeartbeat(20_000))
    }, ms)
    this.metaHeartbeatTimer.unref()
  }

  /** Registers this consumer's subscriptions with the metaserver (QMQ's CLIENT_REGISTER). */
  private async metaHeartbeat(state: 'online' | 'offline'): Promise<number> {
    const rt = this.rt as ClientRuntime
    const o = this.opts as ConsumerOptions
    const subscriptions = [
      ...this.specs.map((s) => ({ subject: s.subject, consumerGroup: s.group })),
      ...[...this.pullConsumers.values()].map((p) => ({ subject: p.subject, consumerGroup: p.group })),
    ]
    if (subscriptions.length === 0) return 20_000
    const res = await rt.meta.clientHeartbeat({
      clientId: (this.ctx as ConsumerContext).consumerId,
      appCode: o.appCode,
      kind: 'consumer',
      state,
      subscriptions,
    })
    return Math.max(1_000, res.heartbeatIntervalMs || 20_000)
  }
}
