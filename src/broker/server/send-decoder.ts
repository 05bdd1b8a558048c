import { QmqError, toQmqError } from '../../common/errors'
import { decodeSendRequest } from '../../common/protocol/commands'
import {
  MIN_RECORD_BYTES,
  type RecordHeader,
  type RecordLimits,
  readRecordRouting,
} from '../../common/record'
import type { AppendInput } from '../store/types'

export interface DecodedSend {
  /** Records in the request. */
  count: number
  /** The records that verified, in request order. */
  inputs: AppendInput[]
  /** Undefined when every record verified; else the error of each record that did not (by position). */
  errors: (QmqError | undefined)[] | undefined
}

/**
 * Decodes a SEND body (layout in common/protocol/commands.ts) for the broker: each record is checked
 * as `decodeSendRequest` does, but through `readRecordRouting` (only the subject is decoded, and a run
 * of records with the same subject bytes shares one subject string, so it is validated once). A
 * malformed body takes `decodeSendRequest`: its errors are the ones that gives.
 */
export function decodeSend(body: Buffer, limits: RecordLimits): DecodedSend {
  const end = body.length
  const count = end >= 4 ? body.readUInt32BE(0) : -1
  if (count < 0 || count * MIN_RECORD_BYTES > end - 4) return slowDecode(body, limits)
  const inputs: AppendInput[] = new Array(count)
  let errors: (QmqError | undefined)[] | undefined
  let good = 0
  let previous: RecordHeader | undefined
  let o = 4
  for (let i = 0; i < count; i++) {
    if (end - o < 4) return slowDecode(body, limits)
    const length = body.readUInt32BE(o)
    if (length < MIN_RECORD_BYTES || length > end - o) return slowDecode(body, limits)
    const bytes = body.subarray(o, o + length)
    try {
      previous = readRecordRouting(bytes, limits, previous)
      inputs[good++] = { bytes, header: previous }
    } catch (err) {
      if (errors === undefined) errors = new Array(count)
      errors[i] = toQmqError(err, 'QMQ_ERR_RECORD_MALFORMED')
    }
    o += length
  }
  if (o !== end) return slowDecode(body, limits)
  if (good !== count) inputs.length = good
  return { count, inputs, errors }
}

/** The reference decoder: throws the exact payload error, or decodes what the fast path gave up on. */
function slowDecode(body: Buffer, limits: RecordLimits): DecodedSend {
  const items = decodeSendRequest(body, limits)
  const inputs: AppendInput[] = []
  let errors: (QmqError | undefined)[] | undefined
  for (let i = 0; i < items.length; i++) {
    const item = items[i]
    if (item === undefined) continue
    if (item.header !== undefined && item.error === undefined) {
      inputs.push({ bytes: item.bytes, header: item.header })
      continue
    }
    if (errors === undefined) errors = new Array(items.length)
    errors[i] = item.error ?? new QmqError('QMQ_ERR_RECORD_MALFORMED')
  }
  return { count: items.length, inputs, errors }
}
