import { QmqError, toQmqError } from '../../common/errors'
import { MAX_SUBJECT_BYTES } from '../../common/names'
import { decodeSendRequest } from '../../common/protocol/commands'
import {
  FLAG_BODY_UTF8,
  FLAG_DELAYED,
  FLAG_HAS_BODY,
  MAX_ID_BYTES,
  MIN_RECORD_BYTES,
  RECORD_FIXED_BYTES,
  type RecordHeader,
  type RecordLimits,
  readRecordHeader,
  verifyRecord,
} from '../../common/record'
import type { AppendInput } from '../store/types'

const KNOWN_FLAGS = FLAG_DELAYED | FLAG_HAS_BODY | FLAG_BODY_UTF8
const TWO_32 = 0x1_0000_0000
const NO_TAGS: string[] = []

/**
 * A verified record of a SEND as the store takes it: the bytes and, as the same object, its header.
 * Only what the broker routes by (subject, tags) is decoded up front; the id and the timestamps are
 * read from the bytes if someone asks. One object per record instead of a header, an item and an input.
 */
class SendRecord implements AppendInput, RecordHeader {
  readonly bytes: Buffer
  readonly header: RecordHeader = this
  readonly length: number
  readonly flags: number
  readonly subject: string
  readonly tags: string[] = NO_TAGS
  readonly propertiesOffset: number
  private readonly idLength: number

  constructor(bytes: Buffer, flags: number, subject: string, idLength: number, subjectLength: number) {
    this.bytes = bytes
    this.length = bytes.length
    this.flags = flags
    this.subject = subject
    this.idLength = idLength
    this.propertiesOffset = RECORD_FIXED_BYTES + idLength + subjectLength
  }

  get id(): string {
    return this.bytes.toString('utf8', RECORD_FIXED_BYTES, RECORD_FIXED_BYTES + this.idLength)
  }

  get createdAt(): number {
    return this.bytes.readInt32BE(12) * TWO_32 + this.bytes.readUInt32BE(16)
  }

  get scheduleAt(): number {
    return this.bytes.readInt32BE(20) * TWO_32 + this.bytes.readUInt32BE(24)
  }
}

export interface DecodedSend {
  /** Records in the request. */
  count: number
  /** The records that verified, in request order. */
  inputs: AppendInput[]
  /** Undefined when every record verified; else the error of each record that did not (by position). */
  errors: (QmqError | undefined)[] | undefined
}

/**
 * Decodes a SEND body (layout in common/protocol/commands.ts) for the broker: each record's framing
 * and CRC are checked as `decodeSendRequest` does, but only the routing fields are decoded, and a run
 * of records with the same subject bytes shares one subject string (so it is validated once). Records
 * out of the common case (tags, unknown flags, bad lengths) take `readRecordHeader`, and a malformed
 * body takes `decodeSendRequest`: errors are the ones those give.
 */
export function decodeSend(body: Buffer, limits: RecordLimits): DecodedSend {
  const end = body.length
  const count = end >= 4 ? body.readUInt32BE(0) : -1
  if (count < 0 || count * MIN_RECORD_BYTES > end - 4) return slowDecode(body, limits)
  const inputs: AppendInput[] = new Array(count)
  let errors: (QmqError | undefined)[] | undefined
  let good = 0
  let subject = ''
  let subjectAt = -1 // where `subject`'s bytes are in `body` (-1: none yet)
  let subjectLength = 0
  let o = 4
  for (let i = 0; i < count; i++) {
    if (end - o < 4) return slowDecode(body, limits)
    const length = body.readUInt32BE(o)
    if (length < MIN_RECORD_BYTES || length > end - o) return slowDecode(body, limits)
    const bytes = body.subarray(o, o + length)
    let input: AppendInput | undefined
    try {
      verifyRecord(bytes, 0, length, limits)
      const flags = bytes[9] as number
      const tagCount = bytes[10] as number
      const idLength = bytes.readUInt16BE(28)
      const sLength = bytes.readUInt16BE(30)
      if (
        (flags & ~KNOWN_FLAGS) === 0 &&
        tagCount === 0 &&
        idLength > 0 &&
        idLength <= MAX_ID_BYTES &&
        sLength > 0 &&
        sLength <= MAX_SUBJECT_BYTES &&
        RECORD_FIXED_BYTES + idLength + sLength <= length
      ) {
        const s = o + RECORD_FIXED_BYTES + idLength
        if (!sameBytes(body, s, subjectAt, sLength, subjectLength)) {
          subject = body.toString('utf8', s, s + sLength)
          subjectAt = s
          subjectLength = sLength
        }
        input = new SendRecord(bytes, flags, subject, idLength, sLength)
      } else {
        input = { bytes, header: readRecordHeader(bytes, 0, { ...limits, verify: false }) }
      }
    } catch (err) {
      if (errors === undefined) errors = new Array(count)
      errors[i] = toQmqError(err, 'QMQ_ERR_RECORD_MALFORMED')
    }
    if (input !== undefined) inputs[good++] = input
    o += length
  }
  if (o !== end) return slowDecode(body, limits)
  if (good !== count) inputs.length = good
  return { count, inputs, errors }
}

function sameBytes(buf: Buffer, a: number, b: number, aLength: number, bLength: number): boolean {
  if (b < 0 || aLength !== bLength) return false
  for (let i = 0; i < aLength; i++) if (buf[a + i] !== buf[b + i]) return false
  return true
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
