import { QmqError, toQmqError } from '../../common/errors'
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
 * only when the handler asks for them.
 *
 * An answer whose framing is broken (counts, the entry table, a record's length field out of bounds)
 * throws before any record is handed on: nothing in it can be trusted. A record that is well
 * delimited but fails its CRC or header checks is one bad record: it goes to `onBadRecord` (with
 * its sequence, so the caller can nack it) and the others are handed on as usual.
 */
const PULL_ENTRY_BYTES = 10

export type OnPulledRecord = (
  sequence: number,
  deliveryCount: number,
  header: RecordHeader,
  bytes: Buffer,
) => void

export type OnBadRecord = (sequence: number, deliveryCount: number, err: QmqError) => void

/**
 * Verifies a PULL answer, then calls `onRecord` for each good record and `onBadRecord` for each
 * bad one, in order. Returns the number of good records.
 */
export function readPullAnswer(body: Buffer, onRecord: OnPulledRecord, onBadRecord: OnBadRecord): number {
  const r = new PayloadReader(body)
  const count = r.count(r.u32('message count'), PULL_ENTRY_BYTES + MIN_RECORD_BYTES, 'message')
  const tableStart = r.offset
  r.view(count * PULL_ENTRY_BYTES, 'PULL entry table')
  const headers: (RecordHeader | QmqError)[] = new Array(count)
  const views: Buffer[] = new Array(count)
  const sequences: number[] = new Array(count)
  for (let i = 0; i < count; i++) {
    const o = tableStart + i * PULL_ENTRY_BYTES
    const hi = body.readUInt32BE(o)
    if (hi > 0x1fffff) throw new QmqError('QMQ_ERR_PAYLOAD_MALFORMED', 'sequence is beyond 2^53')
    sequences[i] = hi * 0x1_0000_0000 + body.readUInt32BE(o + 4)
    if (r.remaining < 4) throw new QmqError('QMQ_ERR_PAYLOAD_MALFORMED', 'PULL answer ends before a record')
    const start = r.offset
    const length = body.readUInt32BE(start)
    if (length < MIN_RECORD_BYTES)
      throw new QmqError('QMQ_ERR_PAYLOAD_MALFORMED', `record ${i} claims ${length} bytes`)
    const bytes = r.view(length, 'record')
    try {
      headers[i] = readRecordHeader(body, start, { end: start + bytes.length })
    } catch (err) {
      headers[i] = toQmqError(err, 'QMQ_ERR_RECORD_MALFORMED')
    }
    views[i] = bytes
  }
  r.done('PULL response')
  let good = 0
  for (let i = 0; i < count; i++) {
    const deliveryCount = body.readUInt16BE(tableStart + i * PULL_ENTRY_BYTES + 8)
    const h = headers[i] as RecordHeader | QmqError
    if (h instanceof QmqError) onBadRecord(sequences[i] as number, deliveryCount, h)
    else {
      onRecord(sequences[i] as number, deliveryCount, h, views[i] as Buffer)
      good++
    }
  }
  return good
}
