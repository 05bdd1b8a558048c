import { QmqError, toQmqError } from '../../common/errors'
import type { Logger } from '../../common/logger'
import { validateSubject } from '../../common/names'
import { RequestCode, requestCodeName } from '../../common/protocol/codes'
import {
  decodeAckRequest,
  decodeHeartbeatRequest,
  decodeNackRequest,
  decodePullRequest,
  decodeRequestToken,
  encodeCountResponse,
  encodeHeartbeatResponse,
  encodePullResponse,
  encodeSendResponse,
  type SendResult,
} from '../../common/protocol/commands'
import type { Frame } from '../../common/protocol/frame'
import {
  decodeFetchRequest,
  encodeCheckpointResponse,
  encodeFetchResponse,
} from '../../common/protocol/replication'
import { tokenMatches } from '../../common/token'
import type { ReplicationSource } from '../replication/source'
import { storedUnconfirmed } from '../replication/ack-waiters'
import { ReadHold } from '../store/read-pool'
import type { AppendInput, AppendResult, MessageStore, PullOptions, StoredMessage } from '../store/types'
import { handleAdmin } from './admin-handlers'
import type { Connection, ResponseBody } from './connection'
import type { LongPollRegistry } from './long-poll'
import type { BrokerMetrics } from './metrics'
import { decodeSend } from './send-decoder'
import type { AuthGate } from '../../common/server/auth-gate'

/** What request handlers need from the broker; one per Broker instance. */
export interface ServerContext {
  store: MessageStore
  metrics: BrokerMetrics
  polls: LongPollRegistry
  log: Logger
  limits: {
    maxMessageBytes: number
    /** Server cap on a PULL's maxBytes (0 in a request = this cap). */
    maxPullBytes: number
    /** Server cap on a PULL's long-poll wait. */
    maxPollMs: number
  }
  /** Producer writes refused (metaserver read-only marks): every subject, or some. */
  readOnly: { all: boolean; subjects: ReadonlySet<string> }
  /** True while the broker is closing: new work is refused with QMQ_ERR_SHUTTING_DOWN. */
  isClosing: () => boolean
  /** Plain counters for the metaserver's load report. */
  stats: { received: number }
  /** The token admin writes must carry (UTF-8); undefined = not checked. */
  adminToken: Buffer | undefined
  /** The broker group's name (reported in ADMIN_QUERY answers). */
  group: string
  /** Application authentication and permissions (`auth` on); undefined = open port. */
  auth: AuthGate | undefined
  /** Master side of replication (slaves' fetches, `sync` acknowledgements). */
  replication: ReplicationSource | undefined
  /** Throws QMQ_ERR_NOT_MASTER when a replicated master's metaserver lease ran out (fencing). */
  checkLease: () => void
  /** The cluster secret slaves authenticate with (UTF-8); undefined = replication refused. */
  clusterSecret: Buffer | undefined
}

const EMPTY: readonly Buffer[] = []
const STORED: SendResult = { status: 0, message: '' }
const DUPLICATE: SendResult = { status: 0, message: 'duplicate' }

export function createFrameHandler(
  ctx: ServerContext,
): (frame: Frame, conn: Connection) => Promise<ResponseBody> {
  // Not an async function: one then() per request instead of an async frame and its await.
  return (frame, conn) => {
    const started = performance.now()
    let answer: Promise<ResponseBody>
    try {
      answer = route(ctx, frame, conn)
    } catch (err) {
      answer = Promise.reject(err)
    }
    return answer.then(
      (body) => {
        countRequest(ctx, frame.code, 0, started)
        return body
      },
      (err: unknown) => {
        const qerr = toQmqError(err)
        ctx.metrics.protocolErrors.inc({ code: qerr.code })
        countRequest(ctx, frame.code, qerr.status, started)
        throw qerr
      },
    )
  }
}

function countRequest(ctx: ServerContext, code: number, status: number, started: number): void {
  const labels = requestLabels(code)
  const request = labels.seconds.request
  ctx.metrics.requests.inc(status === 0 ? labels.ok : { request, status: String(status) })
  ctx.metrics.requestSeconds.observe(labels.seconds, (performance.now() - started) / 1000)
}

interface RequestLabels {
  /** The request-seconds histogram's labels. */
  seconds: { request: string }
  /** The requests counter's labels when answered with status 0. */
  ok: { request: string; status: string }
}

/** Label objects per request code (and one for every unknown code), made once, not per request. */
const requestLabelsByCode = new Map<number, RequestLabels>()

function requestLabels(code: number): RequestLabels {
  const known = requestCodeName(code) === undefined ? -1 : code
  let labels = requestLabelsByCode.get(known)
  if (labels === undefined) {
    const request = requestCodeName(code) ?? 'UNKNOWN'
    labels = { seconds: { request }, ok: { request, status: '0' } }
    requestLabelsByCode.set(known, labels)
  }
  return labels
}

function route(ctx: ServerContext, frame: Frame, conn: Connection): Promise<ResponseBody> {
  switch (frame.code) {
    case RequestCode.PING:
      return Promise.resolve(EMPTY)
    case RequestCode.AUTH:
      // Reached only with auth off (the AuthGate answers it otherwise): accepted and ignored, so a
      // client configured with a token talks to any broker.
      return Promise.resolve(EMPTY)
    case RequestCode.SEND:
      return handleSend(ctx, frame.body, conn)
    case RequestCode.PULL:
      return handlePull(ctx, frame, conn)
    case RequestCode.ACK:
      return handleAck(ctx, frame.body, conn)
    case RequestCode.NACK:
      return handleNack(ctx, frame.body, conn)
    case RequestCode.HEARTBEAT:
      return handleHeartbeat(ctx, frame.body, conn)
    case RequestCode.REPL_FETCH:
    case RequestCode.REPL_CHECKPOINT:
      return handleReplication(ctx, frame, conn)
    case RequestCode.ADMIN_BACKLOG:
    case RequestCode.ADMIN_RESET_CURSOR:
    case RequestCode.ADMIN_DLQ_LIST:
    case RequestCode.ADMIN_DLQ_REDRIVE:
    case RequestCode.ADMIN_SUBJECTS:
    case RequestCode.ADMIN_FORGET_GROUP:
    case RequestCode.ADMIN_QUERY:
      return handleAdmin(ctx, frame.code, frame.body, conn)
    default: {
      const known = requestCodeName(frame.code)
      throw new QmqError(
        'QMQ_ERR_UNKNOWN_REQUEST',
        known === undefined
          ? `unknown request code ${frame.code}`
          : `request ${known} (${frame.code}) is not served by a broker`,
      )
    }
  }
}

// SEND: every record is checked on its own (framing, CRC, subject name, read-only marks); the good
// ones are appended together and answered once the store made them durable. A store failure (disk
// full, I/O) gives every good record of the batch that retriable status: nothing of it was stored.
// Per record this allocates the record's view, its routing header and the store's input (send-decoder.ts); the answer of
// a batch whose records were all stored is written without a result object per record.
async function handleSend(ctx: ServerContext, body: Buffer, conn: Connection): Promise<ResponseBody> {
  if (ctx.isClosing()) throw new QmqError('QMQ_ERR_SHUTTING_DOWN')
  const {
    count,
    inputs: decoded,
    errors: decodeErrors,
  } = decodeSend(body, {
    maxMessageBytes: ctx.limits.maxMessageBytes,
  })
  let errors = decodeErrors
  let inputs = decoded
  // A SEND usually carries one subject (one shared string): validate each distinct name once.
  let checked: string | undefined
  let refused = false
  for (let j = 0; j < inputs.length; j++) {
    const subject = (inputs[j] as AppendInput).header.subject
    if (subject === checked) continue
    checked = subject
    if (!subjectOk(ctx, subject, conn)) {
      refused = true
      break
    }
  }
  if (refused) {
    // Rare: some records name an invalid or read-only subject. Sort them out one by one.
    if (errors === undefined) errors = new Array(count)
    const kept: AppendInput[] = []
    let j = 0
    // One check (and one refusal logged) per run of a subject, not per record.
    let lastSubject: string | undefined
    let lastErr: QmqError | undefined
    for (let i = 0; i < count; i++) {
      if (errors[i] !== undefined) continue
      const input = inputs[j++] as AppendInput
      if (input.header.subject !== lastSubject) {
        lastSubject = input.header.subject
        lastErr = subjectError(ctx, lastSubject, conn)
      }
      const err = lastErr
      if (err === undefined) kept.push(input)
      else errors[i] = err
    }
    inputs = kept
  }
  if (errors !== undefined) {
    for (const e of errors) if (e !== undefined) ctx.metrics.rejected.inc({ code: e.code })
  }
  let stored: AppendResult[] = []
  let storeError: QmqError | undefined
  if (inputs.length > 0) {
    const started = performance.now()
    try {
      // Under 'sync' replication: refused without an in-sync slave, answered once one holds it.
      ctx.checkLease()
      ctx.replication?.checkWritable()
      stored = await ctx.store.append(inputs)
      try {
        // Its own records' end: later SENDs' records (written meanwhile) are not waited for.
        if (ctx.replication !== undefined) await ctx.replication.waitReplicated(storedEnd(stored))
        // Acknowledged only under a valid lease: never while a slave may have been promoted.
        ctx.checkLease()
      } catch (e) {
        // Stored, outcome uncertain: never NOT_MASTER here (that answer lets the SDK move the batch).
        throw storedUnconfirmed(e)
      }
      ctx.metrics.appendSeconds.observe((performance.now() - started) / 1000)
      countReceived(ctx, inputs, stored)
    } catch (e) {
      storeError = toQmqError(e, 'QMQ_ERR_STORE_IO')
      if (storeError.code === 'QMQ_ERR_INTERNAL' || storeError.code === 'QMQ_ERR_STORE_IO')
        ctx.log.error(storeError, 'append failed')
      ctx.metrics.rejected.inc({ code: storeError.code }, inputs.length)
    }
  }
  if (errors === undefined && storeError === undefined) return encodeStored(stored)
  const results: SendResult[] = new Array(count)
  let j = 0
  for (let i = 0; i < count; i++) {
    const e = errors?.[i]
    if (e !== undefined) results[i] = { status: e.status, message: e.message }
    else if (storeError !== undefined) results[i] = { status: storeError.status, message: storeError.message }
    else results[i] = stored[j++]?.duplicate ? DUPLICATE : STORED
  }
  return encodeSendResponse(results)
}

function subjectOk(ctx: ServerContext, subject: string, conn: Connection): boolean {
  if (ctx.auth !== undefined && !ctx.auth.cache.mayProduce(conn.principal ?? NOBODY, subject)) return false
  return subjectError(ctx, subject, conn) === undefined
}

const NOBODY = { appCode: '', cluster: false, tokenHash: '' }

function subjectError(ctx: ServerContext, subject: string, conn: Connection): QmqError | undefined {
  try {
    validateSubject(subject)
  } catch (e) {
    return toQmqError(e, 'QMQ_ERR_SUBJECT_INVALID')
  }
  // Permission per record (other records of the request still go on); counted and logged.
  const denied = ctx.auth?.produceError(conn, 'SEND', subject)
  if (denied !== undefined) return denied
  if (ctx.readOnly.all || ctx.readOnly.subjects.has(subject))
    return new QmqError('QMQ_ERR_READ_ONLY', `this broker group is read-only for ${subject}`)
  return undefined
}

/** Counters per run of one subject (a labelled inc costs a label hash: once per run, not per record). */
/** The message-log offset a slave must hold for every record of a SEND (AppendResult.end). */
function storedEnd(stored: readonly AppendResult[]): number {
  let end = 0
  for (const r of stored) if (r.end > end) end = r.end
  return end
}

function countReceived(ctx: ServerContext, inputs: readonly AppendInput[], stored: readonly AppendResult[]) {
  let runSubject = ''
  let runMessages = 0
  let runBytes = 0
  let runDuplicates = 0
  for (let j = 0; j <= inputs.length; j++) {
    const input = inputs[j]
    const subject = input === undefined ? '' : input.header.subject
    if (subject !== runSubject || input === undefined) {
      if (runMessages > 0) {
        ctx.metrics.received.inc({ subject: runSubject }, runMessages)
        ctx.metrics.receivedBytes.inc({ subject: runSubject }, runBytes)
        ctx.stats.received += runMessages
      }
      if (runDuplicates > 0) ctx.metrics.duplicates.inc({ subject: runSubject }, runDuplicates)
      if (input === undefined) break
      runSubject = subject
      runMessages = 0
      runBytes = 0
      runDuplicates = 0
    }
    if (stored[j]?.duplicate) runDuplicates++
    else {
      runMessages++
      runBytes += input.bytes.length
    }
  }
}

// SEND response (commands.ts): u32 count, then per record u16 status + str16 message. Every record
// stored: status 0 and '' (4 zero bytes), or 0 and 'duplicate'.
const DUPLICATE_ENTRY = Buffer.from([0, 0, 0, 9, ...Buffer.from('duplicate')])

function encodeStored(stored: readonly AppendResult[]): Buffer {
  let duplicates = 0
  for (let i = 0; i < stored.length; i++) if ((stored[i] as AppendResult).duplicate) duplicates++
  const out = Buffer.alloc(4 + stored.length * 4 + duplicates * (DUPLICATE_ENTRY.length - 4))
  out.writeUInt32BE(stored.length, 0)
  if (duplicates === 0) return out
  let o = 4
  for (let i = 0; i < stored.length; i++) {
    if ((stored[i] as AppendResult).duplicate) o += DUPLICATE_ENTRY.copy(out, o)
    else o += 4
  }
  return out
}

// REPL_FETCH / REPL_CHECKPOINT (common/protocol/replication.ts): the cluster secret comes first and
// is checked before anything else is decoded.
async function handleReplication(ctx: ServerContext, frame: Frame, conn: Connection): Promise<ResponseBody> {
  const token = decodeRequestToken(frame.body)
  if (ctx.clusterSecret === undefined || !tokenMatches(token, ctx.clusterSecret))
    throw new QmqError('QMQ_ERR_UNAUTHORIZED', 'replication needs the cluster secret')
  const source = ctx.replication
  if (source === undefined) throw new QmqError('QMQ_ERR_NOT_MASTER', 'this broker serves no slaves')
  if (frame.code === RequestCode.REPL_CHECKPOINT) return encodeCheckpointResponse(source.checkpoint())
  // The data may be a read-pool buffer: it goes back once the answer is written.
  const hold = new ReadHold()
  conn.afterWrite(frame, () => hold.release())
  return encodeFetchResponse(await source.fetch(decodeFetchRequest(frame.body), hold))
}

async function handlePull(ctx: ServerContext, frame: Frame, conn: Connection): Promise<ResponseBody> {
  const req = decodePullRequest(frame.body)
  ctx.auth?.consume(conn, 'PULL', req.subject, req.group)
  // The records may view read-pool buffers (store/read-pool.ts): they go back once the socket is done
  // with the answer, or at once when it is not written (an error answer, a closed connection).
  const hold = new ReadHold()
  conn.afterWrite(frame, () => hold.release())
  // A long-poll attempt that hands out nothing gives back what it read at once (its wait may be long).
  const pullHeld = async (o: PullOptions): Promise<StoredMessage[]> => {
    const got = await ctx.store.pull(o)
    if (got.length === 0) hold.release()
    return got
  }
  const maxBytes =
    req.maxBytes === 0 ? ctx.limits.maxPullBytes : Math.min(req.maxBytes, ctx.limits.maxPullBytes)
  const timeoutMs = Math.min(req.timeoutMs, ctx.limits.maxPollMs)
  const options: PullOptions = {
    subject: req.subject,
    group: req.group,
    consumerId: req.consumerId,
    maxMessages: req.maxMessages,
    maxBytes,
    broadcast: req.broadcast,
    atMostOnce: req.atMostOnce,
    tags: req.tags,
    tagsAll: req.tagsAll,
    start: req.start,
    startTime: req.startTime,
    resumeHeld: !conn.markPulled(req.subject, req.group, req.consumerId),
    hold,
  }
  const epochBefore = ctx.polls.epoch(req.subject)
  // Write high-water: store reads run under an answer-room reservation of the largest answer they can
  // make (maxBytes, or one message when that is larger), so a connection's unsent answers stay within
  // writeHighWaterBytes plus one answer (common/server/connection.ts). A long-poll waiter whose
  // connection has no room is skipped, and its subject woken again once room opens.
  const answerBytes = Math.max(maxBytes, ctx.limits.maxMessageBytes)
  const onRoom = () => ctx.polls.notify(req.subject)
  let messages = await conn.withAnswerRoom(frame, answerBytes, () =>
    // Closed while waiting for room: hand nothing out to a connection that cannot get it.
    conn.isClosed ? Promise.resolve([]) : pullHeld(options),
  )
  if (messages.length === 0 && timeoutMs > 0 && !ctx.isClosing() && !conn.isClosed) {
    const again: PullOptions = { ...options, resumeHeld: false }
    // Consumers that see the subject the same way share a view: one empty pull stands for all of them.
    const viewKey = [
      req.group,
      req.broadcast ? req.consumerId : '',
      req.tagsAll ? 'all' : 'any',
      ...[...req.tags].sort(),
    ].join('\u0000')
    messages = await ctx.polls.wait({
      subject: req.subject,
      viewKey,
      timeoutMs,
      epochBefore,
      attempt: () => conn.withAnswerRoom(frame, answerBytes, () => pullHeld(again)),
      isAlive: () => !conn.isClosed,
      isReady: () => conn.hasAnswerRoom(answerBytes, onRoom),
    })
  }
  if (messages.length > 0 && conn.isClosed && !req.broadcast && !req.atMostOnce) {
    // The answer has nowhere to go (the connection closed while the pull ran; a half-closed one is
    // still answered): hand its messages back now rather than after their lease.
    ctx.store.release(
      req.subject,
      req.group,
      req.consumerId,
      messages.map((m) => m.sequence),
    )
    return EMPTY
  }
  countPulled(ctx, req.subject, req.group, messages)
  return encodePullResponse(messages)
}

function countPulled(ctx: ServerContext, subject: string, group: string, messages: StoredMessage[]): void {
  if (messages.length === 0) return
  let bytes = 0
  let redelivered = 0
  for (const m of messages) {
    bytes += m.record.length
    if (m.deliveryCount > 1) redelivered++
  }
  const labels = { subject, consumer_group: group }
  ctx.metrics.pulled.inc(labels, messages.length)
  ctx.metrics.pulledBytes.inc(labels, bytes)
  if (redelivered > 0) ctx.metrics.redelivered.inc(labels, redelivered)
}

// Not async (one per ACK): route() runs it inside the frame handler's try, so a throw is its answer.
function handleAck(ctx: ServerContext, body: Buffer, conn: Connection): Promise<ResponseBody> {
  const req = decodeAckRequest(body)
  ctx.auth?.consume(conn, 'ACK', req.subject, req.group)
  return ctx.store.ack(req.subject, req.group, req.consumerId, req.sequences, req.broadcast).then((n) => {
    if (n > 0) ctx.metrics.acked.inc({ subject: req.subject, consumer_group: req.group }, n)
    return encodeCountResponse(n)
  })
}

async function handleNack(ctx: ServerContext, body: Buffer, conn: Connection): Promise<ResponseBody> {
  const req = decodeNackRequest(body)
  ctx.auth?.consume(conn, 'NACK', req.subject, req.group)
  const n = await ctx.store.nack(req.subject, req.group, req.consumerId, req.sequences, {
    retryAfterMs: req.retryAfterMs > 0 ? req.retryAfterMs : undefined,
    deadLetter: req.deadLetter,
  })
  if (n > 0) {
    const labels = { subject: req.subject, consumer_group: req.group }
    ctx.metrics.nacked.inc(labels, n)
    if (req.deadLetter) ctx.metrics.deadLetteredByNack.inc(labels, n)
  }
  return encodeCountResponse(n)
}

async function handleHeartbeat(ctx: ServerContext, body: Buffer, conn: Connection): Promise<ResponseBody> {
  const req = decodeHeartbeatRequest(body)
  if (ctx.auth !== undefined)
    for (const s of req.subscriptions) ctx.auth.consume(conn, 'HEARTBEAT', s.subject, s.group)
  const res = ctx.store.heartbeat(
    req.consumerId,
    req.subscriptions.map((s) => ({ subject: s.subject, group: s.group, sequences: s.sequences })),
  )
  return encodeHeartbeatResponse(res)
}
