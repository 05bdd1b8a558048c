import { QmqError } from '../errors'

/**
 * Frames: the unit of the qmq TCP protocol (client <-> broker, client <-> delay server,
 * delay server <-> broker). Big-endian.
 *
 *   offset  size  field
 *   0       4     length     u32: bytes that follow this field = HEADER_BYTES - 4 + body length
 *   4       4     magic      u32: 0x514D5146 ("QMQF")
 *   8       1     version    u8: PROTOCOL_VERSION
 *   9       1     flags      u8: bit0 RESPONSE, bit1 ONEWAY (no response expected); other bits 0
 *   10      2     code       u16: request code (a response repeats its request's code)
 *   12      2     status     u16: 0 in requests; in responses 0 = ok, else an error status (error-codes.ts)
 *   14      4     requestId  u32: chosen by the requester, echoed in the response
 *   18      ...   body       request- or response-specific; an error response's body is ErrorBody
 *
 * Limits: `length` is checked against maxFrameBytes before a byte of the body is buffered, so a
 * peer cannot make us allocate what it claims. Bad magic, an oversize length or a length shorter
 * than the header mean the stream can no longer be trusted: the decoder throws and the connection
 * must be closed. An unknown version is NOT fatal (the frame is well delimited): the decoder yields
 * it and the server answers QMQ_ERR_UNSUPPORTED_VERSION.
 */
export const FRAME_MAGIC = 0x514d5146
export const PROTOCOL_VERSION = 1
export const HEADER_BYTES = 18
export const LENGTH_FIELD_BYTES = 4
export const DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024 // 16 MiB, whole frame including header

export const FLAG_RESPONSE = 0x01
export const FLAG_ONEWAY = 0x02
const KNOWN_FLAGS = FLAG_RESPONSE | FLAG_ONEWAY

export interface FrameHeader {
  version: number
  flags: number
  code: number
  status: number
  requestId: number
}

export interface Frame extends FrameHeader {
  /** A view into the received bytes: copy it if you keep it past the current turn and care about memory. */
  body: Buffer
}

/** Writes the 18-byte header for a frame whose body is `bodyLength` bytes. */
export function encodeFrameHeader(
  header: Omit<FrameHeader, 'version'> & { version?: number },
  bodyLength: number,
): Buffer {
  const buf = Buffer.allocUnsafe(HEADER_BYTES)
  writeFrameHeader(buf, 0, header, bodyLength)
  return buf
}

export function writeFrameHeader(
  buf: Buffer,
  offset: number,
  header: Omit<FrameHeader, 'version'> & { version?: number },
  bodyLength: number,
): void {
  buf.writeUInt32BE(HEADER_BYTES - LENGTH_FIELD_BYTES + bodyLength, offset)
  buf.writeUInt32BE(FRAME_MAGIC, offset + 4)
  buf.writeUInt8(header.version ?? PROTOCOL_VERSION, offset + 8)
  buf.writeUInt8(header.flags, offset + 9)
  buf.writeUInt16BE(header.code, offset + 10)
  buf.writeUInt16BE(header.status, offset + 12)
  buf.writeUInt32BE(header.requestId >>> 0, offset + 14)
}

/** Header and body in one buffer (one copy of the body). For large bodies prefer header + writev. */
export function encodeFrame(
  header: Omit<FrameHeader, 'version'> & { version?: number },
  body: Uint8Array,
): Buffer {
  const buf = Buffer.allocUnsafe(HEADER_BYTES + body.length)
  writeFrameHeader(buf, 0, header, body.length)
  buf.set(body, HEADER_BYTES)
  return buf
}

/**
 * Streaming frame decoder. `push(chunk)` accepts any chunking of the byte stream and returns the
 * frames completed by it, in order. A frame lying inside one chunk is returned as a view (no copy);
 * one spanning chunks is copied once into a buffer of exactly its size, allocated only after its
 * length passed the limit check.
 *
 * Large frames (`assembleFrom`, off by default) get that buffer as soon as their header is in: each
 * later chunk is copied straight into it while it is still in the CPU cache, no list of chunks is
 * kept, and `readTarget()` offers the rest of it as the socket's next read buffer (the kernel then
 * writes the body in place and `push` copies nothing). Only for peers trusted with an allocation of
 * the size they announce (the client side): a server keeps it off, so a partial frame holds no more
 * memory than the bytes received, which its partial-frame budget counts.
 */
export class FrameDecoder {
  private readonly maxFrameBytes: number
  private chunks: Buffer[] = []
  private buffered = 0
  /** Total frame size (incl. length field) of the frame being assembled, once its length is known. */
  private need = -1
  private failed: QmqError | undefined
  private readonly assembleFrom: number
  /**
   * The final buffer (`need` bytes) of the large frame being assembled; its first `buffered` bytes
   * are filled and `chunks` is empty meanwhile.
   */
  private assembly: Buffer | undefined

  constructor(options: { maxFrameBytes?: number; assembleFrom?: number } = {}) {
    this.maxFrameBytes = options.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES
    this.assembleFrom = options.assembleFrom ?? Number.POSITIVE_INFINITY
  }

  /**
   * While a large frame is being assembled: the unfilled rest of its buffer, to be read into and then
   * passed to `push` (bytes already in place are not copied again). Undefined otherwise.
   */
  readTarget(): Buffer | undefined {
    return this.assembly?.subarray(this.buffered)
  }

  /**
   * Bytes held waiting for the rest of a frame (after `push` returns: bytes of one partial frame).
   * Servers count these against their partial-frame budget and frame deadline (common/server/).
   */
  get pendingBytes(): number {
    return this.buffered
  }

  /** Drops the bytes of the partial frame held (the connection is being closed); returns how many. */
  discard(): number {
    const n = this.buffered
    this.chunks = []
    this.assembly = undefined
    this.buffered = 0
    this.need = -1
    return n
  }

  /**
   * Feeds bytes; returns the frames they complete. Throws a QmqError (BAD_MAGIC, FRAME_TOO_LARGE,
   * FRAME_MALFORMED) when the stream can no longer be trusted; after that every call throws it again.
   */
  push(chunk: Buffer): Frame[] {
    if (this.failed) throw this.failed
    const frames: Frame[] = []
    if (chunk.length === 0) return frames
    try {
      let taken = 0
      const target = this.assembly
      if (target !== undefined) {
        const k = Math.min(chunk.length, target.length - this.buffered)
        taken = k
        const inPlace =
          chunk.buffer === target.buffer && chunk.byteOffset === target.byteOffset + this.buffered
        if (!inPlace) chunk.copy(target, this.buffered, 0, k)
        this.buffered += k
        if (this.buffered < target.length) return frames
        this.assembly = undefined
        this.buffered = 0
        this.need = -1
        frames.push(frameOf(target))
        if (k === chunk.length) return frames
      }
      const rest = taken === 0 ? chunk : chunk.subarray(taken)
      this.chunks.push(rest)
      this.buffered += rest.length
      for (;;) {
        if (this.need < 0) {
          // Need the length and magic before anything else (8 bytes).
          if (this.buffered < 8) break
          const head = this.peek(8)
          const length = head.readUInt32BE(0)
          const magic = head.readUInt32BE(4)
          if (magic !== FRAME_MAGIC) {
            throw new QmqError(
              'QMQ_ERR_BAD_MAGIC',
              `bad frame magic 0x${magic.toString(16).padStart(8, '0')}`,
              {
                details: { magic },
              },
            )
          }
          const total = length + LENGTH_FIELD_BYTES
          if (length < HEADER_BYTES - LENGTH_FIELD_BYTES) {
            throw new QmqError(
              'QMQ_ERR_FRAME_MALFORMED',
              `frame length ${length} is shorter than the header`,
              {
                details: { length },
              },
            )
          }
          if (total > this.maxFrameBytes) {
            throw new QmqError(
              'QMQ_ERR_FRAME_TOO_LARGE',
              `frame of ${total} bytes exceeds the maximum of ${this.maxFrameBytes}`,
              { details: { length: total, maxFrameBytes: this.maxFrameBytes } },
            )
          }
          this.need = total
        }
        if (this.buffered < this.need) {
          // What is buffered is all of this frame (earlier frames were taken): from here on it is
          // assembled in its final buffer.
          if (this.need >= this.assembleFrom) {
            const assembly = Buffer.allocUnsafe(this.need)
            let filled = 0
            for (const c of this.chunks) {
              c.copy(assembly, filled)
              filled += c.length
            }
            this.chunks = []
            this.assembly = assembly
          }
          break
        }
        const bytes = this.take(this.need)
        this.need = -1
        frames.push(frameOf(bytes))
      }
    } catch (err) {
      this.failed = err as QmqError
      this.chunks = []
      this.assembly = undefined
      this.buffered = 0
      throw err
    }
    return frames
  }

  /** The first n buffered bytes, without consuming them (n is small: at most 8). */
  private peek(n: number): Buffer {
    const first = this.chunks[0] as Buffer
    if (first.length >= n) return first
    const out = Buffer.allocUnsafe(n)
    let filled = 0
    for (const c of this.chunks) {
      const k = Math.min(c.length, n - filled)
      c.copy(out, filled, 0, k)
      filled += k
      if (filled === n) break
    }
    return out
  }

  /** Removes and returns the first n buffered bytes (n <= buffered). */
  private take(n: number): Buffer {
    this.buffered -= n
    const first = this.chunks[0] as Buffer
    if (first.length >= n) {
      if (first.length > n) {
        this.chunks[0] = first.subarray(n)
        return first.subarray(0, n)
      }
      this.chunks.shift()
      return first // a chunk holding exactly the frame (the usual request): no view made
    }
    const out = Buffer.allocUnsafe(n)
    let filled = 0
    while (filled < n) {
      const c = this.chunks[0] as Buffer
      const k = Math.min(c.length, n - filled)
      c.copy(out, filled, 0, k)
      filled += k
      if (k === c.length) this.chunks.shift()
      else this.chunks[0] = c.subarray(k)
    }
    return out
  }
}

/** The frame in `bytes` (exactly one whole frame, length field included). */
function frameOf(bytes: Buffer): Frame {
  const flags = bytes.readUInt8(9)
  if ((flags & ~KNOWN_FLAGS) !== 0) {
    throw new QmqError('QMQ_ERR_FRAME_MALFORMED', `unknown frame flags 0x${flags.toString(16)}`, {
      details: { flags },
    })
  }
  return {
    version: bytes.readUInt8(8),
    flags,
    code: bytes.readUInt16BE(10),
    status: bytes.readUInt16BE(12),
    requestId: bytes.readUInt32BE(14),
    body: bytes.subarray(HEADER_BYTES),
  }
}
