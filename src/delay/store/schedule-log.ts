import fs from 'node:fs'
import type { FsIo } from '../../broker/store/fs-io'
import { crc32c, crc32cRange } from '../../common/crc32c'
import { DEFAULT_MAX_MESSAGE_BYTES, MIN_RECORD_BYTES, verifyRecord } from '../../common/record'
import { BufferedFile } from './buffered-file'
import { type DamagedRange, FileWindow, nextGoodFrame } from './file-window'

/**
 * A schedule log: the messages of one time bucket, whole, in the order they were filed. One file per
 * bucket, `schedule/<bucket start, ms since epoch, 13 digits>.sched`. An offset is a byte position in
 * the file; the wheel and the dispatch log refer to messages by it.
 *
 * Frame layout (big-endian):
 *   0   u32  length      whole frame, this field included (= 16 + record length)
 *   4   u32  crc         CRC32C of bytes [8, length)
 *   8   u32  msgHi       message-log offset of the record, high 32 bits
 *   12  u32  msgLo       ... low 32 bits  (replay skips records a bucket already holds)
 *   16  ...  record      the message record as received (common/record.ts), its own CRC included
 *
 * Appends are buffered in memory and written by flush() (when the buffer passes FLUSH_BYTES, before a
 * read that needs them, and at each checkpoint); sync() makes them durable. The message log is the
 * durable copy until then: the replay checkpoint only moves past a record once its bucket is synced.
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

export interface ScanResult {
  /** End of the last good frame (= where a damaged tail starts; appends go on from there once cut). */
  goodBytes: number
  /** Frames that failed verification and were skipped (the last may be a torn tail: ends at `fileBytes`). */
  damaged: DamagedRange[]
  /** Size of the file when scanned. */
  fileBytes: number
  count: number
  maxMsgOffset: number
}

export function encodeFrameHeader(record: Buffer, msgOffset: number): Buffer {
  const h = Buffer.allocUnsafe(FRAME_HEADER_BYTES)
  h.writeUInt32BE(FRAME_HEADER_BYTES + record.length, 0)
  h.writeUInt32BE(Math.floor(msgOffset / 0x1_0000_0000), 8)
  h.writeUInt32BE(msgOffset >>> 0, 12)
  h.writeUInt32BE(crc32c(record, crc32cRange(h, 8, 16)), 4)
  return h
}

/** Checks the frame at `pos` of `buf` (within `end`); returns its length or -1 when it is bad. */
export function checkFrame(buf: Buffer, pos: number, end: number, maxMessageBytes: number): number {
  if (end - pos < FRAME_HEADER_BYTES + MIN_RECORD_BYTES) return -1
  const length = buf.readUInt32BE(pos)
  if (length < FRAME_HEADER_BYTES + MIN_RECORD_BYTES || length > FRAME_HEADER_BYTES + maxMessageBytes)
    return -1
  if (pos + length > end) return -1
  const crc = crc32c(buf.subarray(pos + 8, pos + length))
  if (crc !== buf.readUInt32BE(pos + 4)) return -1
  try {
    if (
      verifyRecord(buf, pos + FRAME_HEADER_BYTES, pos + length, { maxMessageBytes }) !==
      length - FRAME_HEADER_BYTES
    )
      return -1
  } catch {
    return -1
  }
  return length
}

export class ScheduleLog {
  private readonly maxMessageBytes: number
  private readonly out: BufferedFile

  constructor(file: string, size: number, maxMessageBytes = DEFAULT_MAX_MESSAGE_BYTES, io?: FsIo) {
    this.out = new BufferedFile(file, size, io)
    this.maxMessageBytes = maxMessageBytes
  }

  get file(): string {
    return this.out.file
  }

  /** Logical size: flushed plus buffered bytes (the offset the next frame gets). */
  get size(): number {
    return this.out.size
  }

  /** Buffers a frame; returns its offset and length. */
  append(record: Buffer, msgOffset: number): { offset: number; length: number } {
    const offset = this.size
    const header = encodeFrameHeader(record, msgOffset)
    this.out.append(header, record)
    if (this.out.bufferedBytes >= FLUSH_BYTES) this.out.flush()
    return { offset, length: header.length + record.length }
  }

  flush(): void {
    this.out.flush()
  }

  /** Flushes and fdatasyncs if anything was appended since the last sync. */
  sync(): void {
    this.out.sync()
  }

  /**
   * Flushes now and fdatasyncs off the event loop. Frames appended while the sync runs are not
   * covered by it (they keep the log dirty for the next one).
   */
  syncAsync(): Promise<void> {
    return this.out.syncAsync()
  }

  /** Closes the file descriptor when nothing is unsynced (it is reopened on the next append or read). */
  release(): void {
    this.out.release()
  }

  /** Reads `length` bytes at `offset` (flushing first if they are still buffered). */
  read(offset: number, length: number, into?: Buffer): Buffer {
    if (offset + length > this.out.flushed) this.out.flush()
    const buf = into ?? Buffer.allocUnsafe(length)
    let got = 0
    const fd = this.out.open()
    while (got < length) {
      const n = fs.readSync(fd, buf, got, length - got, offset + got)
      if (n === 0) throw new Error(`schedule log ${this.file} ends before ${offset + length}`)
      got += n
    }
    return buf
  }

  /**
   * Scans frames in [from, to) (to defaults to the flushed size), verifying each; calls onFrame for
   * the good ones and skips a bad one (resyncing on the next frame that verifies: damage costs the
   * damaged frames only, and the good ones keep their offsets, which dispatch logs refer to). Async: yields to the event loop between chunks so a
   * large bucket loads without stalling dispatch.
   */
  async scan(
    from: number,
    to: number,
    onFrame: (f: FrameInfo) => void,
    yieldEvery = true,
  ): Promise<ScanResult> {
    this.out.flush()
    const end = Math.min(to, this.out.flushed)
    const fd = this.out.open()
    const win = new FileWindow(fd, from, end, SCAN_CHUNK_BYTES)
    let pos = from
    let count = 0
    let maxMsgOffset = -1
    let refills = 0
    let goodBytes = from
    const damaged: DamagedRange[] = []
    // Length of a frame that verifies at pos, or -1.
    const check = (p: number): number => {
      if (!win.ensure(p, FRAME_HEADER_BYTES)) return -1 // torn: the header runs past the end
      const need = win.buf.readUInt32BE(win.at(p))
      if (need < FRAME_HEADER_BYTES + MIN_RECORD_BYTES || need > FRAME_HEADER_BYTES + this.maxMessageBytes)
        return -1 // a lying length: corrupt
      if (!win.ensure(p, need)) return -1 // torn: the frame runs past the end of the file
      return checkFrame(win.buf, win.at(p), win.bufLen, this.maxMessageBytes)
    }
    for (;;) {
      if (pos >= end) break
      const ok = check(pos)
      if (yieldEvery && win.refills !== refills) {
        refills = win.refills
        await new Promise((r) => setImmediate(r))
      }
      if (ok < 0) {
        const good = nextGoodFrame(pos + 1, end, check)
        damaged.push({ offset: pos, bytes: good - pos })
        pos = good
        continue
      }
      const buf = win.buf
      const at = win.at(pos)
      const msgOffset = buf.readUInt32BE(at + 8) * 0x1_0000_0000 + buf.readUInt32BE(at + 12)
      if (msgOffset > maxMsgOffset) maxMsgOffset = msgOffset
      onFrame({ offset: pos, length: ok, msgOffset, frame: buf.subarray(at, at + ok) })
      count++
      pos += ok
      goodBytes = pos
    }
    return { goodBytes, damaged, fileBytes: this.out.flushed, count, maxMsgOffset }
  }

  /** Cuts the file at `length` (recovery of a torn or corrupt tail). */
  truncate(length: number): void {
    this.out.truncate(length)
  }

  close(): void {
    this.out.close()
  }

  /** Closes and deletes the file. */
  remove(): void {
    this.out.remove()
  }
}
