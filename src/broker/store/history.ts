import { crc32cRange } from '../../common/crc32c'
import type { Logger } from '../../common/logger'
import {
  COUNT_FIELDS,
  type CountField,
  type Counts,
  type HistoryPoint,
  type HistorySeries,
} from '../../common/protocol/query'
import type { FsIo } from './fs-io'
import { readI64, writeI64 } from './i64'
import { type ScanResult, SegmentLog } from './segment-log'

/**
 * Per-minute counts per (subject, consumer group), kept on disk for `retentionMs` (default 25 h) and
 * surviving restarts: what `qmq history` and the console's charts show. Used by the broker and the
 * delay server alike.
 *
 * The current minute is counted in memory (at most `maxSeries` series; beyond that, counts go to the
 * series `(OVERFLOW_SUBJECT, '')`); when the minute is over (or the server closes) each series with
 * a non-zero count is appended to a segment log (segment-log.ts) as one entry. A crash loses at most
 * the minute in progress. A restart within a minute writes that minute twice: queries add them up.
 *
 * Entry layout (big-endian):
 *
 *   offset  size  field
 *   0       4     length     u32: whole entry
 *   4       4     crc        u32: CRC32C of bytes [8, length)
 *   8       8     minute     i64: ms since epoch, start of the minute
 *   16      8     bytes      i64: record bytes produced
 *   24      4     produced   u32
 *   28      4     delivered  u32
 *   32      4     acked      u32
 *   36      4     nacked     u32
 *   40      4     expired    u32: lease expiries
 *   44      4     dead       u32
 *   48            subject    str16
 *                 group      str16 ('' for subject-level counts: produced, bytes)
 *
 * Retention deletes whole segments last written more than `retentionMs` ago.
 */
export { COUNT_FIELDS, type CountField, type Counts, type HistoryPoint, type HistorySeries }

export interface HistoryQuery {
  from: number
  to: number
  subject?: string | undefined
  consumerGroup?: string | undefined
  /** At most this many series (default MAX_QUERY_SERIES). */
  maxSeries?: number
}

export const OVERFLOW_SUBJECT = '%OTHER%'
export const DEFAULT_HISTORY_MAX_SERIES = 10_000
export const MAX_QUERY_SERIES = 10_000
export const DEFAULT_HISTORY_RETENTION_MS = 25 * 3_600_000
const HISTORY_SEGMENT_BYTES = 4 * 1024 * 1024
const ENTRY_FIXED = 48
const MINUTE_MS = 60_000

export function zeroCounts(): Counts {
  return { produced: 0, delivered: 0, acked: 0, nacked: 0, expired: 0, dead: 0, bytes: 0 }
}

function checkEntry(buf: Buffer, pos: number, end: number): ScanResult {
  if (end - pos < 8) return { kind: 'short' }
  const len = buf.readUInt32BE(pos)
  if (len < ENTRY_FIXED + 4 || len > ENTRY_FIXED + 4 + 2 * 0xffff)
    return { kind: 'corrupt', reason: `bad length ${len}` }
  if (end - pos < len) return { kind: 'short' }
  if (buf.readUInt32BE(pos + 4) !== crc32cRange(buf, pos + 8, pos + len))
    return { kind: 'corrupt', reason: 'history entry CRC mismatch' }
  return { kind: 'record', length: len }
}

export interface HistoryOptions {
  dir: string
  now: () => number
  log: Logger
  retentionMs?: number
  maxSeries?: number
  io?: FsIo
}

export class History {
  private readonly seglog: SegmentLog
  private readonly now: () => number
  private readonly logger: Logger
  private readonly retentionMs: number
  private readonly maxSeries: number
  private minute = 0
  private current = new Map<string, Counts>()
  private timer: NodeJS.Timeout | undefined
  private writing: Promise<void> = Promise.resolve()
  /** Minutes handed to `writing` so far: a query retries when one was handed over during its scan. */
  private minutesQueued = 0
  private closed = false

  private constructor(opts: HistoryOptions) {
    this.seglog = SegmentLog.open({
      dir: opts.dir,
      segmentBytes: HISTORY_SEGMENT_BYTES,
      ...(opts.io ? { io: opts.io } : {}),
    })
    this.now = opts.now
    this.logger = opts.log
    this.retentionMs = opts.retentionMs ?? DEFAULT_HISTORY_RETENTION_MS
    this.maxSeries = opts.maxSeries ?? DEFAULT_HISTORY_MAX_SERIES
  }

  static async open(opts: HistoryOptions): Promise<History> {
    const h = new History(opts)
    const truncs = await h.seglog.recover(h.seglog.startOffset, checkEntry, () => undefined)
    for (const t of truncs) h.logger.warn({ ...t }, 'history: damaged tail cut')
    h.minute = Math.floor(h.now() / MINUTE_MS) * MINUTE_MS
    h.timer = setInterval(() => h.tick(), 5_000)
    h.timer.unref()
    return h
  }

  /** Adds to the current minute's counts of (subject, group); group '' = subject-level. */
  add(subject: string, group: string, field: CountField, n = 1): void {
    if (this.closed || n === 0) return
    this.tick()
    const key = `${subject}\u0000${group}`
    let c = this.current.get(key)
    if (c === undefined) {
      if (this.current.size >= this.maxSeries) {
        const over = `${OVERFLOW_SUBJECT}\u0000`
        c = this.current.get(over)
        if (c === undefined) {
          c = zeroCounts()
          this.current.set(over, c)
        }
      } else {
        c = zeroCounts()
        this.current.set(key, c)
      }
    }
    c[field] += n
  }

  /** Writes the finished minute when the clock moved past it. */
  private tick(): void {
    const m = Math.floor(this.now() / MINUTE_MS) * MINUTE_MS
    if (m === this.minute) return
    this.writeMinute()
    this.minute = m
  }

  private writeMinute(): void {
    if (this.current.size === 0) return
    const minute = this.minute
    const series = this.current
    this.current = new Map()
    this.minutesQueued++
    const bufs: Buffer[] = []
    let bytes = 0
    for (const [key, c] of series) {
      const cut = key.indexOf('\u0000')
      const subject = key.slice(0, cut)
      const group = key.slice(cut + 1)
      const sb = Buffer.from(subject, 'utf8')
      const gb = Buffer.from(group, 'utf8')
      const len = ENTRY_FIXED + 4 + sb.length + gb.length
      const b = Buffer.alloc(len)
      b.writeUInt32BE(len, 0)
      writeI64(b, minute, 8)
      writeI64(b, c.bytes, 16)
      b.writeUInt32BE(Math.min(c.produced, 0xffffffff), 24)
      b.writeUInt32BE(Math.min(c.delivered, 0xffffffff), 28)
      b.writeUInt32BE(Math.min(c.acked, 0xffffffff), 32)
      b.writeUInt32BE(Math.min(c.nacked, 0xffffffff), 36)
      b.writeUInt32BE(Math.min(c.expired, 0xffffffff), 40)
      b.writeUInt32BE(Math.min(c.dead, 0xffffffff), 44)
      b.writeUInt16BE(sb.length, 48)
      sb.copy(b, 50)
      b.writeUInt16BE(gb.length, 50 + sb.length)
      gb.copy(b, 52 + sb.length)
      b.writeUInt32BE(crc32cRange(b, 8, len), 4)
      bufs.push(b)
      bytes += len
    }
    this.writing = this.writing
      .then(async () => {
        if (this.closed) return
        await this.seglog.appendv(bufs, bytes)
        this.retain()
      })
      .catch((err) => this.logger.warn({ err }, 'history: write failed; one minute of counts lost'))
  }

  private retain(): void {
    const before = Date.now() - this.retentionMs
    for (const s of this.seglog.segments()) {
      if (s.base === this.seglog.activeBase || s.mtimeMs >= before) break
      this.seglog.deleteOldest()
    }
  }

  /** Per-minute sums in [from, to), the current minute included. */
  async query(q: HistoryQuery): Promise<{ series: HistorySeries[]; truncated: boolean }> {
    // A minute handed to the write queue while the scan runs is neither in the scanned range nor in
    // `current` any more: the answer would miss it. So the scan starts once every queued minute is on
    // disk and is done again if a minute was queued meanwhile (at most once a minute under traffic).
    for (let attempt = 1; ; attempt++) {
      this.tick()
      let w: Promise<void>
      do {
        w = this.writing
        await w
      } while (w !== this.writing)
      const queued = this.minutesQueued
      const answer = await this.queryOnce(q)
      if (queued === this.minutesQueued || attempt >= 3) return answer()
    }
  }

  /**
   * Scans the log up to its end at the call; the returned function adds the minute in memory, to be
   * called synchronously once the caller knows no minute was queued during the scan.
   */
  private async queryOnce(q: HistoryQuery): Promise<() => { series: HistorySeries[]; truncated: boolean }> {
    const maxSeries = q.maxSeries ?? MAX_QUERY_SERIES
    const out = new Map<string, Map<number, HistoryPoint>>()
    let truncated = false
    const take = (subject: string, group: string, minute: number, c: Counts): void => {
      if (minute < q.from - MINUTE_MS + 1 || minute >= q.to) return
      if (q.subject !== undefined && subject !== q.subject) return
      if (q.consumerGroup !== undefined && group !== q.consumerGroup) return
      const key = `${subject}\u0000${group}`
      let pts = out.get(key)
      if (pts === undefined) {
        if (out.size >= maxSeries) {
          truncated = true
          return
        }
        pts = new Map()
        out.set(key, pts)
      }
      let p = pts.get(minute)
      if (p === undefined) {
        p = { minute, ...zeroCounts() }
        pts.set(minute, p)
      }
      for (const f of COUNT_FIELDS) p[f] += c[f]
    }
    // Segments last written before `from` hold nothing in range (a segment's mtime is its last write).
    const segs = this.seglog.segments()
    const first = segs.find((s) => s.mtimeMs >= q.from - MINUTE_MS)
    if (first) {
      await this.seglog.scan(first.base, this.seglog.endOffset, checkEntry, (buf, pos) => {
        const minute = readI64(buf, pos + 8)
        const sl = buf.readUInt16BE(pos + 48)
        const subject = buf.toString('utf8', pos + 50, pos + 50 + sl)
        const gl = buf.readUInt16BE(pos + 50 + sl)
        const group = buf.toString('utf8', pos + 52 + sl, pos + 52 + sl + gl)
        take(subject, group, minute, {
          bytes: readI64(buf, pos + 16),
          produced: buf.readUInt32BE(pos + 24),
          delivered: buf.readUInt32BE(pos + 28),
          acked: buf.readUInt32BE(pos + 32),
          nacked: buf.readUInt32BE(pos + 36),
          expired: buf.readUInt32BE(pos + 40),
          dead: buf.readUInt32BE(pos + 44),
        })
      })
    }
    return () => {
      for (const [key, c] of this.current) {
        const cut = key.indexOf('\u0000')
        take(key.slice(0, cut), key.slice(cut + 1), this.minute, c)
      }
      return { series: seriesOf(out), truncated }
    }
  }

  /** Writes the minute in progress and closes. */
  async close(): Promise<void> {
    if (this.closed) return
    if (this.timer) clearInterval(this.timer)
    this.writeMinute()
    await this.writing
    try {
      await this.seglog.sync()
    } catch (err) {
      this.logger.warn({ err }, 'history: final sync failed')
    }
    this.closed = true
    this.seglog.close()
  }

  /**
   * Stops without writing (a crash; tests). The log is closed once the write in flight is over (see
   * IndexLog.abandon: a descriptor closed under a write hands the write to the next file opened).
   */
  async abandon(): Promise<void> {
    if (this.timer) clearInterval(this.timer)
    this.closed = true
    await this.writing
    this.seglog.close()
  }
}

/** Joins per-server answers: sums the points of equal (subject, group, minute). */
export function mergeHistory(parts: readonly HistorySeries[][]): HistorySeries[] {
  const out = new Map<string, Map<number, HistoryPoint>>()
  for (const part of parts) {
    for (const s of part) {
      const key = `${s.subject}\u0000${s.consumerGroup}`
      let pts = out.get(key)
      if (pts === undefined) {
        pts = new Map()
        out.set(key, pts)
      }
      for (const p of s.points) {
        const q = pts.get(p.minute)
        if (q === undefined) pts.set(p.minute, { ...p })
        else for (const f of COUNT_FIELDS) q[f] += p[f]
      }
    }
  }
  return seriesOf(out)
}

/** Points per `subject\0group` key as series: points by minute, series by subject then group. */
function seriesOf(out: Map<string, Map<number, HistoryPoint>>): HistorySeries[] {
  const series: HistorySeries[] = []
  for (const [key, pts] of out) {
    const cut = key.indexOf('\u0000')
    series.push({
      subject: key.slice(0, cut),
      consumerGroup: key.slice(cut + 1),
      points: [...pts.values()].sort((a, b) => a.minute - b.minute),
    })
  }
  series.sort((a, b) => a.subject.localeCompare(b.subject) || a.consumerGroup.localeCompare(b.consumerGroup))
  return series
}
