import { QmqError } from '../errors'
import { validateGroup, validateSubject } from '../names'
import { decodeRecord, MIN_RECORD_BYTES, type MessageRecord, type RecordLimits } from '../record'
import { PayloadReader, PayloadWriter } from './buffer'

/**
 * Payload codecs of the broker's admin requests (codes 20-29, see codes.ts). Pure, like commands.ts:
 * the broker server decodes requests and encodes answers, the CLI (and tests) do the reverse.
 * Primitives (u8, u16, u32, u64, i64, str16) are defined in buffer.ts.
 */

// ---------------------------------------------------------------------------------------------
// ADMIN_SUBJECTS request
//   (empty body)
// ADMIN_SUBJECTS response
//   u32 count
//   count x str16 subject          every subject this broker stores messages of
export function encodeSubjectsResponse(subjects: readonly string[]): Buffer {
  const w = new PayloadWriter(4 + subjects.length * 24)
  w.u32(subjects.length)
  for (const s of subjects) w.str16(s)
  return w.finish()
}

export function decodeSubjectsResponse(body: Buffer): string[] {
  const r = new PayloadReader(body)
  const count = r.count(r.u32('subject count'), 2, 'subject')
  const out: string[] = []
  for (let i = 0; i < count; i++) out.push(r.str16('subject'))
  r.done('ADMIN_SUBJECTS response')
  return out
}

// ---------------------------------------------------------------------------------------------
// ADMIN_BACKLOG request
//   str16 subject                  '' = every subject
//   str16 group                    '' = every consumer group
// ADMIN_BACKLOG response
//   u32 count
//   count x (str16 subject, str16 group,
//            u64 pending           stored after the group's cursor, not yet handed to anyone
//            u64 inFlight          passed by the cursor, not acked (includes retrying and waiting)
//            u64 retrying          waiting for their redeliver-after time
//            u64 deadLettered
//            u64 maxSequence       last sequence of the subject
//            u64 cursor)           next sequence the group hands out
//   count x (u64 waiting           keyed messages waiting behind an earlier one of their order key
//            u64 keysBlocked       order keys with waiting messages
//            u64 oldestBlockedMs)  age of the longest-blocked key's head, ms (0 = none)
//   The second table (ordered messages) is absent in answers of brokers from before them; a decoder
//   takes its absence as zeros. Same entry order as the first.
export interface BacklogRequest {
  /** undefined = every subject */
  subject?: string | undefined
  /** undefined = every group */
  group?: string | undefined
}

/** The backlog of one consumer group of one subject on one broker group (the store answers these). */
export interface BacklogEntry {
  subject: string
  group: string
  /** Messages stored after the group's cursor (not yet handed to anyone). */
  pending: number
  /**
   * Passed by the cursor and not yet acked: handed out, waiting for redelivery, and keyed messages
   * waiting for an earlier message of their order key (`waiting`).
   */
  inFlight: number
  /** Waiting for their redeliver-after time. */
  retrying: number
  deadLettered: number
  /** Last sequence of the subject, and the group's cursor (next sequence to hand out). */
  maxSequence: number
  cursor: number
  /** Keyed messages waiting behind an unsettled earlier message of their order key (in inFlight). */
  waiting?: number
  /** Order keys with messages waiting behind their head. */
  keysBlocked?: number
  /** How long the longest-blocked key's head has been its head, in ms (0 when none is blocked). */
  oldestBlockedMs?: number
}

export function encodeBacklogRequest(req: BacklogRequest): Buffer {
  return new PayloadWriter(64)
    .str16(req.subject ?? '')
    .str16(req.group ?? '')
    .finish()
}

export function decodeBacklogRequest(body: Buffer): BacklogRequest {
  const r = new PayloadReader(body)
  const subject = r.str16('subject')
  const group = r.str16('group')
  r.done('ADMIN_BACKLOG request')
  return {
    subject: subject === '' ? undefined : validateSubject(subject),
    group: group === '' ? undefined : validateGroup(group),
  }
}

const clampU64 = (n: number): number => (Number.isSafeInteger(n) && n > 0 ? n : 0)

export function encodeBacklogResponse(entries: readonly BacklogEntry[]): Buffer {
  const w = new PayloadWriter(4 + entries.length * 96)
  w.u32(entries.length)
  for (const e of entries) {
    w.str16(e.subject).str16(e.group)
    w.u64(clampU64(e.pending)).u64(clampU64(e.inFlight)).u64(clampU64(e.retrying))
    w.u64(clampU64(e.deadLettered)).u64(clampU64(e.maxSequence)).u64(clampU64(e.cursor))
  }
  // Ordered messages (appended after the entries, so the entries keep their layout): one triple per
  // entry, in the same order.
  for (const e of entries) {
    w.u64(clampU64(e.waiting ?? 0))
      .u64(clampU64(e.keysBlocked ?? 0))
      .u64(clampU64(e.oldestBlockedMs ?? 0))
  }
  return w.finish()
}

export function decodeBacklogResponse(body: Buffer): BacklogEntry[] {
  const r = new PayloadReader(body)
  const count = r.count(r.u32('entry count'), 4 + 6 * 8, 'backlog entry')
  const out: BacklogEntry[] = []
  for (let i = 0; i < count; i++) {
    out.push({
      subject: r.str16('subject'),
      group: r.str16('group'),
      pending: r.u64('pending'),
      inFlight: r.u64('inFlight'),
      retrying: r.u64('retrying'),
      deadLettered: r.u64('deadLettered'),
      maxSequence: r.u64('maxSequence'),
      cursor: r.u64('cursor'),
    })
  }
  // A broker from before ordered messages ends here.
  if (r.remaining > 0) {
    for (const e of out) {
      e.waiting = r.u64('waiting')
      e.keysBlocked = r.u64('keysBlocked')
      e.oldestBlockedMs = r.u64('oldestBlockedMs')
    }
  }
  r.done('ADMIN_BACKLOG response')
  return out
}

// ---------------------------------------------------------------------------------------------
// ADMIN_RESET_CURSOR request
//   str16 subject
//   str16 group
//   u8    position                 0 LATEST, 1 EARLIEST, 2 TIMESTAMP (same values as PULL's start)
//   i64   timeMs                   ms since epoch, used when position = TIMESTAMP
//   str16 token                    the broker's adminToken ('' = none); may be absent (= '')
// ADMIN_RESET_CURSOR response
//   (empty body)
// Messages already handed out stay in flight; only what the group takes next changes.
export const ResetPosition = { LATEST: 0, EARLIEST: 1, TIMESTAMP: 2 } as const
export type ResetPositionValue = (typeof ResetPosition)[keyof typeof ResetPosition]

export interface ResetCursorRequest {
  subject: string
  group: string
  position: ResetPositionValue
  timeMs: number
  /** The broker's admin token, when it has one. */
  token?: string | undefined
}

export function encodeResetCursorRequest(req: ResetCursorRequest): Buffer {
  return new PayloadWriter(64)
    .str16(req.subject)
    .str16(req.group)
    .u8(req.position)
    .i64(req.timeMs)
    .str16(req.token ?? '')
    .finish()
}

/** The trailing admin token of a request ('' when the request ends before it). */
function readToken(r: PayloadReader): string {
  return r.remaining > 0 ? r.str16('token') : ''
}

export function decodeResetCursorRequest(body: Buffer): ResetCursorRequest {
  const r = new PayloadReader(body)
  const subject = validateSubject(r.str16('subject'))
  const group = validateGroup(r.str16('group'))
  const position = r.u8('position')
  if (position > 2) throw new QmqError('QMQ_ERR_INVALID_ARGUMENT', `unknown cursor position ${position}`)
  const timeMs = r.i64('timeMs')
  const token = readToken(r)
  r.done('ADMIN_RESET_CURSOR request')
  return { subject, group, position: position as ResetPositionValue, timeMs, token }
}

// ---------------------------------------------------------------------------------------------
// ADMIN_DLQ_LIST request
//   str16 subject                  the real subject (not %DEAD_RETRY%...)
//   str16 group
//   u32   limit                    1..MAX_DLQ_LIST
//   i64   afterSequence            list dead letters with a greater sequence; -1 = from the first
// ADMIN_DLQ_LIST response
//   u32 count
//   count x (u64 sequence, u32 deliveryCount, i64 deadAt)
//   count x record                 stored record bytes as they are, in the same order (as PULL)
export const MAX_DLQ_LIST = 10_000

export interface DlqListRequest {
  subject: string
  group: string
  limit: number
  /** -1 = from the first */
  afterSequence: number
}

export interface DlqEntry {
  sequence: number
  deliveryCount: number
  deadAt: number
  record: Buffer
}

export interface DecodedDlqEntry {
  sequence: number
  deliveryCount: number
  deadAt: number
  record: MessageRecord
}

export function encodeDlqListRequest(req: DlqListRequest): Buffer {
  return new PayloadWriter(64)
    .str16(req.subject)
    .str16(req.group)
    .u32(req.limit)
    .i64(req.afterSequence)
    .finish()
}

export function decodeDlqListRequest(body: Buffer): DlqListRequest {
  const r = new PayloadReader(body)
  const subject = validateSubject(r.str16('subject'))
  const group = validateGroup(r.str16('group'))
  const limit = r.u32('limit')
  if (limit < 1 || limit > MAX_DLQ_LIST) {
    throw new QmqError('QMQ_ERR_INVALID_ARGUMENT', `limit must be 1 to ${MAX_DLQ_LIST} (got ${limit})`)
  }
  const afterSequence = r.i64('afterSequence')
  if (afterSequence < -1)
    throw new QmqError('QMQ_ERR_INVALID_ARGUMENT', `afterSequence must be >= -1 (got ${afterSequence})`)
  r.done('ADMIN_DLQ_LIST request')
  return { subject, group, limit, afterSequence }
}

const DLQ_ENTRY_BYTES = 8 + 4 + 8

/** The answer as buffers for writev: [count + entry table, record, record, ...]. */
export function encodeDlqListResponse(entries: readonly DlqEntry[]): Buffer[] {
  const w = new PayloadWriter(4 + entries.length * DLQ_ENTRY_BYTES)
  w.u32(entries.length)
  for (const e of entries) w.u64(e.sequence).u32(e.deliveryCount).i64(e.deadAt)
  return [w.finish(), ...entries.map((e) => e.record)]
}

export function decodeDlqListResponse(body: Buffer, limits: RecordLimits = {}): DecodedDlqEntry[] {
  const r = new PayloadReader(body)
  const count = r.count(r.u32('entry count'), DLQ_ENTRY_BYTES + MIN_RECORD_BYTES, 'dead letter')
  const heads: { sequence: number; deliveryCount: number; deadAt: number }[] = []
  for (let i = 0; i < count; i++) {
    heads.push({
      sequence: r.u64('sequence'),
      deliveryCount: r.u32('deliveryCount'),
      deadAt: r.i64('deadAt'),
    })
  }
  const out: DecodedDlqEntry[] = []
  for (const h of heads) {
    if (r.remaining < 4) throw new QmqError('QMQ_ERR_PAYLOAD_MALFORMED', 'DLQ answer ends before a record')
    const bytes = r.view(body.readUInt32BE(r.offset), 'record')
    out.push({ ...h, record: decodeRecord(bytes, 0, limits) })
  }
  r.done('ADMIN_DLQ_LIST response')
  return out
}

// ---------------------------------------------------------------------------------------------
// ADMIN_DLQ_REDRIVE request
//   str16 subject
//   str16 group
//   u8    flags                    bit0 ALL: redrive every dead letter of (subject, group); the list is then empty
//   u32   count
//   count x u64 sequence
//   str16 token                    the broker's adminToken ('' = none); may be absent (= '')
// ADMIN_DLQ_REDRIVE response
//   u32   redriven                 how many are deliverable to the group again (same message id,
//                                  delivery count reset)
export const REDRIVE_FLAG_ALL = 0x01

export interface DlqRedriveRequest {
  subject: string
  group: string
  /** undefined = all */
  sequences?: number[] | undefined
  /** The broker's admin token, when it has one. */
  token?: string | undefined
}

export function encodeDlqRedriveRequest(req: DlqRedriveRequest): Buffer {
  const seqs = req.sequences ?? []
  const w = new PayloadWriter(64 + seqs.length * 8)
  w.str16(req.subject)
    .str16(req.group)
    .u8(req.sequences === undefined ? REDRIVE_FLAG_ALL : 0)
  w.u32(seqs.length)
  for (const s of seqs) w.u64(s)
  w.str16(req.token ?? '')
  return w.finish()
}

export function decodeDlqRedriveRequest(body: Buffer): DlqRedriveRequest {
  const r = new PayloadReader(body)
  const subject = validateSubject(r.str16('subject'))
  const group = validateGroup(r.str16('group'))
  const flags = r.u8('flags')
  if ((flags & ~REDRIVE_FLAG_ALL) !== 0)
    throw new QmqError('QMQ_ERR_PAYLOAD_MALFORMED', `unknown ADMIN_DLQ_REDRIVE flags 0x${flags.toString(16)}`)
  const count = r.count(r.u32('sequence count'), 8, 'sequence')
  const sequences: number[] = []
  for (let i = 0; i < count; i++) sequences.push(r.u64('sequence'))
  const token = readToken(r)
  r.done('ADMIN_DLQ_REDRIVE request')
  const all = (flags & REDRIVE_FLAG_ALL) !== 0
  if (all && sequences.length > 0)
    throw new QmqError('QMQ_ERR_INVALID_ARGUMENT', 'ADMIN_DLQ_REDRIVE with ALL must not list sequences')
  return { subject, group, sequences: all ? undefined : sequences, token }
}

// ---------------------------------------------------------------------------------------------
// ADMIN_FORGET_GROUP request
//   str16 subject
//   str16 group
//   str16 token                    the broker's adminToken ('' = none)
// ADMIN_FORGET_GROUP response
//   u32   forgotten                1 if the group existed and is gone, 0 if there was none
// Refused with QMQ_ERR_GROUP_ACTIVE while a consumer of the group holds a lease.
export interface ForgetGroupRequest {
  subject: string
  group: string
  token?: string | undefined
}

export function encodeForgetGroupRequest(req: ForgetGroupRequest): Buffer {
  return new PayloadWriter(64)
    .str16(req.subject)
    .str16(req.group)
    .str16(req.token ?? '')
    .finish()
}

export function decodeForgetGroupRequest(body: Buffer): ForgetGroupRequest {
  const r = new PayloadReader(body)
  const subject = validateSubject(r.str16('subject'))
  const group = validateGroup(r.str16('group'))
  const token = readToken(r)
  r.done('ADMIN_FORGET_GROUP request')
  return { subject, group, token }
}
