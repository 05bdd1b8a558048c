import fs from 'node:fs'
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
 * writes are small and come from timers; only the fdatasync of `syncAsync` leaves the event loop.
 * The descriptor is opened on first use and can be released while nothing is unsynced.
 */
export class BufferedFile {
  readonly file: string
  private fd = -1
  /** Bytes in the file; -1 until known (read from the file when it is first opened). */
  private flushedBytes: number
  private pending: Buffer[] = []
  private pendingBytes = 0
  /** Appended since the last fdatasync. */
  private dirty = false

  constructor(file: string, size = -1) {
    this.file = file
    this.flushedBytes = size
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

  /** The descriptor, opening (or creating) the file if needed. */
  open(): number {
    if (this.fd < 0) {
      this.fd = openOrCreateSync(this.file)
      if (this.flushedBytes < 0) this.flushedBytes = fs.fstatSync(this.fd).size
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

  /** Flushes and fdatasyncs if anything was appended since the last sync. */
  sync(): void {
    if (!this.dirty) return
    this.flush()
    fs.fdatasyncSync(this.open())
    this.dirty = false
  }

  /**
   * Flushes now and fdatasyncs off the event loop. Appends made while it runs are not covered by it
   * (they keep the file dirty for the next one).
   */
  syncAsync(): Promise<void> {
    if (!this.dirty) return Promise.resolve()
    this.flush()
    this.dirty = false
    const fd = this.open()
    return new Promise((resolve, reject) => fs.fdatasync(fd, (err) => (err ? reject(err) : resolve())))
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
    if (this.fd >= 0) fs.closeSync(this.fd)
    this.fd = -1
    fs.rmSync(this.file, { force: true })
  }
}
