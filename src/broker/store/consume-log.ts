import fs from 'node:fs'
import path from 'node:path'
import { QmqError } from '../../common/errors'
import type { FsIo } from './fs-io'
import { readI64, writeI64 } from './i64'
import { SegmentLog } from './segment-log'
import { claimSubjectDir } from './subject-dirs'

/**
 * The consume log of one subject: entry N describes the subject's sequence N. Fixed width, so the
 * entry of sequence N sits at logical offset N * ENTRY_BYTES of the subject's segmented log
 * (`consumelog/<subject dir>/<base>.log`, plus a `SUBJECT` file holding the subject's name).
 *
 * Entry layout (big-endian), written by `push()`:
 *
 *   offset  size  field
 *   0       8     offset    i64: logical message-log offset of the record (after its frame); -1 = hole
 *   8       4     size      u32: record bytes; 0 = hole
 *   12      8     storedAt  i64: ms since epoch
 *   20      4     tagMask   u32: tag bloom bits (tag-hash.ts)
 *
 * A hole stands for a sequence whose message recovery found lost in a damaged part of the message
 * log; readers skip it. The log is derived data: recovery truncates it to the last checkpointed
 * length and rebuilds the rest from the message log; a missing or short one is rebuilt from the
 * start; the entries kept are checked against the message log and damaged ones rebuilt in place
 * (consume-repair.ts).
 * Recent entries stay in memory (`cacheEntries`); older ones are read with positional reads.
 * Entries are pushed only once their message is visible under the flush policy.
 */
export const ENTRY_BYTES = 24

export interface ConsumeEntry {
  seq: number
  offset: number
  size: number
  storedAt: number
  tagMask: number
}

export { subjectDirName } from './subject-dirs'

export interface ConsumeLogOptions {
  root: string
  subject: string
  entriesPerSegment: number
  cacheEntries: number
  io?: FsIo
}

export class ConsumeLog {
  readonly subject: string
  readonly log: SegmentLog
  private readonly cacheEntries: number
  /** In-memory entries for sequences [memBase, memBase + memCount). */
  private mem: Buffer
  private memBase: number
  private memCount = 0
  private flushing: Promise<void> | undefined
  /** abandon(): no write starts any more (a crash). */
  private abandoned = false
  /** Writes the directory's SUBJECT marker; cleared once it is durable (subject-dirs.ts). */
  private writeMarker: (() => Promise<void>) | undefined
  private markerWriting: Promise<void> | undefined

  constructor(opts: ConsumeLogOptions) {
    this.subject = opts.subject
    this.cacheEntries = opts.cacheEntries
    const { dir, writeMarker } = claimSubjectDir(opts.root, opts.subject)
    this.writeMarker = writeMarker
    this.log = SegmentLog.open({
      dir,
      segmentBytes: opts.entriesPerSegment * ENTRY_BYTES,
      ...(opts.io ? { io: opts.io } : {}),
    })
    this.mem = Buffer.allocUnsafe(1024 * ENTRY_BYTES)
    this.memBase = this.fileEntries
  }

  /**
   * Undefined once the directory's SUBJECT marker is durable (at once for an existing subject);
   * else the write of the marker in flight, started by the first call. A failed write rejects the
   * callers waiting for it and is tried again by the next call.
   */
  markerDurable(): Promise<void> | undefined {
    const write = this.writeMarker
    if (write === undefined) return undefined
    if (this.markerWriting === undefined) {
      this.markerWriting = write().then(
        () => {
          // Runs before any caller's continuation: a later call finds the marker durable.
          this.writeMarker = undefined
          this.markerWriting = undefined
        },
        (err: unknown) => {
          this.markerWriting = undefined
          throw err
        },
      )
    }
    return this.markerWriting
  }

  /** Subjects found under `root` (from their SUBJECT files). */
  static discover(root: string): string[] {
    if (!fs.existsSync(root)) return []
    const out: string[] = []
    for (const name of fs.readdirSync(root)) {
      const marker = path.join(root, name, 'SUBJECT')
      if (fs.existsSync(marker)) out.push(fs.readFileSync(marker, 'utf8'))
    }
    return out
  }

  /** Whole entries in the files (a partial trailing entry does not count). */
  get fileEntries(): number {
    return Math.floor(this.log.endOffset / ENTRY_BYTES)
  }

  /** First retained sequence. */
  get startSeq(): number {
    return Math.ceil(this.log.startOffset / ENTRY_BYTES)
  }

  /** Next sequence (= number of sequences ever assigned and visible). */
  get nextSeq(): number {
    return this.memBase + this.memCount
  }

  /** Cuts the log to `seq` entries (files and memory); the next push is sequence `seq`. */
  async truncate(seq: number): Promise<void> {
    await this.flushing
    await this.log.truncate(seq * ENTRY_BYTES)
    this.memBase = seq
    this.memCount = 0
  }

  push(offset: number, size: number, storedAt: number, tagMask: number): number {
    if (this.memCount * ENTRY_BYTES >= this.mem.length) {
      const bigger = Buffer.allocUnsafe(this.mem.length * 2)
      this.mem.copy(bigger, 0, 0, this.memCount * ENTRY_BYTES)
      this.mem = bigger
    }
    writeEntry(this.mem, this.memCount * ENTRY_BYTES, offset, size, storedAt, tagMask)
    this.memCount++
    return this.memBase + this.memCount - 1
  }

  /** Pushes holes up to (not including) `seq`. */
  fillTo(seq: number): void {
    while (this.nextSeq < seq) this.push(-1, 0, 0, 0)
  }

  /**
   * Replaces the existing entries of sequences [seq, seq + buf.length / ENTRY_BYTES) with `buf`
   * (whole entries), in the files and in memory: recovery's repair of damaged entries. Not for use
   * while pulls may read them.
   */
  async rewrite(seq: number, buf: Buffer): Promise<void> {
    const count = buf.length / ENTRY_BYTES
    if (!Number.isInteger(count) || seq < this.startSeq || seq + count > this.nextSeq) {
      throw new QmqError('QMQ_ERR_INTERNAL', `rewrite of ${count} entries at ${seq} outside the log`)
    }
    await this.flushing
    const fileTo = Math.min(seq + count, this.fileEntries)
    if (fileTo > seq)
      await this.log.overwrite(seq * ENTRY_BYTES, buf.subarray(0, (fileTo - seq) * ENTRY_BYTES))
    const memFrom = Math.max(seq, this.memBase)
    if (memFrom < seq + count) {
      buf.copy(this.mem, (memFrom - this.memBase) * ENTRY_BYTES, (memFrom - seq) * ENTRY_BYTES)
    }
  }

  /** Writes in-memory entries that are not in the files yet, then trims memory. */
  flush(): Promise<void> {
    if (this.abandoned) return Promise.resolve()
    if (!this.flushing) {
      this.flushing = this.doFlush().finally(() => {
        this.flushing = undefined
      })
    }
    return this.flushing
  }

  private async doFlush(): Promise<void> {
    while (!this.abandoned) {
      const fileEnd = this.fileEntries
      const end = this.nextSeq
      if (fileEnd >= end) break
      const from = (fileEnd - this.memBase) * ENTRY_BYTES
      const to = this.memCount * ENTRY_BYTES
      // Copy: the memory buffer may be compacted or regrown while the write is in flight.
      const chunk = Buffer.from(this.mem.subarray(from, to))
      await this.log.appendv([chunk], chunk.length)
    }
    this.trim()
  }

  private trim(): void {
    const keepFrom = Math.min(this.fileEntries, this.nextSeq - this.cacheEntries)
    const drop = keepFrom - this.memBase
    if (drop <= 0 || drop < this.memCount / 2) return
    this.mem.copy(this.mem, 0, drop * ENTRY_BYTES, this.memCount * ENTRY_BYTES)
    this.memBase += drop
    this.memCount -= drop
  }

  async sync(): Promise<void> {
    await this.flush()
    await this.log.sync()
  }

  /**
   * Raw entries for sequences [seq, seq + count) clipped to what exists; returns the buffer and the
   * first sequence it holds.
   */
  async readRaw(seq: number, count: number): Promise<{ seq: number; buf: Buffer }> {
    const from = Math.max(seq, this.startSeq)
    const to = Math.min(seq + count, this.nextSeq)
    if (to <= from) return { seq: from, buf: Buffer.alloc(0) }
    if (from >= this.memBase) {
      return {
        seq: from,
        buf: Buffer.from(
          this.mem.subarray((from - this.memBase) * ENTRY_BYTES, (to - this.memBase) * ENTRY_BYTES),
        ),
      }
    }
    // Older entries: positional read from the files, within one segment.
    const off = from * ENTRY_BYTES
    const segEnd = Math.min(this.log.segmentEnd(off), this.memBase * ENTRY_BYTES)
    const fileTo = Math.min(to * ENTRY_BYTES, segEnd)
    if (fileTo <= off) return { seq: from, buf: Buffer.alloc(0) }
    const buf = await this.log.read(off, fileTo - off)
    return { seq: from, buf: buf.subarray(0, Math.floor(buf.length / ENTRY_BYTES) * ENTRY_BYTES) }
  }

  async read(seq: number, count: number): Promise<ConsumeEntry[]> {
    const { seq: first, buf } = await this.readRaw(seq, count)
    const out: ConsumeEntry[] = []
    for (let i = 0; i * ENTRY_BYTES < buf.length; i++) out.push(decodeEntry(buf, i * ENTRY_BYTES, first + i))
    return out
  }

  async entry(seq: number): Promise<ConsumeEntry | undefined> {
    const [e] = await this.read(seq, 1)
    return e && e.seq === seq ? e : undefined
  }

  /**
   * First sequence in [startSeq, nextSeq) whose entry satisfies `pred` (monotonic over the entries
   * that are not holes), or nextSeq. Holes are passed over: a probe that lands on one decides by the
   * next entry that is not a hole (holes are rare: damage found by recovery); when only holes are
   * left up to the bound, the first of them is returned.
   */
  async search(pred: (e: ConsumeEntry) => boolean): Promise<number> {
    let lo = this.startSeq
    let hi = this.nextSeq
    while (lo < hi) {
      const mid = Math.floor((lo + hi) / 2)
      let probe = mid
      let e = await this.entry(probe)
      while (e && e.size === 0 && probe + 1 < hi) e = await this.entry(++probe)
      if (!e || e.size === 0)
        hi = mid // holes (or nothing) from mid up to hi
      else if (pred(e)) hi = probe
      else lo = probe + 1
    }
    return lo
  }

  /** Deletes whole segments holding only sequences below `seq`. */
  deleteBefore(seq: number): void {
    this.log.deleteBefore(seq * ENTRY_BYTES)
  }

  /**
   * Stops as a crash does: no write starts any more (entries only in memory stay unwritten).
   * Resolves once the write in flight, if any, is over.
   */
  async abandon(): Promise<void> {
    this.abandoned = true
    await this.flushing?.catch(() => undefined)
  }

  close(): void {
    this.log.close()
  }
}

/** Writes one entry at `o` of `buf` (layout above); a hole is (-1, 0, 0, 0). */
export function writeEntry(
  buf: Buffer,
  o: number,
  offset: number,
  size: number,
  storedAt: number,
  tagMask: number,
): void {
  writeI64(buf, offset, o)
  buf.writeUInt32BE(size, o + 8)
  writeI64(buf, storedAt, o + 12)
  buf.writeUInt32BE(tagMask >>> 0, o + 20)
}

export function decodeEntry(buf: Buffer, o: number, seq: number): ConsumeEntry {
  return {
    seq,
    offset: readI64(buf, o),
    size: buf.readUInt32BE(o + 8),
    storedAt: readI64(buf, o + 12),
    tagMask: buf.readUInt32BE(o + 20),
  }
}
