import { QmqError } from '../errors'

/**
 * Bounds-checked primitives for payload codecs. Every read checks that the bytes it needs are
 * there before touching them and throws QMQ_ERR_PAYLOAD_MALFORMED otherwise, so a lying length can
 * never make a decoder read past the frame or allocate what the peer claims.
 *
 * Wire primitives (big-endian):
 *   u8, u16, u32          unsigned integers
 *   u64                   unsigned, written as two u32 (hi, lo); values must be safe integers (< 2^53)
 *   i64                   signed, as a BigInt64 on the wire; values must be safe integers
 *   str16                 u16 byte length + UTF-8 (identifiers: subjects, groups, ids)
 *   str32                 u32 byte length + UTF-8 (text that can be large: messages)
 *   bytes32               u32 byte length + bytes
 */
export class PayloadReader {
  readonly buf: Buffer
  offset: number
  private readonly end: number

  constructor(buf: Buffer, offset = 0, end = buf.length) {
    this.buf = buf
    this.offset = offset
    this.end = end
  }

  get remaining(): number {
    return this.end - this.offset
  }

  private need(n: number, what: string): void {
    if (n > this.end - this.offset) {
      throw new QmqError(
        'QMQ_ERR_PAYLOAD_MALFORMED',
        `payload ends before ${what}: need ${n} bytes at offset ${this.offset}, have ${this.end - this.offset}`,
      )
    }
  }

  u8(what = 'u8'): number {
    this.need(1, what)
    return this.buf.readUInt8(this.offset++)
  }

  u16(what = 'u16'): number {
    this.need(2, what)
    const v = this.buf.readUInt16BE(this.offset)
    this.offset += 2
    return v
  }

  u32(what = 'u32'): number {
    this.need(4, what)
    const v = this.buf.readUInt32BE(this.offset)
    this.offset += 4
    return v
  }

  u64(what = 'u64'): number {
    this.need(8, what)
    const hi = this.buf.readUInt32BE(this.offset)
    const lo = this.buf.readUInt32BE(this.offset + 4)
    if (hi > 0x1fffff) throw new QmqError('QMQ_ERR_PAYLOAD_MALFORMED', `${what} is beyond 2^53`)
    this.offset += 8
    return hi * 0x1_0000_0000 + lo
  }

  i64(what = 'i64'): number {
    this.need(8, what)
    const v = this.buf.readBigInt64BE(this.offset)
    if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < BigInt(Number.MIN_SAFE_INTEGER)) {
      throw new QmqError('QMQ_ERR_PAYLOAD_MALFORMED', `${what} is beyond the safe integer range`)
    }
    this.offset += 8
    return Number(v)
  }

  str16(what = 'string'): string {
    const len = this.u16(`${what} length`)
    this.need(len, what)
    const s = this.buf.toString('utf8', this.offset, this.offset + len)
    this.offset += len
    return s
  }

  str32(what = 'string'): string {
    const len = this.u32(`${what} length`)
    this.need(len, what)
    const s = this.buf.toString('utf8', this.offset, this.offset + len)
    this.offset += len
    return s
  }

  /** A view (no copy) of the next n bytes. */
  view(n: number, what = 'bytes'): Buffer {
    this.need(n, what)
    const b = this.buf.subarray(this.offset, this.offset + n)
    this.offset += n
    return b
  }

  bytes32(what = 'bytes'): Buffer {
    const len = this.u32(`${what} length`)
    return this.view(len, what)
  }

  /** Checks that a count of items, each at least `minItemBytes`, can fit in what is left. */
  count(n: number, minItemBytes: number, what: string): number {
    if (n * minItemBytes > this.remaining) {
      throw new QmqError(
        'QMQ_ERR_PAYLOAD_MALFORMED',
        `${what} count ${n} cannot fit in the ${this.remaining} bytes left`,
      )
    }
    return n
  }

  /** Throws if bytes are left over: a well-formed payload is consumed exactly. */
  done(what = 'payload'): void {
    if (this.offset !== this.end) {
      throw new QmqError(
        'QMQ_ERR_PAYLOAD_MALFORMED',
        `${this.end - this.offset} unexpected bytes after ${what}`,
      )
    }
  }
}

/** A growable writer; `finish()` returns a view of exactly the bytes written. */
export class PayloadWriter {
  private buf: Buffer
  private offset = 0

  constructor(initialBytes = 256) {
    this.buf = Buffer.allocUnsafe(initialBytes)
  }

  get length(): number {
    return this.offset
  }

  private ensure(n: number): void {
    if (this.offset + n <= this.buf.length) return
    let size = this.buf.length * 2
    while (size < this.offset + n) size *= 2
    const next = Buffer.allocUnsafe(size)
    this.buf.copy(next, 0, 0, this.offset)
    this.buf = next
  }

  u8(v: number): this {
    this.ensure(1)
    this.buf.writeUInt8(v, this.offset)
    this.offset += 1
    return this
  }

  u16(v: number): this {
    this.ensure(2)
    this.buf.writeUInt16BE(v, this.offset)
    this.offset += 2
    return this
  }

  u32(v: number): this {
    this.ensure(4)
    this.buf.writeUInt32BE(v >>> 0, this.offset)
    this.offset += 4
    return this
  }

  u64(v: number): this {
    if (!Number.isSafeInteger(v) || v < 0)
      throw new QmqError('QMQ_ERR_INVALID_ARGUMENT', `u64 value ${v} out of range`)
    this.ensure(8)
    this.buf.writeUInt32BE(Math.floor(v / 0x1_0000_0000), this.offset)
    this.buf.writeUInt32BE(v >>> 0, this.offset + 4)
    this.offset += 8
    return this
  }

  i64(v: number): this {
    if (!Number.isSafeInteger(v))
      throw new QmqError('QMQ_ERR_INVALID_ARGUMENT', `i64 value ${v} out of range`)
    this.ensure(8)
    this.buf.writeBigInt64BE(BigInt(v), this.offset)
    this.offset += 8
    return this
  }

  str16(s: string): this {
    const len = Buffer.byteLength(s, 'utf8')
    if (len > 0xffff)
      throw new QmqError('QMQ_ERR_INVALID_ARGUMENT', `string of ${len} bytes is too long for str16`)
    this.ensure(2 + len)
    this.buf.writeUInt16BE(len, this.offset)
    this.buf.write(s, this.offset + 2, len, 'utf8')
    this.offset += 2 + len
    return this
  }

  str32(s: string): this {
    const len = Buffer.byteLength(s, 'utf8')
    this.ensure(4 + len)
    this.buf.writeUInt32BE(len, this.offset)
    this.buf.write(s, this.offset + 4, len, 'utf8')
    this.offset += 4 + len
    return this
  }

  raw(b: Uint8Array): this {
    this.ensure(b.length)
    this.buf.set(b, this.offset)
    this.offset += b.length
    return this
  }

  bytes32(b: Uint8Array): this {
    this.u32(b.length)
    return this.raw(b)
  }

  finish(): Buffer {
    return this.buf.subarray(0, this.offset)
  }
}
