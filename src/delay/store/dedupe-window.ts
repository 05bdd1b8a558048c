import fs from 'node:fs'
import path from 'node:path'
import { DedupeIndex } from '../../broker/store/dedupe'
import type { SegmentInfo } from '../../broker/store/segment-log'
import { isControlRecord, readRefusals } from './message-log'

/**
 * The delay server's dedupe window: a SEND of a message id (with its subject) already stored within
 * `windowMs` is answered as stored and not written again, as the broker's (docs/storage.md, "Dedupe").
 * The index is the broker's DedupeIndex (same key: the record's (subject, id) bytes, same bounds:
 * `maxEntries`, arena), its "sequence" here the message-log offset just past the first copy's record
 * (what a `sync` answer to the duplicate waits for a slave to hold, as the first copy's did).
 *
 * An id enters the index when its SEND is checked, as a PENDING entry (DedupeIndex), settled with its
 * end once the record is durable (`settle`, from the message log's onDurable) or discarded when its
 * write failed or the record was refused (`discard`). A second SEND of it meanwhile finds the entry
 * pending: it waits for the writes queued before it and checks again (a duplicate if the first copy
 * was stored, else it is written itself). So a failed write never leaves an id behind that was not
 * stored, and the in-flight state costs nothing but the entry's sequence field.
 *
 * Rebuilt on open from the tail of the message log, like the broker's: the segments written within the
 * window (segment mtimes, wall clock), cut to at most `rebuildMaxBytes` from the end (whole segments).
 * A delay record has no storage time: a record's time is estimated as its createdAt clamped into the
 * interval its segment was written in (after the previous segment's mtime, at or before its own). The
 * store keeps those segments (`keepFrom`) even when the checkpoint is past them, and a slave keeps them
 * in its copy, so a promoted slave's window holds what was replicated.
 */
export interface DelayDedupeOptions {
  windowMs: number
  maxEntries: number
  rebuildMaxBytes: number
}

/** createdAt (record offset 12, i64 ms). */
function createdAt(rec: Buffer, pos: number): number {
  return rec.readInt32BE(pos + 12) * 0x1_0000_0000 + rec.readUInt32BE(pos + 16)
}

export class DelayDedupe {
  readonly index: DedupeIndex
  readonly options: DelayDedupeOptions
  /** Entry number of the pending entry the last `check` that returned -1 added. */
  added = -1
  // Rebuild state (open): segments as they were before recovery, the scan's segment, the last time.
  private segs: SegmentInfo[] = []
  private segAt = 0
  private from = Number.POSITIVE_INFINITY
  private short = false
  private lastTime = Number.NEGATIVE_INFINITY
  private limit = 0
  /** Store clock minus wall clock at the rebuild (0 in production; tests run a manual clock). */
  private skew = 0

  constructor(options: DelayDedupeOptions) {
    this.options = options
    this.index = new DedupeIndex(options.windowMs, options.maxEntries)
  }

  get enabled(): boolean {
    return this.index.enabled
  }

  /**
   * The end of the stored copy of `rec`'s (subject, id) within the window; DedupeIndex.PENDING: a copy
   * is being written (wait for the writes queued so far, then check again); -1: none, `rec` entered
   * the window pending as entry `added`: the caller writes it at once (before yielding) and has it
   * settled or discarded. `rec` must have passed record verification (its key lengths lie within it).
   */
  check(rec: Buffer, now: number): number {
    this.index.expire(now)
    const mark = this.index.mark
    const found = this.index.findOrAdd(rec, 0, DedupeIndex.PENDING, now)
    if (found === -1) this.added = mark
    return found
  }

  /** The pending entry `entry` (from `check`) is durable, its record ending at `end`. */
  settle(entry: number, end: number): void {
    this.index.settle(entry, end)
  }

  /** The pending entry `entry` was not stored (write failed, or refused): no SEND finds it. */
  discard(entry: number): void {
    this.index.discard(entry)
  }

  /** A durable record that no `check` added (a redriven dead letter): remembered from `now`. */
  stored(rec: Buffer, end: number, now: number): void {
    if (!this.enabled) return
    this.index.expire(now)
    this.index.findOrAdd(rec, 0, end, now)
  }

  /** Seconds every id stored is remembered now (the window, unless the cap or the rebuild cut it). */
  windowSeconds(now: number): number {
    return this.index.effectiveWindowMs(now) / 1000
  }

  /** Message-log offset below which segments may be deleted (the checkpoint permitting). */
  keepFrom(segs: readonly SegmentTimes[], end: number): number {
    return dedupeRebuildStart(this.options, segs, end, Date.now()).from
  }

  /** Starts the rebuild on open: returns the offset to scan from (+Infinity: nothing to scan). */
  beginRebuild(segs: SegmentInfo[], end: number, now: number): number {
    this.segs = segs
    this.segAt = 0
    const wallNow = Date.now()
    const { from, short } = dedupeRebuildStart(this.options, segs, end, wallNow)
    this.skew = now - wallNow
    this.from = from
    this.short = short
    this.limit = now - this.options.windowMs
    return from
  }

  /** A record met by the rebuild scan (in offset order): `buf[pos, pos + length)` at `offset`. */
  rebuildRecord(buf: Buffer, pos: number, length: number, offset: number): void {
    if (offset < this.from) return
    if (isControlRecord(buf, pos)) {
      // A refusal marker (message-log.ts): the records it names were refused, their ids not stored.
      readRefusals(buf, pos, length, (_offset, end, keyStart, keyEnd) =>
        this.index.forget(buf, keyStart, keyEnd, end),
      )
      return
    }
    const segs = this.segs
    while (this.segAt + 1 < segs.length && (segs[this.segAt + 1] as SegmentInfo).base <= offset) this.segAt++
    const seg = segs[this.segAt]
    const lo =
      this.segAt > 0 ? (segs[this.segAt - 1] as SegmentInfo).mtimeMs + this.skew : Number.NEGATIVE_INFINITY
    const hi = seg !== undefined && seg.mtimeMs > 0 ? seg.mtimeMs + this.skew : Number.POSITIVE_INFINITY
    // Entries must enter in time order (they leave from the oldest).
    const time = Math.max(this.lastTime, Math.min(hi, Math.max(lo, createdAt(buf, pos))))
    this.lastTime = time
    if (this.short) {
      // Ids stored before the first record scanned may be missing.
      this.index.forgetBefore(time)
      this.short = false
    }
    if (time < this.limit) return
    // The first copy wins (a later one was stored when the first had left the window).
    this.index.findOrAdd(buf, pos, offset + length, time)
  }

  /** Ends the rebuild (`now`: nothing was scanned while the window was cut short). */
  endRebuild(now: number): void {
    if (this.short) this.index.forgetBefore(now)
    this.short = false
    this.segs = []
  }
}

export type SegmentTimes = Pick<SegmentInfo, 'base' | 'size' | 'mtimeMs'>

/**
 * The first message-log offset the rebuild on open reads (+Infinity: none): the base of the first
 * segment written within the window (`wallNow`: segment mtimes are wall clock), whole segments
 * dropped from the front until at most rebuildMaxBytes remain (`short`: a segment written within the
 * window was dropped so). Segments before it are not needed.
 */
export function dedupeRebuildStart(
  o: DelayDedupeOptions,
  segs: readonly SegmentTimes[],
  end: number,
  wallNow: number,
): { from: number; short: boolean } {
  let short = false
  if (o.windowMs <= 0 || o.maxEntries <= 0) return { from: Number.POSITIVE_INFINITY, short }
  for (const seg of segs) {
    if (seg.mtimeMs < wallNow - o.windowMs) continue
    if (end - seg.base > o.rebuildMaxBytes) {
      if (seg.size > 0) short = true
      continue
    }
    return { from: seg.base, short }
  }
  return { from: Number.POSITIVE_INFINITY, short }
}

/**
 * Where a slave may cut its message-log copy (in `dir`) after adopting `checkpoint`: the store's rule
 * (DelayStore keeps the same segments), so a promoted slave rebuilds the window the master had.
 */
export function copyKeepFrom(o: DelayDedupeOptions, dir: string, checkpoint: number): number {
  const segs = segmentsOnDisk(dir)
  const last = segs[segs.length - 1]
  const end = last === undefined ? 0 : last.base + last.size
  return Math.min(checkpoint, dedupeRebuildStart(o, segs, end, Date.now()).from)
}

/** Message-log segments in `dir` as SegmentLog names them (a slave's copy, read from disk). */
export function segmentsOnDisk(dir: string): SegmentTimes[] {
  const out: SegmentTimes[] = []
  let names: string[]
  try {
    names = fs.readdirSync(dir)
  } catch {
    return out
  }
  for (const name of names) {
    const m = /^(\d{20})\.log$/.exec(name)
    if (m === null) continue
    try {
      const st = fs.statSync(path.join(dir, name))
      out.push({ base: Number(m[1]), size: st.size, mtimeMs: st.mtimeMs })
    } catch {
      // deleted meanwhile
    }
  }
  return out.sort((a, b) => a.base - b.base)
}
