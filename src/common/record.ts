import { crc32c } from './crc32c'
import { QmqError } from './errors'
import { MAX_SUBJECT_BYTES, validateSubject } from './names'

/**
 * The message record: ONE byte layout on the wire (SEND bodies, PULL answers) and in the broker's
 * and delay server's message logs. The broker verifies the CRC on receipt and appends the bytes as
 * they are; a pull answer sends the stored bytes as they are. Big-endian.
 *
 *   offset  size  field
 *   0       4     length         u32: whole record, including this field
 *   4       4     crc            u32: CRC32C of bytes [8, length)
 *   8       1     version        u8: RECORD_VERSION (1)
 *   9       1     flags          u8: bit0 DELAYED (scheduleAt is set), bit1 HAS_BODY, bit2 BODY_UTF8
 *                                    (the body was given as a string), bit3 ORDER_KEY (an order key
 *                                    follows the tags); other bits must be 0
 *   10      1     tagCount       u8: 0..MAX_TAGS
 *   11      1     reserved       u8: 0
 *   12      8     createdAt      i64: ms since the Unix epoch
 *   20      8     scheduleAt     i64: ms since the Unix epoch when DELAYED, else 0
 *   28      2     idLength       u16: 1..MAX_ID_BYTES
 *   30      2     subjectLength  u16: 1..MAX_SUBJECT_BYTES
 *   32            id             UTF-8
 *                 subject        UTF-8
 *                 tags           tagCount x (u16 length 1..MAX_TAG_BYTES, UTF-8)
 *                 orderKey       only with ORDER_KEY: u16 length 1..MAX_ORDER_KEY_BYTES, UTF-8
 *                 propsLength    u32: bytes of the properties block that follows
 *                 properties     u16 count 0..MAX_PROPERTIES, count x (u16 keyLength, key, u32 valueLength, value)
 *                 bodyLength     u32 (0 when there is no body)
 *                 body           bytes
 *
 * A record without an order key is byte for byte what it was before order keys existed (the field
 * is absent, not empty); a broker from before order keys refuses a keyed record (unknown flag).
 *
 * Everything a broker routes and filters on (subject, tags, order key, schedule time) sits before the
 * properties, so `readRecordHeader()` gets it without touching properties or body.
 * The delivery count is not part of the record: it belongs to (consumer group, delivery), so the
 * PULL answer carries it next to each record (see protocol/commands.ts).
 */
export const RECORD_VERSION = 1
export const RECORD_FIXED_BYTES = 32
/** Smallest possible record: fixed part + 1-byte id + 1-byte subject + propsLength + count + bodyLength. */
export const MIN_RECORD_BYTES = RECORD_FIXED_BYTES + 2 + 4 + 2 + 4

export const FLAG_DELAYED = 0x01
export const FLAG_HAS_BODY = 0x02
export const FLAG_BODY_UTF8 = 0x04
/** The record carries an order key (per-key ordered delivery; docs/client.md "Ordered messages"). */
export const FLAG_ORDER_KEY = 0x08
const KNOWN_RECORD_FLAGS = FLAG_DELAYED | FLAG_HAS_BODY | FLAG_BODY_UTF8 | FLAG_ORDER_KEY

export const DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024 // 4 MiB, whole record
export const MAX_ID_BYTES = 128
export const MAX_TAGS = 10
export const MAX_TAG_BYTES = 128
export const MAX_PROPERTIES = 256
export const MAX_PROPERTY_KEY_BYTES = 256
export const MAX_ORDER_KEY_BYTES = 256

/** A message as a record holds it. */
export interface MessageRecord {
  id: string
  subject: string
  /** ms since epoch */
  createdAt: number
  /** ms since epoch; undefined for a real-time message */
  scheduleAt?: number | undefined
  tags: string[]
  /** Messages of a subject with the same order key reach each consumer group one at a time, in order. */
  orderKey?: string | undefined
  properties: Map<string, string>
  /**
   * A string when the producer gave a string, a Buffer when binary, undefined when there is none.
   * decodeRecord() returns a binary body as a view into the decoded bytes (no copy): it keeps those
   * bytes alive, so copy it to keep it long after the rest is gone.
   */
  body?: Buffer | string | undefined
}

/** What a broker needs to route and filter: decoded without properties or body. */
export interface RecordHeader {
  length: number
  flags: number
  createdAt: number
  /** 0 when not delayed */
  scheduleAt: number
  id: string
  subject: string
  tags: string[]
  /** The order key, when the record has one (FLAG_ORDER_KEY). */
  orderKey?: string | undefined
  /** Offset (relative to the record start) of the propsLength field. */
  propertiesOffset: number
}

export interface RecordLimits {
  maxMessageBytes?: number
}

const TWO_32 = 0x1_0000_0000

// Byte stores for writeRecord: Buffer#writeUInt32BE and friends check their arguments on every call,
// several times the cost of the stores themselves on this path (the plan already bounds each value).
function put16(buf: Buffer, v: number, o: number): void {
  buf[o] = v >>> 8
  buf[o + 1] = v
}

function put32(buf: Buffer, v: number, o: number): void {
  buf[o] = v >>> 24
  buf[o + 1] = v >>> 16
  buf[o + 2] = v >>> 8
  buf[o + 3] = v
}

/** Writes a safe integer as a big-endian two's-complement i64 without BigInt (hot path). */
function putI64(buf: Buffer, v: number, o: number): void {
  const hi = Math.floor(v / TWO_32)
  put32(buf, hi | 0, o)
  put32(buf, v - hi * TWO_32, o + 4)
}

function readI64(buf: Buffer, o: number): number {
  return buf.readInt32BE(o) * TWO_32 + buf.readUInt32BE(o + 4)
}

// Short strings (ids, subjects, tags, property keys) are mostly ASCII: handling them in JS avoids a
// call into C++ per string, which dominates for strings this small. Anything else takes the Buffer path.
const SHORT = 64

function utf8Length(s: string): number {
  if (s.length > SHORT) return Buffer.byteLength(s, 'utf8')
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) > 0x7f) return Buffer.byteLength(s, 'utf8')
  return s.length
}

/** Writes s (whose UTF-8 length is n) at o; returns n. */
function writeUtf8(buf: Buffer, s: string, o: number, n: number): number {
  if (n === s.length && n <= SHORT) {
    for (let i = 0; i < n; i++) buf[o + i] = s.charCodeAt(i)
    return n
  }
  return buf.write(s, o, n, 'utf8')
}

function readUtf8(buf: Buffer, start: number, end: number): string {
  const n = end - start
  if (n <= SHORT) {
    let s = ''
    for (let i = start; i < end; i++) {
      const c = buf[i] as number
      if (c > 0x7f) return buf.toString('utf8', start, end)
      s += String.fromCharCode(c)
    }
    return s
  }
  return buf.toString('utf8', start, end)
}

function fail(code: 'QMQ_ERR_RECORD_MALFORMED' | 'QMQ_ERR_RECORD_TRUNCATED', message: string): never {
  throw new QmqError(code, message)
}

/**
 * Everything `writeRecord` needs besides the message: the lengths `planRecord` computed (each
 * string's UTF-8 length once) after validating every limit. Valid only for the message it was made
 * from, as long as that message does not change.
 */
export interface RecordPlan {
  /** Bytes of the whole record. */
  size: number
  flags: number
  idBytes: number
  subjectBytes: number
  /** Bytes of the properties block (count + entries), the value of propsLength. */
  propsBytes: number
  bodyBytes: number
  /** UTF-8 length of the order key; 0 when there is none. */
  orderKeyBytes: number
  /** UTF-8 lengths: each tag's, then each property's key and value, in iteration order. */
  lens: number[]
}

/** A fresh plan to hand to `planRecord` for reuse (a hot loop then allocates no plan per record). */
export function newRecordPlan(): RecordPlan {
  return {
    size: 0,
    flags: 0,
    idBytes: 0,
    subjectBytes: 0,
    propsBytes: 0,
    bodyBytes: 0,
    orderKeyBytes: 0,
    lens: [],
  }
}

// The last subject that passed validateSubject and its UTF-8 length: producers send run after run of
// the same subject, and a string cannot change.
let lastSubject = ''
let lastSubjectBytes = 0

/**
 * Validates a message against every record limit and computes its layout; throws a QmqError with the
 * matching code. Fills `into` when given (reused: its `lens` array is overwritten), else a new plan.
 */
export function planRecord(msg: MessageRecord, limits: RecordLimits = {}, into?: RecordPlan): RecordPlan {
  const maxMessageBytes = limits.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES
  const idBytes = utf8Length(msg.id)
  if (idBytes === 0 || idBytes > MAX_ID_BYTES) {
    throw new QmqError(
      'QMQ_ERR_MESSAGE_ID_INVALID',
      `message id is ${idBytes} bytes; it must be 1 to ${MAX_ID_BYTES}`,
    )
  }
  let subjectBytes: number
  if (msg.subject === lastSubject && lastSubject !== '') subjectBytes = lastSubjectBytes
  else {
    validateSubject(msg.subject)
    subjectBytes = utf8Length(msg.subject)
    lastSubject = msg.subject
    lastSubjectBytes = subjectBytes
  }
  const tags = msg.tags
  if (tags.length > MAX_TAGS) {
    throw new QmqError('QMQ_ERR_TOO_MANY_TAGS', `${tags.length} tags; the maximum is ${MAX_TAGS}`)
  }
  const plan = into ?? newRecordPlan()
  const lens = plan.lens
  lens.length = 0
  let size = RECORD_FIXED_BYTES + idBytes + subjectBytes
  for (let i = 0; i < tags.length; i++) {
    const n = utf8Length(tags[i] as string)
    if (n === 0 || n > MAX_TAG_BYTES) {
      throw new QmqError('QMQ_ERR_TAG_INVALID', `tag is ${n} bytes; it must be 1 to ${MAX_TAG_BYTES}`)
    }
    lens.push(n)
    size += 2 + n
  }
  const orderKey = msg.orderKey
  let orderKeyBytes = 0
  if (orderKey !== undefined) {
    orderKeyBytes = typeof orderKey === 'string' ? utf8Length(orderKey) : 0
    if (orderKeyBytes === 0 || orderKeyBytes > MAX_ORDER_KEY_BYTES) {
      throw new QmqError(
        'QMQ_ERR_INVALID_ARGUMENT',
        `order key is ${orderKeyBytes} bytes; it must be 1 to ${MAX_ORDER_KEY_BYTES}`,
      )
    }
    size += 2 + orderKeyBytes
  }
  if (msg.properties.size > MAX_PROPERTIES) {
    throw new QmqError(
      'QMQ_ERR_TOO_MANY_PROPERTIES',
      `${msg.properties.size} properties; the maximum is ${MAX_PROPERTIES}`,
    )
  }
  let propsBytes = 2
  for (const [k, v] of msg.properties) {
    const kn = utf8Length(k)
    if (kn === 0 || kn > MAX_PROPERTY_KEY_BYTES) {
      throw new QmqError(
        'QMQ_ERR_PROPERTY_INVALID',
        `property key is ${kn} bytes; it must be 1 to ${MAX_PROPERTY_KEY_BYTES}`,
      )
    }
    const vn = utf8Length(v)
    lens.push(kn, vn)
    propsBytes += 2 + kn + 4 + vn
  }
  size += 4 + propsBytes
  const body = msg.body
  const bodyIsString = typeof body === 'string'
  const bodyBytes = body === undefined ? 0 : bodyIsString ? Buffer.byteLength(body, 'utf8') : body.length
  size += 4 + bodyBytes
  if (size > maxMessageBytes) {
    throw new QmqError(
      'QMQ_ERR_MESSAGE_TOO_LARGE',
      `message record is ${size} bytes; the maximum is ${maxMessageBytes}`,
      {
        details: { size, maxMessageBytes },
      },
    )
  }
  const delayed = msg.scheduleAt !== undefined
  if (delayed && !Number.isSafeInteger(msg.scheduleAt)) {
    throw new QmqError('QMQ_ERR_SCHEDULE_INVALID', `schedule time ${msg.scheduleAt} is not an integer of ms`)
  }
  if (!Number.isSafeInteger(msg.createdAt)) {
    throw new QmqError('QMQ_ERR_INVALID_ARGUMENT', `created time ${msg.createdAt} is not an integer of ms`)
  }
  plan.size = size
  plan.flags =
    (delayed ? FLAG_DELAYED : 0) |
    (body !== undefined ? FLAG_HAS_BODY : 0) |
    (bodyIsString ? FLAG_BODY_UTF8 : 0) |
    (orderKey !== undefined ? FLAG_ORDER_KEY : 0)
  plan.orderKeyBytes = orderKeyBytes
  plan.idBytes = idBytes
  plan.subjectBytes = subjectBytes
  plan.propsBytes = propsBytes
  plan.bodyBytes = bodyBytes
  return plan
}

/**
 * Writes the record `plan` describes (CRC included) at `offset` of `target`, which must have
 * `plan.size` bytes there; returns the bytes written (`plan.size`). `msg` must be the message the plan
 * was made from, unchanged since: the plan's lengths are what gets written.
 */
export function writeRecord(plan: RecordPlan, msg: MessageRecord, target: Buffer, offset = 0): number {
  const size = plan.size
  if (offset < 0 || offset + size > target.length) {
    throw new QmqError(
      'QMQ_ERR_INVALID_ARGUMENT',
      `record of ${size} bytes does not fit at offset ${offset} of a ${target.length}-byte buffer`,
    )
  }
  const buf = target
  const lens = plan.lens
  const tags = msg.tags
  put32(buf, size, offset)
  buf[offset + 8] = RECORD_VERSION
  buf[offset + 9] = plan.flags
  buf[offset + 10] = tags.length
  buf[offset + 11] = 0
  putI64(buf, msg.createdAt, offset + 12)
  putI64(buf, plan.flags & FLAG_DELAYED ? (msg.scheduleAt as number) : 0, offset + 20)
  put16(buf, plan.idBytes, offset + 28)
  put16(buf, plan.subjectBytes, offset + 30)
  let o = offset + RECORD_FIXED_BYTES
  o += writeUtf8(buf, msg.id, o, plan.idBytes)
  o += writeUtf8(buf, msg.subject, o, plan.subjectBytes)
  let p = 0
  for (let i = 0; i < tags.length; i++) {
    const n = lens[p++] as number
    put16(buf, n, o)
    o += 2
    o += writeUtf8(buf, tags[i] as string, o, n)
  }
  if (plan.flags & FLAG_ORDER_KEY) {
    put16(buf, plan.orderKeyBytes, o)
    o += 2
    o += writeUtf8(buf, msg.orderKey as string, o, plan.orderKeyBytes)
  }
  put32(buf, plan.propsBytes, o)
  o += 4
  put16(buf, msg.properties.size, o)
  o += 2
  for (const [k, v] of msg.properties) {
    const kn = lens[p++] as number
    const vn = lens[p++] as number
    put16(buf, kn, o)
    o += 2
    o += writeUtf8(buf, k, o, kn)
    put32(buf, vn, o)
    o += 4
    if (vn > 0) o += writeUtf8(buf, v, o, vn)
  }
  const bodyBytes = plan.bodyBytes
  put32(buf, bodyBytes, o)
  o += 4
  const body = msg.body
  if (typeof body === 'string') o += buf.write(body, o, bodyBytes, 'utf8')
  else if (body !== undefined) {
    // TypedArray.set is a memmove inside V8, cheaper than Buffer#copy's call into C++ for small bodies.
    buf.set(body, o)
    o += body.length
  }
  if (o !== offset + size) {
    // Best effort: catches a body that changed size; a message must simply not change in between.
    throw new QmqError('QMQ_ERR_INVALID_ARGUMENT', 'the message changed between planRecord and writeRecord')
  }
  put32(buf, crc32c(buf.subarray(offset + 8, offset + size)), offset + 4)
  return size
}

/** Encodes a record into a new Buffer. Validates every limit; throws a QmqError with the matching code. */
export function encodeRecord(msg: MessageRecord, limits: RecordLimits = {}): Buffer {
  const plan = planRecord(msg, limits, scratchPlan)
  const buf = Buffer.allocUnsafe(plan.size)
  writeRecord(plan, msg, buf, 0)
  return buf
}

// encodeRecord's plan, reused (planning and writing happen in one synchronous call).
const scratchPlan = newRecordPlan()

/**
 * Checks the framing of the record at `offset` (length within bounds, version, CRC) and returns its
 * length. `end` bounds the bytes that belong to the caller (a frame body, a segment's valid region).
 */
export function verifyRecord(buf: Buffer, offset = 0, end = buf.length, limits: RecordLimits = {}): number {
  const maxMessageBytes = limits.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES
  const available = end - offset
  if (available < 4)
    fail('QMQ_ERR_RECORD_TRUNCATED', `record length field is cut off (${available} bytes left)`)
  const length = buf.readUInt32BE(offset)
  if (length < MIN_RECORD_BYTES)
    fail('QMQ_ERR_RECORD_MALFORMED', `record length ${length} is below the minimum ${MIN_RECORD_BYTES}`)
  if (length > maxMessageBytes) {
    throw new QmqError(
      'QMQ_ERR_MESSAGE_TOO_LARGE',
      `record of ${length} bytes exceeds the maximum of ${maxMessageBytes}`,
    )
  }
  if (length > available)
    fail('QMQ_ERR_RECORD_TRUNCATED', `record of ${length} bytes but only ${available} bytes left`)
  const stored = buf.readUInt32BE(offset + 4)
  const actual = crc32c(buf.subarray(offset + 8, offset + length))
  if (stored !== actual) {
    throw new QmqError(
      'QMQ_ERR_CRC_MISMATCH',
      `record CRC32C is 0x${actual.toString(16)} but 0x${stored.toString(16)} was stored`,
      {
        details: { offset },
      },
    )
  }
  const version = buf.readUInt8(offset + 8)
  if (version !== RECORD_VERSION) {
    throw new QmqError('QMQ_ERR_UNSUPPORTED_RECORD_VERSION', `record version ${version} is not supported`)
  }
  return length
}

/** Reads a u16-length-prefixed UTF-8 string from inside [.., limit). */
function readStr16(buf: Buffer, o: number, limit: number, what: string, max: number): [string, number] {
  if (o + 2 > limit) fail('QMQ_ERR_RECORD_MALFORMED', `${what} length points past the end of the record`)
  const n = buf.readUInt16BE(o)
  if (n === 0 || n > max) fail('QMQ_ERR_RECORD_MALFORMED', `${what} is ${n} bytes; it must be 1 to ${max}`)
  if (o + 2 + n > limit) fail('QMQ_ERR_RECORD_MALFORMED', `${what} points past the end of the record`)
  return [readUtf8(buf, o + 2, o + 2 + n), o + 2 + n]
}

/**
 * Decodes what routing needs (id, subject, tags, times) without properties or body.
 * With `verify` (default true) checks length and CRC first.
 */
export function readRecordHeader(
  buf: Buffer,
  offset = 0,
  options: { verify?: boolean; end?: number } & RecordLimits = {},
): RecordHeader {
  const end = options.end ?? buf.length
  const length = options.verify === false ? buf.readUInt32BE(offset) : verifyRecord(buf, offset, end, options)
  if (options.verify === false && (length < MIN_RECORD_BYTES || offset + length > end)) {
    fail('QMQ_ERR_RECORD_TRUNCATED', `record of ${length} bytes does not fit in ${end - offset} bytes`)
  }
  const limit = offset + length
  const flags = buf.readUInt8(offset + 9)
  if ((flags & ~KNOWN_RECORD_FLAGS) !== 0)
    fail('QMQ_ERR_RECORD_MALFORMED', `unknown record flags 0x${flags.toString(16)}`)
  const tagCount = buf.readUInt8(offset + 10)
  if (tagCount > MAX_TAGS) {
    throw new QmqError('QMQ_ERR_TOO_MANY_TAGS', `record has ${tagCount} tags; the maximum is ${MAX_TAGS}`)
  }
  const createdAt = readI64(buf, offset + 12)
  const scheduleAt = readI64(buf, offset + 20)
  const idLength = buf.readUInt16BE(offset + 28)
  const subjectLength = buf.readUInt16BE(offset + 30)
  if (idLength === 0 || idLength > MAX_ID_BYTES) {
    throw new QmqError(
      'QMQ_ERR_MESSAGE_ID_INVALID',
      `record id is ${idLength} bytes; it must be 1 to ${MAX_ID_BYTES}`,
    )
  }
  if (subjectLength === 0 || subjectLength > MAX_SUBJECT_BYTES) {
    throw new QmqError(
      'QMQ_ERR_SUBJECT_INVALID',
      `record subject is ${subjectLength} bytes; it must be 1 to ${MAX_SUBJECT_BYTES}`,
    )
  }
  let o = offset + RECORD_FIXED_BYTES
  if (o + idLength + subjectLength > limit)
    fail('QMQ_ERR_RECORD_MALFORMED', 'id and subject point past the end of the record')
  const id = readUtf8(buf, o, o + idLength)
  o += idLength
  const subject = readUtf8(buf, o, o + subjectLength)
  o += subjectLength
  const tags: string[] = []
  for (let i = 0; i < tagCount; i++) {
    const [tag, next] = readStr16(buf, o, limit, 'tag', MAX_TAG_BYTES)
    tags.push(tag)
    o = next
  }
  let orderKey: string | undefined
  if (flags & FLAG_ORDER_KEY) {
    const [key, next] = readStr16(buf, o, limit, 'order key', MAX_ORDER_KEY_BYTES)
    orderKey = key
    o = next
  }
  return { length, flags, createdAt, scheduleAt, id, subject, tags, orderKey, propertiesOffset: o - offset }
}

/**
 * Where the subject of the record at `offset` starts in `buf`: its UTF-8 bytes are
 * [at, at + buf.readUInt16BE(offset + 30)) (the layout above: fixed part, id, subject). For a reader
 * that needs nothing else and compares those bytes before decoding them (a broker slave dispatching
 * its copy of the message log, replication/slave-consume.ts, decodes a subject only when it differs
 * from those it has seen). Checks exactly what readRecordHeader checks with `verify: false` (length
 * within [offset, end), flags, id and subject lengths, every tag's and the order key's length within
 * the record), walking the tags and order key without decoding them; on a violation throws
 * readRecordHeader's own error. The CRC is not checked.
 */
export function recordSubjectAt(buf: Buffer, offset: number, end: number): number {
  if (end - offset >= MIN_RECORD_BYTES) {
    const length = buf.readUInt32BE(offset)
    const limit = offset + length
    const flags = buf[offset + 9] as number
    const tagCount = buf[offset + 10] as number
    const idLength = buf.readUInt16BE(offset + 28)
    const subjectLength = buf.readUInt16BE(offset + 30)
    const at = offset + RECORD_FIXED_BYTES + idLength
    let o = at + subjectLength
    let ok =
      length >= MIN_RECORD_BYTES &&
      limit <= end &&
      (flags & ~KNOWN_RECORD_FLAGS) === 0 &&
      tagCount <= MAX_TAGS &&
      idLength !== 0 &&
      idLength <= MAX_ID_BYTES &&
      subjectLength !== 0 &&
      subjectLength <= MAX_SUBJECT_BYTES &&
      o <= limit
    for (let i = 0; ok && i < tagCount; i++) {
      const n = o + 2 <= limit ? buf.readUInt16BE(o) : 0
      ok = n !== 0 && n <= MAX_TAG_BYTES && o + 2 + n <= limit
      o += 2 + n
    }
    if (ok && (flags & FLAG_ORDER_KEY) !== 0) {
      const n = o + 2 <= limit ? buf.readUInt16BE(o) : 0
      ok = n !== 0 && n <= MAX_ORDER_KEY_BYTES && o + 2 + n <= limit
    }
    if (ok) return at
  }
  // Out of bounds somewhere: readRecordHeader throws what it finds (the same error as ever).
  readRecordHeader(buf, offset, { verify: false, end })
  // Not reached (the checks above are readRecordHeader's): the layout's answer all the same.
  return offset + RECORD_FIXED_BYTES + buf.readUInt16BE(offset + 28)
}

/**
 * The routing header of a record whose subject is decoded and whose id and times are read from the
 * bytes only when asked (readRecordRouting). Holds the record's bytes.
 */
class LazyRecordHeader implements RecordHeader {
  readonly length: number
  readonly tags: string[] = []
  readonly propertiesOffset: number

  constructor(
    readonly bytes: Buffer,
    readonly flags: number,
    readonly subject: string,
    private readonly idLength: number,
    readonly subjectLength: number,
  ) {
    this.length = bytes.length
    this.propertiesOffset = RECORD_FIXED_BYTES + idLength + subjectLength
  }

  get id(): string {
    return readUtf8(this.bytes, RECORD_FIXED_BYTES, RECORD_FIXED_BYTES + this.idLength)
  }

  get createdAt(): number {
    return readI64(this.bytes, 12)
  }

  get scheduleAt(): number {
    return readI64(this.bytes, 20)
  }

  /** True when this record's subject bytes equal `other`'s (so its subject string can be shared). */
  sameSubjectBytes(bytes: Buffer, at: number, length: number): boolean {
    if (length !== this.subjectLength) return false
    const mine = RECORD_FIXED_BYTES + this.idLength
    for (let i = 0; i < length; i++) if (this.bytes[mine + i] !== bytes[at + i]) return false
    return true
  }
}

/**
 * What a broker needs to route a received record, as cheaply as possible: verifies it exactly as
 * readRecordHeader does (length, CRC, version), then, for the common case (no tags, known flags),
 * decodes only the subject; id and times are read from the bytes when asked. Records out of the
 * common case get readRecordHeader's answer and errors. `previous` (the header of the record before,
 * from this function) lets a run of records with the same subject bytes share one subject string.
 * `bytes` must hold exactly the record.
 */
export function readRecordRouting(
  bytes: Buffer,
  limits: RecordLimits = {},
  previous?: RecordHeader,
): RecordHeader {
  const length = verifyRecord(bytes, 0, bytes.length, limits)
  const flags = bytes[9] as number
  const idLength = bytes.readUInt16BE(28)
  const subjectLength = bytes.readUInt16BE(30)
  if (
    (flags & ~KNOWN_RECORD_FLAGS) !== 0 ||
    (flags & FLAG_ORDER_KEY) !== 0 ||
    bytes[10] !== 0 ||
    idLength === 0 ||
    idLength > MAX_ID_BYTES ||
    subjectLength === 0 ||
    subjectLength > MAX_SUBJECT_BYTES ||
    RECORD_FIXED_BYTES + idLength + subjectLength > length
  ) {
    return readRecordHeader(bytes, 0, { ...limits, verify: false })
  }
  const at = RECORD_FIXED_BYTES + idLength
  const subject =
    previous instanceof LazyRecordHeader && previous.sameSubjectBytes(bytes, at, subjectLength)
      ? previous.subject
      : readUtf8(bytes, at, at + subjectLength)
  return new LazyRecordHeader(bytes, flags, subject, idLength, subjectLength)
}

/** Decodes a whole record. With `verify` (default true) checks length and CRC first. */
export function decodeRecord(
  buf: Buffer,
  offset = 0,
  options: { verify?: boolean; end?: number } & RecordLimits = {},
): MessageRecord {
  const h = readRecordHeader(buf, offset, options)
  const limit = offset + h.length
  let o = offset + h.propertiesOffset
  if (o + 4 > limit) fail('QMQ_ERR_RECORD_MALFORMED', 'properties length points past the end of the record')
  const propsLength = buf.readUInt32BE(o)
  o += 4
  const propsEnd = o + propsLength
  if (propsLength < 2 || propsEnd > limit)
    fail('QMQ_ERR_RECORD_MALFORMED', 'properties block points past the end of the record')
  const count = buf.readUInt16BE(o)
  o += 2
  if (count > MAX_PROPERTIES) {
    throw new QmqError(
      'QMQ_ERR_TOO_MANY_PROPERTIES',
      `record has ${count} properties; the maximum is ${MAX_PROPERTIES}`,
    )
  }
  const properties = new Map<string, string>()
  for (let i = 0; i < count; i++) {
    const [key, next] = readStr16(buf, o, propsEnd, 'property key', MAX_PROPERTY_KEY_BYTES)
    o = next
    if (o + 4 > propsEnd)
      fail('QMQ_ERR_RECORD_MALFORMED', 'property value length points past the properties block')
    const vn = buf.readUInt32BE(o)
    o += 4
    if (vn > propsEnd - o) fail('QMQ_ERR_RECORD_MALFORMED', 'property value points past the properties block')
    properties.set(key, readUtf8(buf, o, o + vn))
    o += vn
  }
  if (o !== propsEnd) fail('QMQ_ERR_RECORD_MALFORMED', 'properties block length does not match its entries')
  if (o + 4 > limit) fail('QMQ_ERR_RECORD_MALFORMED', 'body length points past the end of the record')
  const bodyLength = buf.readUInt32BE(o)
  o += 4
  if (o + bodyLength !== limit)
    fail('QMQ_ERR_RECORD_MALFORMED', 'body length does not match the record length')
  let body: Buffer | string | undefined
  if (h.flags & FLAG_HAS_BODY) {
    // A view, not a copy: the bytes come from a frame or segment read that nothing writes to again.
    body = h.flags & FLAG_BODY_UTF8 ? buf.toString('utf8', o, limit) : buf.subarray(o, limit)
  } else if (bodyLength !== 0) {
    fail('QMQ_ERR_RECORD_MALFORMED', 'record without a body has a non-zero body length')
  }
  return {
    id: h.id,
    subject: h.subject,
    createdAt: h.createdAt,
    scheduleAt: h.flags & FLAG_DELAYED ? h.scheduleAt : undefined,
    tags: h.tags,
    ...(h.orderKey !== undefined ? { orderKey: h.orderKey } : {}),
    properties,
    body,
  }
}

/** Property that carries the producer's business keys (`message.setKeys`), joined by KEY_SEPARATOR. */
export const KEYS_PROPERTY = 'qmq_keys'
/** Property that carries the producer's host name (set by the SDK). */
export const HOST_PROPERTY = 'qmq_host'
/** Property that carries the producer's appCode (set by the SDK). */
export const APP_CODE_PROPERTY = 'qmq_appCode'
export const KEY_SEPARATOR = ' '
export const MAX_KEYS = 16
export const MAX_KEY_BYTES = 128

/**
 * The value of property `key` (ASCII) of a stored record that starts at `offset` and whose
 * properties block starts at `propsAt` (absolute; RecordHeader.propertiesOffset + offset), or
 * undefined when absent. Never throws: a malformed block answers undefined (the record was verified
 * when it was received).
 */
export function findRecordProperty(
  buf: Buffer,
  propsAt: number,
  end: number,
  key: string,
): string | undefined {
  const at = findRecordPropertyAt(buf, propsAt, end, key)
  return at < 0 ? undefined : buf.toString('utf8', at, at + buf.readUInt32BE(at - 4))
}

/**
 * Where the value of property `key` (ASCII) starts in `buf` (its byte length is the u32 before it),
 * or -1, as findRecordProperty finds it. Compares key bytes without decoding the others and decodes
 * nothing: the broker's index calls it for every record and hashes the value's bytes in place.
 */
export function findRecordPropertyAt(buf: Buffer, propsAt: number, end: number, key: string): number {
  if (propsAt + 6 > end) return -1
  const propsEnd = Math.min(end, propsAt + 4 + buf.readUInt32BE(propsAt))
  const count = buf.readUInt16BE(propsAt + 4)
  let o = propsAt + 6
  for (let i = 0; i < count; i++) {
    if (o + 2 > propsEnd) return -1
    const kn = buf.readUInt16BE(o)
    o += 2
    if (o + kn + 4 > propsEnd) return -1
    let match = kn === key.length
    for (let j = 0; match && j < kn; j++) if (buf[o + j] !== key.charCodeAt(j)) match = false
    o += kn
    const vn = buf.readUInt32BE(o)
    o += 4
    if (o + vn > propsEnd) return -1
    if (match) return o
    o += vn
  }
  return -1
}

/** The business keys of a `qmq_keys` property value. */
export function splitKeys(value: string | undefined): string[] {
  if (value === undefined || value === '') return []
  if (!value.includes(KEY_SEPARATOR)) return [value]
  return value.split(KEY_SEPARATOR).filter((k) => k.length > 0)
}

/**
 * The order key of a stored record whose framing was verified (a pull's scan): undefined without
 * FLAG_ORDER_KEY, after one byte test (the common case costs nothing more). Walks id, subject and tags
 * to the key without decoding them; bounds-checked like readRecordHeader.
 */
export function readOrderKey(buf: Buffer): string | undefined {
  if (((buf[9] as number) & FLAG_ORDER_KEY) === 0) return undefined
  const limit = buf.readUInt32BE(0)
  let o = RECORD_FIXED_BYTES + buf.readUInt16BE(28) + buf.readUInt16BE(30)
  const tagCount = buf[10] as number
  for (let i = 0; i < tagCount && o + 2 <= limit; i++) o += 2 + buf.readUInt16BE(o)
  return readStr16(buf, o, Math.min(limit, buf.length), 'order key', MAX_ORDER_KEY_BYTES)[0]
}
