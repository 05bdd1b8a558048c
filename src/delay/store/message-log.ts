import fs from 'node:fs'
import path from 'node:path'
import { fsyncDir, openOrCreateSync } from '../../common/durable-file'
import { fsError } from '../../common/errors'
import type { Logger } from '../../common/logger'
import {
  DEFAULT_MAX_MESSAGE_BYTES,
  MIN_RECORD_BYTES,
  RECORD_VERSION,
  verifyRecord,
} from '../../common/record'
import { writevFullySync } from './buffered-file'
import { type DamagedRange, FileWindow, nextGoodFrame } from './file-window'

/**
 * The delay server's message log: every accepted delayed message, in arrival order, in segment files
 * `message/<20-digit base offset>.log`. An offset is a byte position in the whole log.
 *
 * Record layout: the message record itself (common/record.ts), as received. It is self-delimited
 * (u32 length first) and carries a CRC32C over everything after its length and CRC, so it needs no
 * extra framing: recovery runs verifyRecord() over every record to replay, skips damaged ones (resyncing on
 * the next record that verifies) and cuts a torn tail.
 *
 * Group commit: records appended in the same turn of the event loop are written with one writev, then
 * one fdatasync (when `fsync`), then `onDurable` is called synchronously with each record and its
 * offset (the store files them into the schedule logs there), then the callers' promises resolve.
 * Batches are serial: the next one is written once the previous one is durable.
 */
export const SEGMENT_SUFFIX = '.log'

export interface MessageLogOptions {
  dir: string
  segmentBytes: number
  fsync: boolean
  maxMessageBytes?: number
  log: Logger
}

interface Pending {
  bytes: Buffer
  resolve: (offset: number) => void
  reject: (err: unknown) => void
}

export type DurableCallback = (bytes: Buffer, offset: number) => void

export function segmentName(base: number): string {
  return `${String(base).padStart(20, '0')}${SEGMENT_SUFFIX}`
}

export class MessageLog {
  private readonly dir: string
  private readonly segmentBytes: number
  private readonly fsync: boolean
  private readonly maxMessageBytes: number
  private readonly log: Logger
  /** Base offsets of the segments, ascending. */
  private bases: number[] = []
  private fd = -1
  private activeBase = 0
  /** Offset the next record gets. */
  private end = 0
  private queue: Pending[] = []
  private writing = false
  private scheduled = false
  private closed = false
  onDurable: DurableCallback = () => {}

  constructor(options: MessageLogOptions) {
    this.dir = options.dir
    this.segmentBytes = options.segmentBytes
    this.fsync = options.fsync
    this.maxMessageBytes = options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES
    this.log = options.log
  }

  get endOffset(): number {
    return this.end
  }

  /**
   * Opens the log and replays every record at or after `from` through `onRecord`, verifying each.
   * A record that fails verification (bit rot, a torn write) costs exactly its own bytes: the scan
   * resynchronises on the next record that verifies (nextGoodFrame) and goes on, through every later
   * segment. Damage with no good record after it at the end of the last segment is a torn tail: cut
   * off, so appends continue right after the last good record. Damage elsewhere stays in place (later
   * segments keep their base offsets; nothing can overlap). Every damaged range at or after `from` is
   * reported (`damaged`, and in `truncatedBytes`, their total).
   */
  open(
    from: number,
    onRecord: (bytes: Buffer, offset: number) => void,
  ): { truncatedBytes: number; damaged: DamagedRange[] } {
    fs.mkdirSync(this.dir, { recursive: true })
    this.bases = fs
      .readdirSync(this.dir)
      .filter((f) => f.endsWith(SEGMENT_SUFFIX))
      .map((f) => Number(f.slice(0, -SEGMENT_SUFFIX.length)))
      .filter((n) => Number.isSafeInteger(n))
      .sort((a, b) => a - b)
    if (this.bases.length === 0) this.bases.push(Math.max(0, from))
    const damaged: DamagedRange[] = []
    for (let s = 0; s < this.bases.length; s++) {
      const base = this.bases[s] as number
      const file = path.join(this.dir, segmentName(base))
      const next = this.bases[s + 1]
      if (next !== undefined && next <= from) continue // wholly replayed before
      const size = fs.existsSync(file) ? fs.statSync(file).size : 0
      const bad = this.replaySegment(file, base, size, from, onRecord)
      for (const d of bad) {
        if (d.offset + d.bytes <= from) continue // below the checkpoint: filed before, nothing lost
        damaged.push(d)
        this.log.warn(
          { segment: file, offset: d.offset, droppedBytes: d.bytes },
          'message log: corrupt or torn record skipped',
        )
      }
      const last = bad[bad.length - 1]
      if (next === undefined && last !== undefined && last.offset + last.bytes === base + size) {
        // Torn tail of the active segment: cut, so the next append follows the last good record.
        fs.truncateSync(file, last.offset - base)
      }
    }
    const last = this.bases[this.bases.length - 1] as number
    const lastFile = path.join(this.dir, segmentName(last))
    this.activeBase = last
    this.fd = openOrCreateSync(lastFile)
    this.end = last + fs.fstatSync(this.fd).size
    return { truncatedBytes: damaged.reduce((n, d) => n + d.bytes, 0), damaged }
  }

  /**
   * Verifies a segment's records, calling onRecord for the good ones at or after `from`; returns the
   * damaged ranges (log offsets), in order.
   */
  private replaySegment(
    file: string,
    base: number,
    size: number,
    from: number,
    onRecord: (bytes: Buffer, offset: number) => void,
  ): DamagedRange[] {
    const damaged: DamagedRange[] = []
    if (size === 0) return damaged
    const fd = fs.openSync(file, 'r')
    try {
      const win = new FileWindow(fd, 0, size, Math.max(8 * 1024 * 1024, this.maxMessageBytes * 2))
      // Length of a record that verifies at file position pos, or -1.
      const check = (pos: number): number => {
        if (!win.ensure(pos, 12)) return -1
        const at = win.at(pos)
        const length = win.buf.readUInt32BE(at)
        if (length < MIN_RECORD_BYTES || length > this.maxMessageBytes || pos + length > size) return -1
        if (win.buf[at + 8] !== RECORD_VERSION) return -1
        if (!win.ensure(pos, length)) return -1
        const at2 = win.at(pos)
        try {
          return verifyRecord(win.buf, at2, at2 + length, { maxMessageBytes: this.maxMessageBytes })
        } catch {
          return -1
        }
      }
      let pos = 0 // file position of the next record
      while (pos < size) {
        const length = check(pos)
        if (length < 0) {
          const good = nextGoodFrame(pos + 1, size, check)
          damaged.push({ offset: base + pos, bytes: good - pos })
          pos = good
          continue
        }
        const at = win.at(pos)
        // A copy: the window's buffer is reused by the next read, and the store keeps the record
        // (buffered in a schedule log until its next flush).
        if (base + pos >= from) onRecord(Buffer.from(win.buf.subarray(at, at + length)), base + pos)
        pos += length
      }
      return damaged
    } finally {
      fs.closeSync(fd)
    }
  }

  /** Appends a verified record; resolves with its offset once durable and filed (onDurable). */
  append(bytes: Buffer): Promise<number> {
    return new Promise((resolve, reject) => {
      if (this.closed) {
        reject(fsError(new Error('message log is closed'), 'append'))
        return
      }
      this.queue.push({ bytes, resolve, reject })
      if (!this.scheduled && !this.writing) {
        this.scheduled = true
        setImmediate(() => this.flush())
      }
    })
  }

  private flush(): void {
    this.scheduled = false
    if (this.writing || this.queue.length === 0) return
    const batch = this.queue
    this.queue = []
    this.writing = true
    let offsets: number[]
    try {
      offsets = this.write(batch)
    } catch (err) {
      this.writing = false
      const e = fsError(err, 'message log write')
      for (const p of batch) p.reject(e)
      this.next()
      return
    }
    const done = (err: unknown) => {
      this.writing = false
      if (err) {
        const e = fsError(err, 'message log fdatasync')
        for (const p of batch) p.reject(e)
      } else {
        for (let i = 0; i < batch.length; i++) {
          const p = batch[i] as Pending
          try {
            this.onDurable(p.bytes, offsets[i] as number)
            p.resolve(offsets[i] as number)
          } catch (e) {
            p.reject(e)
          }
        }
      }
      this.next()
    }
    if (this.fsync) fs.fdatasync(this.fd, done)
    else done(null)
  }

  private next(): void {
    if (this.queue.length > 0 && !this.scheduled) {
      this.scheduled = true
      setImmediate(() => this.flush())
    }
  }

  /** Writes a batch, rolling segments at segmentBytes. A failed write leaves the file as it was. */
  private write(batch: Pending[]): number[] {
    const offsets: number[] = []
    let i = 0
    while (i < batch.length) {
      if (this.end - this.activeBase >= this.segmentBytes) this.roll()
      const room = this.segmentBytes - (this.end - this.activeBase)
      const parts: Buffer[] = []
      let bytes = 0
      const start = this.end
      // At least one record per segment, even one larger than the room left.
      while (i < batch.length && (parts.length === 0 || bytes + (batch[i] as Pending).bytes.length <= room)) {
        const b = (batch[i] as Pending).bytes
        offsets.push(start + bytes)
        parts.push(b)
        bytes += b.length
        i++
      }
      const position = start - this.activeBase
      try {
        writevFullySync(this.fd, parts, bytes, position)
      } catch (err) {
        fs.ftruncateSync(this.fd, position)
        throw err
      }
      this.end += bytes
    }
    return offsets
  }

  private roll(): void {
    if (this.fsync) fs.fdatasyncSync(this.fd)
    fs.closeSync(this.fd)
    this.activeBase = this.end
    this.bases.push(this.end)
    this.fd = fs.openSync(path.join(this.dir, segmentName(this.end)), 'w+')
    fsyncDir(this.dir)
  }

  /** Deletes segments that end at or before `offset` (already filed into durable schedule logs). */
  deleteBefore(offset: number): number {
    let removed = 0
    while (this.bases.length > 1 && (this.bases[1] as number) <= offset) {
      const base = this.bases.shift() as number
      fs.rmSync(path.join(this.dir, segmentName(base)), { force: true })
      removed++
    }
    return removed
  }

  /** Waits for queued appends, then closes. */
  async close(): Promise<void> {
    while (this.writing || this.queue.length > 0) {
      if (!this.writing && !this.scheduled) this.flush()
      await new Promise((r) => setImmediate(r))
    }
    this.closed = true
    if (this.fd >= 0) {
      fs.closeSync(this.fd)
      this.fd = -1
    }
  }
}
