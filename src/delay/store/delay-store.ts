import fs from 'node:fs'
import type { FsIo } from '../../broker/store/fs-io'
import path from 'node:path'
import type { Clock } from '../../common/clock'
import { crc32c, crc32cRange } from '../../common/crc32c'
import { fsError, QmqError } from '../../common/errors'
import type { Logger } from '../../common/logger'
import { FLAG_DELAYED, type RecordHeader } from '../../common/record'
import { type DueCallback, HashWheel } from '../wheel/hash-wheel'
import {
  Bucket,
  DISPATCH_DIR,
  frameScheduleAt,
  recordIdRange,
  recordScheduleAt,
  SCHEDULE_DIR,
  SCHEDULE_SUFFIX,
} from './bucket'
import { validateSubject } from '../../common/names'
import { CancelLog } from './cancel-log'
import { type DeadLetter, DeadLetterLog } from './dead-letters'
import { DEFAULT_DEDUPE_WINDOW_MS } from '../../broker/store/options'
import { DEFAULT_DELAY_DEDUPE_MAX_ENTRIES, DEFAULT_DELAY_DEDUPE_REBUILD_MAX_BYTES } from '../options'
import { type DelayDedupeOptions, DelayDedupe } from './dedupe-window'
import { DedupeIndex } from '../../broker/store/dedupe'
import { IdHashSet } from './id-hash-set'
import { isRefusalMarker, MessageLog } from './message-log'
import type { SegmentLog } from '../../broker/store/segment-log'
import { FRAME_HEADER_BYTES } from './schedule-log'
import { writeFileAtomic } from '../../common/durable-file'
import { checkDataMeta, META_VERSION_MARKERS } from './data-meta'

/**
 * The delay server's storage: message log -> schedule logs (one per time bucket) -> wheel.
 *
 *   SEND ─> verify (DELAYED flag, schedule time within the horizon) ─> message log (group commit,
 *   fdatasync) ─> filed into the schedule log of bucket(scheduleAt) ─> ack
 *   loader: buckets starting before now + loadAheadMs ─> their pending frames' index into the wheel
 *   wheel.advance(now) ─> dispatcher ─> broker ack ─> markDelivered ─> dispatch log
 *
 * Durability: a SEND is acknowledged once its record is in the message log and synced. Schedule and
 * dispatch logs are written behind and synced at each checkpoint, which then records the message-log
 * offset up to which every record is durably filed (`checkpoint.json`); a restart replays the message
 * log from there (a bucket skips records whose message-log offset it already holds). Message-log
 * segments wholly below the checkpoint are deleted.
 *
 * A bucket whose time has passed, fully loaded, with nothing pending, is deleted at a checkpoint.
 * A record for a bucket that no longer exists (a past time) recreates it: it is loaded at once.
 *
 * Pending ids: a multiset of 32-bit id hashes (IdHashSet) answers CANCEL; it is rebuilt at start by
 * scanning every schedule log (which also verifies every frame's CRC and cuts bad tails).
 *
 * Dedupe: a SEND of an id stored within the dedupe window is answered as stored and not written again
 * (dedupe-window.ts); the message-log segments that rebuild the window on open are kept past the
 * checkpoint.
 */
export interface DelayStoreOptions {
  dataDir: string
  clock: Clock
  log: Logger
  bucketMinutes: number
  horizonMs: number
  loadAheadMs: number
  tickMs: number
  wheelSize: number
  segmentBytes: number
  maxMessageBytes: number
  fsync: boolean
  /** The fs layer of asynchronous fdatasyncs (tests inject faults); default node's. */
  io?: FsIo | undefined
  /** The dedupe window by message id (dedupe-window.ts); default the broker's defaults, delay cap. */
  dedupe?: DelayDedupeOptions | undefined
}

export interface AcceptItem {
  bytes: Buffer
  header?: RecordHeader | undefined
  error?: QmqError | undefined
}

const CHECKPOINT_FILE = 'checkpoint.json'
const CANCEL_FILE = 'cancel.log'
const DEAD_LETTER_FILE = 'deadletter.log'
export const MESSAGE_DIR = 'message'
export const TOMBSTONE_MARGIN_MS = 24 * 3600 * 1000
/**
 * Bytes of frames all buckets may buffer together before the store writes every bucket's buffered
 * frames (each bucket also writes its own at 64 KiB). Without it, sends spread over a month of hourly
 * buckets kept up to 64 KiB per bucket, ~45 MiB in all, in memory until the checkpoint.
 */
const BUFFERED_FRAME_BYTES = 4 * 1024 * 1024

/**
 * What a slave copies to hold a checkpoint (src/delay/replication/): the checkpoint's message-log
 * offset and the sizes of the derived files that cover every record below it, captured when the
 * checkpoint's run starts (the sizes its syncs make durable) and published once they are durable.
 * A bucket is named by its start and told apart from an earlier bucket of the same start (dropped and
 * recreated) by the message-log offset of its first frame.
 */
export interface ReplicaManifest {
  checkpoint: number
  deadLetterBytes: number
  /** [start, firstMsgOffset, scheduleBytes, dispatchBytes] per bucket. */
  buckets: [number, number, number, number][]
}

export interface StoreStats {
  buckets: number
  pending: number
  wheelSize: number
  wheelBytes: number
  idSetBytes: number
}

export class DelayStore {
  readonly options: DelayStoreOptions
  readonly bucketMs: number
  readonly wheel: HashWheel
  private readonly log: Logger
  private readonly clock: Clock
  private readonly messageLog: MessageLog
  private readonly cancels: CancelLog
  readonly deadLetters: DeadLetterLog
  private readonly ids = new IdHashSet(1 << 16)
  readonly dedupe: DelayDedupe
  private readonly buckets = new Map<number, Bucket>()
  private readonly slots: (Bucket | undefined)[] = []
  private readonly freeSlots: number[] = []
  /** Starts of buckets in state 'disk', ascending (the loader takes from the front). */
  private unloaded: number[] = []
  private readonly dirty = new Set<Bucket>()
  /** Every message-log record below this offset is filed in a schedule log (maybe not yet synced). */
  private filedOffset = 0
  private checkpointOffset = 0
  /** Frame bytes filed since every bucket last wrote its buffer (an upper bound of what is buffered). */
  private filedSinceFlush = 0
  private closed = false
  /** meta.json's format version (data-meta.ts): 2 once refusal markers may be in the message log. */
  private metaVersion = 1
  private checkpointRun: Promise<void> | undefined
  /** Ids of cancelled frames skipped, by bucket start (their tombstones go when the bucket goes). */
  private readonly spentCancels = new Map<number, string[]>()
  /** Dead letters being redriven (their records are on their way into the message log). */
  private readonly redriving = new Set<number>()
  /** Called after a bucket finished loading: (bucket start, frames loaded, ms). */
  onLoaded: (start: number, frames: number, ms: number) => void = () => {}
  /** The last durable checkpoint's manifest (replication). */
  replicaManifest: ReplicaManifest | undefined
  /** Reports of dropped data (torn tails, corrupt frames), for tests and metrics. */
  readonly recoveryReports: { file: string; offset: number; droppedBytes: number }[] = []

  private constructor(options: DelayStoreOptions) {
    this.options = options
    this.log = options.log
    this.clock = options.clock
    this.bucketMs = options.bucketMinutes * 60_000
    this.wheel = new HashWheel(options.clock.now(), { tickMs: options.tickMs, wheelSize: options.wheelSize })
    this.messageLog = new MessageLog({
      dir: path.join(options.dataDir, MESSAGE_DIR),
      segmentBytes: options.segmentBytes,
      fsync: options.fsync,
      maxMessageBytes: options.maxMessageBytes,
      log: options.log,
      io: options.io,
    })
    this.cancels = new CancelLog(path.join(options.dataDir, CANCEL_FILE), options.log, options.io)
    this.dedupe = new DelayDedupe(
      options.dedupe ?? {
        windowMs: DEFAULT_DEDUPE_WINDOW_MS,
        maxEntries: DEFAULT_DELAY_DEDUPE_MAX_ENTRIES,
        rebuildMaxBytes: DEFAULT_DELAY_DEDUPE_REBUILD_MAX_BYTES,
      },
    )
    this.deadLetters = new DeadLetterLog(
      path.join(options.dataDir, DEAD_LETTER_FILE),
      options.log,
      options.io,
    )
  }

  static async open(options: DelayStoreOptions): Promise<DelayStore> {
    const store = new DelayStore(options)
    try {
      await store.init()
    } catch (err) {
      throw err instanceof QmqError ? err : fsError(err, `opening delay store ${options.dataDir}`)
    }
    return store
  }

  private async init(): Promise<void> {
    const dir = this.options.dataDir
    for (const d of [dir, path.join(dir, SCHEDULE_DIR), path.join(dir, DISPATCH_DIR)])
      fs.mkdirSync(d, { recursive: true })
    this.checkMeta()
    this.cancels.open(this.clock.now(), this.options.horizonMs + TOMBSTONE_MARGIN_MS)
    for (const d of await this.deadLetters.open())
      this.recoveryReports.push({ file: DEAD_LETTER_FILE, offset: d.offset, droppedBytes: d.bytes })
    this.checkpointOffset = this.readCheckpoint()
    this.filedOffset = this.checkpointOffset
    await this.scanBuckets()
    this.messageLog.onDurable = (bytes, offset, entry) => {
      // Filed first: a record file() throws on (its bucket's schedule log cannot be opened) is refused
      // to the producer, so its id must not stay in the window, or the resend would be answered
      // "duplicate" and never stored (onFailed discards it). The refused record stays in the message
      // log, unfiled (filedOffset passes it); the refusal marker the log writes before the answer
      // keeps every replay (a restart, a promoted slave) from filing it.
      this.file(bytes, offset, false)
      if (entry >= 0) this.dedupe.settle(entry, offset + bytes.length)
      else this.dedupe.stored(bytes, offset + bytes.length, this.clock.now())
    }
    this.messageLog.beforeRefusals = () => this.markersAllowed()
    this.messageLog.onFailed = (entry) => {
      if (entry >= 0) this.dedupe.discard(entry)
    }
    const now = this.clock.now()
    const cp = this.checkpointOffset
    const { damaged } = await this.messageLog.open(
      cp,
      (bytes, offset) => {
        this.dedupe.rebuildRecord(bytes, 0, bytes.length, offset)
        this.file(bytes, offset, true)
      },
      async (log, check) => {
        // The dedupe window's records below the checkpoint (those after it come with the replay).
        const from = this.dedupe.beginRebuild(log.segments(), log.endOffset, now)
        const to = Math.min(cp, log.endOffset)
        if (from < to)
          await log.scan(
            from,
            to,
            check,
            (b, p, length, offset) => this.dedupe.rebuildRecord(b, p, length, offset),
            {
              resync: true,
            },
          )
      },
      // Refusal markers: the ids they name leave the window (their records are not replayed). A
      // marker met here (a copy of a data dir, a slave's log) makes the data dir format 2 too.
      (b, p, length, offset) => {
        if (isRefusalMarker(b, p)) this.markersAllowed()
        this.dedupe.rebuildRecord(b, p, length, offset)
      },
    )
    this.dedupe.endRebuild(now)
    for (const d of damaged)
      this.recoveryReports.push({ file: MESSAGE_DIR, offset: d.offset, droppedBytes: d.bytes })
    this.filedOffset = Math.max(this.filedOffset, this.messageLog.endOffset)
    await this.checkpoint()
    await this.loadDue()
  }

  private checkMeta(): void {
    this.metaVersion = checkDataMeta(this.options.dataDir, this.options.bucketMinutes)
  }

  /** Before a refusal marker is first in this data dir (data-meta.ts): older versions then refuse it. */
  private markersAllowed(): void {
    if (this.metaVersion >= META_VERSION_MARKERS) return
    this.metaVersion = checkDataMeta(this.options.dataDir, this.options.bucketMinutes, META_VERSION_MARKERS)
  }

  private readCheckpoint(): number {
    const file = path.join(this.options.dataDir, CHECKPOINT_FILE)
    if (!fs.existsSync(file)) return 0
    try {
      const cp = JSON.parse(fs.readFileSync(file, 'utf8')) as { messageLogOffset?: unknown }
      if (typeof cp.messageLogOffset === 'number' && Number.isSafeInteger(cp.messageLogOffset))
        return cp.messageLogOffset
    } catch {
      // fall through: replay everything (safe: buckets skip what they already hold)
    }
    this.log.warn({ file }, 'checkpoint unreadable; replaying the whole message log')
    return 0
  }

  /** Start: verify every schedule log, count frames and deliveries, rebuild the pending-id set. */
  private async scanBuckets(): Promise<void> {
    const dir = path.join(this.options.dataDir, SCHEDULE_DIR)
    const starts = fs
      .readdirSync(dir)
      .filter((f) => f.endsWith(SCHEDULE_SUFFIX))
      .map((f) => Number(f.slice(0, -SCHEDULE_SUFFIX.length)))
      .filter((n) => Number.isSafeInteger(n))
      .sort((a, b) => a - b)
    for (const start of starts) {
      const b = this.bucket(
        start,
        fs.statSync(path.join(dir, `${String(start).padStart(13, '0')}${SCHEDULE_SUFFIX}`)).size,
        false,
      )
      const dispatched = await b.dispatch.readAll((dropped, at) => this.report(b.dispatch.file, at, dropped))
      let d = 0
      // A damaged tail (nothing good after it) is cut: appends go on after the last good frame.
      // Damage inside stays where it is (the frames after it keep their offsets).
      const res = await b.schedule.recover((f) => {
        if (b.firstMsgOffset < 0) b.firstMsgOffset = f.msgOffset
        while (d < dispatched.length && (dispatched[d] as number) < f.offset) d++
        if (d < dispatched.length && dispatched[d] === f.offset) {
          b.done++
          return
        }
        const [s, e] = recordIdRange(f.frame, FRAME_HEADER_BYTES)
        this.ids.add(crc32cRange(f.frame, s, e))
      })
      b.total = res.count
      b.maxMsgOffset = res.maxMsgOffset
      for (const d of res.damaged) this.report(b.schedule.file, d.offset, d.bytes)
      b.schedule.release()
      b.dispatch.release()
    }
  }

  private report(file: string, offset: number, droppedBytes: number): void {
    this.recoveryReports.push({ file, offset, droppedBytes })
    this.log.warn({ file, offset, droppedBytes }, 'delay store: torn or corrupt tail truncated')
  }

  /** The bucket starting at `start`, created when missing. */
  private bucket(start: number, size = 0, live = true): Bucket {
    let b = this.buckets.get(start)
    if (b !== undefined) return b
    const slot = this.freeSlots.pop() ?? this.slots.length
    b = new Bucket(
      this.options.dataDir,
      start,
      this.bucketMs,
      slot,
      size,
      this.options.maxMessageBytes,
      this.options.io,
    )
    this.slots[slot] = b
    this.buckets.set(start, b)
    if (live && start <= this.clock.now() + this.options.loadAheadMs) {
      // A new bucket already in the load window: nothing on disk to load, appends go to the wheel.
      b.state = 'loaded'
    } else {
      insertSorted(this.unloaded, start)
    }
    return b
  }

  bucketStart(t: number): number {
    return Math.floor(t / this.bucketMs) * this.bucketMs
  }

  /** Files a durable message-log record into its bucket (and the wheel when the bucket is loaded). */
  private file(bytes: Buffer, msgOffset: number, replay: boolean): void {
    const end = msgOffset + bytes.length
    if (end > this.filedOffset) this.filedOffset = end
    const scheduleAt = recordScheduleAt(bytes)
    const b = this.bucket(this.bucketStart(scheduleAt))
    if (replay && msgOffset <= b.maxMsgOffset) return
    const { offset, length } = b.schedule.append(bytes, msgOffset)
    if (b.firstMsgOffset < 0) b.firstMsgOffset = msgOffset
    b.total++
    b.maxMsgOffset = msgOffset
    this.markDirty(b)
    const [s, e] = recordIdRange(bytes, 0)
    this.ids.add(crc32cRange(bytes, s, e))
    if (b.state !== 'disk') this.wheel.add(scheduleAt, offset, b.slot, length)
    this.filedSinceFlush += length
    if (this.filedSinceFlush >= BUFFERED_FRAME_BYTES) {
      // Every bucket holding buffered frames is dirty (marked at its append, until its checkpoint sync).
      for (const d of this.dirty) d.schedule.flush()
      this.filedSinceFlush = 0
    }
  }

  private markDirty(b: Bucket): void {
    if (!b.dirty) {
      b.dirty = true
      this.dirty.add(b)
    }
  }

  /**
   * Checks and stores delayed messages; resolves with one result per item (undefined = stored).
   * Errors: the item's own decode error; QMQ_ERR_NOT_DELAYED without a schedule time;
   * QMQ_ERR_SCHEDULE_INVALID for a negative time; QMQ_ERR_DELAY_TOO_FAR beyond now + horizonMs;
   * store errors (QMQ_ERR_DISK_FULL, QMQ_ERR_STORE_IO, retriable) when the write fails.
   * `end`: the message-log offset just past the last of these records stored (0: none), what a `sync`
   * SEND waits for a slave to hold. A record whose (subject, id) was stored within the dedupe window
   * is not written again: its result is undefined (stored), `duplicate[i]` is true, and `end` covers
   * the first copy. `refusedEnd` (0: none): past the refusal markers of records refused after their
   * write (message-log.ts), what a `sync` SEND also waits for before answering the refusals.
   */
  async accept(
    items: readonly AcceptItem[],
  ): Promise<{ results: (QmqError | undefined)[]; end: number; duplicate: boolean[]; refusedEnd: number }> {
    const now = this.clock.now()
    const limit = now + this.options.horizonMs
    let end = 0
    let refusedEnd = 0
    const duplicate = items.map(() => false)
    const dedupe = this.dedupe.enabled ? this.dedupe : undefined
    const results = await Promise.all(
      items.map(async (item, i): Promise<QmqError | undefined> => {
        if (this.closed) return new QmqError('QMQ_ERR_SHUTTING_DOWN', 'delay server is closing')
        if (item.error) return item.error
        const h = item.header
        if (h === undefined) return new QmqError('QMQ_ERR_RECORD_MALFORMED', 'record has no readable header')
        if ((h.flags & FLAG_DELAYED) === 0) {
          return new QmqError(
            'QMQ_ERR_NOT_DELAYED',
            `message ${h.id} has no schedule time (DELAYED flag unset)`,
          )
        }
        try {
          // As the broker checks it (src/broker/server/handlers.ts): a subject it would refuse is
          // refused now, not when due. (Record size: decodeSendRequest checks maxMessageBytes.)
          validateSubject(h.subject)
        } catch (err) {
          return err instanceof QmqError ? err : new QmqError('QMQ_ERR_SUBJECT_INVALID', String(err))
        }
        if (!Number.isSafeInteger(h.scheduleAt) || h.scheduleAt < 0) {
          return new QmqError(
            'QMQ_ERR_SCHEDULE_INVALID',
            `schedule time ${h.scheduleAt} of message ${h.id} is negative`,
            {
              details: { scheduleAt: h.scheduleAt },
            },
          )
        }
        if (h.scheduleAt > limit) {
          return new QmqError(
            'QMQ_ERR_DELAY_TOO_FAR',
            `schedule time ${new Date(h.scheduleAt).toISOString()} of message ${h.id} is beyond the horizon ${new Date(limit).toISOString()} (now + ${this.options.horizonMs} ms)`,
            {
              details: { scheduleAt: h.scheduleAt, horizonMs: this.options.horizonMs, latestAllowed: limit },
            },
          )
        }
        // The end of the refusal marker naming this record, when refused after its write (0: none).
        let markerEnd = 0
        try {
          let entry = -1
          if (dedupe !== undefined) {
            let first = dedupe.check(item.bytes, now)
            // A copy in flight: once the batches holding the writes queued before this check are done
            // (refusal markers included), it was stored (a duplicate) or discarded (then this one
            // enters the window and is written). A copy added after that wait (another request's,
            // itself found discarded) means one more wait; each one lets the event loop run, so a
            // waiter never spins while the write it waits for cannot make progress.
            while (first === DedupeIndex.PENDING) {
              await this.messageLog.settled()
              await new Promise<void>((r) => setImmediate(r))
              first = dedupe.check(item.bytes, this.clock.now())
              if (first === DedupeIndex.PENDING && this.messageLog.idle)
                throw new QmqError('QMQ_ERR_INTERNAL', 'dedupe entry pending with no write under way')
            }
            if (first >= 0) {
              duplicate[i] = true
              end = Math.max(end, first)
              return undefined
            }
            entry = dedupe.added
          }
          // No await between the check and the append: the pending entry is settled or discarded
          // through the message log's callbacks (onDurable, onFailed).
          const at = await this.messageLog.append(item.bytes, entry, (e) => {
            markerEnd = e
          })
          end = Math.max(end, at.end)
          return undefined
        } catch (err) {
          // Refused after the write: the refusal marker naming it must reach a slave before the
          // answer (one promoted without it would schedule the record). Only its own marker: a write
          // that failed (nothing of it stored) waits for nothing and is answered its own error, not
          // held on the replication of a marker some earlier refusal wrote.
          if (markerEnd > 0) refusedEnd = Math.max(refusedEnd, markerEnd)
          return err instanceof QmqError ? err : fsError(err, 'delay message log append')
        }
      }),
    )
    return { results, end, duplicate, refusedEnd }
  }

  /**
   * Cancels pending messages by id. Answers per id whether it was pending (as far as the id-hash set
   * tells: a false "true" has probability ~pending/2^32); a tombstone is recorded for every pending
   * one, and a message with a tombstone is never dispatched from now on. Resolves once the tombstones
   * are durable (group commit with other cancels, fdatasync off the event loop).
   */
  async cancel(ids: readonly string[]): Promise<boolean[]> {
    if (this.closed) throw new QmqError('QMQ_ERR_SHUTTING_DOWN', 'delay server is closing')
    const out: boolean[] = []
    const record: string[] = []
    for (const id of ids) {
      const pending = !this.cancels.has(id) && this.ids.has(crc32c(Buffer.from(id, 'utf8')))
      out.push(pending)
      if (pending) record.push(id)
    }
    try {
      await this.cancels.add(record, this.clock.now())
    } catch (err) {
      throw fsError(err, 'cancel log append')
    }
    return out
  }

  /** Tombstones held and the cancel log's size (tests, metrics). */
  cancelStats(): { tombstones: number; fileBytes: number } {
    return { tombstones: this.cancels.live, fileBytes: this.cancels.fileBytes }
  }

  /** Waits for queued cancel-log writes and compactions (tests). */
  cancelsSettled(): Promise<void> {
    return this.cancels.settled()
  }

  /** Live tombstones, id -> cancelled at (a slave's first copy of them). */
  cancelTombstones(): ReadonlyMap<string, number> {
    return this.cancels.tombstones
  }

  /** The message log's segmented log (replication), once open. */
  get messageSegmentLog(): SegmentLog | undefined {
    return this.messageLog.segmentLog
  }

  isCancelled(id: string): boolean {
    return this.cancels.has(id)
  }

  /** Fires due wheel entries: (due, schedule offset, bucket slot, frame length). */
  advance(now: number, onDue: DueCallback, limit?: number): number {
    return this.wheel.advance(now, onDue, limit)
  }

  /** Reads frames [offset, offset + length) of a bucket's schedule log (contiguous frames at once). */
  readFrames(slot: number, offset: number, length: number): Buffer {
    const b = this.slots[slot]
    if (b === undefined) throw new QmqError('QMQ_ERR_INTERNAL', `no bucket in slot ${slot}`)
    return b.schedule.read(offset, length)
  }

  /** A frame was delivered (broker ack) or skipped as cancelled: never send it again. */
  markDelivered(slot: number, offset: number, idHash: number): void {
    const b = this.slots[slot]
    if (b === undefined) return
    b.dispatch.append(offset)
    b.done++
    this.ids.delete(idHash)
    this.markDirty(b)
  }

  /**
   * A due frame a broker refused for good (a non-retriable status): parked as a dead letter of the
   * delay group, and never sent again unless redriven.
   */
  park(slot: number, offset: number, idHash: number, record: Buffer, err: QmqError): void {
    this.deadLetters.park(record, err, this.clock.now())
    this.markDelivered(slot, offset, idHash)
  }

  /** Dead letters after `afterSeq` with their records (oldest first). */
  listDeadLetters(limit: number, afterSeq = -1): (DeadLetter & { record: Buffer })[] {
    return this.deadLetters.list(limit, afterSeq).map((d) => ({ ...d, record: this.deadLetters.record(d) }))
  }

  /**
   * Schedules dead letters again (all, or those with the given sequences): each record goes back into
   * the message log as it is, its time has passed, so it is due at once. Resolves with how many, and
   * the message-log offset just past the last record written (0: none; what `sync` waits for).
   */
  async redriveDeadLetters(sequences?: readonly number[]): Promise<{ count: number; end: number }> {
    if (this.closed) throw new QmqError('QMQ_ERR_SHUTTING_DOWN', 'delay server is closing')
    const chosen = (
      sequences === undefined
        ? this.deadLetters.list(Number.POSITIVE_INFINITY)
        : sequences.map((s) => this.deadLetters.get(s)).filter((d) => d !== undefined)
    ).filter((d) => !this.redriving.has(d.sequence)) // a concurrent redrive has it already
    for (const d of chosen) this.redriving.add(d.sequence)
    let end = 0
    const done = await Promise.all(
      chosen.map(async (d) => {
        try {
          const at = await this.messageLog.append(this.deadLetters.record(d))
          end = Math.max(end, at.end)
          return this.deadLetters.remove(d.sequence, this.clock.now())
        } finally {
          this.redriving.delete(d.sequence)
        }
      }),
    )
    return { count: done.filter(Boolean).length, end }
  }

  /** A frame was skipped because its message was cancelled: never send it. */
  markCancelled(slot: number, offset: number, idHash: number, record: Buffer): void {
    const b = this.slots[slot]
    this.markDelivered(slot, offset, idHash)
    if (b === undefined) return
    const [s, e] = recordIdRange(record, 0)
    let spent = this.spentCancels.get(b.start)
    if (spent === undefined) {
      spent = []
      this.spentCancels.set(b.start, spent)
    }
    spent.push(record.toString('utf8', s, e))
  }

  /** Loads every bucket that starts within the load window (awaits the loads it starts). */
  async loadDue(): Promise<void> {
    const horizon = this.clock.now() + this.options.loadAheadMs
    const loads: Promise<void>[] = []
    while (this.unloaded.length > 0 && (this.unloaded[0] as number) <= horizon) {
      const start = this.unloaded.shift() as number
      const b = this.buckets.get(start)
      if (b === undefined || b.state !== 'disk') continue
      loads.push(this.load(b))
    }
    await Promise.all(loads)
  }

  private async load(b: Bucket): Promise<void> {
    const t0 = performance.now()
    b.state = 'loading'
    const snapshot = b.schedule.size
    const framesBelow = b.total // frames appended while loading are counted on top
    const dispatched = await b.dispatch.readAll() // its damage was reported by the start scan
    let d = 0
    let frames = 0
    const res = await b.schedule.scan(0, snapshot, (f) => {
      while (d < dispatched.length && (dispatched[d] as number) < f.offset) d++
      if (d < dispatched.length && dispatched[d] === f.offset) return
      const [s, e] = recordIdRange(f.frame, FRAME_HEADER_BYTES)
      if (this.cancels.tombstones.size > 0 && this.cancels.has(f.frame.toString('utf8', s, e))) {
        this.markCancelled(b.slot, f.offset, crc32cRange(f.frame, s, e), f.frame.subarray(FRAME_HEADER_BYTES))
        return
      }
      this.wheel.add(frameScheduleAt(f.frame), f.offset, b.slot, f.length)
      frames++
    })
    if (res.count < framesBelow) {
      // Damaged after the start scan (bit rot): those frames cannot be sent any more.
      for (const d of res.damaged) this.report(b.schedule.file, d.offset, d.bytes)
      b.total -= framesBelow - res.count
    }
    if (this.closed) return
    b.state = 'loaded'
    b.loadMs = performance.now() - t0
    this.onLoaded(b.start, frames, b.loadMs)
  }

  /**
   * Syncs dirty schedule and dispatch logs (fdatasync in parallel, off the event loop), records the
   * replay checkpoint, deletes message-log segments below it and buckets that are finished.
   * Runs one at a time: a call while one runs waits for it and returns.
   */
  checkpoint(): Promise<void> {
    this.checkpointRun ??= this.runCheckpoint().finally(() => {
      this.checkpointRun = undefined
    })
    return this.checkpointRun
  }

  private async runCheckpoint(): Promise<void> {
    const cp = this.filedOffset
    // Captured now: these sizes are what the syncs below make durable (appends go on meanwhile).
    const manifest: ReplicaManifest = {
      checkpoint: cp,
      deadLetterBytes: this.deadLetters.size,
      buckets: [...this.buckets.values()].map((b) => [
        b.start,
        b.firstMsgOffset,
        b.schedule.size,
        b.dispatch.size,
      ]),
    }
    // Dead letters first: a parked frame's dispatch entry is never durable without its dead letter.
    await this.deadLetters.sync()
    const dirty = [...this.dirty]
    this.dirty.clear()
    for (const b of dirty) b.dirty = false
    try {
      await Promise.all(dirty.map((b) => Promise.all([b.schedule.sync(), b.dispatch.sync()])))
    } catch (err) {
      for (const b of dirty) this.markDirty(b)
      throw fsError(err, 'delay checkpoint sync')
    }
    for (const b of dirty) {
      // File descriptors are kept for live buckets only.
      if (b.state === 'disk' && !b.dirty) {
        b.schedule.release()
        b.dispatch.release()
      }
    }
    if (cp !== this.checkpointOffset) {
      // Off the event loop: a synchronous fsync here stalled dispatch (and every timer) at each checkpoint.
      await writeFileAtomic(
        path.join(this.options.dataDir, CHECKPOINT_FILE),
        JSON.stringify({ messageLogOffset: cp }),
      )
      this.checkpointOffset = cp
    }
    this.deleteMessageSegments()
    this.replicaManifest = manifest
    const now = this.clock.now()
    for (const b of this.buckets.values()) {
      if (b.state === 'loaded' && b.pending === 0 && b.end <= now) this.dropBucket(b)
    }
  }

  /** Message-log segments below the checkpoint go, except those that rebuild the dedupe window. */
  private deleteMessageSegments(): void {
    const log = this.messageLog.segmentLog
    if (log === undefined) return
    const keep = this.dedupe.keepFrom(log.segments(), log.endOffset)
    this.messageLog.deleteBefore(Math.min(this.checkpointOffset, keep))
  }

  private dropBucket(b: Bucket): void {
    // Its cancelled frames are gone for good: their tombstones can go once no copy is pending.
    for (const id of this.spentCancels.get(b.start) ?? []) {
      if (!this.ids.has(crc32c(Buffer.from(id, 'utf8')))) this.cancels.release(id)
    }
    this.spentCancels.delete(b.start)
    this.dirty.delete(b)
    b.schedule.remove()
    b.dispatch.remove()
    this.buckets.delete(b.start)
    this.slots[b.slot] = undefined
    this.freeSlots.push(b.slot)
  }

  /** Pending messages per bucket start (metrics). */
  pendingByBucket(): [number, number][] {
    const out: [number, number][] = []
    for (const b of this.buckets.values()) out.push([b.start, b.pending])
    return out
  }

  /** Set once the message log failed closed (SENDs refused until restarted); /health answers 503. */
  failure(): QmqError | undefined {
    return this.messageLog.failure
  }

  stats(): StoreStats {
    let pending = 0
    for (const b of this.buckets.values()) pending += b.pending
    return {
      buckets: this.buckets.size,
      pending,
      wheelSize: this.wheel.size,
      wheelBytes: this.wheel.memoryBytes,
      idSetBytes: this.ids.memoryBytes,
    }
  }

  async close(): Promise<void> {
    if (this.closed) return
    await this.messageLog.close()
    this.closed = true
    await this.checkpoint() // may be one that started before the last appends
    await this.checkpoint()
    for (const b of this.buckets.values()) {
      await b.schedule.close()
      await b.dispatch.close()
    }
    await this.cancels.close()
    await this.deadLetters.close()
  }
}

function insertSorted(arr: number[], v: number): void {
  let lo = 0
  let hi = arr.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if ((arr[mid] as number) < v) lo = mid + 1
    else hi = mid
  }
  arr.splice(lo, 0, v)
}
