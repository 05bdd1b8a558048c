import { QmqError } from '../../common/errors'
import { PayloadReader, PayloadWriter } from '../../common/protocol/buffer'
import { readToken, writeToken } from '../../common/protocol/commands'
import type { ReplicaManifest } from '../store/delay-store'

/**
 * The delay server's own replication requests (slave -> master), beside REPL_FETCH (which copies its
 * message log exactly as a broker's: common/protocol/replication.ts). Each starts with the cluster
 * secret (the token field of commands.ts), checked before the rest is decoded, then the slave's id
 * (its advertised `host:port`).
 *
 * DELAY_REPL_MANIFEST (52) request
 *   str16 token, str16 slaveId
 *   i64   adopted            the checkpoint the slave holds (-1 = none): the master's in-sync test
 * response
 *   str16 runId              the master process's run (the dead-letter log may be rewritten at a start)
 *   u32   bucketMinutes      the slave refuses to copy across different bucket widths
 *   bytes32 manifest         JSON ReplicaManifest (delay-store.ts) of the master's last checkpoint
 *
 * DELAY_REPL_FILE (53) request
 *   str16 token, str16 slaveId
 *   str16 name               'deadletter.log', 'schedule/<13 digits>.sched' or 'dispatch/<13 digits>.disp'
 *   i64   offset             first byte wanted
 *   u32   maxBytes           at most this many (the slave asks only for bytes a manifest names)
 * response
 *   i64   size               the file's size now (-1: no such file: its bucket was dropped)
 *   bytes32 data
 *
 * DELAY_REPL_CANCELS (54) request
 *   str16 token, str16 slaveId
 *   str16 runId              the master run the slave's sequence belongs to ('' = none)
 *   i64   after              cancels up to this sequence are durable on the slave (its acknowledgement)
 *   u8    snapshot           1 = the slave is reading the snapshot the master started for it
 *   u32   waitMs             nothing new: wait up to this long
 * response
 *   str16 runId
 *   u8    kind               0 = cancels after `after`; 1 = a snapshot page, more follow; 2 = the
 *                            last snapshot page (the slave then goes on from `seq`)
 *   i64   seq                the sequence the slave holds once it stored these entries
 *   u32   count, then count x { i64 cancelledAt, str16 id }
 */
export interface ManifestRequest {
  token: string
  slaveId: string
  adopted: number
}

export interface ManifestResponse {
  runId: string
  bucketMinutes: number
  manifest: ReplicaManifest
}

export interface FileRequest {
  token: string
  slaveId: string
  name: string
  offset: number
  maxBytes: number
}

export interface FileResponse {
  size: number
  data: Buffer
}

export interface CancelsRequest {
  token: string
  slaveId: string
  runId: string
  after: number
  snapshot: boolean
  waitMs: number
}

export const CancelsKind = { STREAM: 0, SNAPSHOT: 1, SNAPSHOT_END: 2 } as const
export type CancelsKindValue = (typeof CancelsKind)[keyof typeof CancelsKind]

export interface CancelEntry {
  id: string
  at: number
}

export interface CancelsResponse {
  runId: string
  kind: CancelsKindValue
  seq: number
  entries: CancelEntry[]
}

/** Derived files a slave may read: nothing outside them (no path from the request reaches the fs). */
const FILE_NAME = /^(deadletter\.log|schedule\/\d{13}\.sched|dispatch\/\d{13}\.disp)$/
export const MAX_FILE_CHUNK_BYTES = 8 * 1024 * 1024
const MAX_WAIT_MS = 60_000

export function encodeManifestRequest(r: ManifestRequest): Buffer {
  return writeToken(new PayloadWriter(64), r.token).str16(r.slaveId).i64(r.adopted).finish()
}

export function decodeManifestRequest(body: Buffer): ManifestRequest {
  const r = new PayloadReader(body)
  const token = readToken(r)
  const slaveId = slaveIdOf(r)
  const adopted = r.i64('adopted')
  r.done('DELAY_REPL_MANIFEST request')
  return { token, slaveId, adopted }
}

export function encodeManifestResponse(m: ManifestResponse): Buffer {
  const json = Buffer.from(JSON.stringify(m.manifest), 'utf8')
  return new PayloadWriter(64 + json.length).str16(m.runId).u32(m.bucketMinutes).bytes32(json).finish()
}

export function decodeManifestResponse(body: Buffer): ManifestResponse {
  const r = new PayloadReader(body)
  const runId = r.str16('runId')
  const bucketMinutes = r.u32('bucketMinutes')
  const json = r.bytes32('manifest')
  r.done('DELAY_REPL_MANIFEST response')
  let manifest: ReplicaManifest
  try {
    manifest = JSON.parse(json.toString('utf8')) as ReplicaManifest
  } catch {
    throw new QmqError('QMQ_ERR_PAYLOAD_MALFORMED', 'unreadable delay manifest')
  }
  if (
    !Number.isSafeInteger(manifest.checkpoint) ||
    !Number.isSafeInteger(manifest.deadLetterBytes) ||
    !Array.isArray(manifest.buckets) ||
    !manifest.buckets.every((b) => Array.isArray(b) && b.length === 4 && b.every(Number.isSafeInteger))
  )
    throw new QmqError('QMQ_ERR_PAYLOAD_MALFORMED', 'inconsistent delay manifest')
  return { runId, bucketMinutes, manifest }
}

export function encodeFileRequest(f: FileRequest): Buffer {
  return writeToken(new PayloadWriter(96), f.token)
    .str16(f.slaveId)
    .str16(f.name)
    .i64(f.offset)
    .u32(f.maxBytes)
    .finish()
}

export function decodeFileRequest(body: Buffer): FileRequest {
  const r = new PayloadReader(body)
  const token = readToken(r)
  const slaveId = slaveIdOf(r)
  const name = r.str16('name')
  const offset = r.i64('offset')
  const maxBytes = r.u32('maxBytes')
  r.done('DELAY_REPL_FILE request')
  if (!FILE_NAME.test(name)) throw new QmqError('QMQ_ERR_PAYLOAD_MALFORMED', `not a replicated file: ${name}`)
  if (offset < 0) throw new QmqError('QMQ_ERR_PAYLOAD_MALFORMED', 'negative offset')
  return { token, slaveId, name, offset, maxBytes: Math.min(Math.max(1, maxBytes), MAX_FILE_CHUNK_BYTES) }
}

export function encodeFileResponse(f: FileResponse): Buffer[] {
  return [new PayloadWriter(12).i64(f.size).u32(f.data.length).finish(), f.data]
}

export function decodeFileResponse(body: Buffer): FileResponse {
  const r = new PayloadReader(body)
  const size = r.i64('size')
  const data = r.bytes32('data')
  r.done('DELAY_REPL_FILE response')
  return { size, data }
}

export function encodeCancelsRequest(c: CancelsRequest): Buffer {
  return writeToken(new PayloadWriter(96), c.token)
    .str16(c.slaveId)
    .str16(c.runId)
    .i64(c.after)
    .u8(c.snapshot ? 1 : 0)
    .u32(c.waitMs)
    .finish()
}

export function decodeCancelsRequest(body: Buffer): CancelsRequest {
  const r = new PayloadReader(body)
  const token = readToken(r)
  const slaveId = slaveIdOf(r)
  const runId = r.str16('runId')
  const after = r.i64('after')
  const snapshot = r.u8('snapshot') === 1
  const waitMs = Math.min(r.u32('waitMs'), MAX_WAIT_MS)
  r.done('DELAY_REPL_CANCELS request')
  return { token, slaveId, runId, after, snapshot, waitMs }
}

export function encodeCancelsResponse(c: CancelsResponse): Buffer {
  let bytes = 32
  for (const e of c.entries) bytes += 10 + Buffer.byteLength(e.id, 'utf8')
  const w = new PayloadWriter(bytes).str16(c.runId).u8(c.kind).i64(c.seq).u32(c.entries.length)
  for (const e of c.entries) w.i64(e.at).str16(e.id)
  return w.finish()
}

export function decodeCancelsResponse(body: Buffer): CancelsResponse {
  const r = new PayloadReader(body)
  const runId = r.str16('runId')
  const kind = r.u8('kind')
  if (kind !== CancelsKind.STREAM && kind !== CancelsKind.SNAPSHOT && kind !== CancelsKind.SNAPSHOT_END)
    throw new QmqError('QMQ_ERR_PAYLOAD_MALFORMED', `unknown cancels answer kind ${kind}`)
  const seq = r.i64('seq')
  const count = r.u32('count')
  const entries: CancelEntry[] = []
  for (let i = 0; i < count; i++) {
    const at = r.i64('cancelledAt')
    entries.push({ at, id: r.str16('id') })
  }
  r.done('DELAY_REPL_CANCELS response')
  return { runId, kind, seq, entries }
}

function slaveIdOf(r: PayloadReader): string {
  const id = r.str16('slave id')
  if (id.length === 0 || id.length > 512)
    throw new QmqError('QMQ_ERR_PAYLOAD_MALFORMED', 'slave id must be 1 to 512 characters')
  return id
}
