import fs from 'node:fs'
import path from 'node:path'
import { fsyncDir, openOrCreateSync } from '../../common/durable-file'
import { fsError } from '../../common/errors'
import type { Logger } from '../../common/logger'
import { DEFAULT_MAX_MESSAGE_BYTES, verifyRecord } from '../../common/record'
import { writevFullySync } from './buffered-file'
import { FileWindow } from './file-window'

/**
 * The delay server's message log: every accepted delayed message, in arrival order, in segment files
 * `message/<20-digit base offset>.log`. An offset is a byte position in the whole log.
 *
 * Record layout: the message record itself (common/record.ts), as received. It is self-delimited
 * (u32 length first) and carries a CRC32C over everything after its length and CRC, so it needs no
 * extra framing: recovery runs verifyRecord() over the tail and truncates at the first failure.
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
   * A record that fails verification (torn write, bit rot) ends the log: it and everything after it
   * are cut off, and what was dropped is logged.
   */
  open(from: number, onRecord: (bytes: Buffer, offset: number) => void): { truncatedBytes: number } {
    fs.mkdirSync(this.dir, { recursive: true })
    this.bases = fs
      .readdirSync(this.dir)
      .filter((f) => f.endsWith(SEGMENT_SUFFIX))
      .map((f) => Number(f.slice(0, -SEGMENT_SUFFIX.length)))
      .filter((n) => Number.isSafeInteger(n))
      .sort((a, b) => a - b)
    if (this.bases.length === 0) this.bases.push(Math.max(0, from))
    let truncatedBytes = 0
    let cut = false
    for (let s = 0; s < this.bases.length; s++) {
      const base = this.bases[s] as number
      const file = path.join(this.dir, segmentName(base))
      if (cut) {
        truncatedBytes += fs.existsSync(file) ? fs.statSync(file).size : 0
        fs.rmSync(file, { force: true })
        continue
      }
      const size = fs.existsSync(file) ? fs.statSync(file).size : 0
      const next = this.bases[s + 1]
      if (next !== undefined && next <= from) continue // wholly replayed before
      const good = this.replaySegment(file, base, size, from, onRecord)
      if (good < size) {
        this.log.warn(
          { segment: file, offset: base + good, droppedBytes: size - good },
          'message log: torn or corrupt record; truncated',
        )
        truncatedBytes += size - good
        fs.truncateSync(file, good)
        cut = true
        this.bases = this.bases.slice(0, s + 1)
      }
    }
    const last = this.bases[this.bases.length - 1] as number
    const lastFile = path.join(this.dir, segmentName(last))
    this.activeBase = last
    this.fd = openOrCreateSync(lastFile)
    this.end = last + fs.fstatSync(this.fd).size
    return { truncatedBytes }
  }

  /** Verifies segment records; returns the length of the good prefix. Calls onRecord for those >= from. */
  private replaySegment(
    file: string,
    base: number,
    size: number,
    from: number,
    onRecord: (bytes: Buffer, offset: number) => void,
  ): number {
    if (size === 0) return 0
    const fd = fs.openSync(file, 'r')
    try {
      const win = new FileWindow(fd, 0, size, Math.max(8 * 1024 * 1024, this.maxMessageBytes * 2))
      let pos = 0 // file position of the next record
      for (;;) {
        if (pos >= size) return size
        if (!win.ensure(pos, 4)) return pos
        const length = win.buf.readUInt32BE(win.at(pos))
        if (length > this.maxMessageBytes || !win.ensure(pos, Math.max(length, 4))) return pos
        const at = win.at(pos)
        try {
          verifyRecord(win.buf, at, at + length, { maxMessageBytes: this.maxMessageBytes })
        } catch {
          return pos
        }
        if (base + pos >= from) onRecord(win.buf.subarray(at, at + length), base + pos)
        pos += length
      }
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
