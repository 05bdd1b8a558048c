import fs from 'node:fs'

/**
 * A window over the file region [start, end) for one forward scan (recovery, bucket loads):
 * `ensure(pos, n)` makes bytes [pos, pos + n) readable at `buf[at(pos)]`, keeping the part of the
 * window at and after `pos`, reading ahead as much as the buffer holds, and growing the buffer when one
 * frame is larger than it. Positions only move forward. `refills` counts the reads, so a scan can yield
 * to the event loop after each.
 */
export class FileWindow {
  buf: Buffer
  /** File position of buf[0]. */
  private bufStart: number
  /** Bytes of buf that hold file data. */
  bufLen = 0
  refills = 0

  constructor(
    private readonly fd: number,
    start: number,
    private readonly end: number,
    chunkBytes: number,
  ) {
    this.buf = Buffer.allocUnsafe(chunkBytes)
    this.bufStart = start
  }

  /** Index in `buf` of file position `pos` (valid after ensure(pos, ...) returned true). */
  at(pos: number): number {
    return pos - this.bufStart
  }

  /** True when [pos, pos + n) is in the buffer; false when the region (or the file) ends first. */
  ensure(pos: number, n: number): boolean {
    if (pos + n > this.end) return false
    if (pos + n <= this.bufStart + this.bufLen) return true
    const keep = Math.max(0, this.bufStart + this.bufLen - pos)
    if (n > this.buf.length) {
      const bigger = Buffer.allocUnsafe(n)
      this.buf.copy(bigger, 0, pos - this.bufStart, pos - this.bufStart + keep)
      this.buf = bigger
    } else this.buf.copy(this.buf, 0, pos - this.bufStart, pos - this.bufStart + keep)
    this.bufStart = pos
    this.bufLen = keep
    this.refills++
    while (this.bufLen < n) {
      const want = Math.min(this.buf.length - this.bufLen, this.end - (pos + this.bufLen))
      const got = want > 0 ? fs.readSync(this.fd, this.buf, this.bufLen, want, pos + this.bufLen) : 0
      if (got === 0) return false
      this.bufLen += got
    }
    return true
  }
}

/** Bytes of a log that failed verification and were skipped: [offset, offset + bytes). */
export interface DamagedRange {
  offset: number
  bytes: number
}

/**
 * Recovery of a log of self-delimited, checksummed frames after a bad one: the first position in
 * [from, end) where `check` finds a good frame (`check(pos)` returns its length, or -1), or `end` when
 * none does. Used to skip exactly the damaged bytes (a flipped byte costs the frame it is in, not every
 * frame after it). Positions only move forward (the FileWindow contract). A false match needs a
 * plausible length, header and a matching CRC32C at a wrong position.
 */
export function nextGoodFrame(from: number, end: number, check: (pos: number) => number): number {
  for (let pos = from; pos < end; pos++) if (check(pos) > 0) return pos
  return end
}
