import { integer, type OptionsSchema, resolveOptions } from '../../common/config'
import { QmqError, toQmqError } from '../../common/errors'
import { type Logger, silentLogger } from '../../common/logger'
import type { ClientKind, RouteGroup } from '../../common/meta/types'
import { validateSubject } from '../../common/names'
import { RequestCode } from '../../common/protocol/codes'
import { decodeSendResponse, encodeSendRequest } from '../../common/protocol/commands'
import { encodeRecord } from '../../common/record'
import {
  type ClientRuntime,
  type CommonClientOptions,
  closeRuntime,
  commonClientSchema,
  createRuntime,
  requireMetaServer,
} from '../options'
import { backoffDelay, isRetriable } from '../retry'
import { CircuitBreaker } from './circuit-breaker'
import { APP_CODE_PROPERTY, Message } from './message'

/**
 * The producer: QMQ's MessageProducerProvider.
 *
 * sendMessage() encodes the message at once (bad input fails then), puts it in a per-subject lane and
 * returns. A lane is flushed as one SEND request when it holds `batchSize` messages or `batchBytes`
 * bytes, or `lingerMs` after its first message. Each batch goes to one of the subject's broker groups
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

interface Pending {
  message: Message
  bytes: Buffer
  deadline: number
  attempts: number
  resolve: (r: SendResult) => void
  reject: (e: QmqError) => void
}

interface Lane {
  key: string
  kind: ClientKind
  subject: string
  queue: Pending[]
  queuedBytes: number
  timer: NodeJS.Timeout | undefined
  immediate: NodeJS.Immediate | undefined
  next: number
}

export type ProducerInit = Partial<ProducerOptions> & { logger?: Logger }

export class MessageProducerProvider {
  private input: Record<string, unknown>
  private readonly log: Logger
  private opts: Readonly<ProducerOptions> | undefined
  private rt: ClientRuntime | undefined
  private readonly lanes = new Map<string, Lane>()
  private readonly breakers = new Map<string, CircuitBreaker>()
  private unsettled = 0
  private idleWaiters: (() => void)[] = []
  private closing = false
  private closePromise: Promise<void> | undefined

  constructor(options: ProducerInit = {}) {
    const { logger, ...rest } = options
    this.input = { ...rest }
    this.log = (logger ?? silentLogger).child({ component: 'qmq-producer' })
  }

  /** QMQ setter; call before init(). */
  setAppCode(appCode: string): void {
    this.input.appCode = appCode
  }

  /** QMQ setter (`http://host:port/meta/address`); call before init(). */
  setMetaServer(metaServer: string): void {
    this.input.metaServer = metaServer
  }

  /** Checks the options and prepares discovery and connections. Contacts nobody yet. */
  async init(): Promise<void> {
    if (this.rt !== undefined) return
    if (this.closing) throw new QmqError('QMQ_ERR_CLIENT_CLOSED', 'producer is closed')
    const opts = resolveOptions('producer', producerSchema, this.input)
    requireMetaServer('producer', opts)
    this.opts = opts
    this.rt = createRuntime(opts, this.log)
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
    validateSubject(subject)
    const m = Message.create(subject)
    const appCode = this.opts?.appCode ?? this.input.appCode
    if (typeof appCode === 'string' && appCode.length > 0) m.setReservedProperty(APP_CODE_PROPERTY, appCode)
    return m
  }

  /**
   * Sends a message. Resolves once a broker (or delay) group stored it; rejects with a QmqError
   * after the retries are spent. With QMQ's listener, `onSuccess`/`onFailed` are called too and the
   * returned promise may be ignored safely (its rejection is handled).
   */
  sendMessage(message: Message, listener?: MessageSendStateListener): Promise<SendResult> {
    const p = this.send(message)
    if (listener !== undefined) {
      p.then(
        () => listener.onSuccess(message),
        (err: QmqError) => listener.onFailed(message, err),
      ).catch((err: unknown) => this.log.error(err as Error, 'send listener threw'))
      p.catch(() => {})
    }
    return p
  }

  /** Sends every queued message now and resolves when all accepted messages are settled. */
  async flush(): Promise<void> {
    for (const lane of this.lanes.values()) this.flushLane(lane)
    if (this.unsettled === 0) return
    await new Promise<void>((resolve) => this.idleWaiters.push(resolve))
  }

  /**
   * Stops accepting messages, sends what is queued, waits until every accepted message is stored or
   * has failed (bounded by sendTimeoutMs), then closes connections. Idempotent.
   */
  close(): Promise<void> {
    this.closePromise ??= (async () => {
      this.closing = true
      if (this.rt === undefined) return
      await this.flush()
      await closeRuntime(this.rt)
    })()
    return this.closePromise
  }

  // ------------------------------------------------------------------ internals

  private send(message: Message): Promise<SendResult> {
    if (this.closing) return Promise.reject(new QmqError('QMQ_ERR_CLIENT_CLOSED', 'producer is closed'))
    const opts = this.opts
    if (opts === undefined || this.rt === undefined) {
      return Promise.reject(
        new QmqError('QMQ_ERR_NOT_INITIALIZED', 'producer: call init() before sendMessage()'),
      )
    }
    if (!(message instanceof Message)) {
      return Promise.reject(
        new QmqError('QMQ_ERR_INVALID_ARGUMENT', 'sendMessage() takes a Message from generateMessage()'),
      )
    }
    if (this.unsettled >= opts.maxQueueSize) {
      return Promise.reject(
        new QmqError(
          'QMQ_ERR_SEND_QUEUE_FULL',
          `send queue is full: ${this.unsettled} messages are not settled yet (maxQueueSize ${opts.maxQueueSize}); ` +
            'wait for earlier sends or raise maxQueueSize',
          { details: { maxQueueSize: opts.maxQueueSize } },
        ),
      )
    }
    const scheduleAt = message.getScheduleReceiveTime()?.getTime()
    const delayed = scheduleAt !== undefined && scheduleAt - Date.now() >= MIN_DELAY_MS
    if (scheduleAt !== undefined && !delayed) message.clearDelay()
    let bytes: Buffer
    try {
      bytes = encodeRecord(message.toRecord())
    } catch (err) {
      return Promise.reject(toQmqError(err, 'QMQ_ERR_INVALID_ARGUMENT'))
    }
    return new Promise<SendResult>((resolve, reject) => {
      const subject = message.getSubject()
      const kind: ClientKind = delayed ? 'delay-producer' : 'producer'
      const key = delayed ? 'delay' : subject
      let lane = this.lanes.get(key)
      if (lane === undefined) {
        lane = {
          key,
          kind,
          subject,
          queue: [],
          queuedBytes: 0,
          timer: undefined,
          immediate: undefined,
          next: Math.floor(Math.random() * 1024),
        }
        this.lanes.set(key, lane)
      }
      this.unsettled++
      lane.queue.push({
        message,
        bytes,
        deadline: Date.now() + opts.sendTimeoutMs,
        attempts: 0,
        resolve: (r) => {
          this.settled()
          resolve(r)
        },
        reject: (e) => {
          this.settled()
          reject(e)
        },
      })
      lane.queuedBytes += bytes.length
      if (lane.queue.length >= opts.batchSize || lane.queuedBytes >= opts.batchBytes) this.flushLane(lane)
      else this.scheduleLane(lane)
    })
  }

  private settled(): void {
    if (--this.unsettled === 0 && this.idleWaiters.length > 0) {
      const w = this.idleWaiters
      this.idleWaiters = []
      for (const f of w) f()
    }
  }

  private scheduleLane(lane: Lane): void {
    if (lane.timer !== undefined || lane.immediate !== undefined) return
    const linger = this.opts?.lingerMs ?? 0
    if (linger === 0) lane.immediate = setImmediate(() => this.flushLane(lane))
    else lane.timer = setTimeout(() => this.flushLane(lane), linger)
  }

  private flushLane(lane: Lane): void {
    if (lane.timer !== undefined) clearTimeout(lane.timer)
    if (lane.immediate !== undefined) clearImmediate(lane.immediate)
    lane.timer = undefined
    lane.immediate = undefined
    const opts = this.opts as ProducerOptions
    while (lane.queue.length > 0) {
      let n = 0
      let bytes = 0
      while (n < lane.queue.length && n < opts.batchSize) {
        const b = (lane.queue[n] as Pending).bytes.length
        if (n > 0 && bytes + b > opts.batchBytes) break
        bytes += b
        n++
      }
      const batch = lane.queue.splice(0, n)
      lane.queuedBytes -= bytes
      void this.dispatch(lane, batch, new Set())
    }
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

  private async dispatch(lane: Lane, batch: Pending[], tried: Set<string>): Promise<void> {
    const rt = this.rt as ClientRuntime
    const opts = this.opts as ProducerOptions
    let groups: RouteGroup[]
    try {
      groups = await rt.routes.get(lane.kind, lane.subject)
    } catch (err) {
      // The first lookup already retried within its own bound (firstLookupTimeoutMs): fail now.
      const e = toQmqError(err)
      for (const p of batch) p.reject(e)
      return
    }
    const group = this.pick(lane, groups, tried)
    if (group === undefined) {
      const err = new QmqError(
        'QMQ_ERR_CIRCUIT_OPEN',
        `every group of subject ${lane.subject} has an open circuit breaker (${groups.map((g) => g.name).join(', ')})`,
      )
      this.retryOrFail(lane, batch, err, tried)
      return
    }
    tried.add(group.name)
    const breaker = this.breaker(group.name)
    const minDeadline = batch.reduce((m, p) => Math.min(m, p.deadline), Number.POSITIVE_INFINITY)
    const timeoutMs = Math.max(1, Math.min(opts.requestTimeoutMs, minDeadline - Date.now()))
    let results: { status: number; message: string }[]
    try {
      const conn = rt.pool.get(group.address)
      const frame = await conn.request(RequestCode.SEND, encodeSendRequest(batch.map((p) => p.bytes)), {
        timeoutMs,
      })
      results = decodeSendResponse(frame.body)
      if (results.length !== batch.length) {
        throw new QmqError(
          'QMQ_ERR_PAYLOAD_MALFORMED',
          `SEND answer has ${results.length} results for ${batch.length} records`,
        )
      }
    } catch (e) {
      const err = toQmqError(e)
      if (err.retriable) breaker.onFailure()
      else breaker.onSuccess() // the group answered; the request itself was wrong
      this.log.debug({ group: group.name, err: err.message, n: batch.length }, 'send failed')
      if (err.code === 'QMQ_ERR_READ_ONLY') void rt.routes.refresh(lane.kind, lane.subject)
      this.retryOrFail(lane, batch, err, tried)
      return
    }
    breaker.onSuccess()
    const retry: Pending[] = []
    let retryErr: QmqError | undefined
    for (let i = 0; i < batch.length; i++) {
      const p = batch[i] as Pending
      const r = results[i] as { status: number; message: string }
      if (r.status === 0) {
        p.resolve({ messageId: p.message.getMessageId(), subject: p.message.getSubject(), group: group.name })
        continue
      }
      const err = QmqError.fromStatus(r.status, r.message)
      if (err.retriable) {
        retry.push(p)
        retryErr = err
      } else {
        p.reject(this.finalError(p, err))
      }
    }
    if (retry.length > 0) {
      if (retryErr?.code === 'QMQ_ERR_READ_ONLY') void rt.routes.refresh(lane.kind, lane.subject)
      this.retryOrFail(lane, retry, retryErr as QmqError, tried)
    }
  }

  private finalError(p: Pending, err: QmqError): QmqError {
    if (p.attempts <= 1 && !err.retriable) return err
    return new QmqError(
      err.code,
      `message ${p.message.getMessageId()} of subject ${p.message.getSubject()} not sent after ${p.attempts} attempt(s): ${err.message}`,
      { cause: err, details: { attempts: p.attempts } },
    )
  }

  private retryOrFail(lane: Lane, batch: Pending[], err: QmqError, tried: Set<string>): void {
    const opts = this.opts as ProducerOptions
    const now = Date.now()
    const again: Pending[] = []
    for (const p of batch) {
      p.attempts++
      if (!isRetriable(err) || p.attempts >= opts.maxAttempts || now >= p.deadline)
        p.reject(this.finalError(p, err))
      else again.push(p)
    }
    if (again.length === 0) return
    const groups = this.rt?.routes.peek(lane.kind, lane.subject) ?? []
    const untried = groups.some((g) => !tried.has(g.name) && this.breaker(g.name).available)
    if (untried) {
      void this.dispatch(lane, again, tried)
      return
    }
    // Every group was tried: wait a little, ask for the route again, start a new round.
    const delay = backoffDelay(Math.min(10, (again[0] as Pending).attempts), { initialMs: 20, maxMs: 1_000 })
    if (this.rt !== undefined && groups.length > 0)
      void this.rt.routes.refresh(lane.kind, lane.subject).catch(() => {})
    setTimeout(() => void this.dispatch(lane, again, new Set()), delay)
  }
}
