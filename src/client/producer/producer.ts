import { integer, type OptionsSchema, resolveOptions } from '../../common/config'
import { QmqError, toQmqError } from '../../common/errors'
import type { ClientKind, RouteGroup } from '../../common/meta/types'
import { validateSubject } from '../../common/names'
import { RequestCode } from '../../common/protocol/codes'
import { decodeSendResponse } from '../../common/protocol/commands'
import { newRecordPlan, planRecord, type RecordPlan, writeRecord } from '../../common/record'
import {
  type ClientRuntime,
  type CommonClientOptions,
  closeRuntime,
  commonClientSchema,
  createRuntime,
  requireMetaServer,
} from '../options'
import { backoffDelay, isRetriable } from '../retry'
import { BATCH_HEAD_BYTES, BatchBufferPool, OpenBatch, Pending, packBatch } from './batch'
import { CircuitBreaker } from './circuit-breaker'
import { APP_CODE_PROPERTY, Message } from './message'
import { ClientBase, type ClientExtras } from '../client-base'
import { ProducerMetrics } from '../metrics'
import { Outbox, type SendOptions, sendArgs } from '../tx/outbox'
import type { TransactionProvider } from '../tx/provider'
import type { OutboxOptions } from '../tx/watchdog'

/**
 * The producer: QMQ's MessageProducerProvider.
 *
 * sendMessage() encodes the message at once (bad input fails then) straight into the open batch of
 * its per-subject lane (batch.ts: the batch's buffer is the SEND body) and returns. A lane is flushed
 * as one SEND request when it holds `batchSize` messages or `batchBytes` bytes, or `lingerMs` after
 * its first message. Each batch goes to one of the subject's broker groups
 * (round robin over groups whose circuit breaker is closed); delayed messages go to a delay group.
 * Records refused with a retriable status, and whole batches that failed in transport, are sent again
 * to another group (the broker dedupes by message id, so a resend is safe) until `maxAttempts` or
 * the message's `sendTimeoutMs` deadline. Everything not yet settled counts against `maxQueueSize`.
 */
export interface ProducerOptions extends CommonClientOptions {
  /** Largest number of messages in one SEND request (QMQ's sendBatch). */
  batchSize: number
  /** Largest number of record bytes in one SEND request. */
  batchBytes: number
  /** How long a lane waits for more messages before sending a partial batch (0 = next tick). */
  lingerMs: number
  /** Messages accepted but not yet settled; beyond it sendMessage fails with QMQ_ERR_SEND_QUEUE_FULL. */
  maxQueueSize: number
  /** Deadline of one message, from sendMessage() to its last retry. */
  sendTimeoutMs: number
  /** Deadline of one SEND request. */
  requestTimeoutMs: number
  /** Sends of one message, first included (QMQ's sendTryCount). */
  maxAttempts: number
  /** Consecutive failures that open a group's circuit breaker. */
  circuitFailureThreshold: number
  /** How long an open circuit breaker keeps a group out. */
  circuitOpenMs: number
}

export const producerSchema: OptionsSchema<ProducerOptions> = {
  ...commonClientSchema,
  batchSize: integer({ default: 100, min: 1, max: 10_000, doc: 'messages per SEND request' }),
  batchBytes: integer({ default: 1024 * 1024, min: 1024, max: 12 * 1024 * 1024, doc: 'bytes per SEND' }),
  lingerMs: integer({ default: 1, min: 0, max: 1_000, doc: 'wait for a fuller batch (ms)' }),
  maxQueueSize: integer({ default: 10_000, min: 1, doc: 'unsettled messages before QUEUE_FULL' }),
  sendTimeoutMs: integer({ default: 10_000, min: 10, doc: 'deadline of one message (ms)' }),
  requestTimeoutMs: integer({ default: 5_000, min: 10, doc: 'deadline of one SEND request (ms)' }),
  maxAttempts: integer({ default: 5, min: 1, max: 100, doc: 'sends per message (QMQ sendTryCount)' }),
  circuitFailureThreshold: integer({ default: 20, min: 1, doc: 'failures that open a breaker' }),
  circuitOpenMs: integer({ default: 5_000, min: 1, doc: 'open breaker duration (ms)' }),
}

/**
 * True when a SEND answer holds exactly `expected` results, all status 0 (stored, or a duplicate of
 * a stored one). A fast path over decodeSendResponse (layout in src/common/protocol/commands.ts:
 * u32 count, count x (u16 status, u16 length, message)): anything else goes to the full decoder.
 */
function allStored(body: Buffer, expected: number): boolean {
  if (body.length < 4 || body.readUInt32BE(0) !== expected) return false
  let o = 4
  for (let i = 0; i < expected; i++) {
    if (o + 4 > body.length || body.readUInt16BE(o) !== 0) return false
    o += 4 + body.readUInt16BE(o + 2)
  }
  return o === body.length
}

/** Messages delayed by less than this are sent as real-time messages (as QMQ). */
export const MIN_DELAY_MS = 500

/** QMQ's MessageSendStateListener. */
export interface MessageSendStateListener {
  onSuccess(message: Message): void
  onFailed(message: Message, error: QmqError): void
}

/** What a successful send resolves with. */
export interface SendResult {
  messageId: string
  subject: string
  /** The broker or delay group that stored it. */
  group: string
}

function ignore(): void {}

/**
 * Counts `batch` on a per-subject producer metric: at once for a real-time lane (all of one subject),
 * by message for the one delay lane (it mixes subjects).
 */
function count(
  metrics: ProducerMetrics,
  kind: 'sent' | 'retried',
  lane: Lane,
  batch: readonly Pending[],
): void {
  if (batch.length === 0) return
  if (lane.kind === 'producer') metrics[kind](lane.subject, batch.length)
  else for (const p of batch) metrics[kind](p.subject, 1)
}

interface Lane {
  kind: ClientKind
  subject: string
  /** The batch being filled (records written in place at send time). */
  open: OpenBatch
  timer: NodeJS.Timeout | undefined
  immediate: NodeJS.Immediate | undefined
  next: number
  /** `flushLane(this)`, made once (the lane's timer callback). */
  flush: () => void
}

export type ProducerInit = Partial<ProducerOptions> & ClientExtras

export class MessageProducerProvider extends ClientBase {
  private opts: Readonly<ProducerOptions> | undefined
  private rt: ClientRuntime | undefined
  /** Real-time lanes by subject. */
  private readonly lanes = new Map<string, Lane>()
  /** The one lane of all delayed messages. */
  private delayLane: Lane | undefined
  private readonly breakers = new Map<string, CircuitBreaker>()
  /** The transactional outbox (setTransactionProvider), if any. */
  private outbox: Outbox<object> | undefined
  /** The SDK's properties of every generated message, shared by them until one is changed. */
  private baseProperties: ReadonlyMap<string, string> | undefined
  /** Subjects generateMessage() already validated (bounded). */
  private readonly validSubjects = new Set<string>()
  private unsettled = 0
  /** send()'s record plan, reused (planned and written in the same synchronous call). */
  private readonly plan: RecordPlan = newRecordPlan()
  /** Memory of answered batches, for the next ones (shared by the lanes). */
  private readonly buffers = new BatchBufferPool()
  private idleWaiters: (() => void)[] = []
  private closing = false
  private closePromise: Promise<void> | undefined
  private metrics: ProducerMetrics | undefined

  constructor(options: ProducerInit = {}) {
    super(options, 'qmq-producer')
  }

  /** Checks the options and prepares discovery and connections. Contacts nobody yet. */
  async init(): Promise<void> {
    if (this.rt !== undefined) return
    if (this.closing) throw new QmqError('QMQ_ERR_CLIENT_CLOSED', 'producer is closed')
    const opts = resolveOptions('producer', producerSchema, this.input)
    requireMetaServer('producer', opts)
    this.opts = opts
    this.rt = createRuntime(opts, this.log)
    if (this.registry !== undefined) {
      this.metrics = new ProducerMetrics(this.registry, {
        queueSize: () => this.unsettled,
        openCircuits: () => [...this.breakers].filter(([, b]) => b.state === 'open').map(([g]) => g),
      })
    }
  }

  /** The id this producer reports (its clientId). */
  get clientId(): string | undefined {
    return this.rt?.clientId
  }

  /** Messages accepted and not yet settled (queued, in flight or waiting for a retry). */
  get queueSize(): number {
    return this.unsettled
  }

  /** A new message for `subject`, with a fresh id. Use a new one for every send. */
  generateMessage(subject: string): Message {
    if (!this.validSubjects.has(subject)) {
      validateSubject(subject)
      if (this.validSubjects.size >= 1_024) this.validSubjects.clear()
      this.validSubjects.add(subject)
    }
    const appCode = this.opts?.appCode ?? this.input.appCode
    if (typeof appCode !== 'string' || appCode.length === 0) return Message.create(subject)
    let base = this.baseProperties
    if (base === undefined || base.get(APP_CODE_PROPERTY) !== appCode) {
      base = new Map([[APP_CODE_PROPERTY, appCode]])
      this.baseProperties = base
    }
    return Message.create(subject, base)
  }

  /**
   * Sends a message. Resolves once a broker (or delay) group stored it; rejects with a QmqError
   * after the retries are spent. With QMQ's listener, `onSuccess`/`onFailed` are called too and the
   * returned promise may be ignored safely (its rejection is handled). Inside a transaction of the
   * transaction provider (or with `{ transaction }`), the message goes to the outbox and leaves after
   * COMMIT (docs/transactions.md).
   */
  sendMessage(message: Message, listener?: MessageSendStateListener | SendOptions): Promise<SendResult> {
    const { listener: l, transaction } = sendArgs(listener)
    if (this.outbox !== undefined) {
      const written = this.outbox.intercept(message, l, transaction)
      if (written !== undefined) return written
    } else if (transaction !== undefined) {
      const err = new QmqError(
        'QMQ_ERR_TX_UNKNOWN',
        'sendMessage got a transaction but no setTransactionProvider()',
      )
      return this.refuse(err, message, l)
    }
    return this.send(message, l)
  }

  /**
   * Makes sendMessage() transactional inside the provider's transactions: the message is written to
   * the outbox table in the transaction and sent after COMMIT (docs/transactions.md). Also runs the
   * outbox watchdog, which resends rows a crash left behind.
   */
  setTransactionProvider<Tx extends object>(
    provider: TransactionProvider<Tx>,
    options: Partial<OutboxOptions> = {},
  ): void {
    void this.outbox?.close()
    const sender = { send: this.send.bind(this), ready: () => this.rt !== undefined && !this.closing }
    this.outbox = new Outbox(provider, sender, options, this.log, this.registry) as Outbox<object>
  }

  /** Sends every queued message now and resolves when all accepted messages are settled. */
  async flush(): Promise<void> {
    for (const lane of this.lanes.values()) this.flushLane(lane)
    if (this.delayLane !== undefined) this.flushLane(this.delayLane)
    if (this.unsettled === 0) return
    await new Promise<void>((resolve) => this.idleWaiters.push(resolve))
  }

  /**
   * Stops accepting messages, sends what is queued, waits until every accepted message is stored or
   * has failed (bounded by sendTimeoutMs), then closes connections. Idempotent.
   */
  close(): Promise<void> {
    this.closePromise ??= (async () => {
      await this.outbox?.close()
      this.closing = true
      if (this.rt === undefined) return
      await this.flush()
      await closeRuntime(this.rt)
      this.buffers.clear()
      this.metrics?.close()
    })()
    return this.closePromise
  }

  // ------------------------------------------------------------------ internals

  private send(message: Message, listener: MessageSendStateListener | undefined): Promise<SendResult> {
    if (this.closing) {
      return this.refuse(new QmqError('QMQ_ERR_CLIENT_CLOSED', 'producer is closed'), message, listener)
    }
    const opts = this.opts
    if (opts === undefined || this.rt === undefined) {
      return this.refuse(
        new QmqError('QMQ_ERR_NOT_INITIALIZED', 'producer: call init() before sendMessage()'),
        message,
        listener,
      )
    }
    if (!(message instanceof Message)) {
      return this.refuse(
        new QmqError('QMQ_ERR_INVALID_ARGUMENT', 'sendMessage() takes a Message from generateMessage()'),
        message,
        listener,
      )
    }
    if (this.unsettled >= opts.maxQueueSize) {
      return this.refuse(
        new QmqError(
          'QMQ_ERR_SEND_QUEUE_FULL',
          `send queue is full: ${this.unsettled} messages are not settled yet (maxQueueSize ${opts.maxQueueSize}); ` +
            'wait for earlier sends or raise maxQueueSize',
          { details: { maxQueueSize: opts.maxQueueSize } },
        ),
        message,
        listener,
      )
    }
    const scheduleAt = message.scheduleAtMs()
    const delayed = scheduleAt !== undefined && scheduleAt - Date.now() >= MIN_DELAY_MS
    if (scheduleAt !== undefined && !delayed) message.clearDelay()
    const record = message.encodable()
    let plan: RecordPlan
    try {
      plan = planRecord(record, undefined, this.plan)
    } catch (err) {
      return this.refuse(toQmqError(err, 'QMQ_ERR_INVALID_ARGUMENT'), message, listener)
    }
    const subject = message.getSubject()
    let lane = delayed ? this.delayLane : this.lanes.get(subject)
    if (lane === undefined) lane = this.newLane(delayed, subject)
    const size = plan.size
    let open = lane.open
    // A record that would take the batch past batchBytes starts the next one (a record alone may be
    // bigger: it goes on its own).
    if (open.items.length > 0 && open.recordBytes + size > opts.batchBytes) {
      this.flushLane(lane)
      open = lane.open
    }
    // The record is written now, as it is now: changing the message afterwards changes nothing sent.
    const buf = open.room(size, BATCH_HEAD_BYTES + opts.batchBytes)
    const offset = open.used
    writeRecord(plan, record, buf, offset)
    open.used = offset + size
    const p = new Pending(message.getMessageId(), subject, buf, offset, size, Date.now() + opts.sendTimeoutMs)
    if (listener !== undefined) {
      p.listener = listener
      p.message = message
      p.promise.catch(ignore) // with a listener the promise may be ignored
    }
    this.unsettled++
    open.items.push(p)
    if (open.items.length >= opts.batchSize || open.recordBytes >= opts.batchBytes) this.flushLane(lane)
    else if (lane.timer === undefined && lane.immediate === undefined) this.scheduleLane(lane)
    return p.promise
  }

  /** A send refused before it was queued: a rejected promise, and the listener told (asynchronously). */
  private refuse(
    err: QmqError,
    message: Message,
    listener: MessageSendStateListener | undefined,
  ): Promise<SendResult> {
    this.metrics?.failed(message instanceof Message ? message.getSubject() : '', err.code)
    const p = Promise.reject(err)
    if (listener !== undefined) {
      p.catch(ignore)
      queueMicrotask(() => {
        try {
          listener.onFailed(message, err)
        } catch (e) {
          this.log.error(e as Error, 'send listener threw')
        }
      })
    }
    return p
  }

  private newLane(delayed: boolean, subject: string): Lane {
    const lane: Lane = {
      kind: delayed ? 'delay-producer' : 'producer',
      subject,
      open: new OpenBatch(this.buffers),
      timer: undefined,
      immediate: undefined,
      next: Math.floor(Math.random() * 1024),
      flush: () => this.flushLane(lane),
    }
    if (delayed) this.delayLane = lane
    else this.lanes.set(subject, lane)
    return lane
  }

  // A message leaves the count before its promise settles and its listener runs, so a listener (or a
  // continuation) that sends the next message sees the room it made.
  private succeed(p: Pending, r: SendResult): void {
    this.unsettled--
    p.succeed(r, this.log)
  }

  private fail(p: Pending, e: QmqError): void {
    this.unsettled--
    this.metrics?.failed(p.subject, e.code)
    p.fail(e, this.log)
  }

  /** Wakes flush()/close() once nothing is unsettled (called once per batch, not per message). */
  private wakeIdle(): void {
    if (this.unsettled === 0 && this.idleWaiters.length > 0) {
      const w = this.idleWaiters
      this.idleWaiters = []
      for (const f of w) f()
    }
  }

  private scheduleLane(lane: Lane): void {
    if (lane.timer !== undefined || lane.immediate !== undefined) return
    const linger = this.opts?.lingerMs ?? 0
    if (linger === 0) lane.immediate = setImmediate(lane.flush)
    else lane.timer = setTimeout(lane.flush, linger)
  }

  private flushLane(lane: Lane): void {
    if (lane.timer !== undefined) clearTimeout(lane.timer)
    if (lane.immediate !== undefined) clearImmediate(lane.immediate)
    lane.timer = undefined
    lane.immediate = undefined
    if (lane.open.items.length === 0) return
    const { items, body } = lane.open.seal()
    this.dispatch(lane, items, body, new Set())
  }

  private breaker(group: string): CircuitBreaker {
    let b = this.breakers.get(group)
    if (b === undefined) {
      const o = this.opts as ProducerOptions
      b = new CircuitBreaker({ failureThreshold: o.circuitFailureThreshold, openMs: o.circuitOpenMs })
      this.breakers.set(group, b)
    }
    return b
  }

  /** Picks a group: round robin over groups with a closed (or probing) breaker, untried ones first. */
  private pick(
    lane: Lane,
    groups: readonly RouteGroup[],
    tried: ReadonlySet<string>,
  ): RouteGroup | undefined {
    const n = groups.length
    for (const allowTried of [false, true]) {
      for (let i = 0; i < n; i++) {
        const g = groups[(lane.next + i) % n] as RouteGroup
        if (!allowTried && tried.has(g.name)) continue
        if (this.breaker(g.name).tryAcquire()) {
          lane.next = (lane.next + i + 1) % 1_000_000
          return g
        }
      }
    }
    return undefined
  }

  /**
   * Sends a batch to one of its route's groups. With the route cached this happens synchronously, so
   * a full batch reaches the socket while the caller is still producing (no wait for the event loop).
   */
  private dispatch(lane: Lane, batch: Pending[], body: Buffer, tried: Set<string>): void {
    const rt = this.rt as ClientRuntime
    const cached = rt.routes.peek(lane.kind, lane.subject)
    if (cached !== undefined) {
      void this.sendBatch(lane, batch, body, tried, cached)
      return
    }
    let lookup: Promise<RouteGroup[]>
    try {
      lookup = rt.routes.get(lane.kind, lane.subject)
    } catch (err) {
      lookup = Promise.reject(err)
    }
    lookup.then(
      (groups) => this.sendBatch(lane, batch, body, tried, groups),
      (err: unknown) => {
        // The first lookup already retried within its own bound (firstLookupTimeoutMs): fail now.
        const e = toQmqError(err)
        for (const p of batch) this.fail(p, e)
        this.wakeIdle()
      },
    )
  }

  private async sendBatch(
    lane: Lane,
    batch: Pending[],
    /** The SEND body of exactly `batch`: count, then their records in order. */
    body: Buffer,
    tried: Set<string>,
    groups: readonly RouteGroup[],
  ): Promise<void> {
    const rt = this.rt as ClientRuntime
    const opts = this.opts as ProducerOptions
    const group = this.pick(lane, groups, tried)
    if (group === undefined) {
      const err = new QmqError(
        'QMQ_ERR_CIRCUIT_OPEN',
        `every group of subject ${lane.subject} has an open circuit breaker (${groups.map((g) => g.name).join(', ')})`,
      )
      this.retryOrFail(lane, batch, body, err, tried)
      return
    }
    tried.add(group.name)
    const breaker = this.breaker(group.name)
    const minDeadline = batch.reduce((m, p) => Math.min(m, p.deadline), Number.POSITIVE_INFINITY)
    const timeoutMs = Math.max(1, Math.min(opts.requestTimeoutMs, minDeadline - Date.now()))
    let results: { status: number; message: string }[] | undefined
    const metrics = this.metrics
    const started = metrics !== undefined ? performance.now() : 0
    let answered = false
    try {
      const conn = rt.pool.get(group.address)
      const frame = await conn.request(RequestCode.SEND, body, { timeoutMs })
      answered = true
      metrics?.request(group.name, true, (performance.now() - started) / 1000)
      // Common case: every record stored; read the statuses without building a result per record.
      if (!allStored(frame.body, batch.length)) results = decodeSendResponse(frame.body)
      if (results !== undefined && results.length !== batch.length) {
        throw new QmqError(
          'QMQ_ERR_PAYLOAD_MALFORMED',
          `SEND answer has ${results.length} results for ${batch.length} records`,
        )
      }
    } catch (e) {
      const err = toQmqError(e)
      if (metrics !== undefined && !answered)
        metrics.request(group.name, false, (performance.now() - started) / 1000)
      if (err.retriable) breaker.onFailure()
      else breaker.onSuccess() // the group answered; the request itself was wrong
      this.log.debug({ group: group.name, err: err.message, n: batch.length }, 'send failed')
      if (err.code === 'QMQ_ERR_READ_ONLY') void rt.routes.refresh(lane.kind, lane.subject)
      this.retryOrFail(lane, batch, body, err, tried)
      return
    }
    breaker.onSuccess()
    const groupName = group.name
    if (results === undefined) {
      // Sent once and answered: nothing reads the body any more (see BatchBufferPool).
      if ((batch[0] as Pending).attempts === 0) this.buffers.give(body)
      for (let i = 0; i < batch.length; i++) {
        const p = batch[i] as Pending
        this.succeed(p, { messageId: p.id, subject: p.subject, group: groupName })
      }
      if (metrics !== undefined) count(metrics, 'sent', lane, batch)
      this.wakeIdle()
      return
    }
    const retry: Pending[] = []
    const stored: Pending[] = []
    let retryErr: QmqError | undefined
    for (let i = 0; i < batch.length; i++) {
      const p = batch[i] as Pending
      const r = results[i] as { status: number; message: string }
      if (r.status === 0) {
        this.succeed(p, { messageId: p.id, subject: p.subject, group: groupName })
        stored.push(p)
        continue
      }
      const err = QmqError.fromStatus(r.status, r.message)
      if (err.retriable) {
        retry.push(p)
        retryErr = err
      } else {
        this.fail(p, this.finalError(p, err))
      }
    }
    if (metrics !== undefined) count(metrics, 'sent', lane, stored)
    this.wakeIdle()
    if (retry.length > 0) {
      if (retryErr?.code === 'QMQ_ERR_READ_ONLY') void rt.routes.refresh(lane.kind, lane.subject)
      this.retryOrFail(lane, retry, undefined, retryErr as QmqError, tried)
    }
  }

  private finalError(p: Pending, err: QmqError): QmqError {
    if (p.attempts <= 1 && !err.retriable) return err
    return new QmqError(
      err.code,
      `message ${p.id} of subject ${p.subject} not sent after ${p.attempts} attempt(s): ${err.message}`,
      { cause: err, details: { attempts: p.attempts } },
    )
  }

  /** `body` is the SEND body of exactly `batch` when there is one (reused when all of it goes again). */
  private retryOrFail(
    lane: Lane,
    batch: Pending[],
    body: Buffer | undefined,
    err: QmqError,
    tried: Set<string>,
  ): void {
    const opts = this.opts as ProducerOptions
    const now = Date.now()
    const again: Pending[] = []
    for (const p of batch) {
      p.attempts++
      if (!isRetriable(err) || p.attempts >= opts.maxAttempts || now >= p.deadline)
        this.fail(p, this.finalError(p, err))
      else again.push(p)
    }
    this.wakeIdle()
    if (again.length === 0) return
    if (this.metrics !== undefined) count(this.metrics, 'retried', lane, again)
    const againBody = body !== undefined && again.length === batch.length ? body : packBatch(again)
    const groups = this.rt?.routes.peek(lane.kind, lane.subject) ?? []
    const untried = groups.some((g) => !tried.has(g.name) && this.breaker(g.name).available)
    if (untried) {
      this.dispatch(lane, again, againBody, tried)
      return
    }
    // Every group was tried: wait a little, ask for the route again, start a new round.
    const delay = backoffDelay(Math.min(10, (again[0] as Pending).attempts), { initialMs: 20, maxMs: 1_000 })
    if (this.rt !== undefined && groups.length > 0)
      void this.rt.routes.refresh(lane.kind, lane.subject).catch(() => {})
    setTimeout(() => this.dispatch(lane, again, againBody, new Set()), delay)
  }
}
