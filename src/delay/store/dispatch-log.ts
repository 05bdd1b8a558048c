import fs from 'node:fs'
import { crc32cRange } from '../../common/crc32c'
import type { FsIo } from '../../broker/store/fs-io'
import { BufferedFile } from './buffered-file'

/**
 * A dispatch log: which frames of one bucket's schedule log were delivered to a broker (or skipped
 * as cancelled). One file per bucket, `dispatch/<bucket start, 13 digits>.disp`, fixed-width entries:
 *
 *   0  u32  offHi   schedule-log offset of the frame, high 32 bits
 *   4  u32  offLo   ... low 32 bits
 *   8  u32  crc     CRC32C of bytes [0, 8) (a zero-filled or torn tail never reads as offset 0)
 *
 * An entry is appended only after the broker acknowledged the message. Entries are buffered and
 * written + fdatasynced at each checkpoint: losing the last ones in a crash means those messages are
 * sent again after the restart (at-least-once; the broker's dedupe by message id absorbs them).
 * Reading skips a bad entry (fixed width: exactly that entry is lost, and its message is sent again)
 * and cuts a bad tail (bad entries and a partial one at the end), so appends follow the last good one.
 */
export const DISPATCH_ENTRY_BYTES = 12

export class DispatchLog {
  private readonly out: BufferedFile

  constructor(file: string, io?: FsIo) {
    this.out = new BufferedFile(file, -1, io)
  }

  get file(): string {
    return this.out.file
  }

  /**
   * Every valid dispatched offset, sorted ascending; skips bad entries, cuts a bad tail. `report` gets
   * each damaged range (file offset, bytes).
   */
  readAll(report?: (droppedBytes: number, offset: number) => void): Float64Array {
    if (!fs.existsSync(this.file)) return new Float64Array(0)
    const buf = fs.readFileSync(this.file)
    const n = Math.floor(buf.length / DISPATCH_ENTRY_BYTES)
    const out = new Float64Array(n)
    let k = 0
    let good = 0 // end of the last good entry
    let badFrom = -1 // start of the current run of bad entries
    for (let i = 0; i < n; i++) {
      const at = i * DISPATCH_ENTRY_BYTES
      if (crc32cRange(buf, at, at + 8) !== buf.readUInt32BE(at + 8)) {
        if (badFrom < 0) badFrom = at
        continue
      }
      if (badFrom >= 0) report?.(at - badFrom, badFrom)
      badFrom = -1
      out[k++] = buf.readUInt32BE(at) * 0x1_0000_0000 + buf.readUInt32BE(at + 4)
      good = at + DISPATCH_ENTRY_BYTES
    }
    if (good < buf.length) {
      report?.(buf.length - good, good)
      this.out.truncate(good)
    }
    return out.subarray(0, k).sort()
  }

  append(offset: number): void {
    const e = Buffer.allocUnsafe(DISPATCH_ENTRY_BYTES)
    e.writeUInt32BE(Math.floor(offset / 0x1_0000_0000), 0)
    e.writeUInt32BE(offset >>> 0, 4)
    e.writeUInt32BE(crc32cRange(e, 0, 8), 8)
    this.out.append(e)
  }

  /** Writes buffered entries and fdatasyncs them. */
  sync(): void {
    this.out.sync()
  }

  /** Writes buffered entries now and fdatasyncs them off the event loop. */
  syncAsync(): Promise<void> {
    return this.out.syncAsync()
  }

  /** Closes the file descriptor when nothing is unsynced. */
  release(): void {
    this.out.release()
  }

  close(): void {
    this.out.close()
  }

  remove(): void {
    this.out.remove()
  }
}
