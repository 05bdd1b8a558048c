import { QmqError } from '../../common/errors'
import { PayloadReader } from '../../common/protocol/buffer'
import { MIN_RECORD_BYTES, type RecordHeader, readRecordHeader } from '../../common/record'

/**
 * The client's reading of a PULL answer (layout in src/common/protocol/commands.ts):
 *
 *   u32 count
 *   count x (u64 sequence, u16 deliveryCount)
 *   count x record
 *
 * Unlike `decodePullResponse` it does not decode properties and body: each record's framing and
 * CRC are verified here (end-to-end integrity, as before) and its routing header read; the record
 * bytes (a view into the frame) are handed on, and a ConsumedMessage decodes properties and body
 * only when the handler asks for them. A malformed answer throws before any record is handed on.
 */
const PULL_ENTRY_BYTES = 10

export type OnPulledRecord = (
  sequence: number,
  deliveryCount: number,
  header: RecordHeader,
  bytes: Buffer,
) => void

/** Verifies a PULL answer, then calls `onRecord` for each record in order. Returns the count. */
export function readPullAnswer(body: Buffer, onRecord: OnPulledRecord): number {
  const r = new PayloadReader(body)
  const count = r.count(r.u32('message count'), PULL_ENTRY_BYTES + MIN_RECORD_BYTES, 'message')
  const tableStart = r.offset
  r.view(count * PULL_ENTRY_BYTES, 'PULL entry table')
  const headers: RecordHeader[] = new Array(count)
  const views: Buffer[] = new Array(count)
  const sequences: number[] = new Array(count)
  for (let i = 0; i < count; i++) {
    const o = tableStart + i * PULL_ENTRY_BYTES
    const hi = body.readUInt32BE(o)
    if (hi > 0x1fffff) throw new QmqError('QMQ_ERR_PAYLOAD_MALFORMED', 'sequence is beyond 2^53')
    sequences[i] = hi * 0x1_0000_0000 + body.readUInt32BE(o + 4)
    if (r.remaining < 4) throw new QmqError('QMQ_ERR_PAYLOAD_MALFORMED', 'PULL answer ends before a record')
    const start = r.offset
    const bytes = r.view(body.readUInt32BE(start), 'record')
    headers[i] = readRecordHeader(body, start, { end: start + bytes.length })
    views[i] = bytes
  }
  r.done('PULL response')
  for (let i = 0; i < count; i++) {
    const deliveryCount = body.readUInt16BE(tableStart + i * PULL_ENTRY_BYTES + 8)
    onRecord(sequences[i] as number, deliveryCount, headers[i] as RecordHeader, views[i] as Buffer)
  }
  return count
}
