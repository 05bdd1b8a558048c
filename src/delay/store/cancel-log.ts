import fs from 'node:fs'
import { crc32c } from '../../common/crc32c'
import type { Logger } from '../../common/logger'
import { openOrCreateSync, writeFileAtomicSync } from '../../common/durable-file'

/**
 * Tombstones of cancelled messages: `cancel.log`, one frame per cancelled id.
 *
 *   0   u32  length      whole frame, this field included
 *   4   u32  crc         CRC32C of bytes [8, length)
 *   8   i64  cancelledAt ms since epoch
 *   16  ...  id          UTF-8 message id
 *
 * Appended and fdatasynced before CANCEL is answered. All tombstones are held in memory (cancels are
 * rare next to sends); a message whose id has a tombstone is not dispatched from then on (one already
 * in a SEND to its broker still arrives). At open, tombstones
 * older than `keepMs` (the delay horizon plus a margin: every message they could match is gone) are
 * dropped by rewriting the file. A bad frame ends the log (torn tail cut, with a report).
 */
const HEADER = 16

export class CancelLog {
  private readonly file: string
  private readonly log: Logger
  private fd = -1
  private size = 0
  readonly tombstones = new Map<string, number>()

  constructor(file: string, log: Logger) {
    this.file = file
    this.log = log
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
      writeFileAtomicSync(this.file, Buffer.concat([...this.tombstones].map(([id, at]) => encode(id, at))))
    }
    this.fd = openOrCreateSync(this.file)
    this.size = fs.fstatSync(this.fd).size
  }

  has(id: string): boolean {
    return this.tombstones.has(id)
  }

  /** Durably records tombstones (one write, one fdatasync). */
  add(ids: readonly string[], now: number): void {
    if (ids.length === 0) return
    const buf = Buffer.concat(ids.map((id) => encode(id, now)))
    let w = 0
    while (w < buf.length) w += fs.writeSync(this.fd, buf, w, buf.length - w, this.size + w)
    fs.fdatasyncSync(this.fd)
    this.size += buf.length
    for (const id of ids) this.tombstones.set(id, now)
  }

  close(): void {
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
