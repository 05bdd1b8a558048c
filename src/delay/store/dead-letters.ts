import type { FsIo } from '../../broker/store/fs-io'
import { type ScanResult, SegmentLog } from '../../broker/store/segment-log'
import { crc32c } from '../../common/crc32c'
import { writeFileAtomicSync } from '../../common/durable-file'
import { QmqError } from '../../common/errors'
import type { Logger } from '../../common/logger'
import { MIN_RECORD_BYTES } from '../../common/record'
import type { DamagedRange } from './schedule-log'

/**
 * The dead letters of a delay group: due messages a broker refused for good (a non-retriable status:
 * an invalid subject, a record over the broker's size limit, ...). Parked here instead of being retried
 * forever (which held back every later message of their subject); listed and redriven by an operator
 * (`qmq delay-dlq`). `deadletter.log`, a SegmentLog in single-file mode (as the schedule logs),
 * append-only frames:
 *
 *   0   u32  length      whole frame, this field included
 *   4   u32  crc         CRC32C of bytes [8, length)
 *   8   u8   kind        1 = parked, 2 = removed (redriven)
 *   9   u8   0
 *   10  u16  msgLength   bytes of the error message (kind 1; 0 for kind 2)
 *   12  u32  seqHi       sequence of the dead letter, high 32 bits
 *   16  u32  seqLo       ... low 32 bits
 *   20  i64  at          ms since epoch: parked at (kind 1), removed at (kind 2)
 *   28  u32  status      the broker's status for the record (kind 1; 0 for kind 2)
 *   32  ...  message     UTF-8 error message, then the record as refused (kind 1 only)
 *
 * Appends are buffered and made durable at each store checkpoint, before the dispatch logs are synced:
 * a frame's dispatch entry (which stops it being sent again) is never durable without its dead letter.
 * The index (sequence, time, status, message, where the record is) is in memory; records are read from
 * the file when listed or redriven. At open, a file with removed entries is rewritten with the live ones.
 */
const HEADER = 32
const KIND_PARKED = 1
const KIND_REMOVED = 2
/** Largest frame accepted at open (a record of the largest size plus its header and message). */
const MAX_FRAME_BYTES = 300 * 1024 * 1024

/** Checks the frame at `pos` (also a replicated chunk's, src/delay/replication/mirror.ts). */
export function checkFrame(buf: Buffer, pos: number, end: number): ScanResult {
  if (end - pos < HEADER) return { kind: 'short' }
  const length = buf.readUInt32BE(pos)
  if (length < HEADER || length > MAX_FRAME_BYTES)
    return { kind: 'corrupt', reason: 'frame length out of bounds' }
  if (end - pos < length) return { kind: 'short' }
  if (crc32c(buf.subarray(pos + 8, pos + length)) !== buf.readUInt32BE(pos + 4))
    return { kind: 'corrupt', reason: 'frame CRC mismatch' }
  return { kind: 'record', length }
}

export interface DeadLetter {
  sequence: number
  parkedAt: number
  status: number
  message: string
  /** Where the record is in the file. */
  recordOffset: number
  recordLength: number
}

export class DeadLetterLog {
  private readonly file: string
  private readonly io: FsIo | undefined
  private out: SegmentLog | undefined
  private readonly log: Logger
  private readonly entries = new Map<number, DeadLetter>()
  private nextSeq = 1

  constructor(file: string, log: Logger, io?: FsIo) {
    this.file = file
    this.io = io
    this.log = log
  }

  private seg(): SegmentLog {
    if (this.out === undefined) throw new QmqError('QMQ_ERR_INTERNAL', 'dead-letter log is not open')
    return this.out
  }

  get size(): number {
    return this.entries.size
  }

  /**
   * Reads the file (skipping damaged frames, reported: the scan resynchronises on the next frame that
   * verifies), compacting it when entries were removed or damaged.
   */
  async open(): Promise<DamagedRange[]> {
    const file = this.file
    const opts = { file, ...(this.io ? { io: this.io } : {}) }
    let seg = SegmentLog.openFile(opts)
    const damaged: DamagedRange[] = []
    const frames = new Map<number, Buffer>()
    let removed = 0
    const skipped = await seg.scan(
      0,
      seg.endOffset,
      checkFrame,
      (buf, pos, length) => {
        const seq = buf.readUInt32BE(pos + 12) * 0x1_0000_0000 + buf.readUInt32BE(pos + 16)
        // A copy: the scan's buffer is reused.
        if (buf[pos + 8] === KIND_PARKED) frames.set(seq, Buffer.from(buf.subarray(pos, pos + length)))
        else if (frames.delete(seq)) removed++
        if (seq >= this.nextSeq) this.nextSeq = seq + 1
      },
      { resync: true },
    )
    for (const r of skipped) damaged.push({ offset: r.logOffset, bytes: r.bytes })
    for (const d of damaged) this.log.warn({ file, ...d }, 'dead-letter log: damaged frame skipped')
    if (removed > 0 || damaged.length > 0) {
      seg.close()
      writeFileAtomicSync(file, Buffer.concat([...frames.values()]))
      seg = SegmentLog.openFile(opts)
    }
    this.out = seg
    let at = 0
    for (const [seq, f] of frames) {
      const msgLength = f.readUInt16BE(10)
      this.entries.set(seq, {
        sequence: seq,
        parkedAt: Number(f.readBigInt64BE(20)),
        status: f.readUInt32BE(28),
        message: f.toString('utf8', HEADER, HEADER + msgLength),
        recordOffset: at + HEADER + msgLength,
        recordLength: f.length - HEADER - msgLength,
      })
      at += f.length
    }
    return damaged
  }

  /** Parks a refused record (durable at the next sync). */
  park(record: Buffer, err: QmqError, now: number): DeadLetter {
    const seq = this.nextSeq++
    const message = Buffer.from(err.message.slice(0, 1000), 'utf8')
    const h = this.header(KIND_PARKED, message.length, seq, now, err.status)
    const offset = this.seg().nextOffset
    this.append(h, message, record)
    const d: DeadLetter = {
      sequence: seq,
      parkedAt: now,
      status: err.status,
      message: message.toString('utf8'),
      recordOffset: offset + HEADER + message.length,
      recordLength: record.length,
    }
    this.entries.set(seq, d)
    return d
  }

  /** Marks a dead letter removed (redriven); false when there is none with that sequence. */
  remove(seq: number, now: number): boolean {
    if (!this.entries.delete(seq)) return false
    this.append(this.header(KIND_REMOVED, 0, seq, now, 0))
    return true
  }

  /** Dead letters after `afterSeq`, in sequence order, at most `limit`. */
  list(limit: number, afterSeq = -1): DeadLetter[] {
    const out: DeadLetter[] = []
    for (const d of this.entries.values()) {
      if (d.sequence <= afterSeq) continue
      out.push(d)
      if (out.length >= limit) break
    }
    return out
  }

  get(seq: number): DeadLetter | undefined {
    return this.entries.get(seq)
  }

  /** The record of a dead letter (read from the file). */
  record(d: DeadLetter): Buffer {
    if (d.recordLength < MIN_RECORD_BYTES) throw new Error(`dead letter ${d.sequence} is too short`)
    return this.seg().readSync(d.recordOffset, d.recordLength)
  }

  /** Writes buffered frames and fdatasyncs them off the event loop. */
  sync(): Promise<void> {
    return this.out === undefined ? Promise.resolve() : this.out.sync()
  }

  async close(): Promise<void> {
    if (this.out === undefined) return
    await this.out.sync()
    this.out.close()
    this.out = undefined
  }

  private header(kind: number, msgLength: number, seq: number, at: number, status: number): Buffer {
    const h = Buffer.alloc(HEADER)
    h.writeUInt8(kind, 8)
    h.writeUInt16BE(msgLength, 10)
    h.writeUInt32BE(Math.floor(seq / 0x1_0000_0000), 12)
    h.writeUInt32BE(seq >>> 0, 16)
    h.writeBigInt64BE(BigInt(at), 20)
    h.writeUInt32BE(status, 28)
    return h
  }

  /** Appends one frame: sets its length and CRC in the header. */
  private append(h: Buffer, ...rest: Buffer[]): void {
    const length = HEADER + rest.reduce((n, b) => n + b.length, 0)
    h.writeUInt32BE(length, 0)
    let crc = crc32c(h.subarray(8))
    for (const b of rest) crc = crc32c(b, crc)
    h.writeUInt32BE(crc, 4)
    this.seg().appendBuffered(h, ...rest)
  }
}
