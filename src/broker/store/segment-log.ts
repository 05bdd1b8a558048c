import fs from 'node:fs'
import path from 'node:path'
import { fsError, QmqError } from '../../common/errors'
import { fsyncDir, fsyncDirAsync } from '../../common/durable-file'
import { type FsIo, nodeFsIo } from './fs-io'

/**
 * A generic segmented append-only log of bytes: the building block of the message log, the consume
 * logs and the action log (and of the delay server's logs). It knows nothing about brokers.
 *
 *   dir/00000000000000000000.log   segment whose first byte has logical offset 0
 *   dir/00000000000067108864.log   next segment, base = logical offset of its first byte
 *
 * - Offsets are logical and only grow: offset = segment base + position in the file. Deleting old
 *   segments (retention) does not renumber anything.
 * - A batch given to `appendv` never spans two segments: the log rolls first when the batch does not
 *   fit in what is left of `segmentBytes` (a batch larger than a segment gets a segment of its own).
 *   So records never span segments, and a segment always starts at a record boundary: recovery can
 *   skip from a damaged segment to the next one.
 * - Writers are serialized by the caller (one write in flight at a time); reads are positional and
 *   can run at any time, concurrently with writes, and so can `sync()` (fdatasync covers the writes
 *   completed before it started: the message log writes batch N+1 while batch N is being synced).
 * - A failed write is undone (the file is truncated back to where the batch started) so the log never
 *   holds a partial batch; `endOffset` is unchanged and the next append can retry.
 * - Segments are reference-counted: every read (and sync) holds its segment from the moment it picks
 *   the file descriptor until its last byte is in, so a read always reads the file it started on.
 *   Removing a segment (`deleteOldest`, `deleteBefore`, `truncate`, `close`) takes it out of the log
 *   and unlinks its file at once (later reads get QMQ_ERR_NOT_FOUND), but its descriptor is closed
 *   only when the last read holding it is done: never under a read in flight, so a descriptor number
 *   is never reused by another file while a read may still use it.
 * - fdatasync failures: `dirty` is set again, and the segment remembers it (`syncFailed`). The kernel
 *   may have dropped the dirty pages of a failed fdatasync (marking them clean), so a later fdatasync
 *   that succeeds proves nothing about them: the next `sync()` first writes the bytes since the last
 *   good sync (`durable`) again, read back from the page cache, and only then syncs.
 *
 * Two more ways to use it (the delay server's per-bucket logs):
 * - Single-file mode (`SegmentLog.openFile`): one segment, base 0, at a path the caller names (so a
 *   logical offset is a byte position in that file); it never rolls. The file is created by the first
 *   append (and its directory fsynced), so opening a missing one costs nothing.
 * - Buffered appends (`appendBuffered`): synchronous, ordered, the offset known at once (the delay
 *   store files records inside the message log's `onDurable`). Buffered bytes are written by
 *   `flushSync` (synchronous writes, used for small appends from timers), before a read or scan that
 *   reaches them, before `appendv`, and by `sync`. A log uses either `appendv` or buffered appends at
 *   a time: `flushSync` refuses to run under an `appendv` in flight.
 */
export const SEGMENT_NAME_DIGITS = 20
const SEGMENT_SUFFIX = '.log'

export interface SegmentLogOptions {
  dir: string
  /** Size at which the log rolls to a new segment. */
  segmentBytes: number
  io?: FsIo
}

export interface SingleFileLogOptions {
  /** The log's one file (created by the first append when missing). */
  file: string
  io?: FsIo
}

export interface SegmentInfo {
  base: number
  size: number
  file: string
  mtimeMs: number
}

interface Segment {
  base: number
  size: number
  file: string
  fd: number
  /** Written bytes not yet covered by an fdatasync. */
  dirty: boolean
  /** File length covered by the last successful fdatasync (or present at open). */
  durable: number
  /** An fdatasync failed since the last good one: rewrite [durable, size) before the next. */
  syncFailed: boolean
  /** Failed fdatasyncs so far: a sync that saw one fail while it ran does not clear `syncFailed`. */
  failures: number
  /**
   * The newest fdatasync of `fd` in flight, if any. While `dirty` is false every completed write was
   * done before it started, so it covers them all: a sync finding the segment clean waits for it.
   */
  syncing?: Promise<void> | undefined
  /** Reads and syncs using `fd` right now (see `hold` / `release`). */
  refs: number
  /** Taken out of the log (deleted, cut off, or the log closed): `fd` closes when `refs` drops to 0. */
  retired: boolean
}

/** What a scan callback says about the bytes at a position. */
export type ScanResult =
  | { kind: 'record'; length: number }
  /** Not enough bytes to decide: at the end of a segment this is a torn tail. */
  | { kind: 'short' }
  | { kind: 'corrupt'; reason: string }

export interface Truncation {
  file: string
  /** Position in the file where the valid data ends. */
  offset: number
  /** Logical offset of the first dropped byte (segment base + `offset`). */
  logOffset: number
  droppedBytes: number
  reason: string
}

/**
 * A damaged range inside a segment that a resynchronising scan stepped over: the bytes stay in the
 * file; the scan went on at the next position where `check` accepted an entry (`logOffset + bytes`).
 */
export interface SkippedRange {
  file: string
  /** Position in the file of the first damaged byte. */
  offset: number
  /** Logical offset of the first damaged byte. */
  logOffset: number
  bytes: number
  /** Why the entry at the first damaged byte was refused. */
  reason: string
}

/** Frames (or refuses) the entry at `pos` of `buf` (`buf[pos, end)` are the bytes read so far). */
export type ScanCheck = (buf: Buffer, pos: number, end: number, offset: number) => ScanResult
/** Called for each entry `check` accepted: `buf[pos, pos + length)`, at logical `offset`. */
export type ScanVisit = (buf: Buffer, pos: number, length: number, offset: number) => void

export interface ScanOptions {
  /**
   * Resynchronise after damage: step over a bad entry byte by byte until `check` accepts an entry
   * again, report the range skipped and go on from there (only the part of a segment after which no
   * entry is accepted counts as its torn tail). Without it, everything from the first bad entry to
   * the end of its segment is damaged. Only for entries that `check` verifies strongly (a checksum
   * over the header and the payload): a position inside a payload is taken for an entry only if its
   * bytes pass every check.
   */
  resync?: boolean
  /** Read size; an entry larger than this is read whole (up to MAX_SCAN_CHUNK_BYTES). */
  chunkBytes?: number
}

/** A damaged range found by `scan`. */
interface Damage {
  seg: Segment
  /** Position in the file of the first damaged byte. */
  pos: number
  /** Position in the file where the damage ends (the next accepted entry, or the end scanned). */
  end: number
  /** True when it runs to the end of the segment: nothing after it was accepted. */
  toSegmentEnd: boolean
  reason: string
}

const DEFAULT_SCAN_CHUNK_BYTES = 8 * 1024 * 1024
/** Largest entry a scan reads whole; a claimed length beyond this counts as damage. */
export const MAX_SCAN_CHUNK_BYTES = 256 * 1024 * 1024
const TORN_REASON = 'torn tail (incomplete record)'
const SHORT_REASON = 'incomplete entry (its length runs past the valid data)'

/** Observer of a log's growth and cuts (replication ships what was appended, re-ships what was cut). */
export interface SegmentLogListener {
  /** A batch was written: the log now ends at `end`. */
  appended?(end: number): void
  /** The log was cut at `offset` (a failed fdatasync's batches, a torn tail). */
  truncated?(offset: number): void
}

export function segmentFileName(base: number): string {
  return `${String(base).padStart(SEGMENT_NAME_DIGITS, '0')}${SEGMENT_SUFFIX}`
}

/** Buffered appends with more parts than this (IOV_MAX) are copied into one buffer before the write. */
const MAX_WRITEV_PARTS = 1024

export class SegmentLog {
  readonly dir: string
  readonly segmentBytes: number
  /** Single-file mode: the log's one file. */
  private readonly single: string | undefined
  private readonly io: FsIo
  private segs: Segment[] = []
  private writing = false
  private syncing: Promise<void> | undefined
  private syncAgain: Promise<void> | undefined
  /** A segment file was created since the last sync: the directory is fsynced before its data. */
  private dirUnsynced = false
  /** The directory fsync in flight, awaited by every sync that starts meanwhile. */
  private dirSyncing: Promise<void> | undefined
  /**
   * Buffered appends (see `appendBuffered`): their parts, flat, and per entry its number of parts and
   * its bytes (small-integer arrays: no object per entry, as a delay bucket can hold thousands).
   */
  private bufferedParts: Buffer[] = []
  private entryParts: number[] = []
  private entrySizes: number[] = []
  private bufferedTotal = 0
  /** Replication (src/broker/replication): told of every append and every cut of the log's end. */
  private readonly listeners = new Set<SegmentLogListener>()
  /**
   * Set once a failed write's partial bytes could not be cut off (the ftruncate failed too): they sit
   * in the active segment past the log's end until a recovery (on open) deals with them.
   */
  partialLeft: QmqError | undefined

  private constructor(opts: SegmentLogOptions, single?: string) {
    this.dir = opts.dir
    this.segmentBytes = opts.segmentBytes
    this.io = opts.io ?? nodeFsIo
    this.single = single
  }

  /** Opens (creating the directory if needed) without reading contents. Call `recover` to validate. */
  static open(opts: SegmentLogOptions): SegmentLog {
    const log = new SegmentLog(opts)
    fs.mkdirSync(opts.dir, { recursive: true })
    const names = fs
      .readdirSync(opts.dir)
      .filter((n) => n.endsWith(SEGMENT_SUFFIX) && /^\d+\.log$/.test(n))
      .sort()
    for (const name of names) {
      const file = path.join(opts.dir, name)
      const fd = fs.openSync(file, 'r+')
      const size = fs.fstatSync(fd).size
      log.segs.push(openedSegment(Number(name.slice(0, -SEGMENT_SUFFIX.length)), file, fd, size))
    }
    return log
  }

  /**
   * Single-file mode: a log whose one segment (base 0) is `file`; it never rolls. A missing file is
   * created by the first append. Call `recover` to validate.
   */
  static openFile(opts: SingleFileLogOptions): SegmentLog {
    const log = new SegmentLog(
      {
        dir: path.dirname(opts.file),
        segmentBytes: Number.MAX_SAFE_INTEGER,
        ...(opts.io ? { io: opts.io } : {}),
      },
      opts.file,
    )
    let fd: number
    try {
      fd = fs.openSync(opts.file, 'r+')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return log
      throw fsError(err, `opening ${opts.file}`)
    }
    log.segs.push(openedSegment(0, opts.file, fd, fs.fstatSync(fd).size))
    return log
  }

  /** Logical offset of the first retained byte. */
  get startOffset(): number {
    const first = this.segs[0]
    return first ? first.base : 0
  }

  /** Logical offset of the end of the written bytes (buffered appends excluded). */
  get endOffset(): number {
    const last = this.segs[this.segs.length - 1]
    return last ? last.base + last.size : 0
  }

  /** Logical offset the next buffered append gets: written plus buffered bytes. */
  get nextOffset(): number {
    return this.endOffset + this.bufferedTotal
  }

  /** Bytes appended by `appendBuffered` and not yet written. */
  get bufferedBytes(): number {
    return this.bufferedTotal
  }

  /** Anything buffered, or written and not yet covered by a successful fdatasync. */
  get unsynced(): boolean {
    return this.bufferedTotal > 0 || this.segs.some((s) => s.dirty)
  }

  /** Base offset of the last (active) segment; 0 when there is none yet. */
  get activeBase(): number {
    const last = this.segs[this.segs.length - 1]
    return last ? last.base : 0
  }

  get totalBytes(): number {
    let n = 0
    for (const s of this.segs) n += s.size
    return n
  }

  segments(): SegmentInfo[] {
    return this.segs.map((s) => {
      let mtimeMs = 0
      try {
        mtimeMs = fs.fstatSync(s.fd).mtimeMs
      } catch {
        // closed concurrently
      }
      return { base: s.base, size: s.size, file: s.file, mtimeMs }
    })
  }

  /**
   * Scans every segment from logical offset `from`, calling `check` to frame each entry and `visit`
   * for each valid one, and repairs what it finds: a segment's damaged tail (a torn or corrupt entry
   * after which nothing valid follows in that segment) is cut off and returned. Scanning goes on with
   * the next segment (segments start at entry boundaries), so a gap between segments is possible and
   * harmless. With `onSkip` the scan resynchronises (see ScanOptions.resync): a damaged range followed
   * by valid entries in the same segment is stepped over, left in the file, and reported to `onSkip`.
   */
  async recover(
    from: number,
    check: ScanCheck,
    visit: ScanVisit,
    opts: { onSkip?: (range: SkippedRange) => void; chunkBytes?: number } = {},
  ): Promise<Truncation[]> {
    const truncations: Truncation[] = []
    const damage = await this.scanRange(from, Number.POSITIVE_INFINITY, check, visit, {
      resync: opts.onSkip !== undefined,
      ...(opts.chunkBytes !== undefined ? { chunkBytes: opts.chunkBytes } : {}),
    })
    for (const d of damage) {
      if (!d.toSegmentEnd) {
        opts.onSkip?.(this.skippedRange(d))
        continue
      }
      truncations.push({
        file: path.basename(d.seg.file),
        offset: d.pos,
        logOffset: d.seg.base + d.pos,
        droppedBytes: d.seg.size - d.pos,
        reason: d.reason,
      })
      if (!d.seg.retired) await this.truncateSegment(d.seg, d.pos)
    }
    return truncations
  }

  /**
   * Read-only scan of the entries in logical range [from, to) (`from` must be an entry boundary, or
   * the start of a segment): `visit` is called for each valid one. Returns the damaged ranges met
   * (see ScanOptions.resync); nothing is changed on disk.
   */
  async scan(
    from: number,
    to: number,
    check: ScanCheck,
    visit: ScanVisit,
    opts: ScanOptions = {},
  ): Promise<SkippedRange[]> {
    const damage = await this.scanRange(from, to, check, visit, opts)
    return damage.map((d) => this.skippedRange(d))
  }

  private skippedRange(d: Damage): SkippedRange {
    return {
      file: path.basename(d.seg.file),
      offset: d.pos,
      logOffset: d.seg.base + d.pos,
      bytes: d.end - d.pos,
      reason: d.reason,
    }
  }

  /**
   * The one scanning loop (recovery and read-only scans). Per segment: read a chunk, frame entries
   * with `check`; an entry cut by the chunk's end is read again from its start (a larger chunk when it
   * is larger than one). At a bad entry: without resync, the rest of the segment is damage; with it,
   * the scan steps one byte at a time until `check` accepts an entry, and the bytes stepped over are
   * one damaged range (one that reaches the end of the segment is its damaged tail).
   */
  private async scanRange(
    from: number,
    to: number,
    check: ScanCheck,
    visit: ScanVisit,
    opts: ScanOptions,
  ): Promise<Damage[]> {
    // Buffered appends in the range are written first (a scan reads files).
    if (this.bufferedTotal > 0 && to > this.endOffset && !this.writing) this.flushSync()
    const out: Damage[] = []
    let chunk = Buffer.allocUnsafe(opts.chunkBytes ?? DEFAULT_SCAN_CHUNK_BYTES)
    for (const seg of [...this.segs]) {
      if (seg.base + seg.size <= from) continue
      if (seg.base >= to) break
      if (seg.retired) continue
      const stop = Math.min(seg.size, to - seg.base)
      let filePos = Math.max(0, from - seg.base)
      let bad: { pos: number; reason: string } | undefined
      seg.refs++
      try {
        while (filePos < stop) {
          const want = Math.min(chunk.length, stop - filePos)
          const n = await this.readFully(seg.fd, chunk, want, filePos)
          if (n === 0) break
          const atEnd = filePos + n >= stop
          let pos = 0
          let needMore = false
          while (pos < n) {
            const offset = seg.base + filePos + pos
            const r = check(chunk, pos, n, offset)
            if (r.kind === 'record') {
              if (bad) {
                out.push({ seg, pos: bad.pos, end: filePos + pos, toSegmentEnd: false, reason: bad.reason })
                bad = undefined
              }
              visit(chunk, pos, r.length, offset)
              pos += r.length
              continue
            }
            if (r.kind === 'short' && !atEnd) {
              needMore = true
              break
            }
            if (!bad) bad = { pos: filePos + pos, reason: r.kind === 'short' ? SHORT_REASON : r.reason }
            if (!opts.resync) break
            pos++
          }
          if (bad && !opts.resync) break
          if (needMore && pos === 0) {
            // An entry bigger than the chunk: read it whole with a bigger chunk (entries are bounded by
            // `check`; a claimed length past the cap is damage).
            if (chunk.length < MAX_SCAN_CHUNK_BYTES) {
              chunk = Buffer.allocUnsafe(Math.min(chunk.length * 2, MAX_SCAN_CHUNK_BYTES))
              continue
            }
            if (!bad) bad = { pos: filePos, reason: `entry larger than ${MAX_SCAN_CHUNK_BYTES} bytes` }
            if (!opts.resync) break
            pos = 1
          }
          filePos += pos
        }
      } finally {
        this.release(seg)
      }
      if (bad) {
        const toSegmentEnd = stop === seg.size
        const reason = toSegmentEnd && bad.reason === SHORT_REASON ? TORN_REASON : bad.reason
        out.push({ seg, pos: bad.pos, end: stop, toSegmentEnd, reason })
      }
    }
    return out
  }

  private async readFully(fd: number, buf: Buffer, length: number, position: number): Promise<number> {
    let done = 0
    while (done < length) {
      const n = await this.io.read(fd, buf, done, length - done, position + done)
      if (n === 0) break
      done += n
    }
    return done
  }

  private async truncateSegment(seg: Segment, size: number): Promise<void> {
    try {
      await this.io.ftruncate(seg.fd, size)
      await this.io.fdatasync(seg.fd)
    } catch (err) {
      throw fsError(err, `truncating ${seg.file}`)
    }
    seg.size = size
    if (seg.durable > size) seg.durable = size
  }

  /**
   * Appends buffers as one contiguous batch with one writev; returns the logical offset of its first
   * byte. On failure the partial write is undone and the error (QMQ_ERR_DISK_FULL / QMQ_ERR_STORE_IO)
   * is thrown.
   */
  appendv(buffers: Buffer[], bytes: number): Promise<number> {
    return this.appendBatch(buffers, bytes, true)
  }

  private async appendBatch(buffers: Buffer[], bytes: number, mayRoll: boolean): Promise<number> {
    if (this.writing) throw new QmqError('QMQ_ERR_INTERNAL', 'concurrent appends to one segment log')
    this.flushSync()
    this.writing = true
    try {
      let seg = this.segs[this.segs.length - 1]
      if (!seg || (mayRoll && seg.size > 0 && seg.size + bytes > this.segmentBytes)) seg = this.roll()
      const start = seg.size
      // Held until the write is back: a segment retired meanwhile (closed, cut off by `truncate`,
      // removed) keeps its descriptor open, so the write never lands in a file that reused its number.
      seg.refs++
      try {
        let n = await this.io.writev(seg.fd, buffers, start)
        // A short write (the disk filled up mid-batch): write the rest to get the real error.
        while (n < bytes) {
          const rest = Buffer.concat(buffers).subarray(n)
          const m = await this.io.write(seg.fd, rest, start + n)
          if (m === 0) throw Object.assign(new Error(`short write: ${n} of ${bytes} bytes`), { code: 'EIO' })
          n += m
        }
      } catch (err) {
        // Undo whatever part of the batch reached the file. If even that fails, the bytes stay past
        // the log's end (`partialLeft`): the next append would write over them from the same offset,
        // and the records of a longer failed batch would outlive a shorter one there (a recovery
        // would take them for data). A log that cannot tolerate that stops appending (message-log.ts).
        try {
          if (!seg.retired) await this.io.ftruncate(seg.fd, start)
        } catch (cutErr) {
          this.partialLeft ??= fsError(cutErr, `cutting a failed write off ${path.basename(seg.file)}`)
        }
        throw fsError(err, `writing ${path.basename(seg.file)}`)
      } finally {
        this.release(seg)
      }
      if (seg.retired) {
        // Taken out of the log during the write (closed, or cut off and unlinked): not appended.
        throw new QmqError(
          'QMQ_ERR_STORE_CLOSED',
          `${path.basename(seg.file)} was closed or removed while a write to it was in flight`,
        )
      }
      seg.size = start + bytes
      seg.dirty = true
      if (this.listeners.size > 0) for (const l of this.listeners) l.appended?.(seg.base + seg.size)
      return seg.base + start
    } finally {
      this.writing = false
    }
  }

  /**
   * Buffers one entry (its parts written contiguously, never split across segments) and returns its
   * logical offset at once. Written by `flushSync` (or a read, scan, `appendv` or `sync` that needs it).
   */
  appendBuffered(...parts: Buffer[]): number {
    const offset = this.nextOffset
    let bytes = 0
    for (const p of parts) {
      bytes += p.length
      this.bufferedParts.push(p)
    }
    this.entryParts.push(parts.length)
    this.entrySizes.push(bytes)
    this.bufferedTotal += bytes
    return offset
  }

  /**
   * Writes the buffered appends now (synchronous writes; the log rolls between entries as `appendv`
   * does between batches). On failure the partial write is cut off, the entries not written stay
   * buffered (their offsets do not change) and the error (QMQ_ERR_DISK_FULL / QMQ_ERR_STORE_IO) is
   * thrown: the next flush tries them again.
   */
  flushSync(): void {
    if (this.bufferedTotal === 0) return
    if (this.writing) throw new QmqError('QMQ_ERR_INTERNAL', 'buffered flush under an append in flight')
    const all = this.bufferedParts
    const counts = this.entryParts
    const sizes = this.entrySizes
    let i = 0 // next entry
    let k = 0 // its first part
    while (i < sizes.length) {
      let seg = this.segs[this.segs.length - 1]
      if (!seg || (seg.size > 0 && seg.size + (sizes[i] as number) > this.segmentBytes)) seg = this.roll()
      // The entries that fit in this segment (all of them in single-file mode).
      let bytes = 0
      let j = i
      let m = k
      while (j < sizes.length) {
        const size = sizes[j] as number
        if (bytes > 0 && seg.size + bytes + size > this.segmentBytes) break
        bytes += size
        m += counts[j] as number
        j++
      }
      let parts = k === 0 && m === all.length ? all : all.slice(k, m)
      if (parts.length > MAX_WRITEV_PARTS) parts = [Buffer.concat(parts, bytes)]
      try {
        writevFullySync(seg.fd, parts, bytes, seg.size)
      } catch (err) {
        try {
          fs.ftruncateSync(seg.fd, seg.size)
        } catch {
          // ignored: reported through the write error; recovery cuts an unacknowledged tail
        }
        this.bufferedParts = all.slice(k)
        this.entryParts = counts.slice(i)
        this.entrySizes = sizes.slice(i)
        this.bufferedTotal = 0
        for (const n of this.entrySizes) this.bufferedTotal += n
        throw fsError(err, `writing ${path.basename(seg.file)}`)
      }
      seg.size += bytes
      seg.dirty = true
      i = j
      k = m
    }
    this.dropBuffered()
  }

  private dropBuffered(): void {
    this.bufferedParts = []
    this.entryParts = []
    this.entrySizes = []
    this.bufferedTotal = 0
  }

  /**
   * Synchronous positional read of exactly `length` bytes at logical `offset` (in one segment),
   * writing buffered appends first when the range reaches them. Throws QMQ_ERR_NOT_FOUND for an
   * offset outside the log and QMQ_ERR_STORE_IO when the file holds fewer bytes than the log wrote.
   */
  readSync(offset: number, length: number, into?: Buffer): Buffer {
    if (offset + length > this.endOffset) this.flushSync()
    const seg = this.findSegment(offset)
    if (!seg) throw new QmqError('QMQ_ERR_NOT_FOUND', `offset ${offset} is not in ${this.single ?? this.dir}`)
    const pos = offset - seg.base
    const buf = into ?? Buffer.allocUnsafe(length)
    seg.refs++
    try {
      let got = 0
      while (got < length) {
        const n = fs.readSync(seg.fd, buf, got, length - got, pos + got)
        if (n === 0) {
          throw new QmqError(
            'QMQ_ERR_STORE_IO',
            `${path.basename(seg.file)} ends before ${pos + length} (${seg.size} bytes written)`,
          )
        }
        got += n
      }
    } catch (err) {
      throw err instanceof QmqError ? err : fsError(err, `reading ${path.basename(seg.file)}`)
    } finally {
      this.release(seg)
    }
    return buf
  }

  /** Observes appends and cuts; returns the function that stops it. */
  listen(listener: SegmentLogListener): () => void {
    this.listeners.add(listener)
    return () => this.listeners.delete(listener)
  }

  /**
   * A slave's append of bytes copied from its master (src/broker/replication/follower.ts): they go
   * at logical offset `endOffset`, into a segment whose base is the master's `segmentBase`, so the
   * slave's segments start and end where the master's do (records never span segments on either
   * side). A new segment starts exactly when the master's did (`segmentBase === endOffset` while the
   * last segment holds data); the log never rolls on its own size. The caller checked that
   * `segmentBase <= endOffset` and that the bytes continue the log.
   */
  async appendCopied(segmentBase: number, data: Buffer): Promise<number> {
    if (this.writing) throw new QmqError('QMQ_ERR_INTERNAL', 'concurrent appends to one segment log')
    const last = this.segs[this.segs.length - 1]
    if (last === undefined || (segmentBase === this.endOffset && last.size > 0 && last.base < segmentBase)) {
      this.roll()
    } else if (segmentBase > last.base + last.size || segmentBase < last.base) {
      throw new QmqError(
        'QMQ_ERR_INTERNAL',
        `copied bytes of segment ${segmentBase} do not continue segment ${last.base} (${last.size} bytes)`,
      )
    }
    return this.appendBatch([data], data.length, false)
  }

  /** Opens a new segment at the current end (in single-file mode: creates the file, once). */
  roll(): Segment {
    const base = this.endOffset
    const last = this.segs[this.segs.length - 1]
    if (last && (last.size === 0 || this.single !== undefined)) return last
    const file = this.single ?? path.join(this.dir, segmentFileName(base))
    let fd: number
    try {
      fd = fs.openSync(file, 'w+')
    } catch (err) {
      throw fsError(err, `creating ${file}`)
    }
    const seg: Segment = { ...openedSegment(base, file, fd, 0), dirty: true }
    this.segs.push(seg)
    // The new name becomes durable with the next sync (before any of its data counts as durable):
    // an fsync of the directory here would stall the event loop of every writer (timers included).
    this.dirUnsynced = true
    return seg
  }

  /**
   * fdatasyncs every segment with unsynced writes. Calls of `sync()` never overlap one another (they
   * may overlap `syncOverlapping()`): a call made while one is in flight waits for it and then shares
   * one more sync (the running one may have started before the
   * caller's writes completed), so a resolved `sync()` always covers every write completed before it
   * was called.
   */
  sync(): Promise<void> {
    if (this.syncing === undefined) {
      this.syncing = this.doSync().finally(() => {
        this.syncing = undefined
      })
      return this.syncing
    }
    if (this.syncAgain === undefined) {
      this.syncAgain = this.syncing
        .catch(() => undefined)
        .then(() => {
          this.syncAgain = undefined
          return this.sync()
        })
    }
    return this.syncAgain
  }

  /**
   * fdatasyncs every segment with unsynced writes without waiting for syncs in flight (unlike
   * `sync()`, several may run at once): on return every write completed before the call is on stable
   * storage. A segment with no new writes but an fdatasync in flight (which then covers all its
   * completed writes) is waited for, not synced again. The message log's group commit overlaps its
   * fdatasyncs with this and orders their acknowledgements itself (message-log.ts).
   */
  syncOverlapping(): Promise<void> {
    return this.doSync()
  }

  private doSync(): Promise<void> {
    try {
      if (!this.writing) this.flushSync()
    } catch (err) {
      return Promise.reject(err)
    }
    // The usual case, without an async frame or a copy of the segment list (this runs for every
    // fdatasync of every log): no directory fsync due, and only the last segment may need one.
    if (!this.dirUnsynced && this.dirSyncing === undefined) {
      const n = this.segs.length
      let earlierNeed = false
      for (let i = 0; i < n - 1 && !earlierNeed; i++) {
        const seg = this.segs[i] as Segment
        earlierNeed = !seg.retired && (seg.dirty || seg.syncing !== undefined)
      }
      const last = this.segs[n - 1]
      if (!earlierNeed) {
        if (last === undefined || last.retired) return Promise.resolve()
        if (last.dirty) return this.syncSegment(last)
        return last.syncing ?? Promise.resolve()
      }
    }
    return this.syncAll()
  }

  /** doSync's general case: the directory's fsync first, then every segment in turn. */
  private async syncAll(): Promise<void> {
    // Overlapping syncs share the directory's fsync: none counts a new segment durable before it ends.
    if (this.dirUnsynced) {
      this.dirUnsynced = false
      const dirSync: Promise<void> = fsyncDirAsync(this.dir).then(
        () => {
          if (this.dirSyncing === dirSync) this.dirSyncing = undefined
        },
        (err: unknown) => {
          if (this.dirSyncing === dirSync) this.dirSyncing = undefined
          this.dirUnsynced = true
          throw err
        },
      )
      this.dirSyncing = dirSync
    }
    if (this.dirSyncing !== undefined) await this.dirSyncing
    // A copy: segments may be removed while an fdatasync is in flight (a removed one needs none).
    for (const seg of [...this.segs]) {
      if (seg.retired) continue
      if (seg.dirty) await this.syncSegment(seg)
      else if (seg.syncing !== undefined) await seg.syncing
    }
  }

  /**
   * One fdatasync of a segment (several may be in flight: syncOverlapping). It covers the writes
   * completed before it started (`covered`). After a failed one the bytes since the last good sync
   * are written again first (the kernel may have dropped them: see the class comment); a success
   * clears that need only when no sync failed while it ran.
   */
  private syncSegment(seg: Segment): Promise<void> {
    seg.dirty = false
    const covered = seg.size
    const failuresBefore = seg.failures
    const durableBefore = seg.durable
    seg.refs++
    let run: Promise<void>
    try {
      run = seg.syncFailed
        ? this.rewrite(seg, seg.durable, covered).then(() => this.io.fdatasync(seg.fd))
        : this.io.fdatasync(seg.fd)
    } catch (err) {
      run = Promise.reject(err)
    }
    const done: Promise<void> = run.then(
      () => {
        if (seg.syncing === done) seg.syncing = undefined
        if (seg.failures === failuresBefore) {
          seg.syncFailed = false
          // The segment may have been truncated while this sync ran: durable never passes its size.
          const upTo = Math.min(covered, seg.size)
          if (upTo > seg.durable) seg.durable = upTo
        }
        this.release(seg)
      },
      (err: unknown) => {
        if (seg.syncing === done) seg.syncing = undefined
        seg.dirty = true
        seg.syncFailed = true
        seg.failures++
        // A sync that overlapped this one may have succeeded without writing what this one lost (the
        // kernel reports a writeback error to one fdatasync of the file): rewrite from before it.
        if (durableBefore < seg.durable) seg.durable = durableBefore
        this.release(seg)
        throw fsError(err, `syncing ${path.basename(seg.file)}`)
      },
    )
    seg.syncing = done
    return done
  }

  /**
   * Writes bytes [from, to) of a segment again, as read back from the page cache: after a failed
   * fdatasync the kernel may have marked them clean without writing them (see the class comment).
   */
  private async rewrite(seg: Segment, from: number, to: number): Promise<void> {
    const chunk = Buffer.allocUnsafe(Math.min(1024 * 1024, Math.max(1, to - from)))
    for (let pos = from; pos < to; ) {
      const n = await this.readFully(seg.fd, chunk, Math.min(chunk.length, to - pos), pos)
      if (n === 0) break
      let w = 0
      while (w < n) {
        const m = await this.io.write(seg.fd, chunk.subarray(w, n), pos + w)
        if (m === 0) throw Object.assign(new Error('short write'), { code: 'EIO' })
        w += m
      }
      pos += n
    }
  }

  private findSegment(offset: number): Segment | undefined {
    const segs = this.segs
    let lo = 0
    let hi = segs.length - 1
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1
      const s = segs[mid] as Segment
      if (offset < s.base) hi = mid - 1
      else if (offset >= s.base + Math.max(s.size, 1)) lo = mid + 1
      else return s
    }
    return undefined
  }

  /** The retained segment holding `offset` (an empty last segment holds its base), if any. */
  segmentAt(offset: number): { base: number; end: number } | undefined {
    const seg = this.findSegment(offset)
    return seg === undefined ? undefined : { base: seg.base, end: seg.base + seg.size }
  }

  /** Whether `offset` lies in a retained segment. */
  contains(offset: number): boolean {
    return this.findSegment(offset) !== undefined
  }

  /**
   * Positional read of `length` bytes at logical `offset` into `buf` (must lie in one segment).
   * Returns the bytes read (less only when the range runs past the segment end).
   */
  async readInto(offset: number, buf: Buffer, bufOffset: number, length: number): Promise<number> {
    const seg = this.findSegment(offset)
    if (!seg) throw new QmqError('QMQ_ERR_NOT_FOUND', `offset ${offset} is not in ${this.dir}`)
    const pos = offset - seg.base
    const len = Math.min(length, seg.size - pos)
    // Held from here (synchronously after the lookup) until the last byte is in: a removal meanwhile
    // unlinks the file but leaves the descriptor open for this read.
    seg.refs++
    try {
      return await this.readFully(seg.fd, buf.subarray(bufOffset), len, pos)
    } catch (err) {
      throw fsError(err, `reading ${path.basename(seg.file)}`)
    } finally {
      this.release(seg)
    }
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const buf = Buffer.allocUnsafe(length)
    const n = await this.readInto(offset, buf, 0, length)
    return n === length ? buf : buf.subarray(0, n)
  }

  /**
   * Writes `buf` over existing bytes from logical `offset` (they may span segments; the log's size
   * does not change). For derived logs only (the consume logs: recovery rewrites entries it rebuilt);
   * the caller makes sure no read of those bytes is in flight. Synced by the next `sync()`.
   */
  async overwrite(offset: number, buf: Buffer): Promise<void> {
    if (offset < this.startOffset || offset + buf.length > this.endOffset) {
      throw new QmqError(
        'QMQ_ERR_INTERNAL',
        `overwrite of [${offset}, ${offset + buf.length}) outside [${this.startOffset}, ${this.endOffset})`,
      )
    }
    let done = 0
    while (done < buf.length) {
      const seg = this.findSegment(offset + done)
      if (!seg) throw new QmqError('QMQ_ERR_INTERNAL', `overwrite: offset ${offset + done} is in no segment`)
      const pos = offset + done - seg.base
      const len = Math.min(buf.length - done, seg.size - pos)
      seg.refs++
      try {
        let w = 0
        while (w < len) {
          const n = await this.io.write(seg.fd, buf.subarray(done + w, done + len), pos + w)
          if (n === 0) throw Object.assign(new Error('short write'), { code: 'EIO' })
          w += n
        }
      } catch (err) {
        throw fsError(err, `writing ${path.basename(seg.file)}`)
      } finally {
        this.release(seg)
      }
      seg.dirty = true
      if (pos < seg.durable) seg.durable = pos
      done += len
    }
  }

  /** End offset of the segment holding `offset` (for reads that must stay inside one segment). */
  segmentEnd(offset: number): number {
    const seg = this.findSegment(offset)
    return seg ? seg.base + seg.size : offset
  }

  /** Base offset of the first segment at or after `offset`, or the end offset when none. */
  nextSegmentBase(offset: number): number {
    for (const s of this.segs) if (s.base >= offset) return s.base
    return this.endOffset
  }

  /**
   * Cuts the log at logical `offset`: later segments are deleted, the one holding it is truncated.
   * Afterwards `endOffset === offset`: when the log ended before `offset` (or was empty), a new empty
   * segment starts there.
   */
  async truncate(offset: number): Promise<void> {
    this.flushSync()
    if (this.single !== undefined) {
      // One file, base 0: cut it, or create it empty; it cannot start past 0.
      const seg = this.segs[0]
      if (seg && seg.size >= offset) {
        if (seg.size > offset) await this.truncateSegment(seg, offset)
        return
      }
      if (!seg && offset === 0) {
        this.roll()
        return
      }
      throw new QmqError(
        'QMQ_ERR_INTERNAL',
        `truncate of ${this.single} at ${offset}, past its end ${this.endOffset}`,
      )
    }
    for (;;) {
      const last = this.segs[this.segs.length - 1]
      if (!last || last.base < offset || (last.base === offset && last.size === 0)) break
      this.dropLast()
    }
    const last = this.segs[this.segs.length - 1]
    if (last && last.base + last.size > offset) await this.truncateSegment(last, offset - last.base)
    if (this.endOffset !== offset || this.segs.length === 0) {
      const file = path.join(this.dir, segmentFileName(offset))
      const fd = fs.openSync(file, 'w+')
      this.segs.push({ ...openedSegment(offset, file, fd, 0), dirty: true })
      fsyncDir(this.dir)
    }
    for (const l of this.listeners) l.truncated?.(offset)
  }

  private dropLast(): void {
    const s = this.segs.pop()
    if (s) this.retire(s, true)
  }

  /** Drops a hold on a segment's descriptor; the last one of a retired segment closes it. */
  private release(seg: Segment): void {
    seg.refs--
    if (seg.retired && seg.refs === 0) closeQuietly(seg.fd)
  }

  /**
   * A segment taken out of `segs`: its file is unlinked now (when `unlink`), its descriptor closed
   * now or, while reads hold it, by the last `release`.
   */
  private retire(seg: Segment, unlink: boolean): void {
    if (seg.retired) return
    seg.retired = true
    if (unlink) fs.rmSync(seg.file, { force: true })
    if (seg.refs === 0) closeQuietly(seg.fd)
  }

  /** Deletes the oldest segment (never the only / active one). Returns what was deleted. */
  deleteOldest(): SegmentInfo | undefined {
    if (this.segs.length <= 1) return undefined
    const s = this.segs.shift() as Segment
    const info = { base: s.base, size: s.size, file: s.file, mtimeMs: 0 }
    this.retire(s, true)
    return info
  }

  /** Deletes whole segments that end at or before `offset` (never the active one). */
  deleteBefore(offset: number): number {
    let n = 0
    while (this.segs.length > 1) {
      const next = this.segs[1] as Segment
      if (next.base > offset) break
      this.deleteOldest()
      n++
    }
    return n
  }

  /**
   * Closes every segment (a read in flight finishes first on its own segment). Buffered appends not
   * yet written are dropped: `sync()` first to keep them.
   */
  close(): void {
    for (const s of this.segs) this.retire(s, false)
    this.segs = []
    this.dropBuffered()
  }

  /** Drops buffered appends and deletes every segment file (reads in flight finish first). */
  remove(): void {
    for (const s of this.segs) this.retire(s, true)
    this.segs = []
    this.dropBuffered()
  }
}

function openedSegment(base: number, file: string, fd: number, size: number): Segment {
  return {
    base,
    size,
    file,
    fd,
    dirty: false,
    durable: size,
    syncFailed: false,
    failures: 0,
    refs: 0,
    retired: false,
  }
}

/**
 * The buffers of a partly written `writev`: what is left of `parts` once its first `n` bytes went out.
 * Views, no copies.
 */
function dropBytes(parts: Buffer[], n: number): Buffer[] {
  const out: Buffer[] = []
  for (const p of parts) {
    if (n >= p.length) {
      n -= p.length
      continue
    }
    out.push(n > 0 ? p.subarray(n) : p)
    n = 0
  }
  return out
}

/** Writes all `bytes` of `parts` at `position` (a short writev goes on with what is left). */
function writevFullySync(fd: number, parts: Buffer[], bytes: number, position: number): void {
  let written = 0
  while (written < bytes) {
    const n = fs.writevSync(fd, written === 0 ? parts : dropBytes(parts, written), position + written)
    if (n === 0) throw Object.assign(new Error(`short write: ${written} of ${bytes} bytes`), { code: 'EIO' })
    written += n
  }
}

function closeQuietly(fd: number): void {
  try {
    fs.closeSync(fd)
  } catch {
    // already closed
  }
}
