import type { FsIo } from '../../broker/store/fs-io'
import { type ScanCheck, type ScanResult, SegmentLog } from '../../broker/store/segment-log'
import { fsError, QmqError } from '../../common/errors'
import type { Logger } from '../../common/logger'
import {
  DEFAULT_MAX_MESSAGE_BYTES,
  encodeRecord,
  FLAG_DELAYED,
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
 *
 * Refusals: a record that is durable but that `onDurable` throws on (the store could not file it) is
 * refused to its producer; before that answer a refusal marker naming it is appended and made durable
 * (`writeRefusals`, layout there), and `open` never replays a record a marker names. When the marker
 * itself cannot be written the refusal stands, logged: a replay may then still file that record.
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
  /** The caller's tag (the store: the record's pending dedupe entry, -1: none). */
  tag: number
  resolve: (at: AppendedRecord) => void
  reject: (err: unknown) => void
  onRefused: ((markerEnd: number) => void) | undefined
}

export type DurableCallback = (bytes: Buffer, offset: number, tag: number) => void

/** Subject of a refusal marker (a record without the DELAYED flag: never a delayed message). */
export const REFUSAL_SUBJECT = 'qmq.delay.refused'

/** A durable record refused to its producer: [offset, offset + length), its dedupe key in `bytes`. */
export interface RefusedRecord {
  bytes: Buffer
  offset: number
}

/**
 * Refusal markers, as `writeRefusals` appends them. A marker is a message record (common/record.ts,
 * so it frames and verifies as any record of the log, and a slave copies it as one) WITHOUT the
 * DELAYED flag (every record the store accepts has it), subject REFUSAL_SUBJECT, id `refused`,
 * createdAt = when written, no tags, no properties; its body lists the refused records:
 *
 *   per record:  offset  u64 (BE)   message-log offset of the refused record
 *                length  u32        its length (offset + length: its end, the dedupe window's sequence)
 *                key     idLength u16, subjectLength u16, id, subject: the record's bytes [28, 32 +
 *                        idLength + subjectLength) (its dedupe key, DedupeIndex)
 *
 * A marker always lies after the records it names (it is written once they are durable). Markers are
 * split to stay within maxMessageBytes. Data dirs written before markers existed hold none.
 */
export function encodeRefusals(refused: readonly RefusedRecord[], maxMessageBytes: number): Buffer[] {
  const out: Buffer[] = []
  const room = maxMessageBytes - 256 // the record's fixed part, id, subject and length fields
  let parts: Buffer[] = []
  let size = 0
  const emit = () => {
    if (parts.length === 0) return
    out.push(
      encodeRecord({
        id: 'refused',
        subject: REFUSAL_SUBJECT,
        createdAt: Date.now(),
        tags: [],
        properties: new Map(),
        body: Buffer.concat(parts, size),
      }),
    )
    parts = []
    size = 0
  }
  for (const r of refused) {
    const keyEnd = 32 + r.bytes.readUInt16BE(28) + r.bytes.readUInt16BE(30)
    const entry = Buffer.allocUnsafe(12 + keyEnd - 28)
    entry.writeUInt32BE(Math.floor(r.offset / 0x1_0000_0000), 0)
    entry.writeUInt32BE(r.offset >>> 0, 4)
    entry.writeUInt32BE(r.bytes.length, 8)
    r.bytes.copy(entry, 12, 28, keyEnd)
    if (size + entry.length > room) emit()
    parts.push(entry)
    size += entry.length
  }
  emit()
  return out
}

/** Whether the (verified) record at `pos` is a refusal marker (`encodeRefusals`). */
export function isRefusalMarker(buf: Buffer, pos: number): boolean {
  if (!isControlRecord(buf, pos)) return false
  const subjectAt = pos + 32 + buf.readUInt16BE(pos + 28)
  const subjectLength = buf.readUInt16BE(pos + 30)
  return (
    subjectLength === REFUSAL_SUBJECT.length &&
    buf.toString('utf8', subjectAt, subjectAt + subjectLength) === REFUSAL_SUBJECT
  )
}

/** Whether the (verified) record at `pos` is no delayed message: a refusal marker or unknown. */
export function isControlRecord(buf: Buffer, pos: number): boolean {
  return ((buf[pos + 9] as number) & FLAG_DELAYED) === 0
}

/**
 * Calls `each(offset, end, keyStart, keyEnd)` for every record the refusal marker at `buf[pos, pos +
 * length)` names (the key is `buf[keyStart, keyEnd)`); does nothing for a record that is no marker.
 */
export function readRefusals(
  buf: Buffer,
  pos: number,
  length: number,
  each: (offset: number, end: number, keyStart: number, keyEnd: number) => void,
): void {
  if (!isControlRecord(buf, pos)) return
  const idLength = buf.readUInt16BE(pos + 28)
  const subjectLength = buf.readUInt16BE(pos + 30)
  const subjectAt = pos + 32 + idLength
  if (buf.toString('utf8', subjectAt, subjectAt + subjectLength) !== REFUSAL_SUBJECT) return
  // No tags, no order key, no properties (as written): propsLength u32, count u16, bodyLength u32.
  let p = subjectAt + subjectLength
  p += 4 + buf.readUInt32BE(p)
  const bodyLength = buf.readUInt32BE(p)
  p += 4
  const end = Math.min(p + bodyLength, pos + length)
  while (p + 16 <= end) {
    const offset = buf.readUInt32BE(p) * 0x1_0000_0000 + buf.readUInt32BE(p + 4)
    const recLength = buf.readUInt32BE(p + 8)
    const keyStart = p + 12
    const keyEnd = keyStart + 4 + buf.readUInt16BE(keyStart) + buf.readUInt16BE(keyStart + 2)
    if (keyEnd > end) return
    each(offset, offset + recLength, keyStart, keyEnd)
    p = keyEnd
  }
}

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
  /**
   * Called (synchronously) before refusal markers are appended; when it throws, none is written (as
   * when their write fails). The store makes its data dir format 2 there (data-meta.ts).
   */
  beforeRefusals: () => void = () => {}
  /** Called with the tag of every appended record that is not stored (write failed, or refused). */
  onFailed: (tag: number) => void = () => {}
  /**
   * Records appended so far (`appended`) and records whose batch is done (`done`): stored or refused,
   * refusal markers written, onDurable/onFailed called. Queued records are numbered in order, so
   * `done >= n` means every record appended before the n-th one is done too (batches are serial).
   */
  private appended = 0
  private done = 0
  /** `settled()` callers: resolved once `done` reaches their target. */
  private waiters: { target: number; resolve: () => void }[] = []

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
   * records below `from`: the dedupe window's rebuild). Records no refusal marker names go to
   * `onRecord`; the markers themselves (and any other record without the DELAYED flag) to `onControl`.
   */
  async open(
    from: number,
    onRecord: (bytes: Buffer, offset: number) => void,
    before?: (log: SegmentLog, check: ScanCheck) => Promise<void>,
    onControl?: (buf: Buffer, pos: number, length: number, offset: number) => void,
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
    // The records refusal markers name: a marker comes after what it names, so they are gathered
    // first (the replay from the checkpoint is short: what was written since the last checkpoint).
    const refused = new Set<number>()
    if (from < seg.endOffset)
      await seg.scan(
        from,
        seg.endOffset,
        check,
        (b, p, length) => readRefusals(b, p, length, (offset) => refused.add(offset)),
        { resync: true },
      )
    const cuts = await seg.recover(
      from,
      check,
      // A view into the scan's buffer, which is reused: onRecord must not keep it (the store copies
      // the record into its schedule-log frame). Markers and the records they name are not replayed.
      (b, p, length, offset) => {
        if (isControlRecord(b, p)) onControl?.(b, p, length, offset)
        else if (refused.size === 0 || !refused.has(offset)) onRecord(b.subarray(p, p + length), offset)
      },
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
   * failed and it was cut) end at offsets that will be written again. `tag` comes back to onDurable,
   * or to onFailed (synchronously, before the rejection) when the record is not stored. `onRefused`
   * is called (synchronously, before the rejection) only for a record refused after its write
   * (onDurable threw on it), with the end of the refusal marker naming it (0: the marker could not be
   * written); a record whose write failed is rejected without it.
   */
  append(bytes: Buffer, tag = -1, onRefused?: (markerEnd: number) => void): Promise<AppendedRecord> {
    const p = new Promise<AppendedRecord>((resolve, reject) => {
      if (this.closed || !this.seg) {
        this.onFailed(tag)
        reject(fsError(new Error('message log is closed'), 'append'))
        return
      }
      if (this.failed) {
        this.onFailed(tag)
        reject(this.failed)
        return
      }
      this.queue.push({ bytes, tag, resolve, reject, onRefused })
      this.appended++
      this.next()
    })
    return p
  }

  /** Nothing queued or being written. */
  get idle(): boolean {
    return !this.writing && this.queue.length === 0
  }

  /**
   * Resolves once every record appended so far has been stored or refused, and each batch holding one
   * is done: refusal markers written, every record's onDurable or onFailed called. (Not once the newest
   * record's promise settled: a stored record of a batch is answered before the refusal markers of the
   * others are written, and a waiter re-checking then would find their dedupe entries still pending.)
   */
  settled(): Promise<void> {
    const target = this.appended
    if (this.done >= target) return Promise.resolve()
    return new Promise((resolve) => this.waiters.push({ target, resolve }))
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
      let offset = await this.appendDurable(
        seg,
        batch.map((p) => p.bytes),
        bytes,
      )
      const refused: { p: Pending; offset: number; err: unknown }[] = []
      for (const p of batch) {
        try {
          this.onDurable(p.bytes, offset, p.tag)
          p.resolve({ offset, end: offset + p.bytes.length })
        } catch (err) {
          refused.push({ p, offset, err })
        }
        offset += p.bytes.length
      }
      if (refused.length > 0) {
        const markerEnd = await this.writeRefusals(seg, refused)
        for (const r of refused) {
          this.onFailed(r.p.tag)
          r.p.onRefused?.(markerEnd)
          r.p.reject(r.err)
        }
      }
    } catch (err) {
      const e = err instanceof QmqError ? err : fsError(err, 'message log write')
      for (const p of batch) {
        this.onFailed(p.tag) // no-op for records already stored
        p.reject(e)
      }
    } finally {
      this.writing = false
      this.done += batch.length
      if (this.waiters.length > 0) {
        const waiting = this.waiters
        this.waiters = []
        for (const w of waiting) {
          if (this.done >= w.target) w.resolve()
          else this.waiters.push(w)
        }
      }
      this.next()
    }
  }

  /**
   * Appends `parts` as one write and, under `fsync`, syncs them; a failed sync cuts them off again
   * (nothing of them stays for a replay). Returns the offset of their first byte.
   */
  private async appendDurable(seg: SegmentLog, parts: Buffer[], bytes: number): Promise<number> {
    const start = await seg.appendv(parts, bytes)
    if (this.opts.fsync) {
      try {
        await seg.sync()
      } catch (err) {
        await this.cut(seg, start)
        throw err
      }
    }
    return start
  }

  /**
   * Appends (and syncs) refusal markers (layout: `encodeRefusals`) naming durable records about to be
   * refused, so no replay files them. Returns the end of the markers, 0 when they could not be
   * written. Never throws: without its marker a refusal still stands.
   */
  private async writeRefusals(seg: SegmentLog, refused: { p: Pending; offset: number }[]): Promise<number> {
    const markers = encodeRefusals(
      refused.map((r) => ({ bytes: r.p.bytes, offset: r.offset })),
      this.maxMessageBytes,
    )
    try {
      if (this.failed) throw this.failed
      this.beforeRefusals()
      await this.appendDurable(
        seg,
        markers,
        markers.reduce((n, m) => n + m.length, 0),
      )
      return seg.endOffset
    } catch (err) {
      this.opts.log.error(
        { err, offsets: refused.map((r) => r.offset) },
        'message log: refusal marker not written; a restart may still schedule these refused records',
      )
      return 0
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
