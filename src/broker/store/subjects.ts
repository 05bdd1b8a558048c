import { readRecordHeader } from '../../common/record'
import { ConsumeLog, type ConsumeEntry, decodeEntry, ENTRY_BYTES } from './consume-log'
import type { FsIo } from './fs-io'
import type { MessageLog } from './message-log'
import type { ReadHold } from './read-pool'
import { maskMayMatch, tagBits, tagsMatch } from './tag-hash'

/** One subject: its consume log and the next sequence to assign (ahead of the log while a batch is in flight). */
export class SubjectState {
  readonly name: string
  readonly consume: ConsumeLog
  nextSeq: number
  /** First sequence whose message is still stored (retention moves it). */
  lowSeq: number

  constructor(name: string, consume: ConsumeLog) {
    this.name = name
    this.consume = consume
    this.nextSeq = consume.nextSeq
    this.lowSeq = consume.startSeq
  }
}

export interface SubjectsOptions {
  root: string
  entriesPerSegment: number
  cacheEntries: number
  io?: FsIo
}

export class Subjects {
  readonly map = new Map<string, SubjectState>()
  private readonly opts: SubjectsOptions

  constructor(opts: SubjectsOptions) {
    this.opts = opts
  }

  get(name: string): SubjectState | undefined {
    return this.map.get(name)
  }

  getOrCreate(name: string): SubjectState {
    let s = this.map.get(name)
    if (!s) {
      s = new SubjectState(
        name,
        new ConsumeLog({
          root: this.opts.root,
          subject: name,
          entriesPerSegment: this.opts.entriesPerSegment,
          cacheEntries: this.opts.cacheEntries,
          ...(this.opts.io ? { io: this.opts.io } : {}),
        }),
      )
      this.map.set(name, s)
    }
    return s
  }

  close(): void {
    for (const s of this.map.values()) s.consume.close()
  }
}

export interface Picked {
  seq: number
  record: Buffer
}

export interface ScanFilter {
  tags: readonly string[]
  tagsAll: boolean
}

/**
 * Reads a subject's messages from sequence `from` for a pull: consume-log entries first (memory or
 * positional reads), tag pre-check on the entry's mask, then the records (hot cache or coalesced
 * positional reads) and the exact tag check on the record header. Returns what matched and the
 * sequence after the last examined entry (non-matching and deleted messages are passed over).
 */
export async function scanNew(
  mlog: MessageLog,
  s: SubjectState,
  from: number,
  limits: { maxMessages: number; maxBytes: number; maxScan: number },
  filter: ScanFilter,
  hold?: ReadHold,
): Promise<{ picked: Picked[]; next: number }> {
  const picked: Picked[] = []
  let cursor = Math.max(from, s.lowSeq)
  const end = s.consume.nextSeq
  const bits = filter.tags.map(tagBits)
  const filtered = bits.length > 0
  let bytes = 0
  let scanned = 0
  while (
    cursor < end &&
    picked.length < limits.maxMessages &&
    bytes < limits.maxBytes &&
    scanned < limits.maxScan
  ) {
    const want = filtered
      ? Math.min(1024, end - cursor)
      : Math.min(limits.maxMessages - picked.length, end - cursor)
    const entries = await s.consume.read(cursor, Math.min(want, limits.maxScan - scanned))
    if (entries.length === 0) break
    // Candidates after the mask check, at most what is still wanted (+ slack for false positives),
    // in count and in bytes (the entry's size is its record's length): records read past the answer's
    // byte limit would only be dropped, and pooled read buffers stay held until the answer is written.
    const room = limits.maxMessages - picked.length + (filtered ? 8 : 0)
    const candidates: ConsumeEntry[] = []
    let candidateBytes = bytes
    for (const e of entries) {
      if (candidates.length >= room || candidateBytes >= limits.maxBytes) break
      if (e.size > 0 && maskMayMatch(e.tagMask, bits, filter.tagsAll)) {
        candidates.push(e)
        candidateBytes += e.size
      }
    }
    const records = await mlog.readMany(candidates, hold)
    let ci = 0
    let stop = false
    for (const e of entries) {
      const isCandidate = ci < candidates.length && candidates[ci] === e
      if (!isCandidate && e.size > 0 && maskMayMatch(e.tagMask, bits, filter.tagsAll)) break // not read yet
      scanned++
      cursor = e.seq + 1
      if (!isCandidate) continue
      const rec = records[ci++]
      if (!rec) continue // deleted by retention
      if (
        filtered &&
        !tagsMatch(readRecordHeader(rec, 0, { verify: false }).tags, filter.tags, filter.tagsAll)
      )
        continue
      picked.push({ seq: e.seq, record: rec })
      bytes += rec.length
      if (picked.length >= limits.maxMessages || bytes >= limits.maxBytes) {
        stop = true
        break
      }
    }
    if (stop) break
  }
  return { picked, next: cursor }
}

/** Widest run of consume-log entries readSeqs reads at once for sequences close together (24 KiB). */
const RUN_SPAN = 1024

/**
 * Records of given sequences (redeliveries, ordered messages made deliverable, dead letters);
 * undefined where the message is gone. Sequences close together are looked up with one consume-log
 * read per run (redeliveries come in bulk: a thousand heads of ordered keys after one ack) rather
 * than one per sequence.
 */
export async function readSeqs(
  mlog: MessageLog,
  s: SubjectState,
  seqs: readonly number[],
  hold?: ReadHold,
): Promise<(Buffer | undefined)[]> {
  const entries: ({ offset: number; size: number } | undefined)[] = new Array(seqs.length).fill(undefined)
  const order: number[] = []
  for (let i = 0; i < seqs.length; i++) if ((seqs[i] as number) >= s.lowSeq) order.push(i)
  order.sort((a, b) => (seqs[a] as number) - (seqs[b] as number))
  for (let k = 0; k < order.length; ) {
    const first = seqs[order[k] as number] as number
    let j = k
    while (j + 1 < order.length && (seqs[order[j + 1] as number] as number) - first < RUN_SPAN) j++
    const last = seqs[order[j] as number] as number
    // One read of the run; it may come back clipped (a segment or memory boundary): the sequences it
    // does not cover are read one by one.
    const run = j > k ? await s.consume.readRaw(first, last - first + 1) : undefined
    for (let m = k; m <= j; m++) {
      const i = order[m] as number
      const q = seqs[i] as number
      const at = run !== undefined ? (q - run.seq) * ENTRY_BYTES : -1
      const e =
        at >= 0 && run !== undefined && at + ENTRY_BYTES <= run.buf.length
          ? decodeEntry(run.buf, at, q)
          : await s.consume.entry(q)
      entries[i] = e && e.size > 0 ? e : undefined
    }
    k = j + 1
  }
  const present = entries.filter((e): e is { offset: number; size: number } => e !== undefined)
  const recs = await mlog.readMany(present, hold)
  const out: (Buffer | undefined)[] = []
  let k = 0
  for (const e of entries) out.push(e ? recs[k++] : undefined)
  return out
}
