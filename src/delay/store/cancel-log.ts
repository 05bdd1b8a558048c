import fs from 'node:fs'
import path from 'node:path'
import { type FsIo, nodeFsIo } from '../../broker/store/fs-io'
import { crc32c } from '../../common/crc32c'
import { fsyncDir, openOrCreateSync, writeFileAtomicSync } from '../../common/durable-file'
import type { Logger } from '../../common/logger'

/**
 * Tombstones of cancelled messages: `cancel.log`, one frame per cancelled id.
 *
 *   0   u32  length      whole frame, this field included
 *   4   u32  crc         CRC32C of bytes [8, length)
 *   8   i64  cancelledAt ms since epoch
 *   16  ...  id          UTF-8 message id
 *
 * Group commit: `add()` takes effect in memory at once (a message with a tombstone is not dispatched
 * from then on; one already in a SEND to its broker still arrives); the tombstones added in the same
 * turn of the event loop are written with one write and one fdatasync, off the event loop (FsIo), and
 * the promises resolve once they are durable. Writes, syncs and compactions run one at a time, in order.
 *
 * Shrinking: a tombstone is needed while a copy of its message may still be dispatched. When the
 * dispatcher (or the loader) skips a cancelled frame, the store calls `spend(id, bucket)`; when that
 * bucket is dropped (every frame in it delivered or skipped, its time passed) and no copy of the id is
 * pending any more, the store calls `release(id)`. Once as many released tombstones as live ones sit in
 * the file, it is compacted (rewritten with the live ones: temp file, fdatasync, rename, directory
 * fsync). Tombstones never spent (ids that matched nothing pending, by a hash collision) expire after
 * `keepMs` (the delay horizon plus a margin: every message they could match is gone), at open.
 * A bad frame ends the log (torn tail cut, with a report).
 */
const HEADER = 16
/** Compaction waits for at least this many released tombstones (and as many as live ones). */
const COMPACT_MIN_DEAD = 1

interface Waiter {
  resolve: () => void
  reject: (err: unknown) => void
}

export class CancelLog {
  private readonly file: string
  private readonly log: Logger
  private readonly io: FsIo
  private fd = -1
  private size = 0
  readonly tombstones = new Map<string, number>()
  /** Frames in the file whose tombstone was released (compaction drops them). */
  private dead = 0
  private pending: Buffer[] = []
  private waiters: Waiter[] = []
  private scheduled = false
  /** The chain of writes and compactions (each runs after the previous one settled). */
  private tail: Promise<void> = Promise.resolve()
  private compacting = false

  constructor(file: string, log: Logger, io: FsIo = nodeFsIo) {
    this.file = file
    this.log = log
    this.io = io
  }

  open(now: number, keepMs: number): void {
    const buf = fs.existsSync(this.file) ? fs.readFileSync(this.file) : Buffer.alloc(0)
    let pos = 0
    let expired = 0
    while (pos + HEADER <= buf.length) {
      const length = buf.readUInt32BE(pos)
      if (length <= HEADER || pos + length > buf.length) break
      if (crc32c(buf.subarray(pos + 8, pos + length)) !== buf.readUInt32BE(pos + 4)) break
      const at = Number(buf.readBigInt64BE(pos + 8))
      const id = buf.toString('utf8', pos + HEADER, pos + length)
      if (at + keepMs >= now) this.tombstones.set(id, at)
      else expired++
      pos += length
    }
    if (pos < buf.length) {
      this.log.warn(
        { file: this.file, offset: pos, droppedBytes: buf.length - pos },
        'cancel log: bad tail cut',
      )
    }
    if (pos < buf.length || expired > 0) {
      // Rewrite with the live tombstones only (atomic: temp file + rename).
      writeFileAtomicSync(this.file, this.encodeLive())
    }
    this.fd = openOrCreateSync(this.file)
    this.size = fs.fstatSync(this.fd).size
  }

  has(id: string): boolean {
    return this.tombstones.has(id)
  }

  /** Tombstones held (live ones). */
  get live(): number {
    return this.tombstones.size
  }

  /** Bytes of the file (tests, metrics). */
  get fileBytes(): number {
    return this.size
  }

  /** Records tombstones: in effect at once, durable when the promise resolves (group commit). */
  add(ids: readonly string[], now: number): Promise<void> {
    if (ids.length === 0) return Promise.resolve()
    for (const id of ids) {
      this.tombstones.set(id, now)
      this.pending.push(encode(id, now))
    }
    return new Promise<void>((resolve, reject) => {
      this.waiters.push({ resolve, reject })
      if (!this.scheduled) {
        this.scheduled = true
        setImmediate(() => {
          this.scheduled = false
          this.enqueue(() => this.commit())
        })
      }
    })
  }

  /** The tombstone of `id` is no longer needed (no copy of its message can be dispatched any more). */
  release(id: string): void {
    if (!this.tombstones.delete(id)) return
    this.dead++
    if (this.dead >= COMPACT_MIN_DEAD && this.dead >= this.tombstones.size && !this.compacting) {
      this.compacting = true
      this.enqueue(() => this.compact())
    }
  }

  /** Waits for every write and compaction queued so far. */
  async settled(): Promise<void> {
    while (this.scheduled) await new Promise((r) => setImmediate(r))
    await this.tail
  }

  private enqueue(job: () => Promise<void>): void {
    this.tail = this.tail.then(job, job).catch((err: unknown) => {
      this.log.error({ err, file: this.file }, 'cancel log write failed')
    })
  }

  private async commit(): Promise<void> {
    const bufs = this.pending
    const waiters = this.waiters
    this.pending = []
    this.waiters = []
    if (bufs.length === 0) return
    const buf = Buffer.concat(bufs)
    try {
      let w = 0
      while (w < buf.length) w += await this.io.write(this.fd, buf.subarray(w), this.size + w)
      await this.io.fdatasync(this.fd)
      this.size += buf.length
    } catch (err) {
      // The frames may be partly written: cut them off, so the next frames follow good ones.
      await this.io.ftruncate(this.fd, this.size).catch(() => {})
      for (const w of waiters) w.reject(err)
      return
    }
    for (const w of waiters) w.resolve()
  }

  /** Rewrites the file with the live tombstones (temp file, fdatasync, rename, directory fsync). */
  private async compact(): Promise<void> {
    this.compacting = false
    const data = this.encodeLive()
    const dead = this.dead
    const tmp = `${this.file}.tmp`
    const fd = fs.openSync(tmp, 'w')
    try {
      let w = 0
      while (w < data.length) w += await this.io.write(fd, data.subarray(w), w)
      await this.io.fdatasync(fd)
    } finally {
      fs.closeSync(fd)
    }
    fs.renameSync(tmp, this.file)
    fsyncDir(path.dirname(this.file))
    fs.closeSync(this.fd)
    this.fd = fs.openSync(this.file, 'r+')
    this.size = data.length
    this.dead -= dead
  }

  private encodeLive(): Buffer {
    return Buffer.concat([...this.tombstones].map(([id, at]) => encode(id, at)))
  }

  async close(): Promise<void> {
    await this.settled()
    if (this.fd >= 0) fs.closeSync(this.fd)
    this.fd = -1
  }
}

function encode(id: string, at: number): Buffer {
  const idBytes = Buffer.byteLength(id, 'utf8')
  const b = Buffer.allocUnsafe(HEADER + idBytes)
  b.writeUInt32BE(HEADER + idBytes, 0)
  b.writeBigInt64BE(BigInt(at), 8)
  b.write(id, HEADER, 'utf8')
  b.writeUInt32BE(crc32c(b.subarray(8)), 4)
  return b
}
