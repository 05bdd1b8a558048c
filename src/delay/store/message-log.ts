import type { FsIo } from '../../broker/store/fs-io'
import { type ScanCheck, type ScanResult, SegmentLog } from '../../broker/store/segment-log'
import { fsError, QmqError } from '../../common/errors'
import type { Logger } from '../../common/logger'
import {
  DEFAULT_MAX_MESSAGE_BYTES,
  MIN_RECORD_BYTES,
  RECORD_VERSION,
  verifyRecord,
} from '../../common/record'
import type { DamagedRange } from './schedule-log'

/**
 * The delay server's message log: every accepted delayed message, in arrival order. A thin layer over
 * the broker's SegmentLog (segment files `message/<20-digit base offset>.log`, logical offsets,
 * recovery that resynchronises past damage and cuts a torn tail, fsync of files and directories,
 * reference-counted segments, I/O through FsIo): this file only frames records and group-commits.
 *
 * Entry layout (written by `flush`): the message record itself (common/record.ts), as received, with no
 * frame around it. It is self-delimited (u32 length first) and carries a CRC32C over everything after
 * its length and CRC, so `checkRecord` frames and verifies it. This is the format every earlier
 * version wrote: existing data dirs open as they are.
 *
 * Group commit: records appended in the same turn of the event loop are written as one batch (one
 * writev, never spanning two segments), then one fdatasync (when `fsync`), then `onDurable` is called
 * synchronously with each record and its offset (the store files them into the schedule logs there),
 * then the callers' promises resolve. Batches are serial: the next one is written once the previous one
 * is durable. A batch whose write or fdatasync fails is rejected and cut off the log (so a refused
 * record is never replayed); when even the cut fails, the log refuses every later append until it is
 * reopened (recovery then replays what the failed cut left: a refused message may be delivered, none
 * acknowledged is lost).
 */
export interface MessageLogOptions {
  dir: string
  segmentBytes: number
  fsync: boolean
  maxMessageBytes?: number
  log: Logger
  io?: FsIo | undefined
}

/** Where an appended record lies in the log: [offset, end). */
export interface AppendedRecord {
  offset: number
  /** The offset just past the record: what a `sync` write waits for a slave to hold (not the log's end). */
  end: number
}

interface Pending {
  bytes: Buffer
  resolve: (at: AppendedRecord) => void
  reject: (err: unknown) => void
}

export type DurableCallback = (bytes: Buffer, offset: number) => void

/** Frames (and verifies) the bare record at `pos`. The cheap tests first: resync calls it at every byte. */
export function checkRecord(buf: Buffer, pos: number, end: number, maxMessageBytes: number): ScanResult {
  if (end - pos < 12) return { kind: 'short' }
  const length = buf.readUInt32BE(pos)
  if (length < MIN_RECORD_BYTES || length > maxMessageBytes) {
    return { kind: 'corrupt', reason: `record length ${length} out of bounds` }
  }
  if (buf[pos + 8] !== RECORD_VERSION) return { kind: 'corrupt', reason: 'unknown record version' }
  if (end - pos < length) return { kind: 'short' }
  try {
    if (verifyRecord(buf, pos, pos + length, { maxMessageBytes }) !== length) {
      return { kind: 'corrupt', reason: 'record length mismatch' }
    }
  } catch (err) {
    return { kind: 'corrupt', reason: err instanceof Error ? err.message : String(err) }
  }
  return { kind: 'record', length }
}

export class MessageLog {
  private readonly opts: MessageLogOptions
  private readonly maxMessageBytes: number
  private seg: SegmentLog | undefined
  private queue: Pending[] = []
  private writing = false
  private scheduled = false
  private closed = false
  /** A failed batch could not be cut off the log: appends are refused until reopened. */
  private failed: QmqError | undefined
  onDurable: DurableCallback = () => {}

  constructor(options: MessageLogOptions) {
    this.opts = options
    this.maxMessageBytes = options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES
  }

  /** Set once the log failed closed (appends refused until the delay server is restarted). */
  get failure(): QmqError | undefined {
    return this.failed
  }

  get endOffset(): number {
    return this.seg?.endOffset ?? 0
  }

  /** The open segmented log (replication ships it byte for byte: src/delay/replication/). */
  get segmentLog(): SegmentLog | undefined {
    return this.seg
  }

  /**
   * Opens the log and replays every record at or after `from` (the checkpoint, a record boundary)
   * through `onRecord`. A record that fails verification costs exactly its own bytes: the scan
   * resynchronises on the next record that verifies and goes on through every later segment. Damage
   * with nothing good after it in its segment is cut off (a torn tail). Every damaged range is
   * reported (`damaged`, and in `truncatedBytes` their total). When the log ends before `from` (it was
   * lost or removed), appends start at `from`, so no offset at or below the checkpoint is reused.
   * `before(log, check)` runs once the segments are open, before that replay (read-only scans of the
   * records below `from`: the dedupe window's rebuild).
   */
  async open(
    from: number,
    onRecord: (bytes: Buffer, offset: number) => void,
    before?: (log: SegmentLog, check: ScanCheck) => Promise<void>,
  ): Promise<{ truncatedBytes: number; damaged: DamagedRange[] }> {
    const seg = SegmentLog.open({
      dir: this.opts.dir,
      segmentBytes: this.opts.segmentBytes,
      ...(this.opts.io ? { io: this.opts.io } : {}),
    })
    this.seg = seg
    const damaged: DamagedRange[] = []
    const report = (file: string, offset: number, bytes: number) => {
      damaged.push({ offset, bytes })
      this.opts.log.warn(
        { segment: file, offset, droppedBytes: bytes },
        'message log: corrupt or torn record skipped',
      )
    }
    const max = this.maxMessageBytes
    const check: ScanCheck = (b, p, e) => checkRecord(b, p, e, max)
    await before?.(seg, check)
    const cuts = await seg.recover(
      from,
      check,
      // A view into the scan's buffer, which is reused: onRecord must not keep it (the store copies
      // the record into its schedule-log frame).
      (b, p, length, offset) => onRecord(b.subarray(p, p + length), offset),
      { onSkip: (r) => report(r.file, r.logOffset, r.bytes) },
    )
    for (const c of cuts) report(c.file, c.logOffset, c.droppedBytes)
    damaged.sort((a, b) => a.offset - b.offset)
    if (seg.endOffset < from || seg.segments().length === 0) await seg.truncate(Math.max(from, seg.endOffset))
    return { truncatedBytes: damaged.reduce((n, d) => n + d.bytes, 0), damaged }
  }

  /**
   * Appends a verified record; resolves with its offset and end once durable and filed (onDurable).
   * Its end, not the log's: by then the log may hold later batches, or (a later batch's fdatasync
   * failed and it was cut) end at offsets that will be written again.
   */
  append(bytes: Buffer): Promise<AppendedRecord> {
    return new Promise((resolve, reject) => {
      if (this.closed || !this.seg) {
        reject(fsError(new Error('message log is closed'), 'append'))
        return
      }
      if (this.failed) {
        reject(this.failed)
        return
      }
      this.queue.push({ bytes, resolve, reject })
      this.next()
    })
  }

  private next(): void {
    if (this.queue.length > 0 && !this.scheduled && !this.writing) {
      this.scheduled = true
      setImmediate(() => void this.flush())
    }
  }

  private async flush(): Promise<void> {
    this.scheduled = false
    const seg = this.seg
    if (this.writing || this.queue.length === 0 || !seg) return
    const batch = this.queue
    this.queue = []
    this.writing = true
    try {
      if (this.failed) throw this.failed
      let bytes = 0
      for (const p of batch) bytes += p.bytes.length
      const start = await seg.appendv(
        batch.map((p) => p.bytes),
        bytes,
      )
      if (this.opts.fsync) {
        try {
          await seg.sync()
        } catch (err) {
          await this.cut(seg, start)
          throw err
        }
      }
      let offset = start
      for (const p of batch) {
        try {
          this.onDurable(p.bytes, offset)
          p.resolve({ offset, end: offset + p.bytes.length })
        } catch (e) {
          p.reject(e)
        }
        offset += p.bytes.length
      }
    } catch (err) {
      const e = err instanceof QmqError ? err : fsError(err, 'message log write')
      for (const p of batch) p.reject(e)
    } finally {
      this.writing = false
      this.next()
    }
  }

  /** Cuts a batch whose fdatasync failed off the log (it is the log's tail: batches are serial). */
  private async cut(seg: SegmentLog, start: number): Promise<void> {
    try {
      await seg.truncate(start)
    } catch (err) {
      this.failed = new QmqError(
        'QMQ_ERR_STORE_FAILED',
        `delay message log: a batch whose fdatasync failed could not be cut (${String(err)}); restart the delay server`,
      )
      this.opts.log.error({ err }, 'message log failed closed')
    }
  }

  /** Deletes segments that end at or before `offset` (already filed into durable schedule logs). */
  deleteBefore(offset: number): number {
    return this.seg?.deleteBefore(offset) ?? 0
  }

  /** Waits for queued appends, then closes. */
  async close(): Promise<void> {
    while (this.writing || this.queue.length > 0) {
      if (!this.writing && !this.scheduled) void this.flush()
      await new Promise((r) => setImmediate(r))
    }
    this.closed = true
    this.seg?.close()
  }
}
