import fs from 'node:fs'
import path from 'node:path'
import { fsError, QmqError } from '../../common/errors'
import { fsyncDir } from '../../common/durable-file'
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
 */
export const SEGMENT_NAME_DIGITS = 20
const SEGMENT_SUFFIX = '.log'

export interface SegmentLogOptions {
  dir: string
  /** Size at which the log rolls to a new segment. */
  segmentBytes: number
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
  droppedBytes: number
  reason: string
}

export function segmentFileName(base: number): string {
  return `${String(base).padStart(SEGMENT_NAME_DIGITS, '0')}${SEGMENT_SUFFIX}`
}

export class SegmentLog {
  readonly dir: string
  readonly segmentBytes: number
  private readonly io: FsIo
  private segs: Segment[] = []
  private writing = false
  private syncing: Promise<void> | undefined
  private syncAgain: Promise<void> | undefined

  private constructor(opts: SegmentLogOptions) {
    this.dir = opts.dir
    this.segmentBytes = opts.segmentBytes
    this.io = opts.io ?? nodeFsIo
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
      log.segs.push({ base: Number(name.slice(0, -SEGMENT_SUFFIX.length)), size, file, fd, dirty: false })
    }
    return log
  }

  /** Logical offset of the first retained byte. */
  get startOffset(): number {
    const first = this.segs[0]
    return first ? first.base : 0
  }

  /** Logical offset where the next append goes (unless it rolls). */
  get endOffset(): number {
    const last = this.segs[this.segs.length - 1]
    return last ? last.base + last.size : 0
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
   * Scans every segment from logical offset `from`, calling `check` to frame each record and `visit`
   * for each valid one. At the first bad or incomplete record of a segment, the rest of that segment
   * is cut off and reported; scanning goes on with the next segment (segments start at record
   * boundaries). A gap between segments is therefore possible and harmless.
   * Reads in chunks of `chunkBytes`; a record larger than a chunk is read whole.
   */
  async recover(
    from: number,
    check: (buf: Buffer, pos: number, end: number, offset: number) => ScanResult,
    visit: (buf: Buffer, pos: number, length: number, offset: number) => void,
    chunkBytes = 8 * 1024 * 1024,
  ): Promise<Truncation[]> {
    const truncations: Truncation[] = []
    let chunk = Buffer.allocUnsafe(chunkBytes)
    for (const seg of this.segs) {
      if (seg.base + seg.size <= from) continue
      let filePos = Math.max(0, from - seg.base)
      let bad: { pos: number; reason: string } | undefined
      while (filePos < seg.size) {
        const want = Math.min(chunk.length, seg.size - filePos)
        const n = await this.readFully(seg.fd, chunk, want, filePos)
        let pos = 0
        let needMore = false
        while (pos < n) {
          const r = check(chunk, pos, n, seg.base + filePos + pos)
          if (r.kind === 'record') {
            visit(chunk, pos, r.length, seg.base + filePos + pos)
            pos += r.length
            continue
          }
          if (r.kind === 'short' && filePos + n < seg.size) {
            needMore = true
            break
          }
          bad = {
            pos: filePos + pos,
            reason: r.kind === 'short' ? 'torn tail (incomplete record)' : r.reason,
          }
          break
        }
        if (bad) break
        if (needMore && pos === 0) {
          // A record bigger than the chunk: grow the chunk (records are bounded by the max message size).
          if (chunk.length >= 256 * 1024 * 1024) {
            bad = { pos: filePos, reason: 'record larger than 256 MiB' }
            break
          }
          chunk = Buffer.allocUnsafe(chunk.length * 2)
          continue
        }
        filePos += pos
      }
      if (bad) {
        truncations.push({
          file: path.basename(seg.file),
          offset: bad.pos,
          droppedBytes: seg.size - bad.pos,
          reason: bad.reason,
        })
        await this.truncateSegment(seg, bad.pos)
      }
    }
    return truncations
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
  }

  /**
   * Appends buffers as one contiguous batch with one writev; returns the logical offset of its first
   * byte. On failure the partial write is undone and the error (QMQ_ERR_DISK_FULL / QMQ_ERR_STORE_IO)
   * is thrown.
   */
  async appendv(buffers: Buffer[], bytes: number): Promise<number> {
    if (this.writing) throw new QmqError('QMQ_ERR_INTERNAL', 'concurrent appends to one segment log')
    this.writing = true
    try {
      let seg = this.segs[this.segs.length - 1]
      if (!seg || (seg.size > 0 && seg.size + bytes > this.segmentBytes)) seg = this.roll()
      const start = seg.size
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
        // Undo whatever part of the batch reached the file. If even that fails, the next recover
        // (on open) cuts the unacknowledged tail.
        try {
          await this.io.ftruncate(seg.fd, start)
        } catch {
          // ignored: reported through the write error
        }
        throw fsError(err, `writing ${path.basename(seg.file)}`)
      }
      seg.size = start + bytes
      seg.dirty = true
      return seg.base + start
    } finally {
      this.writing = false
    }
  }

  /** Opens a new segment at the current end. */
  roll(): Segment {
    const base = this.endOffset
    const last = this.segs[this.segs.length - 1]
    if (last && last.size === 0) return last
    const file = path.join(this.dir, segmentFileName(base))
    let fd: number
    try {
      fd = fs.openSync(file, 'w+')
    } catch (err) {
      throw fsError(err, `creating ${file}`)
    }
    const seg: Segment = { base, size: 0, file, fd, dirty: true }
    this.segs.push(seg)
    fsyncDir(this.dir)
    return seg
  }

  /**
   * fdatasyncs every segment with unsynced writes. Syncs never overlap: a call made while one is in
   * flight waits for it and then shares one more sync (the running one may have started before the
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

  private async doSync(): Promise<void> {
    for (const seg of this.segs) {
      if (!seg.dirty) continue
      seg.dirty = false
      try {
        await this.io.fdatasync(seg.fd)
      } catch (err) {
        seg.dirty = true
        throw fsError(err, `syncing ${path.basename(seg.file)}`)
      }
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
    try {
      return await this.readFully(seg.fd, buf.subarray(bufOffset), len, pos)
    } catch (err) {
      throw fsError(err, `reading ${path.basename(seg.file)}`)
    }
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const buf = Buffer.allocUnsafe(length)
    const n = await this.readInto(offset, buf, 0, length)
    return n === length ? buf : buf.subarray(0, n)
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
      this.segs.push({ base: offset, size: 0, file, fd, dirty: true })
      fsyncDir(this.dir)
    }
  }

  private dropLast(): void {
    const s = this.segs.pop()
    if (!s) return
    fs.closeSync(s.fd)
    fs.rmSync(s.file, { force: true })
  }

  /** Deletes the oldest segment (never the only / active one). Returns what was deleted. */
  deleteOldest(): SegmentInfo | undefined {
    if (this.segs.length <= 1) return undefined
    const s = this.segs.shift() as Segment
    const info = { base: s.base, size: s.size, file: s.file, mtimeMs: 0 }
    fs.closeSync(s.fd)
    fs.rmSync(s.file, { force: true })
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

  close(): void {
    for (const s of this.segs) {
      try {
        fs.closeSync(s.fd)
      } catch {
        // already closed
      }
    }
    this.segs = []
  }
}
