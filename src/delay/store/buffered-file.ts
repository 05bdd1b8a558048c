import fs from 'node:fs'
import { type FsIo, nodeFsIo } from '../../broker/store/fs-io'
import { openOrCreateSync } from '../../common/durable-file'

/**
 * The buffers of a partly written `writev`: what is left of `parts` once its first `n` bytes went out.
 * Views, no copies.
 */
export function dropBytes(parts: Buffer[], n: number): Buffer[] {
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
export function writevFullySync(fd: number, parts: Buffer[], bytes: number, position: number): void {
  let written = 0
  while (written < bytes) {
    written += fs.writevSync(fd, written === 0 ? parts : dropBytes(parts, written), position + written)
  }
}

/**
 * An append-only file whose appends are buffered in memory and written by `flush()`: the writing side
 * of the delay store's per-bucket logs (schedule log, dispatch log). Synchronous I/O on purpose: the
 * writes are small and come from timers; only the fdatasync of `syncAsync` leaves the event loop (through
 * `io`, the broker store's fault-injectable fs layer).
 * The descriptor is opened on first use and can be released while nothing is unsynced.
 *
 * Invariant: `dirty` is cleared only by an fdatasync that succeeded and began after the last append.
 * After a failed fdatasync the kernel may have dropped the dirty pages (marking them clean), so a
 * later fdatasync succeeding proves nothing about them: the next sync first writes the bytes since the
 * last good sync again (read back from the page cache, which still holds them) and only then syncs.
 */
export class BufferedFile {
  readonly file: string
  private readonly io: FsIo
  private fd = -1
  /** Bytes in the file; -1 until known (read from the file when it is first opened). */
  private flushedBytes: number
  private pending: Buffer[] = []
  private pendingBytes = 0
  /** Appended since the last successful fdatasync. */
  private dirty = false
  /** Counts appends, so a sync knows whether appends came in while it ran. */
  private appends = 0
  /** File length covered by the last successful fdatasync (bytes below it are durable). */
  private durableBytes: number
  /** An fdatasync failed since the last successful one: rewrite [durableBytes, flushed) before the next. */
  private syncFailed = false

  constructor(file: string, size = -1, io: FsIo = nodeFsIo) {
    this.file = file
    this.flushedBytes = size
    this.durableBytes = size
    this.io = io
  }

  /** Bytes written to the file (buffered appends excluded). */
  get flushed(): number {
    if (this.flushedBytes < 0) this.open()
    return this.flushedBytes
  }

  /** Logical size: flushed plus buffered bytes (the offset the next append gets). */
  get size(): number {
    return this.flushed + this.pendingBytes
  }

  get bufferedBytes(): number {
    return this.pendingBytes
  }

  /** Appended and not yet covered by a successful fdatasync. */
  get unsynced(): boolean {
    return this.dirty
  }

  /** The descriptor, opening (or creating) the file if needed. */
  open(): number {
    if (this.fd < 0) {
      this.fd = openOrCreateSync(this.file)
      if (this.flushedBytes < 0) {
        this.flushedBytes = fs.fstatSync(this.fd).size
        this.durableBytes = this.flushedBytes
      }
    }
    return this.fd
  }

  /** Buffers bytes to append. */
  append(...parts: Buffer[]): void {
    for (const p of parts) {
      this.pending.push(p)
      this.pendingBytes += p.length
    }
    this.dirty = true
    this.appends++
  }

  /** Writes the buffered appends. */
  flush(): void {
    if (this.pendingBytes === 0) return
    const position = this.flushed
    writevFullySync(this.open(), this.pending, this.pendingBytes, position)
    this.flushedBytes = position + this.pendingBytes
    this.pending = []
    this.pendingBytes = 0
  }

  /** After a failed fdatasync: writes the bytes since the last good sync again (see the class comment). */
  private rewriteUnsynced(): void {
    if (!this.syncFailed) return
    const fd = this.open()
    const chunk = Buffer.allocUnsafe(1024 * 1024)
    for (let pos = Math.max(0, this.durableBytes); pos < this.flushedBytes; ) {
      const n = fs.readSync(fd, chunk, 0, Math.min(chunk.length, this.flushedBytes - pos), pos)
      if (n === 0) break
      writevFullySync(fd, [chunk.subarray(0, n)], n, pos)
      pos += n
    }
  }

  /** Flushes and fdatasyncs if anything was appended since the last successful sync. */
  sync(): void {
    if (!this.dirty) return
    this.flush()
    this.rewriteUnsynced()
    const appends = this.appends
    const covered = this.flushedBytes
    try {
      fs.fdatasyncSync(this.open())
    } catch (err) {
      this.syncFailed = true
      throw err
    }
    this.synced(appends, covered)
  }

  /**
   * Flushes now and fdatasyncs off the event loop. Appends made while it runs are not covered by it
   * (they keep the file dirty for the next one); a failure keeps the file dirty (and the next sync
   * rewrites what this one should have made durable).
   */
  async syncAsync(): Promise<void> {
    if (!this.dirty) return
    this.flush()
    this.rewriteUnsynced()
    const appends = this.appends
    const covered = this.flushedBytes
    try {
      await this.io.fdatasync(this.open())
    } catch (err) {
      this.syncFailed = true
      throw err
    }
    this.synced(appends, covered)
  }

  private synced(appends: number, covered: number): void {
    this.syncFailed = false
    this.durableBytes = Math.max(this.durableBytes, covered)
    if (this.appends === appends) this.dirty = false
  }

  /** Closes the descriptor when nothing is unsynced (it is reopened on the next use). */
  release(): void {
    if (!this.dirty && this.fd >= 0) {
      fs.closeSync(this.fd)
      this.fd = -1
    }
  }

  /** Cuts the file at `length` (buffered appends are written first) and makes the cut durable. */
  truncate(length: number): void {
    this.flush()
    fs.ftruncateSync(this.open(), length)
    fs.fdatasyncSync(this.open())
    this.flushedBytes = length
    this.durableBytes = Math.min(this.durableBytes, length)
  }

  /** Syncs what is unsynced, then closes. */
  close(): void {
    this.sync()
    if (this.fd >= 0) fs.closeSync(this.fd)
    this.fd = -1
  }

  /** Drops buffered appends, closes and deletes the file. */
  remove(): void {
    this.pending = []
    this.pendingBytes = 0
    this.dirty = false
    this.syncFailed = false
    if (this.fd >= 0) fs.closeSync(this.fd)
    this.fd = -1
    fs.rmSync(this.file, { force: true })
  }
}
