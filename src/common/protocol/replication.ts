import { QmqError } from '../errors'
import { readToken, writeToken } from './commands'
import { PayloadReader, PayloadWriter } from './buffer'

/**
 * Replication requests (slave -> master), over the same framed TCP protocol and connection loop as
 * every other request. Both carry the cluster secret first (the token field of commands.ts), which
 * the master checks before decoding the rest.
 *
 * The slave copies the master's logs byte for byte, at the same logical offsets and with the same
 * segment boundaries (segment-log.ts `appendCopied`), so every offset a checkpoint or a consume log
 * holds means the same bytes on both. The slave's acknowledgement is `acked` when present, else the
 * offset it asks from: everything before it is written and fdatasynced on the slave. A slave that
 * catches up pipelines (asks for the next chunk while it writes and fdatasyncs the previous one):
 * it then asks from past what it holds durably and sends `acked`.
 *
 * REPL_FETCH request
 *   str16 token              the cluster secret
 *   str16 slaveId            the slave's advertised `host:port` (who it is, for in-sync tracking)
 *   u8    log                0 = message log, 1 = action log (ReplicatedLog)
 *   i64   offset             next byte wanted: the end of what the slave wrote (or is writing)
 *   u32   maxBytes           at most this many bytes of data (the master caps it further)
 *   u32   waitMs             when there is nothing after `offset` yet, wait up to this long
 *   i64   epoch              the epoch the slave follows (0 = none yet)
 *   [i64  acked]             optional (added later; absent = `offset`): the slave's durable end of
 *                            that log, <= offset. Masters that predate it refuse a request that
 *                            carries it (QMQ_ERR_PAYLOAD_MALFORMED): the slave then stops pipelining
 * REPL_FETCH response
 *   u8    kind               0 DATA, 1 TRUNCATE, 2 RESET (FetchKind)
 *   i64   start              first retained byte of the master's log
 *   i64   end                end of the master's log (what is written; the slave's lag is end - offset)
 *   i64   offset             DATA: logical offset of `data`'s first byte (the one asked for);
 *                            TRUNCATE: the slave cuts its log there, then asks again;
 *                            RESET: the slave's log is gone from the master (retention): it drops
 *                            its copy and starts again at this offset (= start)
 *   i64   segmentBase        DATA: base of the master segment `data` lies in (never spans two)
 *   i64   epoch              the master's epoch
 *   bytes32 data             DATA: the bytes (possibly none: nothing new within waitMs); a chunk may
 *                            end inside a record (the next fetch continues it)
 *   bytes32 history          when the slave's epoch is older than the master's: the master's epoch
 *                            history (JSON array of {epoch, messageOffset, actionOffset}, see
 *                            broker/replication/epochs.ts), which the slave adopts; else empty
 *
 * REPL_CHECKPOINT request
 *   str16 token
 * REPL_CHECKPOINT response
 *   bytes32 checkpoint       the master's checkpoint.json ('' = none yet)
 */
export const ReplicatedLog = { MESSAGE: 0, ACTION: 1 } as const
export type ReplicatedLogValue = (typeof ReplicatedLog)[keyof typeof ReplicatedLog]
export const REPLICATED_LOG_NAMES: Record<ReplicatedLogValue, 'message' | 'action'> = {
  0: 'message',
  1: 'action',
}

export const FetchKind = { DATA: 0, TRUNCATE: 1, RESET: 2 } as const
export type FetchKindValue = (typeof FetchKind)[keyof typeof FetchKind]

/** Largest `maxBytes` a fetch may ask for (the frame must also fit maxFrameBytes). */
export const MAX_FETCH_BYTES = 8 * 1024 * 1024
/** Longest wait a fetch may ask for. */
export const MAX_FETCH_WAIT_MS = 60_000

export interface FetchRequest {
  token: string
  slaveId: string
  log: ReplicatedLogValue
  offset: number
  maxBytes: number
  waitMs: number
  epoch: number
  /** The slave's durable end (its acknowledgement) when it differs from `offset`; absent = `offset`. */
  acked?: number | undefined
}

export function encodeFetchRequest(f: FetchRequest): Buffer {
  const w = new PayloadWriter(72 + f.token.length + f.slaveId.length)
  writeToken(w, f.token)
  w.str16(f.slaveId).u8(f.log).i64(f.offset).u32(f.maxBytes).u32(f.waitMs).i64(f.epoch)
  // Sent only when it says something: a request without it reaches masters that predate it.
  if (f.acked !== undefined && f.acked !== f.offset) w.i64(f.acked)
  return w.finish()
}

/** The slave's acknowledgement carried by a fetch: `acked`, or `offset` when absent. */
export function fetchAcked(f: FetchRequest): number {
  return f.acked ?? f.offset
}

export function decodeFetchRequest(body: Buffer): FetchRequest {
  const r = new PayloadReader(body)
  const token = readToken(r)
  const slaveId = r.str16('slave id')
  if (slaveId.length === 0 || slaveId.length > 512)
    throw new QmqError('QMQ_ERR_PAYLOAD_MALFORMED', 'slave id must be 1 to 512 characters')
  const log = r.u8('log')
  if (log !== ReplicatedLog.MESSAGE && log !== ReplicatedLog.ACTION)
    throw new QmqError('QMQ_ERR_PAYLOAD_MALFORMED', `unknown replicated log ${log}`)
  const offset = r.i64('offset')
  const maxBytes = r.u32('maxBytes')
  const waitMs = r.u32('waitMs')
  const epoch = r.i64('epoch')
  const acked = r.remaining > 0 ? r.i64('acked') : undefined
  r.done('REPL_FETCH request')
  if (offset < 0 || epoch < 0) throw new QmqError('QMQ_ERR_PAYLOAD_MALFORMED', 'negative offset or epoch')
  if (acked !== undefined && (acked < 0 || acked > offset))
    throw new QmqError('QMQ_ERR_PAYLOAD_MALFORMED', 'acked must be between 0 and offset')
  return {
    ...(acked !== undefined ? { acked } : {}),
    token,
    slaveId,
    log,
    offset,
    maxBytes: Math.min(Math.max(maxBytes, 1), MAX_FETCH_BYTES),
    waitMs: Math.min(waitMs, MAX_FETCH_WAIT_MS),
    epoch,
  }
}

export interface FetchResponse {
  kind: FetchKindValue
  start: number
  end: number
  offset: number
  segmentBase: number
  epoch: number
  data: Buffer
  history: Buffer
}

/** The response as a header and the data (sent as they are: no copy of the log bytes). */
export function encodeFetchResponse(f: FetchResponse): Buffer[] {
  const w = new PayloadWriter(48)
  w.u8(f.kind).i64(f.start).i64(f.end).i64(f.offset).i64(f.segmentBase).i64(f.epoch).u32(f.data.length)
  const tail = new PayloadWriter(4 + f.history.length).bytes32(f.history).finish()
  return [w.finish(), f.data, tail]
}

/** `data` is a view of `body` (no copy); its length is checked against the body before use. */
export function decodeFetchResponse(body: Buffer): FetchResponse {
  const r = new PayloadReader(body)
  const kind = r.u8('kind')
  if (kind !== FetchKind.DATA && kind !== FetchKind.TRUNCATE && kind !== FetchKind.RESET)
    throw new QmqError('QMQ_ERR_PAYLOAD_MALFORMED', `unknown fetch answer kind ${kind}`)
  const start = r.i64('start')
  const end = r.i64('end')
  const offset = r.i64('offset')
  const segmentBase = r.i64('segmentBase')
  const epoch = r.i64('epoch')
  const data = r.bytes32('data')
  const history = r.bytes32('history')
  r.done('REPL_FETCH response')
  if (start < 0 || end < start || offset < 0 || segmentBase < 0 || segmentBase > offset)
    throw new QmqError('QMQ_ERR_PAYLOAD_MALFORMED', 'inconsistent REPL_FETCH offsets')
  return { kind, start, end, offset, segmentBase, epoch, data, history }
}

export function encodeCheckpointRequest(token: string): Buffer {
  return writeToken(new PayloadWriter(8 + token.length), token).finish()
}

export function encodeCheckpointResponse(checkpoint: Buffer): Buffer {
  return new PayloadWriter(4 + checkpoint.length).bytes32(checkpoint).finish()
}

export function decodeCheckpointResponse(body: Buffer): Buffer {
  const r = new PayloadReader(body)
  const b = r.bytes32('checkpoint')
  r.done('REPL_CHECKPOINT response')
  return b
}
