import { crc32c } from '../../common/crc32c'
import { QmqError } from '../../common/errors'
import { DEFAULT_MAX_MESSAGE_BYTES, MIN_RECORD_BYTES, verifyRecord } from '../../common/record'
import type { FsIo } from './fs-io'
import { readI64, writeI64 } from './i64'
import { type ScanResult, SegmentLog, type Truncation } from './segment-log'

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
 * Group commit: every `append()` made in the same turn of the event loop joins one batch, written
 * with one `writev`; with flush 'sync' the batch is acknowledged after one `fdatasync`, with 'async'
 * right after the write (a timer syncs every `flushIntervalMs`). One batch is in flight at a time;
 * appends that arrive meanwhile form the next batch, so batches grow with load.
 */
export const FRAME_BYTES = 32
export const FRAME_TYPE_MESSAGE = 1
export const FRAME_VERSION = 1

export interface AppendItem {
  record: Buffer
  subject: string
  id: string
  tagMask: number
  /** Set by `prepare` (the subject's sequence) unless the item is a duplicate. */
  seq: number
  /** Set by `prepare`: true = not written (dedupe), `seq` is the first copy's. */
  skip: boolean
  /** Set when written: logical offset of the record (frame offset + FRAME_BYTES). */
  offset: number
  storedAt: number
}

export interface MessageLogHooks {
  /** Called synchronously when a batch is formed: assign sequences, mark duplicates. */
  prepare(items: AppendItem[], storedAt: number): void
  /** The batch could not be stored: undo what prepare did. */
  rollback(items: AppendItem[]): void
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
}

interface Request {
  items: AppendItem[]
  resolve: () => void
  reject: (err: unknown) => void
}

/**
 * Frames the entry at `pos`: frame checksum, bounds, and (unless `recordCrc` is false) the record's
 * own length and CRC32C.
 */
export function checkFrame(
  buf: Buffer,
  pos: number,
  end: number,
  maxMessageBytes: number,
  recordCrc = true,
): ScanResult {
  if (end - pos < FRAME_BYTES) return { kind: 'short' }
  const length = buf.readUInt32BE(pos)
  if (buf.readUInt32BE(pos + 4) !== crc32c(buf.subarray(pos + 8, pos + FRAME_BYTES))) {
    return { kind: 'corrupt', reason: 'frame checksum mismatch' }
  }
  if (length < FRAME_BYTES + MIN_RECORD_BYTES || length > FRAME_BYTES + maxMessageBytes) {
    return { kind: 'corrupt', reason: `frame length ${length} out of bounds` }
  }
  if (buf.readUInt8(pos + 8) !== FRAME_TYPE_MESSAGE) return { kind: 'corrupt', reason: 'unknown frame type' }
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
  h.writeUInt32BE(crc32c(h.subarray(o + 8, o + FRAME_BYTES)), o + 4)
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

export class MessageLog {
  readonly log: SegmentLog
  private readonly opts: MessageLogOptions
  private queue: Request[] = []
  private running = false
  private scheduled = false
  private closed = false
  /** Records recently written, by record offset: pulls of the hot tail never touch the disk. */
  private readonly hot = new Map<number, Buffer>()
  private hotBytes = 0
  /**
   * Offsets in insertion order, for eviction. (Taking the oldest with `map.keys().next()` would scan
   * the deleted slots V8 keeps at the front of the map: quadratic.)
   */
  private hotOrder: number[] = []
  private hotHead = 0
  /** End of the log known to be on stable storage. */
  durableEnd: number
  /** End of the last batch passed to `hooks.committed` (every record below it is visible). */
  committedEnd: number
  private syncTimer: NodeJS.Timeout | undefined
  private idleWaiters: (() => void)[] = []

  constructor(opts: MessageLogOptions) {
    this.opts = opts
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
   * Validates from `from`, truncating torn or corrupt tails; visits every valid entry. Record CRCs
   * are verified from `verifyFrom` on (the checkpoint); before it (a scan that only refills the
   * dedupe index) the frame checksum and bounds are checked.
   */
  async recover(
    from: number,
    visit: (buf: Buffer, pos: number, length: number, offset: number) => void,
    verifyFrom = from,
  ): Promise<Truncation[]> {
    const max = this.maxMessageBytes
    const truncations = await this.log.recover(
      from,
      (b, p, e, off) => checkFrame(b, p, e, max, off >= verifyFrom),
      visit,
    )
    this.durableEnd = this.log.endOffset
    this.committedEnd = this.durableEnd
    return truncations
  }

  startSyncTimer(intervalMs: number): void {
    if (this.opts.flush !== 'async') return
    this.syncTimer = setInterval(() => {
      this.syncNow().catch(() => undefined)
    }, intervalMs)
    this.syncTimer.unref()
  }

  /** fdatasync now (the async-mode timer, close, checkpoints). */
  async syncNow(): Promise<void> {
    const end = this.log.endOffset
    const t0 = process.hrtime.bigint()
    await this.log.sync()
    this.opts.observe?.('sync', Number(process.hrtime.bigint() - t0) / 1e9, 0)
    if (end > this.durableEnd) this.durableEnd = end
  }

  append(items: AppendItem[]): Promise<void> {
    if (this.closed) return Promise.reject(new QmqError('QMQ_ERR_STORE_CLOSED'))
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ items, resolve, reject })
      if (!this.running && !this.scheduled) {
        this.scheduled = true
        setImmediate(() => {
          this.scheduled = false
          void this.run()
        })
      }
    })
  }

  /** Resolves once every append made so far has settled. */
  idle(): Promise<void> {
    if (!this.running && !this.scheduled && this.queue.length === 0) return Promise.resolve()
    return new Promise((resolve) => this.idleWaiters.push(resolve))
  }

  private async run(): Promise<void> {
    if (this.running) return
    this.running = true
    try {
      while (this.queue.length > 0) {
        const reqs = this.queue
        this.queue = []
        await this.writeBatch(reqs)
      }
    } finally {
      this.running = false
      const waiters = this.idleWaiters
      this.idleWaiters = []
      for (const w of waiters) w()
    }
  }

  private async writeBatch(reqs: Request[]): Promise<void> {
    const items: AppendItem[] = []
    for (const r of reqs) for (const it of r.items) items.push(it)
    const storedAt = this.opts.now()
    this.opts.hooks.prepare(items, storedAt)
    // The whole batch is copied into one buffer: one write, no per-message Buffer objects, and the
    // hot cache keeps slices of it (not the callers' buffers, which may be slices of socket reads).
    let bytes = 0
    for (const it of items) if (!it.skip) bytes += FRAME_BYTES + it.record.length
    const batch = Buffer.allocUnsafe(bytes)
    let o = 0
    for (const it of items) {
      if (it.skip) continue
      it.storedAt = storedAt
      writeFrameHeader(batch, o, it.record.length, it.tagMask, it.seq, storedAt)
      it.record.copy(batch, o + FRAME_BYTES)
      o += FRAME_BYTES + it.record.length
    }
    const bufs = [batch]
    if (bytes > 0) {
      const t0 = process.hrtime.bigint()
      let start: number
      try {
        start = await this.log.appendv(bufs, bytes)
      } catch (err) {
        this.fail(reqs, items, err)
        return
      }
      this.opts.observe?.('write', Number(process.hrtime.bigint() - t0) / 1e9, bytes)
      let off = start
      for (const it of items) {
        if (it.skip) continue
        it.offset = off + FRAME_BYTES
        off += FRAME_BYTES + it.record.length
      }
      if (this.opts.flush === 'sync') {
        const t1 = process.hrtime.bigint()
        try {
          await this.log.sync()
        } catch (err) {
          // After a failed fdatasync the written pages cannot be trusted: cut them off again.
          await this.log.truncate(start).catch(() => undefined)
          this.fail(reqs, items, err)
          return
        }
        this.opts.observe?.('sync', Number(process.hrtime.bigint() - t1) / 1e9, bytes)
        this.durableEnd = this.log.endOffset
      }
      for (const it of items) {
        if (it.skip) continue
        const rel = it.offset - start
        this.cache(it.offset, batch.subarray(rel, rel + it.record.length))
      }
      this.committedEnd = start + bytes
    }
    this.opts.hooks.committed(items)
    for (const r of reqs) r.resolve()
  }

  private fail(reqs: Request[], items: AppendItem[], err: unknown): void {
    this.opts.hooks.rollback(items)
    for (const r of reqs) r.reject(err)
  }

  private cache(offset: number, record: Buffer): void {
    const max = this.opts.hotCacheBytes
    if (max <= 0) return
    this.hot.set(offset, record)
    this.hotOrder.push(offset)
    this.hotBytes += record.length
    while (this.hotBytes > max && this.hotHead < this.hotOrder.length) this.evictOne()
  }

  private evictOne(): void {
    const off = this.hotOrder[this.hotHead++] as number
    const rec = this.hot.get(off)
    if (rec) {
      this.hot.delete(off)
      this.hotBytes -= rec.length
    }
    if (this.hotHead > 65536 && this.hotHead * 2 > this.hotOrder.length) {
      this.hotOrder = this.hotOrder.slice(this.hotHead)
      this.hotHead = 0
    }
  }

  /** Drops cached records below `offset` (retention). */
  evictBefore(offset: number): void {
    while (this.hotHead < this.hotOrder.length && (this.hotOrder[this.hotHead] as number) < offset)
      this.evictOne()
  }

  /**
   * Reads records by (record offset, size). Hot ones come from memory; the others with positional
   * reads, neighbours coalesced into one read (a subject's messages usually sit close together).
   * A record whose segment was deleted comes back as undefined.
   */
  async readMany(locs: readonly { offset: number; size: number }[]): Promise<(Buffer | undefined)[]> {
    const out: (Buffer | undefined)[] = new Array(locs.length)
    const MAX_SPAN = 4 * 1024 * 1024
    const MAX_GAP = 64 * 1024
    let i = 0
    const start = this.log.startOffset
    while (i < locs.length) {
      const loc = locs[i] as { offset: number; size: number }
      const hot = this.hot.get(loc.offset)
      if (hot) {
        out[i++] = hot
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
        if (this.hot.has(n.offset)) break
        if (n.offset < end || n.offset - end > MAX_GAP) break
        if (n.offset + n.size > segEnd || n.offset + n.size - loc.offset > MAX_SPAN) break
        end = n.offset + n.size
        j++
      }
      const buf = await this.log.read(loc.offset, end - loc.offset)
      for (let k = i; k < j; k++) {
        const n = locs[k] as { offset: number; size: number }
        const rel = n.offset - loc.offset
        out[k] = rel + n.size <= buf.length ? buf.subarray(rel, rel + n.size) : undefined
      }
      i = j
    }
    return out
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    if (this.syncTimer) clearInterval(this.syncTimer)
    await this.idle()
    await this.syncNow().catch(() => undefined)
    this.log.close()
    this.hot.clear()
    this.hotOrder = []
    this.hotHead = 0
  }

  /** Stops without syncing or waiting: what a crash leaves behind (tests). */
  abandon(): void {
    this.closed = true
    if (this.syncTimer) clearInterval(this.syncTimer)
  }
}
