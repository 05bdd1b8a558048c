import type { FsIo } from '../../broker/store/fs-io'
import { type ScanResult, SegmentLog, type SkippedRange } from '../../broker/store/segment-log'
import { crc32c, crc32cRange } from '../../common/crc32c'
import { DEFAULT_MAX_MESSAGE_BYTES, MIN_RECORD_BYTES, verifyRecord } from '../../common/record'

/**
 * A schedule log: the messages of one time bucket, whole, in the order they were filed. One file per
 * bucket, `schedule/<bucket start, ms since epoch, 13 digits>.sched`: a SegmentLog in single-file mode
 * (recovery, CRC checks, fsync of the file and its directory, rewrite after a failed fdatasync,
 * reference-counted descriptors), so an offset is a byte position in the file; the wheel and the
 * dispatch log refer to messages by it.
 *
 * Frame layout (big-endian), written by `append`:
 *   0   u32  length      whole frame, this field included (= 16 + record length)
 *   4   u32  crc         CRC32C of bytes [8, length)
 *   8   u32  msgHi       message-log offset of the record, high 32 bits
 *   12  u32  msgLo       ... low 32 bits  (replay skips records a bucket already holds)
 *   16  ...  record      the message record as received (common/record.ts), its own CRC included
 *
 * Appends are buffered (SegmentLog.appendBuffered: synchronous, the offset known at once) and written
 * when the buffer passes FLUSH_BYTES, when the store flushes every bucket (`flush`: it bounds what all
 * buckets buffer together, see delay-store.ts), before a read that needs them, and at each checkpoint;
 * sync() makes them durable. A buffered frame is one copy of its header and record (one Buffer from
 * Node's pool): not a view into the SEND request it came in, which would keep that whole request
 * (~1,000 records) alive until the last of the buckets it spread over wrote its frames. The message log is the durable copy until then: the replay checkpoint only moves
 * past a record once its bucket is synced.
 *
 * The descriptor is opened on first use and can be released (`release`) while nothing is unsynced:
 * a month of hourly buckets would otherwise hold ~1,500 descriptors.
 */
export const FRAME_HEADER_BYTES = 16
const FLUSH_BYTES = 64 * 1024
const SCAN_CHUNK_BYTES = 4 * 1024 * 1024

export interface FrameInfo {
  /** Offset of the frame in the file. */
  offset: number
  /** Frame length (header + record). */
  length: number
  msgOffset: number
  /** The whole frame; a view valid only during the callback. */
  frame: Buffer
}

/** Bytes of a log that failed verification and were skipped: [offset, offset + bytes). */
export interface DamagedRange {
  offset: number
  bytes: number
}

export interface FrameScan {
  /** Frames that failed verification and were skipped (at recovery a damaged tail is also cut). */
  damaged: DamagedRange[]
  count: number
  maxMsgOffset: number
}

/** The whole frame (layout above: header and a copy of the record) in one buffer. */
export function encodeScheduleFrame(record: Buffer, msgOffset: number): Buffer {
  const f = Buffer.allocUnsafe(FRAME_HEADER_BYTES + record.length)
  f.writeUInt32BE(FRAME_HEADER_BYTES + record.length, 0)
  f.writeUInt32BE(Math.floor(msgOffset / 0x1_0000_0000), 8)
  f.writeUInt32BE(msgOffset >>> 0, 12)
  record.copy(f, FRAME_HEADER_BYTES)
  f.writeUInt32BE(crc32cRange(f, 8, f.length), 4)
  return f
}

/** Frames and verifies the frame at `pos` of `buf[.., end)`. The cheap tests first (resync calls it at every byte). */
export function checkFrame(buf: Buffer, pos: number, end: number, maxMessageBytes: number): ScanResult {
  if (end - pos < FRAME_HEADER_BYTES) return { kind: 'short' }
  const length = buf.readUInt32BE(pos)
  if (length < FRAME_HEADER_BYTES + MIN_RECORD_BYTES || length > FRAME_HEADER_BYTES + maxMessageBytes)
    return { kind: 'corrupt', reason: `frame length ${length} out of bounds` }
  if (end - pos < length) return { kind: 'short' }
  if (crc32c(buf.subarray(pos + 8, pos + length)) !== buf.readUInt32BE(pos + 4))
    return { kind: 'corrupt', reason: 'frame CRC mismatch' }
  try {
    if (
      verifyRecord(buf, pos + FRAME_HEADER_BYTES, pos + length, { maxMessageBytes }) !==
      length - FRAME_HEADER_BYTES
    )
      return { kind: 'corrupt', reason: 'record length mismatch' }
  } catch (err) {
    return { kind: 'corrupt', reason: err instanceof Error ? err.message : String(err) }
  }
  return { kind: 'record', length }
}

export class ScheduleLog {
  readonly file: string
  private readonly maxMessageBytes: number
  private readonly io: FsIo | undefined
  private seg: SegmentLog | undefined
  /** The size while the log is released (-1: unknown, read at the next open). */
  private releasedSize: number

  constructor(file: string, size: number, maxMessageBytes = DEFAULT_MAX_MESSAGE_BYTES, io?: FsIo) {
    this.file = file
    this.releasedSize = size
    this.maxMessageBytes = maxMessageBytes
    this.io = io
  }

  private log(): SegmentLog {
    this.seg ??= SegmentLog.openFile({ file: this.file, ...(this.io ? { io: this.io } : {}) })
    return this.seg
  }

  /** Logical size: written plus buffered bytes (the offset the next frame gets). */
  get size(): number {
    if (this.seg === undefined && this.releasedSize >= 0) return this.releasedSize
    return this.log().nextOffset
  }

  /** Buffers a frame (a copy of `record`: see the class comment); returns its offset and length. */
  append(record: Buffer, msgOffset: number): { offset: number; length: number } {
    const log = this.log()
    const frame = encodeScheduleFrame(record, msgOffset)
    const offset = log.appendBuffered(frame)
    if (log.bufferedBytes >= FLUSH_BYTES) this.flush()
    return { offset, length: frame.length }
  }

  /** Bytes appended and not yet written. */
  get bufferedBytes(): number {
    return this.seg?.bufferedBytes ?? 0
  }

  /** Writes the buffered frames now (synchronous write). */
  flush(): void {
    try {
      this.seg?.flushSync()
    } catch {
      // The frames stay buffered (filed): the next flush writes them, and the checkpoint's sync (which
      // fails and keeps the replay checkpoint where it is until it succeeds) reports the error.
    }
  }

  /** Writes the buffered frames, fdatasyncs off the event loop (see SegmentLog.sync). */
  sync(): Promise<void> {
    return this.seg === undefined ? Promise.resolve() : this.seg.sync()
  }

  /** Closes the file descriptor when nothing is unsynced (it is reopened on the next append or read). */
  release(): void {
    if (this.seg === undefined || this.seg.unsynced) return
    this.releasedSize = this.seg.nextOffset
    this.seg.close()
    this.seg = undefined
  }

  /** Reads `length` bytes at `offset` (writing them first if they are still buffered). */
  read(offset: number, length: number): Buffer {
    return this.log().readSync(offset, length)
  }

  /**
   * Start of the server: verifies every frame, calls onFrame for the good ones and skips a bad one
   * (resyncing on the next frame that verifies: damage costs the damaged frames only, and the good ones
   * keep their offsets, which dispatch logs refer to); a damaged tail is cut, so appends follow the
   * last good frame.
   */
  async recover(onFrame: (f: FrameInfo) => void): Promise<FrameScan> {
    const damaged: DamagedRange[] = []
    const res = this.counter(onFrame)
    const cuts = await this.log().recover(0, this.check, res.visit, {
      onSkip: (r) => damaged.push({ offset: r.logOffset, bytes: r.bytes }),
      chunkBytes: SCAN_CHUNK_BYTES,
    })
    for (const c of cuts) damaged.push({ offset: c.logOffset, bytes: c.droppedBytes })
    damaged.sort((a, b) => a.offset - b.offset)
    return { damaged, count: res.count(), maxMsgOffset: res.max() }
  }

  /** Read-only scan of the frames in [from, to) (a bucket load), skipping damaged ones (resync). */
  async scan(from: number, to: number, onFrame: (f: FrameInfo) => void): Promise<FrameScan> {
    const log = this.log()
    const res = this.counter(onFrame)
    const skipped: SkippedRange[] = await log.scan(
      from,
      Math.min(to, log.nextOffset),
      this.check,
      res.visit,
      {
        resync: true,
        chunkBytes: SCAN_CHUNK_BYTES,
      },
    )
    return {
      damaged: skipped.map((r) => ({ offset: r.logOffset, bytes: r.bytes })),
      count: res.count(),
      maxMsgOffset: res.max(),
    }
  }

  private readonly check = (buf: Buffer, pos: number, end: number): ScanResult =>
    checkFrame(buf, pos, end, this.maxMessageBytes)

  private counter(onFrame: (f: FrameInfo) => void): {
    visit: (buf: Buffer, pos: number, length: number, offset: number) => void
    count: () => number
    max: () => number
  } {
    let count = 0
    let maxMsgOffset = -1
    return {
      visit: (buf, pos, length, offset) => {
        const msgOffset = buf.readUInt32BE(pos + 8) * 0x1_0000_0000 + buf.readUInt32BE(pos + 12)
        if (msgOffset > maxMsgOffset) maxMsgOffset = msgOffset
        count++
        onFrame({ offset, length, msgOffset, frame: buf.subarray(pos, pos + length) })
      },
      count: () => count,
      max: () => maxMsgOffset,
    }
  }

  /** Syncs what is unsynced, then closes. */
  async close(): Promise<void> {
    if (this.seg === undefined) return
    await this.seg.sync()
    this.release()
  }

  /** Closes and deletes the file. */
  remove(): void {
    if (this.seg === undefined) this.log()
    this.seg?.remove()
    this.seg = undefined
    this.releasedSize = 0
  }
}
