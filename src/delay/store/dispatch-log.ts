import fs from 'node:fs'
import type { FsIo } from '../../broker/store/fs-io'
import { type ScanResult, SegmentLog } from '../../broker/store/segment-log'
import { crc32cRange } from '../../common/crc32c'
import type { DamagedRange } from './schedule-log'

/**
 * A dispatch log: which frames of one bucket's schedule log were delivered to a broker (or skipped
 * as cancelled). One file per bucket, `dispatch/<bucket start, 13 digits>.disp` (a SegmentLog in
 * single-file mode, as the schedule log), fixed-width entries written by `append`:
 *
 *   0  u32  offHi   schedule-log offset of the frame, high 32 bits
 *   4  u32  offLo   ... low 32 bits
 *   8  u32  crc     CRC32C of bytes [0, 8) (a zero-filled or torn tail never reads as offset 0)
 *
 * An entry is appended only after the broker acknowledged the message. Entries are buffered and
 * written + fdatasynced at each checkpoint: losing the last ones in a crash means those messages are
 * sent again after the restart (at-least-once; the broker's dedupe by message id absorbs them).
 * Reading skips a bad entry (entries sit at multiples of 12 bytes: exactly that entry is lost, and its
 * message is sent again) and cuts a bad tail (bad entries and a partial one at the end), so appends
 * follow the last good one.
 */
export const DISPATCH_ENTRY_BYTES = 12

/** Checks the entry at file offset `offset` (also a replicated chunk's, src/delay/replication/mirror.ts). */
export function checkEntry(buf: Buffer, pos: number, end: number, offset: number): ScanResult {
  if (offset % DISPATCH_ENTRY_BYTES !== 0) return { kind: 'corrupt', reason: 'not at an entry boundary' }
  if (end - pos < DISPATCH_ENTRY_BYTES) return { kind: 'short' }
  if (crc32cRange(buf, pos, pos + 8) !== buf.readUInt32BE(pos + 8))
    return { kind: 'corrupt', reason: 'entry CRC mismatch' }
  return { kind: 'record', length: DISPATCH_ENTRY_BYTES }
}

export class DispatchLog {
  readonly file: string
  private readonly io: FsIo | undefined
  private seg: SegmentLog | undefined
  /** Size of the file while its descriptor is released (nothing unsynced then). */
  private releasedSize = -1

  constructor(file: string, io?: FsIo) {
    this.file = file
    this.io = io
  }

  private log(): SegmentLog {
    this.seg ??= SegmentLog.openFile({ file: this.file, ...(this.io ? { io: this.io } : {}) })
    return this.seg
  }

  /**
   * Every valid dispatched offset, sorted ascending; skips bad entries, cuts a bad tail (buffered
   * entries are written first, so they are included). `report` gets each damaged range.
   */
  async readAll(report?: (droppedBytes: number, offset: number) => void): Promise<Float64Array> {
    const log = this.log()
    let out = new Float64Array(Math.max(16, Math.ceil(log.nextOffset / DISPATCH_ENTRY_BYTES)))
    let k = 0
    const damaged: DamagedRange[] = []
    const cuts = await log.recover(
      0,
      checkEntry,
      (buf, pos) => {
        if (k === out.length) {
          const bigger = new Float64Array(out.length * 2)
          bigger.set(out)
          out = bigger
        }
        out[k++] = buf.readUInt32BE(pos) * 0x1_0000_0000 + buf.readUInt32BE(pos + 4)
      },
      { onSkip: (r) => damaged.push({ offset: r.logOffset, bytes: r.bytes }) },
    )
    for (const c of cuts) damaged.push({ offset: c.logOffset, bytes: c.droppedBytes })
    for (const d of damaged) report?.(d.bytes, d.offset)
    return out.subarray(0, k).sort()
  }

  /** Logical size: written plus buffered entries (without opening a released file). */
  get size(): number {
    if (this.seg !== undefined) return this.seg.nextOffset
    if (this.releasedSize < 0) {
      try {
        this.releasedSize = fs.statSync(this.file).size
      } catch {
        this.releasedSize = 0
      }
    }
    return this.releasedSize
  }

  append(offset: number): void {
    this.releasedSize = -1
    const e = Buffer.allocUnsafe(DISPATCH_ENTRY_BYTES)
    e.writeUInt32BE(Math.floor(offset / 0x1_0000_0000), 0)
    e.writeUInt32BE(offset >>> 0, 4)
    e.writeUInt32BE(crc32cRange(e, 0, 8), 8)
    this.log().appendBuffered(e)
  }

  /** Writes buffered entries now and fdatasyncs them off the event loop. */
  sync(): Promise<void> {
    return this.seg === undefined ? Promise.resolve() : this.seg.sync()
  }

  /** Closes the file descriptor when nothing is unsynced. */
  release(): void {
    if (this.seg === undefined || this.seg.unsynced) return
    this.releasedSize = this.seg.nextOffset
    this.seg.close()
    this.seg = undefined
  }

  async close(): Promise<void> {
    if (this.seg === undefined) return
    await this.seg.sync()
    this.release()
  }

  remove(): void {
    if (this.seg === undefined) this.log()
    this.seg?.remove()
    this.seg = undefined
  }
}
