import { hostname } from 'node:os'
import { boolean, integer, type OptionsSchema, optionalSecret, resolveOptions } from '../../common/config'
import { QmqError, toQmqError } from '../../common/errors'
import type { ClientKind, RouteGroup } from '../../common/meta/types'
import { validateSubject } from '../../common/names'
import { RequestCode } from '../../common/protocol/codes'
import { decodeSendResponse } from '../../common/protocol/commands'
import { HOST_PROPERTY, newRecordPlan, planRecord, type RecordPlan, writeRecord } from '../../common/record'
import {
  type ClientRuntime,
  type CommonClientOptions,
  closeRuntime,
  commonClientSchema,
  createRuntime,
  requireMetaServer,
} from '../options'
import { backoffDelay, isRetriable } from '../retry'
import {
  BATCH_HEAD_BYTES,
  BatchBufferPool,
  OpenBatch,
  Pending,
  packBatch,
  SEND_FAILED,
  SEND_PENDING,
} from './batch'
import { checkMetaServer } from '../meta/check'
import { RouteCache } from '../meta/route-cache'
import { cancelDelayed } from './cancel'
import { CircuitBreaker } from './circuit-breaker'
import { type Waiter, WaitQueue } from './send-queue'
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
 * until `maxAttempts` or the message's `sendTimeoutMs` deadline.
 *
 * Duplicates: brokers dedupe by message id, but each group only its own. So a batch whose SEND went
 * unanswered (a timeout: the group may have stored it) is sent again to that same group, where a
 * copy already stored is answered as stored and not kept twice; it moves to another group only once
 * its group is proven unreachable (connection refused or closed, shutting down, read-only, gone from
 * the route, circuit breaker open). Records the group refused (a status) were not stored: they may go
 * anywhere. A Message remembers its last send (`Message.lastSend`): sending it again joins that send
 * (same promise) unless it failed, and then goes to the group that may hold it. docs/client.md
 * ("Duplicates") states the window that remains.
 *
 * Ordered messages (an order key): a keyed message goes to the lane of its key's slot (ORDER_SLOTS
 * slots per subject, by a hash of the key). A slot's lane keeps at most one batch in flight, so its
 * messages reach the broker in the order they were sent, retries included; and it sends to one group,
 * the first of the subject's groups in the slot's rendezvous order (a hash of slot and group name, the
 * same in every producer) that is reachable: a key stays on its group while that group is reachable,
 * moves to the next in its order when it is not, and comes back when it is again. docs/client.md
 * ("Ordered messages") states what a move means for the order.
 *
 * Backpressure: at most `maxQueueSize` messages are admitted (encoded into a batch, in flight, or
 * waiting for a retry). Beyond that sendMessage() encodes the message on its own and waits, first come
 * first served, until settlements make room; it fails with QMQ_ERR_SEND_QUEUE_FULL only if its send
 * deadline passes first.
 */
export interface ProducerOptions extends CommonClientOptions {
  /** Largest number of messages in one SEND request (QMQ's sendBatch). */
  batchSize: number
  /** Largest number of record bytes in one SEND request. */
  batchBytes: number
  /** How long a lane waits for more messages before sending a partial batch (0 = next tick). */
  lingerMs: number
  /**
   * Messages admitted and not yet settled; beyond it sendMessage() waits for room (at most until the
   * message's deadline, then QMQ_ERR_SEND_QUEUE_FULL).
   */
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
  /**
   * init() asks the metaserver once and fails at once (QMQ_ERR_METASERVER_UNAVAILABLE, naming the URL
   * and the cause) when it does not answer. false: start anyway (the first send of each subject then
   * waits up to firstLookupTimeoutMs for its route).
   */
  checkMetaServerOnInit: boolean
  /**
   * The cluster secret (the one the services share: QMQ_CLUSTER_SECRET), sent with cancel(): delay
   * servers refuse CANCEL without it (QMQ_ERR_UNAUTHORIZED). Only cancel() uses it; leave it unset in
   * applications that do not cancel. Interim: issue 18 replaces it with application credentials.
   */
  clusterSecret: string | undefined
}

export const producerSchema: OptionsSchema<ProducerOptions> = {
  ...commonClientSchema,
  batchSize: integer({ default: 100, min: 1, max: 10_000, doc: 'messages per SEND request' }),
  batchBytes: integer({ default: 1024 * 1024, min: 1024, max: 12 * 1024 * 1024, doc: 'bytes per SEND' }),
  lingerMs: integer({ default: 1, min: 0, max: 1_000, doc: 'wait for a fuller batch (ms)' }),
  maxQueueSize: integer({ default: 10_000, min: 1, doc: 'unsettled messages before sends wait for room' }),
  sendTimeoutMs: integer({ default: 10_000, min: 10, doc: 'deadline of one message (ms)' }),
  requestTimeoutMs: integer({ default: 5_000, min: 10, doc: 'deadline of one SEND request (ms)' }),
  maxAttempts: integer({ default: 5, min: 1, max: 100, doc: 'sends per message (QMQ sendTryCount)' }),
  circuitFailureThreshold: integer({ default: 20, min: 1, doc: 'failures that open a breaker' }),
  circuitOpenMs: integer({ default: 5_000, min: 1, doc: 'open breaker duration (ms)' }),
  checkMetaServerOnInit: boolean({ default: true, doc: 'init() fails when the metaserver does not answer' }),
  clusterSecret: optionalSecret({ doc: 'cluster secret sent with cancel() (interim; issue 18)' }),
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

/**
 * A message due at least this far ahead goes to a delay group; one due now or in the past is sent as
 * a real-time message. (It was 500, as in QMQ: a 300 ms delay then arrived at once, 300 ms early.)
 */
export const MIN_DELAY_MS = 1

/** QMQ's MessageSendStateListener. */
export interface MessageSendStateListener {
  onSuccess(message: Message): void
  onFailed(message: Message, error: QmqError): void
}

/** What a successful send resolves with. */
/** Options of one sendMessage(). */
export interface SendResult {
  messageId: string
  subject: string
  /** The broker or delay group that stored it. */
  group: string
}

/** One message's outcome in `sendMessages()`: the shape of `Promise.allSettled`, with a typed reason. */
export type SendOutcome =
  | { status: 'fulfilled'; value: SendResult }
  | { status: 'rejected'; reason: QmqError }

/**
 * Where a batch may go next. `sticky`: the group that may hold the batch already (its SEND there went
 * unanswered); while set, the batch goes only there. `tried`: groups tried in this round.
 */
interface Route {
  tried: Set<string>
  sticky: string | undefined
}

/**
 * Failures that prove a group cannot take the message now, so it may go to another group even if
 * the group stored an earlier copy: nothing was sent, the connection is gone, or the group said it is
 * read-only or shutting down. A timeout proves nothing (the answer may just be late).
 */
const UNREACHABLE = new Set([
  'QMQ_ERR_CONNECTION',
  'QMQ_ERR_CONNECTION_CLOSED',
  'QMQ_ERR_READ_ONLY',
  'QMQ_ERR_SHUTTING_DOWN',
  'QMQ_ERR_CIRCUIT_OPEN',
  // A slave (or a master whose lease ran out, issue 14) stores nothing from producers: servers answer
  // it only before storing (after storing they answer STORED_THERE).
  'QMQ_ERR_NOT_MASTER',
])

/**
 * The group stored the records but could not confirm them (no slave confirmed them in time, or the
 * master's lease ran out meanwhile): they may be delivered all the same, so the batch goes to that
 * group again with the same ids (as after a timeout), never to another group.
 */
const STORED_THERE = 'QMQ_ERR_REPLICATION_TIMEOUT'

/**
 * A request its connection refused without sending it (the connection waits `retryInMs` before its
 * next connect attempt): not an attempt of the message, which waits that long, or for a new route.
 */
function notSentFor(err: QmqError): number | undefined {
  if (err.code !== 'QMQ_ERR_CONNECTION' || err.details?.notSent !== true) return undefined
  const ms = err.details.retryInMs
  return typeof ms === 'number' ? ms : 0
}

function ignore(): void {}

/** The lanes map's key of a keyed lane (real-time lanes are keyed by their subject alone). */
function laneKey(subject: string, slot: number): string {
  return `${subject}\u0000${slot}`
}

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

/**
 * Order-key slots per subject: keys hash to a slot, a slot to a group. Part of the contract between
 * producers (every producer must send a key to the same group): never change it.
 */
export const ORDER_SLOTS = 64

/** FNV-1a 32-bit of a string's UTF-16 code units (stable across processes and versions). */
function fnv1a(s: string): number {
  let h = 0x811c9dc5
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i)
    h = Math.imul(h, 0x01000193) >>> 0
  }
  return h >>> 0
}

/** The slot of an order key. */
export function orderSlot(key: string): number {
  return fnv1a(key) % ORDER_SLOTS
}

/** The groups in a slot's rendezvous order (highest score first, name breaks ties): its preference. */
export function slotGroupOrder<G extends { name: string }>(slot: number, groups: readonly G[]): G[] {
  const scored = groups.map((g) => ({ g, score: fnv1a(`${slot}/${g.name}`) }))
  scored.sort((a, b) => b.score - a.score || (a.g.name < b.g.name ? -1 : 1))
  return scored.map((x) => x.g)
}

interface Lane {
  kind: ClientKind
  subject: string
  /** The order-key slot of a keyed lane; -1 for the others. */
  slot: number
  /** Keyed lane: a batch is in flight (the next ones wait in `queued`, in order). */
  busy: boolean
  queued: { items: Pending[]; body: Buffer }[]
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
  /** Retries waiting for their delay, by route key (RouteCache.key): see park(). */
  private readonly parked = new Map<string, Map<NodeJS.Timeout, () => void>>()
  /** The address each group's breaker was made for. */
  private readonly breakerAddresses = new Map<string, string>()
  /** The transactional outbox (setTransactionProvider), if any. */
  private outbox: Outbox<object> | undefined
  /** The SDK's properties of every generated message, shared by them until one is changed. */
  private baseProperties: ReadonlyMap<string, string> | undefined
  /** Subjects generateMessage() already validated (bounded). */
  private readonly validSubjects = new Set<string>()
  private unsettled = 0
  /** Messages waiting for room. */
  private readonly waiting = new WaitQueue(() => this.onWaitDue())
  private admitting = false
  /** send()'s record plan, reused (planned and written in the same synchronous call). */
  private readonly plan: RecordPlan = newRecordPlan()
  /** Memory of answered batches, for the next ones (shared by the lanes). */
  private readonly buffers = new BatchBufferPool()
  private idleWaiters: (() => void)[] = []
  private closing = false
  private closePromise: Promise<void> | undefined
  private initPromise: Promise<void> | undefined
  private metrics: ProducerMetrics | undefined

  constructor(options: ProducerInit = {}) {
    super(options, 'qmq-producer')
  }

  /**
   * Checks the options, asks the metaserver once (see checkMetaServerOnInit) and prepares discovery
   * and connections (brokers are contacted on the first send). A failed init() may be called again.
   */
  init(): Promise<void> {
    if (this.closing) return Promise.reject(new QmqError('QMQ_ERR_CLIENT_CLOSED', 'producer is closed'))
    this.initPromise ??= this.start().catch((err: unknown) => {
      this.initPromise = undefined
      throw err
    })
    return this.initPromise
  }

  private async start(): Promise<void> {
    const opts = resolveOptions('producer', producerSchema, this.input)
    requireMetaServer('producer', opts)
    const rt = createRuntime(opts, this.log, this.emitEvent)
    if (opts.checkMetaServerOnInit) {
      try {
        await checkMetaServer(rt.meta, opts.metaServer, 'producer')
      } catch (err) {
        await closeRuntime(rt)
        throw err
      }
    }
    if (this.closing) {
      await closeRuntime(rt)
      throw new QmqError('QMQ_ERR_CLIENT_CLOSED', 'producer is closed')
    }
    this.opts = opts
    this.rt = rt
    rt.routes.onChange((q) => {
      if (q.kind === 'producer' || q.kind === 'delay-producer') this.unpark(RouteCache.key(q.kind, q.subject))
    })
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

  /**
   * Messages admitted and not yet settled (in a batch, in flight or waiting for a retry): at most
   * `maxQueueSize`.
   */
  get queueSize(): number {
    return this.unsettled
  }

  /** Messages whose sendMessage() waits for room in the queue (not counted in queueSize). */
  get waitingCount(): number {
    return this.waiting.size
  }

  /**
   * Cancels a pending delayed message by id (cancel.ts): true when a delay group held it pending (it is
   * then never delivered), false when none did (unknown, delivered, or not delayed). Needs the
   * `clusterSecret` option (QMQ_ERR_UNAUTHORIZED otherwise).
   */
  async cancel(messageId: string): Promise<boolean> {
    if (this.rt === undefined)
      throw new QmqError('QMQ_ERR_NOT_INITIALIZED', 'producer: call init() before cancel()')
    const rt = this.rt
    const request = (address: string, code: number, body: Buffer) => rt.pool.get(address).request(code, body)
    const token = this.opts?.clusterSecret
    return (await cancelDelayed({ meta: rt.meta, request, token }, [messageId]))[0] === true
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
      // The producer's identity, for the lifecycle trace (docs/query.md): its appCode and host.
      base = new Map([
        [APP_CODE_PROPERTY, appCode],
        [HOST_PROPERTY, hostname()],
      ])
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
   *
   * When `maxQueueSize` messages are unsettled, the message waits for room (first come, first
   * served) until its deadline (`sendTimeoutMs` from this call), then fails with
   * QMQ_ERR_SEND_QUEUE_FULL. A Message is stored once however often it is passed here: while its
   * send is pending or after it succeeded, this returns that send's promise (nothing is sent again);
   * after it failed, it is sent again with the same id, to the group that may hold it.
   *
   * `options.signal` (also accepted in place of the listener): a send whose signal is aborted before it
   * was admitted to the send queue (already aborted at the call, or while waiting for room) fails with
   * QMQ_ERR_ABORTED and nothing of it is sent. Once admitted (into a batch that goes to a broker within
   * the linger time) an abort changes nothing: the message may be stored, and the promise tells how
   * the send ended, as without a signal.
   */
  sendMessage(
    message: Message,
    listener?: MessageSendStateListener | SendOptions,
    options?: SendOptions,
  ): Promise<SendResult> {
    const { listener: l, transaction, signal } = sendArgs(listener, options)
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
    return this.send(message, l, signal)
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

  /**
   * Sends several messages (each as sendMessage() would) and resolves once all are settled, with one
   * outcome per message in the order given: `{ status: 'fulfilled', value }` or `{ status: 'rejected',
   * reason }` (a QmqError), as `Promise.allSettled`. It rejects only when not given an array.
   */
  async sendMessages(messages: readonly Message[]): Promise<SendOutcome[]> {
    if (!Array.isArray(messages)) {
      throw new QmqError('QMQ_ERR_INVALID_ARGUMENT', 'sendMessages() takes an array of Messages')
    }
    const settled = await Promise.allSettled(messages.map((m: Message) => this.sendMessage(m)))
    return settled.map((r) =>
      r.status === 'fulfilled' ? r : { status: 'rejected', reason: toQmqError(r.reason) },
    )
  }

  /**
   * Sends every queued message now and resolves when all accepted messages (those waiting for room
   * included) are settled.
   */
  async flush(): Promise<void> {
    for (const lane of this.lanes.values()) this.flushLane(lane)
    if (this.delayLane !== undefined) this.flushLane(this.delayLane)
    if (this.unsettled === 0 && this.waitingCount === 0) return
    await new Promise<void>((resolve) => this.idleWaiters.push(resolve))
  }

  /** `await using producer = new MessageProducerProvider(...)`: close() at the end of the scope. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close()
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

  private send(
    message: Message,
    listener: MessageSendStateListener | undefined,
    signal?: AbortSignal,
  ): Promise<SendResult> {
    if (signal?.aborted) {
      return this.refuse(new QmqError('QMQ_ERR_ABORTED', 'send aborted by its signal'), message, listener)
    }
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
    // Sent before: pending or stored, that send answers (nothing is sent again); failed, it goes again
    // with the same id, to the group that may hold it.
    const prev = message.lastSend
    if (prev !== undefined && prev.state !== SEND_FAILED) return this.join(prev, message, listener)
    const sticky = prev?.mayBeOn
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
    const size = plan.size
    const deadline = Date.now() + opts.sendTimeoutMs
    const key = delayed ? undefined : message.getOrderKey()
    const slot = key === undefined ? -1 : orderSlot(key)
    if (sticky !== undefined || this.waiting.size > 0 || this.unsettled >= opts.maxQueueSize) {
      // Waits for room (behind those already waiting), or goes alone to one group: encoded on its own
      // now, as it is now, as a one-record SEND body.
      const buf = Buffer.allocUnsafe(BATCH_HEAD_BYTES + size)
      buf.writeUInt32BE(1, 0)
      writeRecord(plan, record, buf, BATCH_HEAD_BYTES)
      const p = new Pending(message.getMessageId(), subject, buf, BATCH_HEAD_BYTES, size, deadline)
      this.track(p, message, listener)
      const w: Waiter = { p, delayed, sticky, slot }
      if (this.waiting.size === 0 && this.unsettled < opts.maxQueueSize) this.admitOne(w)
      else {
        this.waiting.push(w)
        if (signal !== undefined) {
          // Aborted while waiting: fails now; admit() and expiry skip it (no longer pending).
          const onAbort = (): void => {
            if (w.admitted || p.state !== SEND_PENDING) return
            this.metrics?.failed(subject, 'QMQ_ERR_ABORTED')
            p.fail(
              new QmqError('QMQ_ERR_ABORTED', 'send aborted by its signal while waiting for room'),
              this.log,
            )
          }
          signal.addEventListener('abort', onAbort, { once: true })
          p.promise.then(
            () => signal.removeEventListener('abort', onAbort),
            () => signal.removeEventListener('abort', onAbort),
          )
        }
      }
      return p.promise
    }
    let lane = delayed ? this.delayLane : this.lanes.get(slot < 0 ? subject : laneKey(subject, slot))
    if (lane === undefined) lane = this.newLane(delayed, subject, slot)
    // The record is written now, as it is now: changing the message afterwards changes nothing sent.
    const buf = this.roomIn(lane, size)
    const offset = lane.open.used
    writeRecord(plan, record, buf, offset)
    lane.open.used = offset + size
    const p = new Pending(message.getMessageId(), subject, buf, offset, size, deadline)
    this.track(p, message, listener)
    this.unsettled++
    this.queued(lane, p)
    return p.promise
  }

  /** Ties a new send to its message (for a second send of it) and its listener. */
  private track(p: Pending, message: Message, listener: MessageSendStateListener | undefined): void {
    message.lastSend = p
    if (listener !== undefined) {
      p.listener = listener
      p.message = message
      p.promise.catch(ignore) // with a listener the promise may be ignored
    }
  }

  /** A second send of a message whose first is pending or stored: the first's promise answers it. */
  private join(
    prev: Pending,
    message: Message,
    listener: MessageSendStateListener | undefined,
  ): Promise<SendResult> {
    if (listener !== undefined) {
      prev.promise.then(
        () => this.tell(() => listener.onSuccess(message)),
        (e: QmqError) => this.tell(() => listener.onFailed(message, e)),
      )
    }
    return prev.promise
  }

  private tell(call: () => void): void {
    try {
      call()
    } catch (e) {
      this.log.error(e as Error, 'send listener threw')
    }
  }

  /**
   * Room for a record of `size` bytes at `lane.open.used` in the lane's open batch. A record that
   * would take the batch past batchBytes starts the next one (a record alone may be bigger: it goes
   * on its own).
   */
  private roomIn(lane: Lane, size: number): Buffer {
    const opts = this.opts as ProducerOptions
    if (lane.open.items.length > 0 && lane.open.recordBytes + size > opts.batchBytes) this.flushLane(lane)
    return lane.open.room(size, BATCH_HEAD_BYTES + opts.batchBytes)
  }

  /** Adds a message whose record was just written to the lane's open batch; sends a full batch. */
  private queued(lane: Lane, p: Pending): void {
    const opts = this.opts as ProducerOptions
    const open = lane.open
    open.items.push(p)
    if (open.items.length >= opts.batchSize || open.recordBytes >= opts.batchBytes) this.flushLane(lane)
    else if (lane.timer === undefined && lane.immediate === undefined) this.scheduleLane(lane)
  }

  /** Admits one waiting message (there is room): into its lane's batch, or alone to a sticky group. */
  private admitOne(w: Waiter): void {
    w.admitted = true
    const p = w.p
    let lane = w.delayed
      ? this.delayLane
      : this.lanes.get(w.slot < 0 ? p.subject : laneKey(p.subject, w.slot))
    if (lane === undefined) lane = this.newLane(w.delayed, p.subject, w.slot)
    this.unsettled++
    if (w.sticky !== undefined) {
      const body = p.buf.subarray(0, BATCH_HEAD_BYTES + p.length)
      this.dispatch(lane, [p], body, { tried: new Set(), sticky: w.sticky })
      return
    }
    const buf = this.roomIn(lane, p.length)
    const offset = lane.open.used
    p.buf.copy(buf, offset, p.offset, p.offset + p.length)
    lane.open.used = offset + p.length
    p.buf = buf
    p.offset = offset
    this.queued(lane, p)
  }

  /** Admits waiting messages, oldest first, while there is room; fails those past their deadline. */
  private admit(): void {
    const opts = this.opts
    if (this.admitting || opts === undefined) return
    this.admitting = true
    try {
      const now = Date.now()
      while (this.unsettled < opts.maxQueueSize) {
        const w = this.waiting.shift()
        if (w === undefined) break
        if (w.p.state !== SEND_PENDING) continue // aborted while waiting
        if (w.p.deadline <= now) this.expire(w)
        else this.admitOne(w)
      }
    } finally {
      this.admitting = false
    }
    this.waiting.arm()
  }

  /** The first waiter's deadline passed: it (and any other due) fails. */
  private onWaitDue(): void {
    const now = Date.now()
    for (let w = this.waiting.takeDue(now); w !== undefined; w = this.waiting.takeDue(now)) this.expire(w)
    this.wakeIdle()
  }

  /** A waiting message whose deadline passed before there was room. */
  private expire(w: Waiter): void {
    if (w.p.state !== SEND_PENDING) return // aborted while waiting
    const opts = this.opts as ProducerOptions
    const err = new QmqError(
      'QMQ_ERR_SEND_QUEUE_FULL',
      `message ${w.p.id} of subject ${w.p.subject} waited ${opts.sendTimeoutMs} ms (sendTimeoutMs) for room in ` +
        `the send queue: ${this.unsettled} messages unsettled (maxQueueSize ${opts.maxQueueSize}); ` +
        'send slower or raise maxQueueSize or sendTimeoutMs',
      { details: { maxQueueSize: opts.maxQueueSize, sendTimeoutMs: opts.sendTimeoutMs } },
    )
    w.p.mayBeOn = w.sticky
    this.metrics?.failed(w.p.subject, err.code)
    w.p.fail(err, this.log)
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

  private newLane(delayed: boolean, subject: string, slot = -1): Lane {
    const lane: Lane = {
      kind: delayed ? 'delay-producer' : 'producer',
      subject,
      slot: delayed ? -1 : slot,
      busy: false,
      queued: [],
      open: new OpenBatch(this.buffers),
      timer: undefined,
      immediate: undefined,
      next: Math.floor(Math.random() * 1024),
      flush: () => this.flushLane(lane),
    }
    if (delayed) this.delayLane = lane
    else this.lanes.set(lane.slot < 0 ? subject : laneKey(subject, lane.slot), lane)
    return lane
  }

  // A message leaves the count before its promise settles and its listener runs, so a listener (or a
  // continuation) that sends the next message sees the room it made.
  private succeed(p: Pending, r: SendResult): void {
    this.unsettled--
    p.succeed(r, this.log)
  }

  /** `mayBeOn`: the group that may hold it all the same (a sticky route; see Pending.mayBeOn). */
  private fail(p: Pending, e: QmqError, mayBeOn: string | undefined = undefined): void {
    this.unsettled--
    this.metrics?.failed(p.subject, e.code)
    p.mayBeOn = mayBeOn
    p.fail(e, this.log)
  }

  /**
   * Called once per batch settled (not per message): admits messages waiting for room, and wakes
   * flush()/close() once nothing is unsettled or waiting.
   */
  private wakeIdle(): void {
    if (this.waiting.size > 0) this.admit()
    if (this.unsettled === 0 && this.waiting.size === 0 && this.idleWaiters.length > 0) {
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
    if (lane.slot < 0) this.dispatch(lane, items, body, { tried: new Set(), sticky: undefined })
    else if (lane.busy) lane.queued.push({ items, body })
    else this.dispatchInOrder(lane, items, body)
  }

  /**
   * A keyed lane's batch: the lane's next batch leaves only once every message of this one is settled
   * (stored, or failed for good), so retries never let a later message of a key overtake an earlier one.
   */
  private dispatchInOrder(lane: Lane, items: Pending[], body: Buffer): void {
    lane.busy = true
    void Promise.allSettled(items.map((p) => p.promise)).then(() => {
      lane.busy = false
      const next = lane.queued.shift()
      if (next !== undefined) this.dispatchInOrder(lane, next.items, next.body)
    })
    this.dispatch(lane, items, body, { tried: new Set(), sticky: undefined })
  }

  /**
   * The circuit breaker of a group at its current address: a group whose master moved (a failover,
   * issue 14) starts with a closed breaker, so producers go to the promoted master at once.
   */
  private breaker(group: string, address: string): CircuitBreaker {
    let b = this.breakers.get(group)
    if (b !== undefined && this.breakerAddresses.get(group) !== address) b = undefined
    if (b === undefined) {
      this.breakerAddresses.set(group, address)
      const o = this.opts as ProducerOptions
      b = new CircuitBreaker({ failureThreshold: o.circuitFailureThreshold, openMs: o.circuitOpenMs })
      this.breakers.set(group, b)
    }
    return b
  }

  /**
   * Picks a group. A sticky route goes to its group while that group is in the route, writable and
   * its breaker lets a request through; otherwise the group counts as unreachable and the route stops
   * being sticky. Else round robin over groups with a closed (or probing) breaker, untried ones first.
   */
  private pick(lane: Lane, groups: readonly RouteGroup[], route: Route): RouteGroup | undefined {
    if (route.sticky !== undefined) {
      const name = route.sticky
      const g = groups.find((x) => x.name === name)
      if (g !== undefined && g.state === 'rw' && this.breaker(name, g.address).tryAcquire()) return g
      this.log.debug(
        {
          group: name,
          why: g === undefined ? 'not in the route' : g.state !== 'rw' ? 'read-only' : 'circuit open',
        },
        'send: the group that may hold this batch is unreachable; failing over',
      )
      route.sticky = undefined
    }
    const tried = route.tried
    if (lane.slot >= 0) {
      // A keyed lane: the first reachable group in the slot's rendezvous order (untried ones first).
      const order = slotGroupOrder(lane.slot, groups)
      for (const allowTried of [false, true]) {
        for (const g of order) {
          if (!allowTried && tried.has(g.name)) continue
          if (this.breaker(g.name, g.address).tryAcquire()) return g
        }
      }
      return undefined
    }
    const n = groups.length
    for (const allowTried of [false, true]) {
      for (let i = 0; i < n; i++) {
        const g = groups[(lane.next + i) % n] as RouteGroup
        if (!allowTried && tried.has(g.name)) continue
        if (this.breaker(g.name, g.address).tryAcquire()) {
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
  private dispatch(lane: Lane, batch: Pending[], body: Buffer, route: Route): void {
    const rt = this.rt as ClientRuntime
    const cached = rt.routes.peek(lane.kind, lane.subject)
    if (cached !== undefined) {
      void this.sendBatch(lane, batch, body, route, cached)
      return
    }
    let lookup: Promise<RouteGroup[]>
    try {
      lookup = rt.routes.get(lane.kind, lane.subject)
    } catch (err) {
      lookup = Promise.reject(err)
    }
    lookup.then(
      (groups) => this.sendBatch(lane, batch, body, route, groups),
      (err: unknown) => {
        // The first lookup already retried within its own bound (firstLookupTimeoutMs): fail now.
        const e = toQmqError(err)
        for (const p of batch) this.fail(p, e, route.sticky)
        this.wakeIdle()
      },
    )
  }

  private async sendBatch(
    lane: Lane,
    batch: Pending[],
    /** The SEND body of exactly `batch`: count, then their records in order. */
    body: Buffer,
    route: Route,
    groups: readonly RouteGroup[],
  ): Promise<void> {
    const rt = this.rt as ClientRuntime
    const opts = this.opts as ProducerOptions
    const group = this.pick(lane, groups, route)
    if (group === undefined) {
      const err = new QmqError(
        'QMQ_ERR_CIRCUIT_OPEN',
        `every group of subject ${lane.subject} has an open circuit breaker (${groups.map((g) => g.name).join(', ')})`,
      )
      this.retryOrFail(lane, batch, body, err, route)
      return
    }
    route.tried.add(group.name)
    const breaker = this.breaker(group.name, group.address)
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
      // A request its connection did not send (waiting to reconnect) tells the breaker nothing new.
      if (notSentFor(err) !== undefined) breaker.release()
      // The group answered (as a per-record answer would, below): it stays reachable for the resend.
      else if (err.code === STORED_THERE) breaker.onSuccess()
      else if (err.retriable) breaker.onFailure()
      else breaker.onSuccess() // the group answered; the request itself was wrong
      this.log.debug({ group: group.name, err: err.message, n: batch.length }, 'send failed')
      // The group may have moved (a failover): ask where it is now (at most a few times a second).
      if (UNREACHABLE.has(err.code)) void rt.routes.refresh(lane.kind, lane.subject)
      // Unanswered: the group may have stored the batch, so it goes there again (where the broker's
      // dedupe answers a stored copy as stored) until that group is proven unreachable. So does a
      // batch the group stored without confirming it.
      if (err.code === 'QMQ_ERR_TIMEOUT' || err.code === STORED_THERE) route.sticky = group.name
      else if (UNREACHABLE.has(err.code)) route.sticky = undefined
      this.retryOrFail(lane, batch, body, err, route)
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
    let storedErr: QmqError | undefined
    let unreachable = false
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
        if (err.code === STORED_THERE) storedErr = err
        if (UNREACHABLE.has(err.code)) unreachable = true
      } else {
        this.fail(p, this.finalError(p, err), route.sticky)
      }
    }
    if (metrics !== undefined) count(metrics, 'sent', lane, stored)
    this.wakeIdle()
    if (retry.length > 0) {
      if (unreachable) void rt.routes.refresh(lane.kind, lane.subject)
      // Refused records were not stored by this group: a sticky route stays on an earlier group that
      // may hold them, unless this (that) group said it cannot take them. Records this group stored
      // unconfirmed make the route sticky to it (the one answer holds one error for the whole batch).
      const sticky = storedErr !== undefined ? groupName : unreachable ? undefined : route.sticky
      const next: Route = { tried: route.tried, sticky }
      this.retryOrFail(lane, retry, undefined, (storedErr ?? retryErr) as QmqError, next)
    }
  }

  private finalError(p: Pending, err: QmqError, mayBeOn?: string): QmqError {
    if (p.attempts <= 1 && !err.retriable && mayBeOn === undefined) return err
    const where =
      mayBeOn === undefined
        ? ''
        : ` (group ${mayBeOn} may have stored it: sending the same Message again goes there, where a stored copy is not stored twice)`
    return new QmqError(
      err.code,
      `message ${p.id} of subject ${p.subject} not sent after ${p.attempts} attempt(s): ${err.message}${where}`,
      { cause: err, details: { attempts: p.attempts, mayBeStoredBy: mayBeOn } },
    )
  }

  /** `body` is the SEND body of exactly `batch` when there is one (reused when all of it goes again). */
  private retryOrFail(
    lane: Lane,
    batch: Pending[],
    body: Buffer | undefined,
    err: QmqError,
    route: Route,
  ): void {
    const opts = this.opts as ProducerOptions
    const now = Date.now()
    const again: Pending[] = []
    const notSent = notSentFor(err)
    for (const p of batch) {
      if (notSent === undefined) p.attempts++
      if (!isRetriable(err) || p.attempts >= opts.maxAttempts || now >= p.deadline)
        this.fail(p, this.finalError(p, err, route.sticky), route.sticky)
      else again.push(p)
    }
    this.wakeIdle()
    if (again.length === 0) return
    if (this.metrics !== undefined) count(this.metrics, 'retried', lane, again)
    this.emitEvent('retry', {
      subject: lane.subject,
      messages: again.length,
      attempt: (again[0] as Pending).attempts + 1,
      code: err.code,
      error: err.message,
    })
    const againBody = body !== undefined && again.length === batch.length ? body : packBatch(again)
    const groups = this.rt?.routes.peek(lane.kind, lane.subject) ?? []
    if (route.sticky !== undefined) {
      // Back to the group that may hold it. After a timeout at once (the wait was the timeout), else
      // (a refusal) after a backoff. The route is asked for again meanwhile: a group the metaserver
      // dropped is then seen as unreachable.
      if (this.rt !== undefined && groups.length > 0)
        void this.rt.routes.refresh(lane.kind, lane.subject).catch(() => {})
      if (err.code === 'QMQ_ERR_TIMEOUT') this.dispatch(lane, again, againBody, route)
      else {
        const delay = backoffDelay(Math.min(10, (again[0] as Pending).attempts), {
          initialMs: 20,
          maxMs: 1_000,
        })
        this.park(lane, Math.max(delay, Math.min(notSent ?? 0, 1_000)), () =>
          this.dispatch(lane, again, againBody, route),
        )
      }
      return
    }
    const untried = groups.some((g) => !route.tried.has(g.name) && this.breaker(g.name, g.address).available)
    if (untried) {
      this.dispatch(lane, again, againBody, route)
      return
    }
    // Every group was tried: wait a little, ask for the route again, start a new round.
    const delay = backoffDelay(Math.min(10, (again[0] as Pending).attempts), { initialMs: 20, maxMs: 1_000 })
    if (this.rt !== undefined && groups.length > 0)
      void this.rt.routes.refresh(lane.kind, lane.subject).catch(() => {})
    this.park(lane, Math.max(delay, Math.min(notSent ?? 0, 1_000)), () =>
      this.dispatch(lane, again, againBody, { tried: new Set(), sticky: undefined }),
    )
  }

  /**
   * Runs `retry` after `delay`, or as soon as the lane's route changes (a failover routed its group
   * to a promoted master: the batch goes there at once, not at the end of a wait meant for the old one).
   */
  private park(lane: Lane, delay: number, retry: () => void): void {
    const key = RouteCache.key(lane.kind, lane.subject)
    let waiting = this.parked.get(key)
    if (waiting === undefined) {
      waiting = new Map()
      this.parked.set(key, waiting)
    }
    const set = waiting
    const timer = setTimeout(() => {
      set.delete(timer)
      retry()
    }, delay)
    set.set(timer, retry)
  }

  /** Sends the retries parked on a route now (it changed). */
  private unpark(key: string): void {
    const waiting = this.parked.get(key)
    if (waiting === undefined || waiting.size === 0) return
    const due = [...waiting]
    waiting.clear()
    for (const [timer, retry] of due) {
      clearTimeout(timer)
      retry()
    }
  }
}
