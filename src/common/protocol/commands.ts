import { SECRET_MAX_LENGTH } from '../config'
import { QmqError } from '../errors'
import { validateConsumerId, validateGroup, validateSubject } from '../names'
import {
  decodeRecord,
  MAX_ID_BYTES,
  MAX_TAG_BYTES,
  MAX_TAGS,
  type MessageRecord,
  MIN_RECORD_BYTES,
  type RecordHeader,
  type RecordLimits,
  readRecordHeader,
} from '../record'
import { PayloadReader, PayloadWriter } from './buffer'

/**
 * Payload codecs of the data-path requests. Pure: buffers in, objects out; no sockets, no timers.
 * Primitives (u8, u16, u32, u64, i64, str16, str32) are defined in buffer.ts. Every decoder checks
 * counts against the bytes left before building arrays, and consumes its payload exactly.
 */

// ---------------------------------------------------------------------------------------------
// Error response body (any request, status != 0)
//   str32 message
export function encodeErrorBody(message: string): Buffer {
  return new PayloadWriter(4 + message.length).str32(message).finish()
}

export function decodeErrorBody(body: Buffer): string {
  try {
    return new PayloadReader(body).str32('error message')
  } catch {
    return ''
  }
}

// ---------------------------------------------------------------------------------------------
// SEND request
//   u32 count
//   count x record                 message records back to back (record.ts), each self-delimited
// SEND response
//   u32 count                      equals the request's count
//   count x (u16 status, str16 message)   status 0 = stored (or already stored: dedupe), else an error status
export interface SendItem {
  /** The record's bytes (a view into the frame). Present when the record's framing was readable. */
  bytes: Buffer
  /** The routing header, when the record verified. */
  header?: RecordHeader
  /** Why this record cannot be stored (CRC mismatch, bad subject, ...). Other records still go on. */
  error?: QmqError
}

export function encodeSendRequest(records: readonly Buffer[]): Buffer[] {
  const head = Buffer.allocUnsafe(4)
  head.writeUInt32BE(records.length, 0)
  return [head, ...records]
}

/**
 * Splits a SEND body into records and verifies each. A record whose length field is unusable
 * makes the whole request malformed (the rest cannot be found); a record that is well delimited
 * but bad (CRC, limits) gets its own error and the others go on.
 */
export function decodeSendRequest(body: Buffer, limits: RecordLimits = {}): SendItem[] {
  const r = new PayloadReader(body)
  const count = r.count(r.u32('record count'), MIN_RECORD_BYTES, 'record')
  const items: SendItem[] = []
  for (let i = 0; i < count; i++) {
    if (r.remaining < 4) throw new QmqError('QMQ_ERR_PAYLOAD_MALFORMED', `record ${i} of ${count} is missing`)
    const length = body.readUInt32BE(r.offset)
    if (length < MIN_RECORD_BYTES || length > r.remaining) {
      throw new QmqError(
        'QMQ_ERR_PAYLOAD_MALFORMED',
        `record ${i} claims ${length} bytes; ${r.remaining} bytes are left (minimum ${MIN_RECORD_BYTES})`,
      )
    }
    const bytes = r.view(length, 'record')
    try {
      items.push({ bytes, header: readRecordHeader(bytes, 0, limits) })
    } catch (err) {
      items.push({
        bytes,
        error: err instanceof QmqError ? err : new QmqError('QMQ_ERR_RECORD_MALFORMED', String(err)),
      })
    }
  }
  r.done('SEND request')
  return items
}

export interface SendResult {
  status: number
  message: string
}

export function encodeSendResponse(results: readonly SendResult[]): Buffer {
  const w = new PayloadWriter(4 + results.length * 4)
  w.u32(results.length)
  for (const res of results) w.u16(res.status).str16(res.message)
  return w.finish()
}

export function decodeSendResponse(body: Buffer): SendResult[] {
  const r = new PayloadReader(body)
  const count = r.count(r.u32('result count'), 4, 'result')
  const out: SendResult[] = []
  for (let i = 0; i < count; i++) out.push({ status: r.u16('status'), message: r.str16('message') })
  r.done('SEND response')
  return out
}

// ---------------------------------------------------------------------------------------------
// PULL request
//   str16 subject
//   str16 group                    consumer group
//   str16 consumerId               for broadcast: the instance name that survives redeploys
//   u32   maxMessages              1..MAX_PULL_MESSAGES
//   u32   maxBytes                 soft cap on record bytes in the answer (at least one message is sent)
//   u32   timeoutMs                long-poll wait when nothing is ready; 0 = answer at once
//   u8    flags                    bit0 BROADCAST, bit1 AT_MOST_ONCE (acked on delivery), bit2 TAGS_ALL
//   u8    start                    where a NEW group starts: 0 LATEST, 1 EARLIEST, 2 TIMESTAMP
//   i64   startTime                ms since epoch, used when start = TIMESTAMP
//   u8    tagCount                 0..MAX_TAGS; with tags, only matching messages are delivered
//   tagCount x str16 tag           any-of, or all-of with TAGS_ALL
// PULL response
//   u32 count
//   count x (u64 sequence, u16 deliveryCount)   the subject's sequence on this broker; 1 on first delivery
//   count x record                              stored record bytes as they are, in the same order
export const PULL_FLAG_BROADCAST = 0x01
export const PULL_FLAG_AT_MOST_ONCE = 0x02
export const PULL_FLAG_TAGS_ALL = 0x04
export const MAX_PULL_MESSAGES = 10_000

export const StartPosition = { LATEST: 0, EARLIEST: 1, TIMESTAMP: 2 } as const
export type StartPositionValue = (typeof StartPosition)[keyof typeof StartPosition]

export interface PullRequest {
  subject: string
  group: string
  consumerId: string
  maxMessages: number
  maxBytes: number
  timeoutMs: number
  broadcast: boolean
  atMostOnce: boolean
  tagsAll: boolean
  start: StartPositionValue
  startTime: number
  tags: string[]
}

export function encodePullRequest(p: PullRequest): Buffer {
  const w = new PayloadWriter(128)
  w.str16(p.subject).str16(p.group).str16(p.consumerId)
  w.u32(p.maxMessages).u32(p.maxBytes).u32(p.timeoutMs)
  w.u8(
    (p.broadcast ? PULL_FLAG_BROADCAST : 0) |
      (p.atMostOnce ? PULL_FLAG_AT_MOST_ONCE : 0) |
      (p.tagsAll ? PULL_FLAG_TAGS_ALL : 0),
  )
  w.u8(p.start).i64(p.startTime)
  w.u8(p.tags.length)
  for (const t of p.tags) w.str16(t)
  return w.finish()
}

export function decodePullRequest(body: Buffer): PullRequest {
  const r = new PayloadReader(body)
  const subject = validateSubject(r.str16('subject'))
  const group = validateGroup(r.str16('group'))
  const consumerId = validateConsumerId(r.str16('consumerId'))
  const maxMessages = r.u32('maxMessages')
  if (maxMessages < 1 || maxMessages > MAX_PULL_MESSAGES) {
    throw new QmqError(
      'QMQ_ERR_INVALID_ARGUMENT',
      `maxMessages must be 1 to ${MAX_PULL_MESSAGES} (got ${maxMessages})`,
    )
  }
  const maxBytes = r.u32('maxBytes')
  const timeoutMs = r.u32('timeoutMs')
  const flags = r.u8('flags')
  if ((flags & ~(PULL_FLAG_BROADCAST | PULL_FLAG_AT_MOST_ONCE | PULL_FLAG_TAGS_ALL)) !== 0) {
    throw new QmqError('QMQ_ERR_PAYLOAD_MALFORMED', `unknown PULL flags 0x${flags.toString(16)}`)
  }
  const start = r.u8('start')
  if (start > 2) throw new QmqError('QMQ_ERR_INVALID_ARGUMENT', `unknown start position ${start}`)
  const startTime = r.i64('startTime')
  const tagCount = r.u8('tag count')
  if (tagCount > MAX_TAGS)
    throw new QmqError('QMQ_ERR_TOO_MANY_TAGS', `${tagCount} tag filters; the maximum is ${MAX_TAGS}`)
  const tags: string[] = []
  for (let i = 0; i < tagCount; i++) {
    const tag = r.str16('tag')
    if (tag.length === 0 || Buffer.byteLength(tag) > MAX_TAG_BYTES) {
      throw new QmqError('QMQ_ERR_TAG_INVALID', `tag filter must be 1 to ${MAX_TAG_BYTES} bytes`)
    }
    tags.push(tag)
  }
  r.done('PULL request')
  return {
    subject,
    group,
    consumerId,
    maxMessages,
    maxBytes,
    timeoutMs,
    broadcast: (flags & PULL_FLAG_BROADCAST) !== 0,
    atMostOnce: (flags & PULL_FLAG_AT_MOST_ONCE) !== 0,
    tagsAll: (flags & PULL_FLAG_TAGS_ALL) !== 0,
    start: start as StartPositionValue,
    startTime,
    tags,
  }
}

export interface PullEntry {
  sequence: number
  deliveryCount: number
  /** Stored record bytes, sent as they are. */
  record: Buffer
}

const PULL_ENTRY_BYTES = 10

/**
 * The answer as a list of buffers for writev: [count + entry table, records...]. Records that sit
 * back to back in one piece of memory (a batch read from the log or copied out of the hot cache)
 * go out as one view: a socket write per record cost more than the bytes (an object and an iovec
 * each, 128 per pull).
 */
export function encodePullResponse(entries: readonly PullEntry[]): Buffer[] {
  const table = Buffer.allocUnsafe(4 + entries.length * PULL_ENTRY_BYTES)
  table.writeUInt32BE(entries.length, 0)
  let o = 4
  for (const e of entries) {
    table.writeUInt32BE(Math.floor(e.sequence / 0x1_0000_0000), o)
    table.writeUInt32BE(e.sequence >>> 0, o + 4)
    table.writeUInt16BE(Math.min(e.deliveryCount, 0xffff), o + 8)
    o += PULL_ENTRY_BYTES
  }
  const parts: Buffer[] = [table]
  let run: Buffer | undefined // the first record of the current run of adjacent ones
  let runEnd = 0 // byte offset (in run's ArrayBuffer) just past the run
  for (const e of entries) {
    const r = e.record
    if (run !== undefined && r.buffer === run.buffer && r.byteOffset === runEnd) {
      runEnd += r.length
      continue
    }
    if (run !== undefined) parts.push(joined(run, runEnd))
    run = r
    runEnd = r.byteOffset + r.length
  }
  if (run !== undefined) parts.push(joined(run, runEnd))
  return parts
}

/** The view from `first`'s start to byte offset `end` of its ArrayBuffer (first itself when alone). */
function joined(first: Buffer, end: number): Buffer {
  return end === first.byteOffset + first.length
    ? first
    : Buffer.from(first.buffer, first.byteOffset, end - first.byteOffset)
}

export interface PulledMessage {
  sequence: number
  deliveryCount: number
  record: MessageRecord
}

/** Decodes a PULL answer; every record's CRC is verified (end-to-end integrity). */
export function decodePullResponse(body: Buffer, limits: RecordLimits = {}): PulledMessage[] {
  const r = new PayloadReader(body)
  const count = r.count(r.u32('message count'), PULL_ENTRY_BYTES + MIN_RECORD_BYTES, 'message')
  const heads: { sequence: number; deliveryCount: number }[] = []
  for (let i = 0; i < count; i++)
    heads.push({ sequence: r.u64('sequence'), deliveryCount: r.u16('deliveryCount') })
  const out: PulledMessage[] = []
  for (const h of heads) {
    if (r.remaining < 4) throw new QmqError('QMQ_ERR_PAYLOAD_MALFORMED', 'PULL answer ends before a record')
    const length = body.readUInt32BE(r.offset)
    const bytes = r.view(length, 'record')
    out.push({ sequence: h.sequence, deliveryCount: h.deliveryCount, record: decodeRecord(bytes, 0, limits) })
  }
  r.done('PULL response')
  return out
}

// ---------------------------------------------------------------------------------------------
// ACK request
//   str16 subject, str16 group, str16 consumerId
//   u8    flags                    bit0 BROADCAST
//   u32   count
//   count x u64 sequence           any order; sequences not held by this consumer are ignored
// ACK response
//   u32   acked                    how many of them were held and are now acked
// NACK request
//   str16 subject, str16 group, str16 consumerId
//   u8    flags                    bit0 BROADCAST, bit1 DEAD_LETTER (skip retries: dead-letter now)
//   u32   retryAfterMs             0 = the broker's exponential backoff
//   u32   count
//   count x u64 sequence
// NACK response
//   u32   nacked
export const ACK_FLAG_BROADCAST = 0x01
export const NACK_FLAG_DEAD_LETTER = 0x02

export interface AckRequest {
  subject: string
  group: string
  consumerId: string
  broadcast: boolean
  sequences: number[]
}

export interface NackRequest extends AckRequest {
  deadLetter: boolean
  retryAfterMs: number
}

function writeAckHead(w: PayloadWriter, a: AckRequest, flags: number): void {
  w.str16(a.subject)
    .str16(a.group)
    .str16(a.consumerId)
    .u8(flags | (a.broadcast ? ACK_FLAG_BROADCAST : 0))
}

function writeSequences(w: PayloadWriter, sequences: readonly number[]): void {
  w.u32(sequences.length)
  for (const s of sequences) w.u64(s)
}

function readSequences(r: PayloadReader): number[] {
  const count = r.count(r.u32('sequence count'), 8, 'sequence')
  const out: number[] = []
  for (let i = 0; i < count; i++) out.push(r.u64('sequence'))
  return out
}

export function encodeAckRequest(a: AckRequest): Buffer {
  const w = new PayloadWriter(64 + a.sequences.length * 8)
  writeAckHead(w, a, 0)
  writeSequences(w, a.sequences)
  return w.finish()
}

export function decodeAckRequest(body: Buffer): AckRequest {
  const r = new PayloadReader(body)
  const subject = validateSubject(r.str16('subject'))
  const group = validateGroup(r.str16('group'))
  const consumerId = validateConsumerId(r.str16('consumerId'))
  const flags = r.u8('flags')
  if ((flags & ~ACK_FLAG_BROADCAST) !== 0)
    throw new QmqError('QMQ_ERR_PAYLOAD_MALFORMED', `unknown ACK flags 0x${flags.toString(16)}`)
  const sequences = readSequences(r)
  r.done('ACK request')
  return { subject, group, consumerId, broadcast: (flags & ACK_FLAG_BROADCAST) !== 0, sequences }
}

export function encodeNackRequest(n: NackRequest): Buffer {
  const w = new PayloadWriter(64 + n.sequences.length * 8)
  writeAckHead(w, n, n.deadLetter ? NACK_FLAG_DEAD_LETTER : 0)
  w.u32(n.retryAfterMs)
  writeSequences(w, n.sequences)
  return w.finish()
}

export function decodeNackRequest(body: Buffer): NackRequest {
  const r = new PayloadReader(body)
  const subject = validateSubject(r.str16('subject'))
  const group = validateGroup(r.str16('group'))
  const consumerId = validateConsumerId(r.str16('consumerId'))
  const flags = r.u8('flags')
  if ((flags & ~(ACK_FLAG_BROADCAST | NACK_FLAG_DEAD_LETTER)) !== 0) {
    throw new QmqError('QMQ_ERR_PAYLOAD_MALFORMED', `unknown NACK flags 0x${flags.toString(16)}`)
  }
  const retryAfterMs = r.u32('retryAfterMs')
  const sequences = readSequences(r)
  r.done('NACK request')
  return {
    subject,
    group,
    consumerId,
    broadcast: (flags & ACK_FLAG_BROADCAST) !== 0,
    deadLetter: (flags & NACK_FLAG_DEAD_LETTER) !== 0,
    retryAfterMs,
    sequences,
  }
}

/** ACK and NACK answers: u32 count. */
export function encodeCountResponse(count: number): Buffer {
  return new PayloadWriter(4).u32(count).finish()
}

export function decodeCountResponse(body: Buffer): number {
  const r = new PayloadReader(body)
  const n = r.u32('count')
  r.done('count response')
  return n
}

// ---------------------------------------------------------------------------------------------
// HEARTBEAT request: the consumer is alive, and extends the leases of the messages it still holds.
//   str16 consumerId
//   u16   count
//   count x subscription
//     str16 subject
//     str16 group
//     u8    flags                  bit0 BROADCAST, bit1 HELD (the held list follows)
//     [HELD] u32 n, n x u64 sequence
//                                  exactly the messages of this (subject, group) on this broker that
//                                  the consumer still holds (handlers running, buffered, returned by
//                                  pull() and not settled): their lease deadlines move to now + leaseMs.
//                                  Without HELD (clients before per-message leases) every message the
//                                  consumer holds in the group is extended.
// HEARTBEAT response
//   u32   extended                 messages whose lease was extended
//   u32   leaseMs                  the broker's lease; the client heartbeats well within it
//   (brokers before per-message leases answer with an empty body)
export const HEARTBEAT_FLAG_BROADCAST = 0x01
export const HEARTBEAT_FLAG_HELD = 0x02

export interface HeartbeatSubscription {
  subject: string
  group: string
  broadcast: boolean
  /** The held messages to extend (HELD flag); undefined = not listed (extend all, old clients). */
  sequences?: number[] | undefined
}

export interface HeartbeatRequest {
  consumerId: string
  subscriptions: HeartbeatSubscription[]
}

export interface HeartbeatResponse {
  extended: number
  /** 0 when the broker did not say (an empty answer). */
  leaseMs: number
}

export function encodeHeartbeatRequest(h: HeartbeatRequest): Buffer {
  let n = 0
  for (const s of h.subscriptions) n += s.sequences?.length ?? 0
  const w = new PayloadWriter(64 + n * 8)
  w.str16(h.consumerId).u16(h.subscriptions.length)
  for (const s of h.subscriptions) {
    const held = s.sequences !== undefined
    w.str16(s.subject)
      .str16(s.group)
      .u8((s.broadcast ? HEARTBEAT_FLAG_BROADCAST : 0) | (held ? HEARTBEAT_FLAG_HELD : 0))
    if (s.sequences !== undefined) writeSequences(w, s.sequences)
  }
  return w.finish()
}

export function decodeHeartbeatRequest(body: Buffer): HeartbeatRequest {
  const r = new PayloadReader(body)
  const consumerId = validateConsumerId(r.str16('consumerId'))
  const count = r.count(r.u16('subscription count'), 5, 'subscription')
  const subscriptions: HeartbeatSubscription[] = []
  for (let i = 0; i < count; i++) {
    const subject = validateSubject(r.str16('subject'))
    const group = validateGroup(r.str16('group'))
    const flags = r.u8('flags')
    if ((flags & ~(HEARTBEAT_FLAG_BROADCAST | HEARTBEAT_FLAG_HELD)) !== 0) {
      throw new QmqError('QMQ_ERR_PAYLOAD_MALFORMED', `unknown HEARTBEAT flags 0x${flags.toString(16)}`)
    }
    const sub: HeartbeatSubscription = {
      subject,
      group,
      broadcast: (flags & HEARTBEAT_FLAG_BROADCAST) !== 0,
    }
    if (flags & HEARTBEAT_FLAG_HELD) sub.sequences = readSequences(r)
    subscriptions.push(sub)
  }
  r.done('HEARTBEAT request')
  return { consumerId, subscriptions }
}

export function encodeHeartbeatResponse(res: HeartbeatResponse): Buffer {
  return new PayloadWriter(8).u32(res.extended).u32(res.leaseMs).finish()
}

export function decodeHeartbeatResponse(body: Buffer): HeartbeatResponse {
  if (body.length === 0) return { extended: 0, leaseMs: 0 }
  const r = new PayloadReader(body)
  const extended = r.u32('extended')
  const leaseMs = r.u32('leaseMs')
  r.done('HEARTBEAT response')
  return { extended, leaseMs }
}

// ---------------------------------------------------------------------------------------------
// Token field of the delay server's authenticated requests (CANCEL, ADMIN_DELAY_DLQ_LIST,
// ADMIN_DELAY_DLQ_REDRIVE): their first field, so a server reads it (and refuses a wrong one) before
// decoding the rest.
//   str16 token                    the cluster secret ('' = none); at most MAX_TOKEN_BYTES bytes
// Interim: the data-path authentication of issue 18 (application credentials) replaces it.
export const MAX_TOKEN_BYTES = SECRET_MAX_LENGTH

export function writeToken(w: PayloadWriter, token: string | undefined): PayloadWriter {
  const t = token ?? ''
  if (Buffer.byteLength(t, 'utf8') > MAX_TOKEN_BYTES)
    throw new QmqError('QMQ_ERR_INVALID_ARGUMENT', `a token is at most ${MAX_TOKEN_BYTES} bytes`)
  return w.str16(t)
}

/** Reads the token field; its length is checked against MAX_TOKEN_BYTES before its bytes are read. */
export function readToken(r: PayloadReader): string {
  const at = r.offset
  const len = r.u16('token length')
  if (len > MAX_TOKEN_BYTES)
    throw new QmqError('QMQ_ERR_PAYLOAD_MALFORMED', `token of ${len} bytes (at most ${MAX_TOKEN_BYTES})`)
  r.offset = at
  return r.str16('token')
}

/** The token of an authenticated delay-server request, read alone (the rest is not decoded). */
export function decodeRequestToken(body: Buffer): string {
  return readToken(new PayloadReader(body))
}

// ---------------------------------------------------------------------------------------------
// CANCEL request (delay server)
//   str16 token                    the cluster secret (token field above)
//   u32 count
//   count x str16 messageId
// CANCEL response
//   u32 count
//   count x u8 cancelled            1 = was pending and is now cancelled; 0 = unknown or already dispatched
export interface CancelRequest {
  token: string
  ids: string[]
}

export function encodeCancelRequest(ids: readonly string[], token?: string): Buffer {
  const w = new PayloadWriter(8 + ids.length * 32 + (token?.length ?? 0))
  writeToken(w, token).u32(ids.length)
  for (const id of ids) w.str16(id)
  return w.finish()
}

export function decodeCancelRequest(body: Buffer): CancelRequest {
  const r = new PayloadReader(body)
  const token = readToken(r)
  const count = r.count(r.u32('id count'), 3, 'message id')
  const ids: string[] = []
  for (let i = 0; i < count; i++) {
    const id = r.str16('message id')
    if (id.length === 0 || Buffer.byteLength(id) > MAX_ID_BYTES) {
      throw new QmqError('QMQ_ERR_MESSAGE_ID_INVALID', `message id must be 1 to ${MAX_ID_BYTES} bytes`)
    }
    ids.push(id)
  }
  r.done('CANCEL request')
  return { token, ids }
}

export function encodeCancelResponse(cancelled: readonly boolean[]): Buffer {
  const w = new PayloadWriter(4 + cancelled.length)
  w.u32(cancelled.length)
  for (const c of cancelled) w.u8(c ? 1 : 0)
  return w.finish()
}

export function decodeCancelResponse(body: Buffer): boolean[] {
  const r = new PayloadReader(body)
  const count = r.count(r.u32('count'), 1, 'result')
  const out: boolean[] = []
  for (let i = 0; i < count; i++) out.push(r.u8('cancelled') === 1)
  r.done('CANCEL response')
  return out
}
