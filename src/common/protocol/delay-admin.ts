import { QmqError } from '../errors'
import { decodeRecord, MIN_RECORD_BYTES, type MessageRecord, type RecordLimits } from '../record'
import { PayloadReader, PayloadWriter } from './buffer'
import { readToken, writeToken } from './commands'

/**
 * Payload codecs of the delay server's admin requests (ADMIN_DELAY_DLQ_LIST, ADMIN_DELAY_DLQ_REDRIVE,
 * see codes.ts): the dead letters of a delay group, i.e. due messages a broker refused for good (a
 * non-retriable status: an invalid subject, a record over the broker's size limit, ...). Pure, like
 * admin.ts; primitives in buffer.ts. Both requests start with the token field (commands.ts): the
 * delay server's cluster secret.
 */

// ---------------------------------------------------------------------------------------------
// ADMIN_DELAY_DLQ_LIST request
//   str16 token                    the cluster secret (token field, commands.ts)
//   u32   limit                    1..MAX_DELAY_DLQ_LIST
//   i64   afterSequence            list dead letters with a greater sequence; -1 = from the first
// ADMIN_DELAY_DLQ_LIST response
//   u32 count
//   count x (u64 sequence, i64 parkedAt, u32 status, str16 error message)
//   count x record                 the record as it was refused, in the same order
export const MAX_DELAY_DLQ_LIST = 10_000

export interface DelayDlqListRequest {
  limit: number
  /** -1 = from the first */
  afterSequence: number
  /** The delay server's cluster secret. */
  token?: string | undefined
}

export interface DelayDlqEntry {
  sequence: number
  parkedAt: number
  /** The broker's status for the record (an error-codes.ts status). */
  status: number
  message: string
  record: Buffer
}

export interface DecodedDelayDlqEntry extends Omit<DelayDlqEntry, 'record'> {
  record: MessageRecord
}

export function encodeDelayDlqListRequest(req: DelayDlqListRequest): Buffer {
  return writeToken(new PayloadWriter(32), req.token).u32(req.limit).i64(req.afterSequence).finish()
}

export function decodeDelayDlqListRequest(body: Buffer): DelayDlqListRequest {
  const r = new PayloadReader(body)
  const token = readToken(r)
  const limit = r.u32('limit')
  if (limit < 1 || limit > MAX_DELAY_DLQ_LIST) {
    throw new QmqError('QMQ_ERR_INVALID_ARGUMENT', `limit must be 1 to ${MAX_DELAY_DLQ_LIST} (got ${limit})`)
  }
  const afterSequence = r.i64('afterSequence')
  if (afterSequence < -1)
    throw new QmqError('QMQ_ERR_INVALID_ARGUMENT', `afterSequence must be >= -1 (got ${afterSequence})`)
  r.done('ADMIN_DELAY_DLQ_LIST request')
  return { limit, afterSequence, token }
}

/** The answer as buffers for writev: [count + entry table, record, record, ...]. */
export function encodeDelayDlqListResponse(entries: readonly DelayDlqEntry[]): Buffer[] {
  const w = new PayloadWriter(4 + entries.length * 64)
  w.u32(entries.length)
  for (const e of entries) w.u64(e.sequence).i64(e.parkedAt).u32(e.status).str16(e.message)
  return [w.finish(), ...entries.map((e) => e.record)]
}

export function decodeDelayDlqListResponse(body: Buffer, limits: RecordLimits = {}): DecodedDelayDlqEntry[] {
  const r = new PayloadReader(body)
  const count = r.count(r.u32('entry count'), 8 + 8 + 4 + 2 + MIN_RECORD_BYTES, 'dead letter')
  const heads: Omit<DecodedDelayDlqEntry, 'record'>[] = []
  for (let i = 0; i < count; i++) {
    heads.push({
      sequence: r.u64('sequence'),
      parkedAt: r.i64('parkedAt'),
      status: r.u32('status'),
      message: r.str16('error message'),
    })
  }
  const out: DecodedDelayDlqEntry[] = []
  for (const h of heads) {
    if (r.remaining < 4) throw new QmqError('QMQ_ERR_PAYLOAD_MALFORMED', 'DLQ answer ends before a record')
    const bytes = r.view(body.readUInt32BE(r.offset), 'record')
    out.push({ ...h, record: decodeRecord(bytes, 0, limits) })
  }
  r.done('ADMIN_DELAY_DLQ_LIST response')
  return out
}

// ---------------------------------------------------------------------------------------------
// ADMIN_DELAY_DLQ_REDRIVE request
//   str16 token                    the cluster secret (token field, commands.ts)
//   u8    flags                    bit0 ALL: redrive every dead letter; the list is then empty
//   u32   count
//   count x u64 sequence
// ADMIN_DELAY_DLQ_REDRIVE response
//   u32   redriven                 how many were scheduled again (due at once: their time has passed)
export const DELAY_REDRIVE_FLAG_ALL = 0x01

export interface DelayDlqRedriveRequest {
  /** undefined = all */
  sequences?: number[] | undefined
  /** The delay server's cluster secret. */
  token?: string | undefined
}

export function encodeDelayDlqRedriveRequest(req: DelayDlqRedriveRequest): Buffer {
  const seqs = req.sequences ?? []
  const w = new PayloadWriter(24 + seqs.length * 8)
  writeToken(w, req.token)
    .u8(req.sequences === undefined ? DELAY_REDRIVE_FLAG_ALL : 0)
    .u32(seqs.length)
  for (const s of seqs) w.u64(s)
  return w.finish()
}

export function decodeDelayDlqRedriveRequest(body: Buffer): DelayDlqRedriveRequest {
  const r = new PayloadReader(body)
  const token = readToken(r)
  const flags = r.u8('flags')
  if ((flags & ~DELAY_REDRIVE_FLAG_ALL) !== 0) {
    throw new QmqError(
      'QMQ_ERR_PAYLOAD_MALFORMED',
      `unknown ADMIN_DELAY_DLQ_REDRIVE flags 0x${flags.toString(16)}`,
    )
  }
  const count = r.count(r.u32('sequence count'), 8, 'sequence')
  const sequences: number[] = []
  for (let i = 0; i < count; i++) sequences.push(r.u64('sequence'))
  r.done('ADMIN_DELAY_DLQ_REDRIVE request')
  const all = (flags & DELAY_REDRIVE_FLAG_ALL) !== 0
  if (all && sequences.length > 0)
    throw new QmqError('QMQ_ERR_INVALID_ARGUMENT', 'ADMIN_DELAY_DLQ_REDRIVE with ALL must not list sequences')
  return { sequences: all ? undefined : sequences, token }
}

// ---------------------------------------------------------------------------------------------
// ADMIN_DELAY_PENDING request
//   str16 token                    the cluster secret (token field, commands.ts)
// ADMIN_DELAY_PENDING response
//   u32   count                    one per schedule bucket the server holds, oldest first
//   count x (i64 bucketStart       ms since epoch (buckets are scheduleBucketMs wide, default 1 h)
//            u64 pending)          messages stored in it and not yet delivered
export interface DelayPendingBucket {
  start: number
  pending: number
}

export function encodeDelayPendingRequest(token: string | undefined): Buffer {
  return writeToken(new PayloadWriter(16), token).finish()
}

export function decodeDelayPendingRequest(body: Buffer): { token: string | undefined } {
  const r = new PayloadReader(body)
  const token = readToken(r)
  r.done('ADMIN_DELAY_PENDING request')
  return { token }
}

export function encodeDelayPendingResponse(buckets: readonly DelayPendingBucket[]): Buffer {
  const w = new PayloadWriter(4 + buckets.length * 16)
  w.u32(buckets.length)
  for (const b of buckets) w.i64(b.start).u64(Math.max(0, b.pending))
  return w.finish()
}

export function decodeDelayPendingResponse(body: Buffer): DelayPendingBucket[] {
  const r = new PayloadReader(body)
  const count = r.count(r.u32('bucket count'), 16, 'bucket')
  const out: DelayPendingBucket[] = []
  for (let i = 0; i < count; i++) out.push({ start: r.i64('bucketStart'), pending: r.u64('pending') })
  r.done('ADMIN_DELAY_PENDING response')
  return out
}
