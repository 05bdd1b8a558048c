import { MIN_RECORD_BYTES, readRecordHeader } from '../../common/record'
import { type ConsumeEntry, type ConsumeLog, decodeEntry, ENTRY_BYTES, writeEntry } from './consume-log'
import { readI64 } from './i64'
import { checkFrame, FRAME_BYTES, type MessageLog, readFrame } from './message-log'

/**
 * Recovery's check of a consume log against the message log (what it trusts from the checkpoint).
 *
 * Cost: one sequential read of the entries (24 bytes each, no message-log read) with a few integer
 * comparisons per entry; the message log is read only for suspect entries and damaged ranges. The
 * pull path is not involved. Per entry, below `upTo` (entries after it were just rebuilt by replay):
 * - a hole must be exactly (-1, 0, 0, 0);
 * - any other entry must be plausible on its own: offset >= FRAME_BYTES, size within
 *   [MIN_RECORD_BYTES, maxMessageBytes], offset + size within the log; else it is damaged;
 * - one whose record lies in a damaged message-log range (`lost`) becomes a hole (the record is gone);
 * - consecutive entries must be in log order (a subject's records are appended in sequence order:
 *   next offset >= previous offset + size + FRAME_BYTES) with storedAt not going back. When two break
 *   that, both are suspects: each is checked against the frame before its record (frame checksum,
 *   length, and sequence, storedAt and tagMask equal to the entry's); one that does not match is
 *   damaged. (storedAt can go back with the wall clock: that only costs a frame read.)
 * Damaged entries are rebuilt from the message log: the records between the nearest good entries
 * around a run of damaged ones are scanned (frame checks, resynchronising over damage) for this
 * subject's sequences; a sequence not found there becomes a hole. Entries are rewritten in place.
 * Not detected: damage that leaves an entry plausible and in order (e.g. a changed tagMask, or an
 * offset moved within the gap before the next entry); such a record fails its checks when read.
 */
export interface LostRange {
  /** Logical message-log offsets [from, to). */
  from: number
  to: number
}

export interface ConsumeCheckResult {
  /** Runs of entries rebuilt from the message log; `holes` of them had no record left. */
  repaired: { first: number; last: number; holes: number }[]
  /** Sequences whose record is gone with a damaged message-log range or was not found (now holes). */
  lost: { first: number; last: number }[]
}

/** Damaged runs closer than this are rebuilt with one scan (the good entries between are rewritten as they are). */
const MERGE_GAP_ENTRIES = 64
const READ_ENTRIES = 64 * 1024

function isHole(e: ConsumeEntry): boolean {
  return e.offset === -1 && e.size === 0 && e.storedAt === 0 && e.tagMask === 0
}

export async function checkConsumeLog(
  mlog: MessageLog,
  consume: ConsumeLog,
  upTo: number,
  lost: readonly LostRange[],
): Promise<ConsumeCheckResult> {
  const result: ConsumeCheckResult = { repaired: [], lost: [] }
  const logEnd = mlog.log.endOffset
  const maxSize = mlog.maxMessageBytes
  const damaged = new Set<number>()
  const gone: number[] = []
  const suspects = new Map<number, ConsumeEntry>()
  // The previous plausible entry (fields kept in locals: no object per entry on this loop).
  let prevSeq = -1
  let prevEnd = -1
  let prevStoredAt = Number.NEGATIVE_INFINITY
  let prevBuf: Buffer | undefined
  let prevPos = 0
  let seq = consume.startSeq
  const end = Math.min(upTo, consume.nextSeq)
  while (seq < end) {
    const { seq: first, buf } = await consume.readRaw(seq, Math.min(READ_ENTRIES, end - seq))
    if (buf.length === 0) break
    for (let o = 0, q = first; o < buf.length; o += ENTRY_BYTES, q++) {
      const offset = readI64(buf, o)
      const size = buf.readUInt32BE(o + 8)
      const storedAt = readI64(buf, o + 12)
      if (offset === -1 && size === 0 && storedAt === 0 && buf.readUInt32BE(o + 20) === 0) continue // hole
      if (offset < FRAME_BYTES || size < MIN_RECORD_BYTES || size > maxSize || offset + size > logEnd) {
        damaged.add(q)
        continue
      }
      if (lost.length > 0 && lost.some((r) => offset + size > r.from && offset - FRAME_BYTES < r.to)) {
        gone.push(q)
        continue
      }
      if (prevBuf !== undefined && (offset - FRAME_BYTES < prevEnd || storedAt < prevStoredAt)) {
        suspects.set(prevSeq, decodeEntry(prevBuf, prevPos, prevSeq))
        suspects.set(q, decodeEntry(buf, o, q))
      }
      prevSeq = q
      prevEnd = offset + size
      prevStoredAt = storedAt
      prevBuf = buf
      prevPos = o
    }
    seq = first + buf.length / ENTRY_BYTES
  }
  for (const e of suspects.values()) if (!(await frameMatches(mlog, e))) damaged.add(e.seq)

  // Entries whose record went with a damaged range: holes.
  for (const [a, b] of runs(gone, 1)) {
    await consume.rewrite(a, holes(b - a + 1))
    result.lost.push({ first: a, last: b })
  }
  // Damaged entries: rebuilt from the message log.
  const bad = (q: number) => damaged.has(q)
  for (const [a, b] of runs(
    [...damaged].sort((x, y) => x - y),
    MERGE_GAP_ENTRIES,
  )) {
    const before = await nearestGood(consume, a - 1, -1, bad)
    const after = await nearestGood(consume, b + 1, 1, bad)
    const lo = Math.max(before ? before.offset + before.size : 0, mlog.log.startOffset)
    const hi = after ? after.offset - FRAME_BYTES : logEnd
    // A run wholly before the log's start had its records deleted by retention: holes, not losses.
    const retained = hi > mlog.log.startOffset
    const found = new Map<number, { offset: number; size: number; storedAt: number; tagMask: number }>()
    if (lo < hi) {
      const check = (buf: Buffer, pos: number, e: number) => checkFrame(buf, pos, e, maxSize, false)
      await mlog.log.scan(
        lo,
        hi,
        check,
        (buf, pos, length, offset) => {
          const f = readFrame(buf, pos)
          if (f.seq < a || f.seq > b || found.has(f.seq)) return
          try {
            const h = readRecordHeader(buf, pos + FRAME_BYTES, { verify: false, end: pos + length })
            if (h.subject !== consume.subject) return
          } catch {
            return
          }
          found.set(f.seq, {
            offset: offset + FRAME_BYTES,
            size: length - FRAME_BYTES,
            storedAt: f.storedAt,
            tagMask: f.tagMask,
          })
        },
        { resync: true },
      )
    }
    const out = holes(b - a + 1)
    let missing = 0
    for (let q = a; q <= b; q++) {
      const f = found.get(q)
      if (f) writeEntry(out, (q - a) * ENTRY_BYTES, f.offset, f.size, f.storedAt, f.tagMask)
      else missing++
    }
    // Entries merged into the run that were good and whose record the scan did not meet (deleted by
    // retention: below the log start) stay as they were.
    if (missing > 0) {
      const old = await readEntries(consume, a, b - a + 1)
      for (let q = a; q <= b; q++) {
        if (found.has(q) || bad(q)) continue
        old.copy(out, (q - a) * ENTRY_BYTES, (q - a) * ENTRY_BYTES, (q - a + 1) * ENTRY_BYTES)
        missing--
      }
    }
    await consume.rewrite(a, out)
    result.repaired.push({ first: a, last: b, holes: missing })
    for (let q = a; q <= b && retained; q++) {
      if (found.has(q) || !bad(q)) continue
      const last = result.lost[result.lost.length - 1]
      if (last && last.last === q - 1) last.last = q
      else result.lost.push({ first: q, last: q })
    }
  }
  result.lost.sort((x, y) => x.first - y.first)
  return result
}

/** The frame before the entry's record matches the entry (checksum, length, sequence, time, tags). */
async function frameMatches(mlog: MessageLog, e: ConsumeEntry): Promise<boolean> {
  // Below the log start the record is gone (retention): nothing to compare, and nothing to serve.
  if (e.offset - FRAME_BYTES < mlog.log.startOffset) return true
  let buf: Buffer
  try {
    buf = await mlog.log.read(e.offset - FRAME_BYTES, FRAME_BYTES)
  } catch {
    return false
  }
  if (checkFrame(buf, 0, buf.length, mlog.maxMessageBytes, false).kind === 'corrupt') return false
  if (buf.length < FRAME_BYTES || buf.readUInt32BE(0) !== FRAME_BYTES + e.size) return false
  const f = readFrame(buf, 0)
  return f.seq === e.seq && f.storedAt === e.storedAt && f.tagMask === e.tagMask >>> 0
}

/** Raw entries [seq, seq + count) (reads may stop at a segment end: loops). */
async function readEntries(consume: ConsumeLog, seq: number, count: number): Promise<Buffer> {
  const out = holes(count)
  let q = seq
  while (q < seq + count) {
    const { seq: first, buf } = await consume.readRaw(q, seq + count - q)
    if (buf.length === 0) break
    buf.copy(out, (first - seq) * ENTRY_BYTES)
    q = first + buf.length / ENTRY_BYTES
  }
  return out
}

/** The nearest entry from `seq` in direction `step` that is neither damaged nor a hole. */
async function nearestGood(
  consume: ConsumeLog,
  seq: number,
  step: 1 | -1,
  bad: (seq: number) => boolean,
): Promise<ConsumeEntry | undefined> {
  for (let q = seq; q >= consume.startSeq && q < consume.nextSeq; q += step) {
    if (bad(q)) continue
    const e = await consume.entry(q)
    if (e && !isHole(e)) return e
  }
  return undefined
}

/** Sorted sequences grouped into [first, last] runs, joining runs less than `gap` apart. */
function runs(seqs: readonly number[], gap: number): [number, number][] {
  const out: [number, number][] = []
  for (const q of seqs) {
    const last = out[out.length - 1]
    if (last && q - last[1] <= gap) last[1] = q
    else out.push([q, q])
  }
  return out
}

function holes(count: number): Buffer {
  const buf = Buffer.alloc(count * ENTRY_BYTES)
  for (let o = 0; o < buf.length; o += ENTRY_BYTES) writeEntry(buf, o, -1, 0, 0, 0)
  return buf
}
