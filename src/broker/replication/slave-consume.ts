import fs from 'node:fs'
import { QmqError, toQmqError } from '../../common/errors'
import type { Logger } from '../../common/logger'
import { recordSubjectAt } from '../../common/record'
import type { Checkpoint } from '../store/checkpoint'
import { ConsumeLog } from '../store/consume-log'
import type { FsIo } from '../store/fs-io'
import { readI64 } from '../store/i64'
import { checkFrame, FRAME_BYTES } from '../store/message-log'
import type { SegmentLog } from '../store/segment-log'
import { migrateSubjectDirs } from '../store/subject-dirs'

/**
 * A broker slave's consume logs, kept current as its copy of the master's message log grows (as the
 * store's own recovery replay would write them: same entries, same directories, same code), so that
 * opening the data dir as a store on promotion replays only what follows the installed checkpoint
 * instead of rebuilding every consume log from the start of the message log (failover time would grow
 * with the retained backlog).
 *
 * What recovery relies on (recovery.ts): a consume log holding at least the entries the checkpoint
 * names (`subjects[name]`) is cut to them and kept; a shorter one is rebuilt from the message log's
 * start. So a consume log may be short (only slower), never wrong below the checkpoint's count. This
 * module keeps to it:
 * - Frames are parsed from the bytes as written (before their fdatasync; ChunkVerifier checked each
 *   before it was written, so they are not checked again, see `written`), in log order, one chain of
 *   operations at a time (`chain`): a frame of sequence < the log's next sequence is already there
 *   (a re-read after a cut), a larger one fills holes up to it; a subject whose first frame has
 *   sequence X > 0 while its log is empty (the copy starts past the master's retention) starts at X.
 * - A cut of the message log (the master's TRUNCATE or RESET, a chunk whose fdatasync failed) cuts
 *   every entry whose record ends past it, durably, before the copy asks for anything more; the
 *   dispatch then starts again at the segment holding the cut (frames before it are already in).
 *   A copy left empty by the cut (RESET) drops every consume log.
 * - Before a checkpoint is installed, the dispatch has reached its message-log offset and every
 *   consume log is fdatasynced (with its SUBJECT marker): the checkpoint invariant of checkpoint.ts
 *   holds on the slave as on a master. When it has not (the dispatch stopped), the checkpoint is
 *   installed all the same: consume logs short of it (or gone) are rebuilt by recovery.
 * - At start, with an installed checkpoint whose counts every consume log reaches, each is cut to
 *   its count and the dispatch reads the copy from the checkpoint's offset (what a master's restart
 *   replays); otherwise (no checkpoint, a log short of it: damage, or a data dir of a version that
 *   deleted them) every consume log is dropped and rebuilt by reading the whole copy, once, here.
 * - A write or cut that fails, or a frame that does not read (the master's recovery stepped over
 *   damage; this dispatch does not resynchronise), deletes every consume log and stops the dispatch
 *   until the slave restarts: recovery rebuilds them, as before this module existed.
 */
export interface SlaveConsumeOptions {
  /** consumelog/ of the data dir. */
  root: string
  maxMessageBytes: number
  entriesPerSegment: number
  io?: FsIo | undefined
}

/** Bytes read per step when the dispatch reads the copy from the file. */
const READ_BYTES = 4 * 1024 * 1024
const EMPTY = Buffer.alloc(0)
/**
 * Subjects remembered by their UTF-8 bytes (with their consume logs), so that a frame of one of them
 * costs a byte comparison instead of decoding its subject and a map look-up: producers interleave a
 * few subjects at a time. More subjects than this in turn only cost those comparisons more.
 */
const RECENT_SUBJECTS = 8

/** A subject seen lately: its bytes as the records hold them, and its consume log. */
interface RecentSubject {
  bytes: Buffer
  log: ConsumeLog
}

export class SlaveConsumeLogs {
  private readonly opts: SlaveConsumeOptions
  private readonly log: Logger
  private readonly logs = new Map<string, ConsumeLog>()
  /** Entries of `logs` by subject bytes (at most RECENT_SUBJECTS, replaced in turn); emptied with it. */
  private recent: RecentSubject[] = []
  private nextRecent = 0
  private mlog: SegmentLog | undefined
  /** A frame boundary of the message log: every frame before it is dispatched. */
  private pos = 0
  /** Message-log bytes [pos, pos + carry.length) written, not yet a whole frame. */
  private carry: Buffer = EMPTY
  /** Dispatch stopped (damage, or a failed write): the consume logs are gone until a restart. */
  private stopped = false
  /** Every operation, in order; never rejects. */
  private chain: Promise<void> = Promise.resolve()
  private flushFailure: unknown = undefined
  /** The copy's start when consume-log segments before it were last deleted. */
  private retainedFrom = -1

  constructor(opts: SlaveConsumeOptions, log: Logger) {
    this.opts = opts
    this.log = log
  }

  /** Where the dispatch is (every frame before it has its entry); for tests and status. */
  get dispatchedTo(): number {
    return this.pos
  }

  /**
   * Opens the consume logs at the follower's start: `mlog` is the copy (torn tail already cut),
   * `installed` the checkpoint the follower kept (it names nothing past the copies).
   */
  async open(mlog: SegmentLog, installed: Checkpoint | undefined): Promise<void> {
    this.mlog = mlog
    migrateSubjectDirs(this.opts.root, this.log)
    let from = mlog.startOffset
    let reuse = installed !== undefined
    if (installed !== undefined) {
      const names = new Set([...ConsumeLog.discover(this.opts.root), ...Object.keys(installed.subjects)])
      for (const name of names) {
        if (this.consumeLog(name).fileEntries < (installed.subjects[name] ?? 0)) reuse = false
      }
      if (reuse) {
        for (const [name, c] of this.logs) await c.truncate(installed.subjects[name] ?? 0)
        from = installed.messageLogOffset
      }
    }
    if (!reuse) {
      if (this.logs.size > 0 || ConsumeLog.discover(this.opts.root).length > 0)
        this.log.warn('slave: consume logs do not cover the checkpoint; rebuilding them from the copy')
      this.dropAll()
    }
    await this.run(() => this.readCopy(from))
  }

  /**
   * Message-log bytes were written at `offset` (called in log order; not waited for). `data` is
   * entries that ChunkVerifier verified with the message log's own check before they were written
   * (checkFrame: frame bounds and checksum, record CRC32C), so each frame is parsed here without being
   * checked again: its verified length field gives the next entry's boundary. Bytes copied unverified
   * (the master's stored damage) are never handed here: `abandon` stops the dispatch before them.
   */
  written(offset: number, data: Buffer): void {
    void this.run(() => this.feed(offset, data, false))
  }

  /**
   * Bytes about to be copied unverified (the master's stored damage, chunk-verifier.ts
   * `acceptDamaged`; the follower's ChunkWriter calls this before it writes an unverified piece): a
   * damaged frame whose header still reads could be filed under the wrong subject, so the consume logs
   * are dropped and the dispatch stops until the slave restarts (its rebuild from the file checks every
   * record; a promotion's recovery steps over the damage).
   */
  abandon(reason: string): void {
    void this.run(async () => {
      throw new QmqError('QMQ_ERR_STORE_CORRUPT', reason)
    })
  }

  /** The copy was cut at `offset`: entries of records past it go, durably, before this resolves. */
  cut(offset: number): Promise<void> {
    return this.run(async () => {
      const mlog = this.mlog
      if (mlog === undefined) return
      if (mlog.startOffset >= mlog.endOffset) {
        // Nothing left (RESET: the master's log starts past this copy's end): the entries held point
        // at nothing, and each subject starts again at its first sequence copied (not after holes
        // for every sequence the master's retention deleted meanwhile).
        this.dropAll()
        this.pos = mlog.endOffset
        this.carry = EMPTY
        return
      }
      if (offset >= this.pos + this.carry.length) return
      if (offset >= this.pos) {
        this.carry = Buffer.from(this.carry.subarray(0, offset - this.pos))
        return
      }
      for (const c of this.logs.values()) {
        const keep = await c.search((e) => e.offset + e.size > offset)
        if (keep < c.nextSeq) {
          await c.truncate(keep)
          await c.log.sync()
        }
      }
      // Dispatch again from the start of the segment holding the cut: what is before the cut there
      // has its entries already (skipped by sequence), a partial frame at the cut becomes the carry.
      let base = mlog.startOffset
      for (const s of mlog.segments()) if (s.base <= offset) base = s.base
      await this.readCopy(base)
    })
  }

  /**
   * Before the follower installs `cp`: once the dispatch covers it, every consume log is durable
   * with at least the entries it names; consume-log segments wholly before the copy's start go (as
   * the master's retention does).
   */
  beforeInstall(cp: Checkpoint): Promise<void> {
    return this.run(async () => {
      const mlog = this.mlog
      if (mlog === undefined) return
      if (this.pos < cp.messageLogOffset) {
        this.log.warn(
          { dispatchedTo: this.pos, checkpoint: cp.messageLogOffset },
          'slave: consume logs stop before the checkpoint; a promotion rebuilds them from the message log',
        )
        return
      }
      if (this.flushFailure !== undefined) throw this.flushFailure
      const start = mlog.startOffset
      const retain = start > this.retainedFrom
      for (const c of this.logs.values()) {
        await c.markerDurable()
        await c.sync()
        if (retain) c.deleteBefore(await c.search((e) => e.offset >= start))
      }
      this.retainedFrom = start
    })
  }

  /** Waits for the operations queued, then closes the consume logs (what is written stays). */
  async close(): Promise<void> {
    await this.chain
    for (const c of this.logs.values()) {
      await c.flush().catch(() => undefined)
      c.close()
    }
    this.logs.clear()
    this.recent = []
  }

  /** Queues `op` after every operation before it; a failure drops every consume log (see top). */
  private run(op: () => Promise<void>): Promise<void> {
    const next = this.chain.then(async () => {
      if (this.stopped) return
      try {
        await op()
      } catch (err) {
        this.log.error(
          { err: toQmqError(err).message },
          'slave: consume logs failed; dropped (a promotion rebuilds them from the message log)',
        )
        this.stopped = true
        this.dropAll()
      }
    })
    this.chain = next
    return next
  }

  private consumeLog(subject: string): ConsumeLog {
    let c = this.logs.get(subject)
    if (c === undefined) {
      c = new ConsumeLog({
        root: this.opts.root,
        subject,
        entriesPerSegment: this.opts.entriesPerSegment,
        // Nothing reads a slave's entries: none kept in memory once written.
        cacheEntries: 0,
        ...(this.opts.io !== undefined ? { io: this.opts.io } : {}),
      })
      this.logs.set(subject, c)
    }
    return c
  }

  /** The consume log of the subject whose UTF-8 bytes are buf[at, at + length). */
  private subjectLog(buf: Buffer, at: number, length: number): ConsumeLog {
    const recent = this.recent
    for (let i = 0; i < recent.length; i++) {
      const r = recent[i] as RecentSubject
      if (r.bytes.length !== length) continue
      let same = true
      for (let j = 0; same && j < length; j++) same = r.bytes[j] === buf[at + j]
      if (same) return r.log
    }
    // Decoded as readRecordHeader decodes it (bytes that are not UTF-8 give the same string).
    const log = this.consumeLog(buf.toString('utf8', at, at + length))
    const entry = { bytes: Buffer.from(buf.subarray(at, at + length)), log }
    if (recent.length < RECENT_SUBJECTS) recent.push(entry)
    else {
      recent[this.nextRecent] = entry
      this.nextRecent = (this.nextRecent + 1) % RECENT_SUBJECTS
    }
    return log
  }

  /** Closes and deletes every consume log. */
  private dropAll(): void {
    for (const c of this.logs.values()) {
      void c.abandon()
      c.close()
    }
    this.logs.clear()
    this.recent = []
    fs.rmSync(this.opts.root, { recursive: true, force: true })
    migrateSubjectDirs(this.opts.root, this.log)
  }

  /** Dispatches the copy's frames from `from` (a frame boundary) to its end, read from the files. */
  private async readCopy(from: number): Promise<void> {
    const mlog = this.mlog
    if (mlog === undefined) return
    this.pos = from
    this.carry = EMPTY
    for (const s of mlog.segments()) {
      let at = Math.max(from, s.base)
      while (at < s.base + s.size && !this.stopped) {
        const data = await mlog.read(at, Math.min(READ_BYTES, s.base + s.size - at))
        if (data.length === 0) break
        await this.feed(at, data, true)
        at += data.length
      }
    }
  }

  /**
   * Dispatches the whole frames of message-log bytes `written` at `offset`. `verify`: check each
   * frame (checkFrame, record CRC included: bytes read from the file); else the frames were verified
   * before they were written (`written`) and are only parsed.
   */
  private async feed(offset: number, written: Buffer, verify: boolean): Promise<void> {
    if (this.stopped) return
    const seen = this.pos + this.carry.length
    if (offset + written.length <= seen) return // read from the file already
    let data = offset < seen ? written.subarray(seen - offset) : written
    if (offset > seen) {
      // A new segment after a gap (frames never span segments): a partial frame before it is a torn
      // segment end the master's recovery stepped over too.
      this.pos = offset
      this.carry = EMPTY
    }
    const touched = new Set<ConsumeLog>()
    if (this.carry.length > 0) {
      // The frame the carry starts, completed from the chunk's first bytes (not the whole chunk
      // appended to the carry: that would copy every byte once more).
      const head = this.carry.length >= 4 ? this.carry : Buffer.concat([this.carry, data.subarray(0, 4)])
      const length = head.length >= 4 ? head.readUInt32BE(0) : FRAME_BYTES
      const bounded = Math.min(length, FRAME_BYTES + this.opts.maxMessageBytes)
      const take = Math.min(data.length, Math.max(bounded - this.carry.length, FRAME_BYTES))
      const frame = Buffer.concat([this.carry, data.subarray(0, take)])
      const used = await this.parse(frame, this.pos, touched, verify)
      if (used === 0) {
        this.carry = frame // still short: a frame longer than the chunk
        this.flushTouched(touched)
        return
      }
      data = data.subarray(used - this.carry.length)
      this.pos += used
      this.carry = EMPTY
    }
    const used = await this.parse(data, this.pos, touched, verify)
    this.pos += used
    // Copied: a slice would keep the whole chunk in memory.
    this.carry = used < data.length ? Buffer.from(data.subarray(used)) : EMPTY
    this.flushTouched(touched)
  }

  /**
   * Pushes the entries of the whole frames at the start of `buf` (its first byte at message-log
   * offset `base`); returns the bytes they take. Throws at a frame that does not read.
   */
  private async parse(buf: Buffer, base: number, touched: Set<ConsumeLog>, verify: boolean): Promise<number> {
    const max = this.opts.maxMessageBytes
    let p = 0
    for (;;) {
      if (buf.length - p < FRAME_BYTES) return p
      // Not resynchronised here (recovery does that): a frame that does not read drops the consume
      // logs (see `run`). Read from the file: the whole frame is checked (checkFrame, record CRC
      // included). Handed to `written`: ChunkVerifier checked the same (before the bytes were
      // written), so the frame is only parsed (checking its header again cost ~20% of the dispatch).
      if (verify) {
        const r = checkFrame(buf, p, buf.length, max, true)
        if (r.kind === 'short') return p
        if (r.kind === 'corrupt')
          throw new QmqError(
            'QMQ_ERR_STORE_CORRUPT',
            `unreadable record at message-log offset ${base + p}: ${r.reason}`,
          )
      }
      const length = buf.readUInt32BE(p)
      // (Always so for a checked frame: only keeps a broken caller from looping here for ever.)
      if (length < FRAME_BYTES)
        throw new QmqError('QMQ_ERR_INTERNAL', `frame length ${length} at message-log offset ${base + p}`)
      if (buf.length - p < length) return p
      // Frame fields (message-log.ts layout) read in place; of the record, only the subject's bytes
      // (checked as readRecordHeader checks them, decoded only for a subject not seen lately).
      const seq = readI64(buf, p + 16)
      const at = recordSubjectAt(buf, p + FRAME_BYTES, p + length)
      const c = this.subjectLog(buf, at, buf.readUInt16BE(p + FRAME_BYTES + 30))
      if (seq >= c.nextSeq) {
        if (c.nextSeq === 0 && seq > 0) {
          // The subject's first record in the copy: the sequences before it went with retention.
          await c.truncate(seq)
          c.deleteBefore(seq)
        } else c.fillTo(seq)
        c.push(base + p + FRAME_BYTES, length - FRAME_BYTES, readI64(buf, p + 24), buf.readUInt32BE(p + 12))
        touched.add(c)
      }
      p += length
    }
  }

  private flushTouched(touched: Set<ConsumeLog>): void {
    for (const c of touched) {
      c.flush().catch((err: unknown) => {
        this.flushFailure ??= err
      })
    }
  }
}
