import { crc32cRange } from '../../common/crc32c'
import { QmqError } from '../../common/errors'
import { DEFAULT_MAX_MESSAGE_BYTES, MIN_RECORD_BYTES, verifyRecord } from '../../common/record'
import type { FsIo } from './fs-io'
import { readI64, writeI64 } from './i64'
import { HotCache, type HotEntry } from './hot-cache'
import type { ReadBufferPool, ReadHold } from './read-pool'
import {
  type ScanCheck,
  type ScanResult,
  SegmentLog,
  type SkippedRange,
  type Truncation,
} from './segment-log'

/**
 * The message log: every message of every subject in arrival order, in segments of `segmentBytes`.
 *
 * Entry layout (big-endian), written by `frame()`:
 *
 *   offset  size  field
 *   0       4     length     u32: whole entry = FRAME_BYTES + record length
 *   4       4     crc        u32: CRC32C of bytes [8, 32) (the frame fields; the record has its own CRC)
 *   8       1     type       u8: 1 = message
 *   9       1     version    u8: 1
 *   10      2     reserved   u16: 0
 *   12      4     tagMask    u32: bloom bits of the record's tags (tag-hash.ts), copied to the consume log
 *   16      8     sequence   i64: the subject's sequence, assigned at append
 *   24      8     storedAt   i64: ms since epoch (broker clock) when the batch was written
 *   32            record     the common message record (src/common/record.ts), byte for byte as received,
 *                            with its own length and CRC32C over everything after its CRC field
 *
 * Pipelined group commit: every `append()` made in the same turn of the event loop joins one batch.
 * A batch is formed (sequences assigned, duplicates marked, frame headers built) when the previous
 * batch's write completes, laid out in one buffer (frame headers and copies of the records) and
 * written as one piece. One write is in flight at a time, so batches grow with load.
 * - 'async': a batch is acknowledged right after its write (a timer syncs every `flushIntervalMs`).
 * - 'sync': writes and fdatasyncs overlap, and so do fdatasyncs (up to MAX_SYNCS_IN_FLIGHT). When a
 *   write completes, an fdatasync starts at once for every batch written since the last one started,
 *   even while earlier ones are in flight: a batch does not wait for an fdatasync that cannot cover
 *   it to finish before its own starts (measured on a loaded ext4 VM: median write-to-durable 1.75 ms
 *   with up to 4 in flight vs 3.76 ms one at a time). Each fdatasync's batches are acknowledged when
 *   it and every earlier one have returned, in log order. A batch is never acknowledged (nor visible
 *   to pulls) before an fdatasync that started after its write ended.
 * Batches are acknowledged and made visible (`hooks.committed`) strictly in log order. When a write
 * fails, its batch alone is rejected (the segment log truncates the partial write). When an fdatasync
 * fails, no new batch is formed until the write in flight is back; then every batch not yet
 * acknowledged (also those of other fdatasyncs in flight or returned after it: a success following a
 * failure on the same file proves nothing) is cut off the log and rejected, newest first
 * (`hooks.rollback`); the results of fdatasyncs still in flight then are ignored. When that cut fails
 * too, the rejected batches stay in the file with sequences that were given back: the log fails
 * closed (`failed`): every append is refused with QMQ_ERR_STORE_FAILED until the store is reopened (recovery then finds what
 * the failed cut left of those batches under their own sequences: rejected messages may come back, no
 * sequence is reused).
 */
export const FRAME_BYTES = 32
/**
 * 'sync': fdatasyncs of the message log in flight at once (each covers the batches written since the
 * previous one started). They run on libuv's threadpool, which bin/qmq.js sizes at 16 threads.
 */
const MAX_SYNCS_IN_FLIGHT = 4
/** Batch buffers: at least this big when allocated; reused up to this size. */
const MIN_BATCH_BUFFER_BYTES = 256 * 1024
const MAX_RECYCLED_BATCH_BYTES = 16 * 1024 * 1024
export const FRAME_TYPE_MESSAGE = 1
export const FRAME_VERSION = 1

export interface AppendItem {
  record: Buffer
  subject: string
  tagMask: number
  /** Set by `prepare` (the subject's sequence) unless the item is a duplicate. */
  seq: number
  /** Set by `prepare`: true = not written (dedupe), `seq` is the first copy's. */
  skip: boolean
  /** Set when written: logical offset of the record (frame offset + FRAME_BYTES). */
  offset: number
  storedAt: number
  /**
   * Set when acknowledged: the log offset up to which the log must be durable for this item to be:
   * the end of its record, or for a duplicate the end of its batch (its first copy lies before that).
   * What a SEND waits for under `sync` replication (replication/source.ts).
   */
  end: number
}

export interface MessageLogHooks {
  /**
   * Called synchronously when a batch is formed: assign sequences, mark duplicates. Returns a token
   * handed back to `rollback` (batches are rolled back newest first).
   */
  prepare(items: AppendItem[], storedAt: number): number
  /** The batch could not be stored: undo what prepare did. */
  rollback(items: AppendItem[], token: number): void
  /** The batch is visible under the flush policy (written, and synced for 'sync'). In log order. */
  committed(items: AppendItem[]): void
}

export interface MessageLogOptions {
  dir: string
  segmentBytes: number
  flush: 'sync' | 'async'
  hotCacheBytes: number
  maxMessageBytes?: number
  now: () => number
  io?: FsIo
  hooks: MessageLogHooks
  /** Observes latency of writes and syncs, in seconds. */
  observe?: (what: 'write' | 'sync', seconds: number, bytes: number) => void
  /**
   * An fdatasync failed: `background` = the 'async' timer's (the segments stay dirty, the next tick
   * retries); else a batch's under 'sync' (its batches are rejected).
   */
  onSyncError?: (err: unknown, background: boolean) => void
  /** The log failed closed (see `failed`); called once. */
  onFailed?: (err: QmqError) => void
  /**
   * A record read from disk failed its CRC (or its length field disagrees): readMany returns it as
   * undefined (like a deleted one) so it is never served; this tells the store about it.
   */
  onCorrupt?: (offset: number, size: number) => void
  /** Buffers for reads whose records are sent as views (readMany with a ReadHold); none = fresh ones. */
  readPool?: ReadBufferPool
}

interface Request {
  items: AppendItem[]
  resolve: () => void
  reject: (err: unknown) => void
}

/** 'sync': one fdatasync of the message log and the batches it covers. */
interface SyncGroup {
  batches: Batch[]
  /** The fdatasync returned successfully. */
  done: boolean
}

/** A formed batch, from its formation to its acknowledgement. */
interface Batch {
  reqs: Request[]
  items: AppendItem[]
  /** Frame header, record, frame header, record... (stored items only); empty when none. */
  data: Buffer
  /** Its space in the hot cache, when it was laid out there. */
  hot: HotEntry | undefined
  bytes: number
  /** Log offset of the first byte, once written. */
  start: number
  token: number
}

/**
 * What is wrong with the frame header at `pos` (FRAME_BYTES of `buf` there): its length out of bounds,
 * its type, its checksum; undefined when it reads. checkFrame's first tests, allocating nothing when
 * the header reads.
 */
function frameHeaderFault(buf: Buffer, pos: number, maxMessageBytes: number): string | undefined {
  const length = buf.readUInt32BE(pos)
  if (length < FRAME_BYTES + MIN_RECORD_BYTES || length > FRAME_BYTES + maxMessageBytes)
    return `frame length ${length} out of bounds`
  if (buf[pos + 8] !== FRAME_TYPE_MESSAGE) return 'unknown frame type'
  if (buf.readUInt32BE(pos + 4) !== crc32cRange(buf, pos + 8, pos + FRAME_BYTES))
    return 'frame checksum mismatch'
  return undefined
}

/**
 * Frames the entry at `pos`: bounds, type, frame checksum, and (unless `recordCrc` is false) the
 * record's own length and CRC32C. The cheap tests come first: a resynchronising scan (recovery after
 * damage) calls this at every byte of a damaged range.
 */
export function checkFrame(
  buf: Buffer,
  pos: number,
  end: number,
  maxMessageBytes: number,
  recordCrc = true,
): ScanResult {
  if (end - pos < FRAME_BYTES) return { kind: 'short' }
  const fault = frameHeaderFault(buf, pos, maxMessageBytes)
  if (fault !== undefined) return { kind: 'corrupt', reason: fault }
  const length = buf.readUInt32BE(pos)
  if (end - pos < length) return { kind: 'short' }
  if (!recordCrc) return { kind: 'record', length }
  try {
    const n = verifyRecord(buf, pos + FRAME_BYTES, pos + length, { maxMessageBytes })
    if (n !== length - FRAME_BYTES)
      return { kind: 'corrupt', reason: 'record length differs from frame length' }
  } catch (err) {
    return { kind: 'corrupt', reason: err instanceof Error ? err.message : String(err) }
  }
  return { kind: 'record', length }
}

/** Writes the frame header of a record at `o` in `h`. */
export function writeFrameHeader(
  h: Buffer,
  o: number,
  recordLength: number,
  tagMask: number,
  seq: number,
  storedAt: number,
): void {
  h.writeUInt32BE(FRAME_BYTES + recordLength, o)
  h.writeUInt8(FRAME_TYPE_MESSAGE, o + 8)
  h.writeUInt8(FRAME_VERSION, o + 9)
  h.writeUInt16BE(0, o + 10)
  h.writeUInt32BE(tagMask >>> 0, o + 12)
  writeI64(h, seq, o + 16)
  writeI64(h, storedAt, o + 24)
  h.writeUInt32BE(crc32cRange(h, o + 8, o + FRAME_BYTES), o + 4)
}

export interface FrameFields {
  tagMask: number
  seq: number
  storedAt: number
}

export function readFrame(buf: Buffer, pos: number): FrameFields {
  return {
    tagMask: buf.readUInt32BE(pos + 12),
    seq: readI64(buf, pos + 16),
    storedAt: readI64(buf, pos + 24),
  }
}

const EMPTY = Buffer.alloc(0)

/** Length field and CRC32C of a record as read back (record.ts layout). */
function recordIntact(rec: Buffer): boolean {
  return (
    rec.length >= MIN_RECORD_BYTES &&
    rec.readUInt32BE(0) === rec.length &&
    rec.readUInt32BE(4) === crc32cRange(rec, 8, rec.length)
  )
}

export class MessageLog {
  readonly log: SegmentLog
  private readonly opts: MessageLogOptions
  private queue: Request[] = []
  private scheduled = false
  private closed = false
  /** abandon() was called: no batch is formed, written or synced any more (a crash). */
  private abandoned = false
  /** The batch whose write is in flight. */
  private writing: Batch | undefined
  /** 'async': written, not yet acknowledged. 'sync': written, not covered by an fdatasync yet. */
  private written: Batch[] = []
  /** 'sync': the fdatasyncs in flight or returned but not acknowledged yet, in the order they started. */
  private syncs: SyncGroup[] = []
  /** 'sync': an fdatasync failed; set until every unsynced batch is cut off and rejected. */
  private syncError: { err: unknown } | undefined
  /** Set when rejected batches could not be cut off the log: appends are refused from then on. */
  failed: QmqError | undefined
  /** The newest batches as written, for pulls of the hot tail (hot-cache.ts). */
  private readonly hot: HotCache
  /** End of the log known to be on stable storage. */
  durableEnd: number
  /** End of the last batch passed to `hooks.committed` (every record below it is visible). */
  committedEnd: number
  private syncTimer: NodeJS.Timeout | undefined
  /** The buffer of the last batch written, reused for a later one (one write is in flight at a time). */
  private spareBatchBuffer: Buffer | undefined
  private idleWaiters: (() => void)[] = []

  constructor(opts: MessageLogOptions) {
    this.opts = opts
    this.hot = new HotCache(opts.hotCacheBytes)
    this.log = SegmentLog.open({
      dir: opts.dir,
      segmentBytes: opts.segmentBytes,
      ...(opts.io ? { io: opts.io } : {}),
    })
    this.durableEnd = this.log.endOffset
    this.committedEnd = this.durableEnd
  }

  get maxMessageBytes(): number {
    return this.opts.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES
  }

  /**
   * Validates from `from`; visits every valid entry. A damaged range followed by valid frames in its
   * segment is stepped over (resynchronised on the next valid frame) and reported to `onSkip`; a
   * torn or corrupt tail (nothing valid after it in its segment) is truncated and returned. Record
   * CRCs are verified from `verifyFrom` on (the checkpoint); before it (a scan that only refills the
   * dedupe index) the frame checksum and bounds are checked.
   */
  async recover(
    from: number,
    visit: (buf: Buffer, pos: number, length: number, offset: number) => void,
    verifyFrom = from,
    onSkip: (range: SkippedRange) => void = () => undefined,
  ): Promise<Truncation[]> {
    const truncations = await this.log.recover(from, this.frameCheck(verifyFrom), visit, { onSkip })
    this.durableEnd = this.log.endOffset
    this.committedEnd = this.durableEnd
    return truncations
  }

  /** `checkFrame` for scans: record CRCs verified from logical offset `verifyFrom` on. */
  frameCheck(verifyFrom: number): ScanCheck {
    const max = this.maxMessageBytes
    return (b, p, e, off) => checkFrame(b, p, e, max, off >= verifyFrom)
  }

  startSyncTimer(intervalMs: number): void {
    if (this.opts.flush !== 'async') return
    this.syncTimer = setInterval(() => {
      this.syncNow().catch((err: unknown) => this.opts.onSyncError?.(err, true))
    }, intervalMs)
    this.syncTimer.unref()
  }

  /** fdatasync now (the async-mode timer, close, checkpoints). */
  async syncNow(): Promise<void> {
    const end = this.log.endOffset
    const t0 = performance.now()
    await this.log.sync()
    this.opts.observe?.('sync', (performance.now() - t0) / 1000, 0)
    if (end > this.durableEnd) this.durableEnd = end
  }

  append(items: AppendItem[]): Promise<void> {
    if (this.closed) return Promise.reject(new QmqError('QMQ_ERR_STORE_CLOSED'))
    if (this.failed !== undefined) return Promise.reject(this.failed)
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ items, resolve, reject })
      // Appends of this turn of the event loop form one batch; while a write is in flight they wait
      // for it (its completion forms the next batch at once).
      if (!this.scheduled && this.writing === undefined) {
        this.scheduled = true
        setImmediate(() => {
          this.scheduled = false
          this.pump()
        })
      }
    })
  }

  /** Resolves once every append made so far has settled. */
  idle(): Promise<void> {
    if (this.isIdle()) return Promise.resolve()
    return new Promise((resolve) => this.idleWaiters.push(resolve))
  }

  private isIdle(): boolean {
    return (
      !this.scheduled &&
      this.queue.length === 0 &&
      this.writing === undefined &&
      this.written.length === 0 &&
      this.syncs.length === 0 &&
      this.syncError === undefined
    )
  }

  private checkIdle(): void {
    if (this.idleWaiters.length === 0 || !this.isIdle()) return
    const waiters = this.idleWaiters
    this.idleWaiters = []
    for (const w of waiters) w()
  }

  /** Forms the next batch from the queue and writes it, unless a write is in flight. */
  private pump(): void {
    if (this.abandoned) {
      // Nothing is written after abandon(): appends still queued are refused, not formed.
      const refused = this.queue
      this.queue = []
      for (const r of refused) r.reject(new QmqError('QMQ_ERR_STORE_CLOSED'))
      // Written, no fdatasync started: never acknowledged (fdatasyncs in flight still settle theirs).
      const unsynced = this.written
      this.written = []
      if (unsynced.length > 0) this.reject(unsynced, new QmqError('QMQ_ERR_STORE_CLOSED'))
      this.checkIdle()
      return
    }
    if (this.failed !== undefined && this.queue.length > 0) {
      // Not formed yet: nothing to roll back.
      const refused = this.queue
      this.queue = []
      for (const r of refused) r.reject(this.failed)
    }
    while (this.writing === undefined && this.syncError === undefined && this.queue.length > 0) {
      const batch = this.form()
      if (batch.bytes === 0) {
        // Only duplicates: nothing to write, acknowledged in order behind the batches before it.
        batch.start = this.log.endOffset
        this.written.push(batch)
        continue
      }
      this.writing = batch
      void this.write(batch)
    }
    if (this.opts.flush === 'sync') this.startSync()
    else this.ackWritten()
    this.checkIdle()
  }

  private form(): Batch {
    const reqs = this.queue
    this.queue = []
    const items: AppendItem[] = []
    for (const r of reqs) for (const it of r.items) items.push(it)
    const storedAt = this.opts.now()
    const token = this.opts.hooks.prepare(items, storedAt)
    let bytes = 0
    for (const it of items) if (!it.skip) bytes += FRAME_BYTES + it.record.length
    // The batch is laid out in one buffer (frame header, record, frame header, record...) and written
    // as one piece: copying a record costs less than handing the kernel two pieces per message. The
    // buffer is the batch's space in the hot cache when there is room there (the cache then serves it
    // to pulls once acknowledged), else a buffer reused from batch to batch.
    const hot = this.hot.reserve(bytes)
    const out = hot !== undefined ? hot.buf : bytes === 0 ? EMPTY : this.takeBatchBuffer(bytes)
    let o = 0
    for (const it of items) {
      if (it.skip) continue
      it.storedAt = storedAt
      const rec = it.record
      writeFrameHeader(out, o, rec.length, it.tagMask, it.seq, storedAt)
      out.set(rec, o + FRAME_BYTES)
      o += FRAME_BYTES + rec.length
    }
    return { reqs, items, data: out.subarray(0, bytes), hot: hot?.entry, bytes, start: -1, token }
  }

  /** A buffer of at least `bytes` for the next batch: a recycled one when it is big enough. */
  private takeBatchBuffer(bytes: number): Buffer {
    const spare = this.spareBatchBuffer
    if (spare !== undefined && spare.length >= bytes) {
      this.spareBatchBuffer = undefined
      return spare
    }
    return Buffer.allocUnsafeSlow(Math.max(bytes, MIN_BATCH_BUFFER_BYTES))
  }

  /** Takes back the buffer of a batch whose write is over (unless it lives in the hot cache). */
  private recycleBatchBuffer(batch: Batch): void {
    const view = batch.data
    batch.data = EMPTY
    if (batch.hot !== undefined || view.length === 0) return
    const whole = Buffer.from(view.buffer, view.byteOffset, view.buffer.byteLength - view.byteOffset)
    if (whole.length > MAX_RECYCLED_BATCH_BYTES) return
    if (this.spareBatchBuffer === undefined || this.spareBatchBuffer.length < whole.length)
      this.spareBatchBuffer = whole
  }

  private async write(batch: Batch): Promise<void> {
    const t0 = performance.now()
    try {
      batch.start = await this.log.appendv([batch.data], batch.bytes)
    } catch (err) {
      this.writing = undefined
      // Only this batch (the newest) is affected: the segment log cut its partial write. If it could
      // not, the next batch would be written over those bytes and its sequences would follow records
      // a recovery may keep (as after a failed fdatasync's cut, failUnsynced): appends stop.
      const left = this.log.partialLeft
      if (left !== undefined && this.failed === undefined) {
        this.failed = new QmqError(
          'QMQ_ERR_STORE_FAILED',
          `message log: a failed write could not be cut off (${left.message}); appends are refused until the store is reopened`,
          { cause: left },
        )
        this.opts.onFailed?.(this.failed)
      }
      this.reject([batch], err)
      if (this.syncError !== undefined) this.failUnsynced()
      else this.pump()
      return
    }
    this.opts.observe?.('write', (performance.now() - t0) / 1000, batch.bytes)
    this.recycleBatchBuffer(batch)
    let off = batch.start
    for (const it of batch.items) {
      if (it.skip) continue
      it.offset = off + FRAME_BYTES
      off += FRAME_BYTES + it.record.length
    }
    this.writing = undefined
    this.written.push(batch)
    if (this.syncError !== undefined) this.failUnsynced()
    // Next batch first (its write overlaps this batch's acknowledgement or fdatasync).
    else this.pump()
  }

  /** 'async': acknowledges every written batch, in order. */
  private ackWritten(): void {
    const done = this.written
    if (done.length === 0) return
    this.written = []
    for (const b of done) this.ack(b)
  }

  /**
   * 'sync': one fdatasync for every batch written since the last one started, unless
   * MAX_SYNCS_IN_FLIGHT are in flight (the next write completion or returning fdatasync starts it).
   */
  private startSync(): void {
    if (this.syncError !== undefined || this.written.length === 0 || this.abandoned) return
    if (this.syncs.length >= MAX_SYNCS_IN_FLIGHT) return
    const group: SyncGroup = { batches: this.written, done: false }
    this.written = []
    this.syncs.push(group)
    let bytes = 0
    for (const b of group.batches) bytes += b.bytes
    const t0 = performance.now()
    this.log.syncOverlapping().then(
      () => {
        this.opts.observe?.('sync', (performance.now() - t0) / 1000, bytes)
        // Not in `syncs` any more: its batches were rejected after another fdatasync failed.
        if (!this.syncs.includes(group)) return
        group.done = true
        this.ackSynced()
        this.startSync()
        this.checkIdle()
      },
      (err: unknown) => {
        this.opts.onSyncError?.(err, false)
        if (!this.syncs.includes(group)) return
        // The written pages cannot be trusted: every batch not acknowledged yet goes (after the
        // write in flight, if any, is back), also those of fdatasyncs that returned after this one
        // started or are still in flight (their results are ignored from now on).
        this.syncError = { err }
        const unacked: Batch[] = []
        for (const g of this.syncs) for (const b of g.batches) unacked.push(b)
        this.written = [...unacked, ...this.written]
        this.syncs = []
        if (this.writing === undefined) this.failUnsynced()
      },
    )
  }

  /** 'sync': acknowledges, in log order, the batches of the leading fdatasyncs that returned. */
  private ackSynced(): void {
    while (this.syncs.length > 0 && (this.syncs[0] as SyncGroup).done) {
      const group = this.syncs.shift() as SyncGroup
      for (const b of group.batches) {
        const end = b.start + b.bytes
        if (end > this.durableEnd) this.durableEnd = end
        this.ack(b)
      }
    }
  }

  /** After a failed fdatasync: cuts every written, unsynced batch off the log and rejects them. */
  private failUnsynced(): void {
    const failed = this.written
    const err = (this.syncError as { err: unknown }).err
    this.written = []
    let cut = Number.POSITIVE_INFINITY
    for (const b of failed) if (b.bytes > 0) cut = Math.min(cut, b.start)
    const done = () => {
      this.syncError = undefined
      this.reject(failed, err)
      this.pump()
    }
    if (cut === Number.POSITIVE_INFINITY) done()
    else
      this.log.truncate(cut).then(done, (cutErr: unknown) => {
        // The rejected batches stay in the file: giving their sequences to later batches would make
        // two messages of one sequence (recovery keeps the first: an acknowledged one would be lost).
        this.failed = new QmqError(
          'QMQ_ERR_STORE_FAILED',
          `message log: batches rejected after a failed fdatasync could not be cut off (${
            cutErr instanceof Error ? cutErr.message : String(cutErr)
          }); appends are refused until the store is reopened`,
          { cause: cutErr },
        )
        this.opts.onFailed?.(this.failed)
        done()
      })
  }

  /** Rolls back and rejects batches (newest first). */
  private reject(batches: Batch[], err: unknown): void {
    for (let i = batches.length - 1; i >= 0; i--) {
      const b = batches[i] as Batch
      if (b.hot !== undefined) this.hot.cancel(b.hot)
      this.opts.hooks.rollback(b.items, b.token)
    }
    for (const b of batches) for (const r of b.reqs) r.reject(err)
  }

  private ack(b: Batch): void {
    if (b.bytes > 0) {
      this.cache(b)
      this.committedEnd = b.start + b.bytes
    }
    const batchEnd = b.start + b.bytes
    for (const it of b.items) it.end = it.skip ? batchEnd : it.offset + it.record.length
    this.opts.hooks.committed(b.items)
    for (const r of b.reqs) r.resolve()
  }

  private cache(b: Batch): void {
    if (b.hot !== undefined) this.hot.commit(b.hot, b.start)
  }

  /** Drops cached records below `offset` (retention). */
  evictBefore(offset: number): void {
    this.hot.evictBefore(offset)
  }

  /**
   * Reads records by (record offset, size). Hot ones come from memory; the others with positional
   * reads, neighbours coalesced into one read (a subject's messages usually sit close together).
   * A record whose segment was deleted comes back as undefined.
   *
   * With `hold`, the memory the records view (disk reads, copies out of the hot cache) may come from
   * the read pool and is owned by `hold`: the records are valid until it is released.
   */
  async readMany(
    locs: readonly { offset: number; size: number }[],
    hold?: ReadHold,
  ): Promise<(Buffer | undefined)[]> {
    const out: (Buffer | undefined)[] = new Array(locs.length)
    const MAX_SPAN = 4 * 1024 * 1024
    const MAX_GAP = 64 * 1024
    let i = 0
    const start = this.log.startOffset
    while (i < locs.length) {
      const loc = locs[i] as { offset: number; size: number }
      const hot = this.hot.get(loc.offset, loc.size)
      if (hot) {
        i = this.copyHot(locs, i, hot, out, hold)
        continue
      }
      if (loc.offset < start || !this.log.contains(loc.offset)) {
        out[i++] = undefined
        continue
      }
      // Extend the read over following records that are close and in the same segment.
      const segEnd = this.log.segmentEnd(loc.offset)
      let j = i + 1
      let end = loc.offset + loc.size
      while (j < locs.length) {
        const n = locs[j] as { offset: number; size: number }
        if (n.offset < end || n.offset - end > MAX_GAP) break
        if (n.offset + n.size > segEnd || n.offset + n.size - loc.offset > MAX_SPAN) break
        if (this.hot.get(n.offset, n.size) !== undefined) break
        end = n.offset + n.size
        j++
      }
      const buf = await this.readSpan(loc.offset, end - loc.offset, hold)
      for (let k = i; k < j; k++) {
        const n = locs[k] as { offset: number; size: number }
        const rel = n.offset - loc.offset
        const rec = rel + n.size <= buf.length ? buf.subarray(rel, rel + n.size) : undefined
        // Records read from disk are checked before they are served (bit rot after recovery checked
        // them); hot ones were verified on receipt and never left memory.
        if (rec !== undefined && !recordIntact(rec)) {
          this.opts.onCorrupt?.(n.offset, n.size)
          out[k] = undefined
        } else out[k] = rec
      }
      i = j
    }
    return out
  }

  /** Reads `length` bytes at `offset` into a pooled buffer owned by `hold` when there is one. */
  private async readSpan(offset: number, length: number, hold: ReadHold | undefined): Promise<Buffer> {
    const pooled = hold === undefined ? undefined : this.opts.readPool?.take(length)
    if (pooled === undefined) return this.log.read(offset, length)
    ;(hold as ReadHold).add(pooled) // held from here: released with the hold even if the read fails
    const n = await this.log.readInto(offset, pooled.buf, 0, length)
    return pooled.buf.subarray(0, n)
  }

  /**
   * Copies the hot record `first` (at `locs[i]`) and the hot records right after it out of the ring
   * into one new buffer: the ring's space is reused once a batch is reclaimed, while a caller may keep
   * the records for long (a pull answer queued behind a slow socket). Returns the next index to read.
   */
  private copyHot(
    locs: readonly { offset: number; size: number }[],
    i: number,
    first: Buffer,
    out: (Buffer | undefined)[],
    hold: ReadHold | undefined,
  ): number {
    const views = [first]
    let total = first.length
    let j = i + 1
    for (; j < locs.length; j++) {
      const n = locs[j] as { offset: number; size: number }
      const v = this.hot.get(n.offset, n.size)
      if (v === undefined) break
      views.push(v)
      total += v.length
    }
    const pooled = hold === undefined ? undefined : this.opts.readPool?.take(total)
    if (pooled !== undefined) hold?.add(pooled)
    const copy = pooled?.buf ?? Buffer.allocUnsafe(total)
    let o = 0
    for (let k = 0; k < views.length; k++) {
      const v = views[k] as Buffer
      copy.set(v, o)
      out[i + k] = copy.subarray(o, o + v.length)
      o += v.length
    }
    return j
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    if (this.syncTimer) clearInterval(this.syncTimer)
    await this.idle()
    await this.syncNow().catch(() => undefined)
    this.log.close()
    this.hot.clear()
  }

  /** Stops without syncing or waiting: what a crash leaves behind (tests). */
  abandon(): void {
    this.closed = true
    this.abandoned = true
    if (this.syncTimer) clearInterval(this.syncTimer)
    // Queued appends are refused now; the write in flight, if any, finishes (its batch is then
    // refused by `pump` if it was never synced: no fdatasync starts after abandon()).
    this.pump()
  }
}
