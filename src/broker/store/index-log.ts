import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { crc32c, crc32cRange } from '../../common/crc32c'
import { writeFileAtomic } from '../../common/durable-file'
import { fsError } from '../../common/errors'
import type { Logger } from '../../common/logger'
import {
  FLAG_ORDER_KEY,
  findRecordPropertyAt,
  KEYS_PROPERTY,
  RECORD_FIXED_BYTES,
  splitKeys,
} from '../../common/record'
import { type FsIo, nodeFsIo } from './fs-io'
import { readI64 } from './i64'
import { type ScanResult, SegmentLog, segmentFileName } from './segment-log'

/**
 * The message index and trace log: what finds a message by id or business key, and what the broker
 * recorded of each message's life (deliveries, acks, nacks, lease expiries, dead letters, redrives).
 * One segmented log (segment-log.ts) of CRC-checked entries, appended as the store works:
 *
 *   indexlog/<base>.log    entries, in the order they happened
 *   indexrun/<base>.run    for every sealed segment (not the active one): its entries' hashes sorted,
 *                          so a lookup costs one fence search in memory and one or two positional reads
 *                          per segment; the active segment's hashes are held in memory (typed arrays)
 *
 * Entry layout (big-endian), written by `IndexLog.refEntry` (MESSAGE, KEY) and `IndexLog.addTrace`:
 *
 *   offset  size  field
 *   0       4     length         u32: whole entry
 *   4       4     crc            u32: CRC32C of bytes [8, length)
 *   8       1     kind           u8: 1 MESSAGE (key = message id), 2 KEY (key = business key),
 *                                    3 TRACE (key = subject + sequence)
 *   9       1     event          u8: TRACE: TraceEvent code; else 0
 *   10      2     deliveryCount  u16: TRACE: the delivery count it concerns (saturates); else 0
 *   12      4     h1             u32: CRC32C of the key bytes (see keyBytes)
 *   16      4     h2             u32: FNV-1a of the key bytes
 *   20      8     time           i64: ms since epoch (MESSAGE/KEY: storedAt; TRACE: when it happened)
 *   28      8     ref            i64: MESSAGE/KEY: message-log offset of the record; TRACE: sequence
 *   36      4     refSize        u32: MESSAGE/KEY: record bytes; TRACE: 0
 *   40      8     extra          i64: MESSAGE/KEY: sequence; TRACE: retryAt (nacked) or 0
 *   48            subject        str16 (u16 length + UTF-8): TRACE only ('' otherwise)
 *                 group          str16: TRACE: consumer group
 *                 consumer       str16: TRACE: consumer id (delay server: the message id)
 *
 * The delay server keeps TRACE entries only, keyed by message id (keyBytes(TRACE, id, -1)), with
 * sequence -1 and the message id in `consumer` (src/delay/trace.ts).
 *
 * Run file layout (derived data, rebuilt from its segment when missing or damaged):
 *
 *   0   4  magic 'QIR1'    4  4  count    8  4  fenceStep    12  4  CRC32C of the fence
 *   16     fence: ceil(count / fenceStep) x u32: h1 of entries 0, fenceStep, 2*fenceStep, ...
 *          entries: count x (u32 h1, u32 h2, u32 position in the segment), sorted by (h1, position)
 *
 * Invariants:
 * - Entries are written after the message log committed what they refer to, in message-log order:
 *   the MESSAGE entry with the largest `ref` tells how far the index covers the message log. Index
 *   writes are not synced on their own (a checkpoint syncs them); after a crash, `open` scans the
 *   message log from that point (`coveredEnd`) and indexes what is missing (the store does this).
 * - Hashes can collide: every lookup reads the entries and the caller compares the real key (the
 *   record's id, the property, the trace's subject and sequence). An entry may be present twice (a
 *   rebuild after a crash): callers dedupe by `ref`.
 * - Retention removes whole sealed segments written before the oldest retained message (`retain`);
 *   a run file goes with its segment. A lookup holds the runs it reads (`Run.refs`): a run removed
 *   under it is unlinked at once, its descriptor closed by the last lookup holding it (as SegmentLog
 *   does with its segments), so a lookup during retention finds the segment or cleanly does not.
 */
export const IndexKind = { MESSAGE: 1, KEY: 2, TRACE: 3 } as const
export type IndexKindValue = (typeof IndexKind)[keyof typeof IndexKind]

/** Trace event codes (entry `event`). Append-only. */
export const TraceEvent = {
  DELIVERED: 1,
  ACKED: 2,
  NACKED: 3,
  EXPIRED: 4,
  RELEASED: 5,
  DEAD: 6,
  REDRIVEN: 7,
  /** Delay server: stored until its schedule time (extra = scheduleAt). */
  SCHEDULED: 8,
  /** Delay server: sent to a broker group. */
  DISPATCHED: 9,
  /** Delay server: a broker refused it for good; parked as a dead letter of the delay group. */
  PARKED: 10,
} as const
export type TraceEventValue = (typeof TraceEvent)[keyof typeof TraceEvent]
export const TRACE_EVENT_NAMES: Record<number, string> = {
  1: 'delivered',
  2: 'acked',
  3: 'nacked',
  4: 'expired',
  5: 'released',
  6: 'dead',
  7: 'redriven',
  8: 'scheduled',
  9: 'dispatched',
  10: 'dead',
}

export const ENTRY_FIXED_BYTES = 48
/** A MESSAGE or KEY entry: the fixed part and three empty str16. */
const REF_ENTRY_BYTES = ENTRY_FIXED_BYTES + 6
const RUN_MAGIC = 0x51495231 // 'QIR1'
const RUN_HEADER_BYTES = 16
const RUN_ENTRY_BYTES = 12
const FENCE_STEP = 128
/** Largest entry: fixed part + three str16 of at most 64 KiB (never reached: names are short). */
const MAX_ENTRY_BYTES = ENTRY_FIXED_BYTES + 3 * (2 + 0xffff)
/** Entries are encoded into chunks of this size (a flush writes a few chunks, not one buffer per entry). */
const CHUNK_BYTES = 256 * 1024
export const DEFAULT_INDEX_SEGMENT_BYTES = 16 * 1024 * 1024 // 16 MiB (~200k entries held in memory)

export interface IndexEntry {
  kind: number
  event: number
  deliveryCount: number
  time: number
  ref: number
  refSize: number
  extra: number
  subject: string
  group: string
  consumer: string
  /** Logical offset of the entry in the index log. */
  offset: number
}

export interface TraceInput {
  /** Hashed with `sequence` for the lookup; default `subject` (the delay server: the message id). */
  key?: string
  event: TraceEventValue
  subject: string
  sequence: number
  group: string
  consumer: string
  deliveryCount: number
  time: number
  retryAt?: number
}

export function fnv1a(buf: Uint8Array, start = 0, end = buf.length, seed = FNV_OFFSET): number {
  let h = seed
  for (let i = start; i < end; i++) {
    h ^= buf[i] as number
    h = Math.imul(h, 0x01000193)
  }
  return h >>> 0
}

const FNV_OFFSET = 0x811c9dc5
/** KEY entries hash `k\u0000` + the key (keyBytes): the hashes of that prefix, continued over a key's bytes. */
const KEY_PREFIX = Buffer.from('k\u0000', 'latin1')
const KEY_PREFIX_CRC = crc32c(KEY_PREFIX)
const KEY_PREFIX_FNV = fnv1a(KEY_PREFIX)
const SPACE = 0x20 // KEY_SEPARATOR

/** Where keyInto encodes keys (no allocation per entry); a key longer than this takes a fresh buffer. */
let scratch = Buffer.allocUnsafe(4096)

/** Encodes keyBytes(KEY, key) into the scratch buffer; returns its length. */
function keyInto(key: string): number {
  const need = 3 * key.length + 2
  if (need > scratch.length) scratch = Buffer.allocUnsafe(need)
  scratch[0] = 0x6b // 'k'
  scratch[1] = 0
  return 2 + scratch.write(key, 2, 'utf8')
}

/** The bytes hashed for a key of each kind (message ids as they are, so records hash in place). */
export function keyBytes(kind: IndexKindValue, key: string, sequence = 0): Buffer {
  if (kind === IndexKind.MESSAGE) return Buffer.from(key, 'utf8')
  if (kind === IndexKind.KEY) return Buffer.from(`k\u0000${key}`, 'utf8')
  return Buffer.from(`t\u0000${key}\u0000${sequence}`, 'utf8')
}

/** A trace's key hashed up to its sequence, and its three str16 encoded (see IndexLog.addTrace). */
interface TraceKey {
  key: string
  subject: string
  group: string
  consumer: string
  /** CRC32C and FNV-1a of keyBytes(TRACE, key, ...) up to the sequence's digits. */
  crc: number
  fnv: number
  strs: Buffer
}

/** Where sequenceDigits writes. */
const digits = Buffer.alloc(32)

/** Writes String(sequence) into `digits` (latin1, as keyInto); returns its length. */
function sequenceDigits(sequence: number): number {
  if (!Number.isSafeInteger(sequence) || sequence < 0) return digits.write(String(sequence), 0, 'latin1')
  let n = 0
  let v = sequence
  do {
    digits[n++] = 0x30 + (v % 10)
    v = Math.floor(v / 10)
  } while (v > 0)
  for (let i = 0, j = n - 1; i < j; i++, j--) {
    const c = digits[i] as number
    digits[i] = digits[j] as number
    digits[j] = c
  }
  return n
}

function put32(b: Buffer, v: number, o: number): void {
  b[o] = v >>> 24
  b[o + 1] = v >>> 16
  b[o + 2] = v >>> 8
  b[o + 3] = v
}

function putI64(b: Buffer, v: number, o: number): void {
  const hi = Math.floor(v / 0x1_0000_0000)
  put32(b, hi | 0, o)
  put32(b, v - hi * 0x1_0000_0000, o + 4)
}

function putStr16(b: Buffer, s: string, p: number): number {
  if (s.length === 0) {
    b[p] = 0
    b[p + 1] = 0
    return p + 2
  }
  const n = b.write(s, p + 2, 'utf8')
  b[p] = n >>> 8
  b[p + 1] = n
  return p + 2 + n
}

/** Bytes an entry with these strings takes at most. */
function entryRoom(subject: string, group: string, consumer: string): number {
  return ENTRY_FIXED_BYTES + 6 + 3 * (subject.length + group.length + consumer.length)
}

function checkEntry(buf: Buffer, pos: number, end: number): ScanResult {
  if (end - pos < 8) return { kind: 'short' }
  const len = buf.readUInt32BE(pos)
  if (len < ENTRY_FIXED_BYTES + 6 || len > MAX_ENTRY_BYTES)
    return { kind: 'corrupt', reason: `bad length ${len}` }
  if (end - pos < len) return { kind: 'short' }
  if (buf.readUInt32BE(pos + 4) !== crc32cRange(buf, pos + 8, pos + len)) {
    return { kind: 'corrupt', reason: 'index entry CRC mismatch' }
  }
  return { kind: 'record', length: len }
}

function decodeEntry(buf: Buffer, pos: number, offset: number): IndexEntry {
  const strs: string[] = []
  let o = pos + ENTRY_FIXED_BYTES
  for (let i = 0; i < 3; i++) {
    const n = buf.readUInt16BE(o)
    strs.push(buf.toString('utf8', o + 2, o + 2 + n))
    o += 2 + n
  }
  return {
    kind: buf[pos + 8] as number,
    event: buf[pos + 9] as number,
    deliveryCount: buf.readUInt16BE(pos + 10),
    time: readI64(buf, pos + 20),
    ref: readI64(buf, pos + 28),
    refSize: buf.readUInt32BE(pos + 36),
    extra: readI64(buf, pos + 40),
    subject: strs[0] as string,
    group: strs[1] as string,
    consumer: strs[2] as string,
    offset,
  }
}

/** A sealed segment's sorted hashes (see the run file layout). */
interface Run {
  base: number
  file: string
  fd: number
  count: number
  fence: Uint32Array
  /** Lookups reading `fd` right now (see `lookup`). */
  refs: number
  /** Taken out of `runs` (retention, close): `fd` closes when `refs` drops to 0. */
  retired: boolean
}

/** Takes a run out of use: its file is removed now (when `unlink`), its descriptor closed now or by the last lookup holding it. */
function retireRun(run: Run, unlink: boolean): void {
  if (run.retired) return
  run.retired = true
  if (unlink) fs.rmSync(run.file, { force: true })
  if (run.refs === 0) closeQuietly(run.fd)
}

/** Drops a lookup's hold on a run; the last one of a retired run closes its descriptor. */
function releaseRun(run: Run): void {
  run.refs--
  if (run.retired && run.refs === 0) closeQuietly(run.fd)
}

/**
 * Growable parallel arrays of (h1, h2, offset): the active segment's entries, and the entries queued
 * for the next write (offset: where the entry starts in the queued bytes).
 */
class ActiveHashes {
  h1: Uint32Array
  h2: Uint32Array
  off: Float64Array
  n = 0

  constructor(capacity = 1024) {
    this.h1 = new Uint32Array(capacity)
    this.h2 = new Uint32Array(capacity)
    this.off = new Float64Array(capacity)
  }

  get capacity(): number {
    return this.h1.length
  }

  push(h1: number, h2: number, off: number): void {
    if (this.n === this.h1.length) this.grow(this.n + 1)
    this.h1[this.n] = h1
    this.h2[this.n] = h2
    this.off[this.n] = off
    this.n++
  }

  /** Appends every entry of `q` with `base` added to its offset. */
  append(q: ActiveHashes, base: number): void {
    const n = this.n
    if (n + q.n > this.h1.length) this.grow(n + q.n)
    this.h1.set(q.h1.subarray(0, q.n), n)
    this.h2.set(q.h2.subarray(0, q.n), n)
    const off = this.off
    const qoff = q.off
    for (let i = 0; i < q.n; i++) off[n + i] = (qoff[i] as number) + base
    this.n = n + q.n
  }

  private grow(need: number): void {
    let cap = this.h1.length * 2
    while (cap < need) cap *= 2
    const h1 = new Uint32Array(cap)
    const h2 = new Uint32Array(cap)
    const off = new Float64Array(cap)
    h1.set(this.h1.subarray(0, this.n))
    h2.set(this.h2.subarray(0, this.n))
    off.set(this.off.subarray(0, this.n))
    this.h1 = h1
    this.h2 = h2
    this.off = off
  }
}

/** The index's directories under a data dir (a slave drops them: replication/follower.ts). */
export function indexDirs(dataDir: string): { log: string; runs: string } {
  return { log: path.join(dataDir, 'indexlog'), runs: path.join(dataDir, 'indexrun') }
}

export interface IndexLogOptions {
  /** Parent directory: `indexlog/` and `indexrun/` are made in it. */
  dataDir: string
  segmentBytes: number
  io?: FsIo
  log: Logger
}

export class IndexLog {
  readonly log: SegmentLog
  private readonly runDir: string
  private readonly logger: Logger
  /** What run files are read through (the store's fault-injection seam; SegmentLog reads through it too). */
  private readonly io: FsIo
  private runs: Run[] = []
  /**
   * Sealed segments whose run is being written (see `seal`): their hashes stay searchable here until
   * the run is in `runs`; one whose write failed stays here (in memory) until the next open rebuilds it.
   */
  private sealing: { base: number; hashes: ActiveHashes }[] = []
  /** Run writes in flight (also of segments deleted meanwhile): `sealed()` waits for them. */
  private runWrites = new Set<Promise<void>>()
  private active = new ActiveHashes()
  /** Filled parts of earlier chunks, then the current chunk up to `chunkPos`: what the next write writes. */
  private pending: Buffer[] = []
  private chunk: Buffer = Buffer.allocUnsafe(CHUNK_BYTES)
  private chunkStart = 0
  private chunkPos = 0
  /** The queued entries' hashes; offsets relative to the first queued byte. */
  private queue = new ActiveHashes()
  /** The arrays of the last written queue, reused for the next (no allocation per write). */
  private spareQueue: ActiveHashes | undefined
  private pendingBytes = 0
  /** The write in flight, and the one queued after it (see `flush`). */
  private flushing: Promise<void> | undefined
  private nextWrite: Promise<void> | undefined
  private scheduled = false
  private closed = false
  /** Message-log offset up to which MESSAGE entries were queued (see the invariants above). */
  coveredEnd = 0

  private constructor(opts: IndexLogOptions) {
    const dirs = indexDirs(opts.dataDir)
    this.log = SegmentLog.open({
      dir: dirs.log,
      segmentBytes: opts.segmentBytes,
      ...(opts.io ? { io: opts.io } : {}),
    })
    this.runDir = dirs.runs
    fs.mkdirSync(this.runDir, { recursive: true })
    this.logger = opts.log
    this.io = opts.io ?? nodeFsIo
  }

  /**
   * Opens the index: recovers the log (a torn tail is cut), loads or rebuilds the run of every
   * sealed segment, loads the active segment's hashes and finds `coveredEnd`.
   */
  static async open(opts: IndexLogOptions): Promise<IndexLog> {
    const x = new IndexLog(opts)
    const truncs = await x.log.recover(x.log.startOffset, checkEntry, () => undefined)
    for (const t of truncs)
      x.logger.warn({ ...t }, 'index log: damaged tail cut (rebuilt from the message log)')
    const segs = x.log.segments()
    const bases = new Set(segs.map((s) => s.base))
    for (const name of fs.readdirSync(x.runDir)) {
      const base = Number(name.replace(/\.run$/, ''))
      if (!name.endsWith('.run') || !bases.has(base) || base === x.log.activeBase) {
        fs.rmSync(path.join(x.runDir, name), { force: true })
      }
    }
    for (const s of segs) {
      if (s.base === x.log.activeBase) continue
      const run = x.loadRun(s.base) ?? (await x.buildRun(s.base, s.base + s.size))
      x.runs.push(run)
    }
    // The active segment's hashes, and how far the index covers the message log.
    await x.log.scan(x.log.activeBase, x.log.endOffset, checkEntry, (buf, pos, _len, offset) => {
      x.active.push(buf.readUInt32BE(pos + 12), buf.readUInt32BE(pos + 16), offset)
      x.noteCovered(buf, pos)
    })
    for (let i = segs.length - 2; i >= 0 && x.coveredEnd === 0; i--) {
      const s = segs[i]
      if (s) await x.log.scan(s.base, s.base + s.size, checkEntry, (buf, pos) => x.noteCovered(buf, pos))
    }
    return x
  }

  private noteCovered(buf: Buffer, pos: number): void {
    if (buf[pos + 8] !== IndexKind.MESSAGE) return
    const end = readI64(buf, pos + 28) + buf.readUInt32BE(pos + 36)
    if (end > this.coveredEnd) this.coveredEnd = end
  }

  private runFile(base: number): string {
    return path.join(this.runDir, `${segmentFileName(base).slice(0, -4)}.run`)
  }

  /** Loads a run file's header and fence; undefined when it is missing or damaged. */
  private loadRun(base: number): Run | undefined {
    const file = this.runFile(base)
    let fd: number
    try {
      fd = fs.openSync(file, 'r')
    } catch {
      return undefined
    }
    try {
      const head = Buffer.alloc(RUN_HEADER_BYTES)
      if (fs.readSync(fd, head, 0, RUN_HEADER_BYTES, 0) !== RUN_HEADER_BYTES) throw new Error('short header')
      if (head.readUInt32BE(0) !== RUN_MAGIC) throw new Error('bad magic')
      const count = head.readUInt32BE(4)
      const step = head.readUInt32BE(8)
      if (step !== FENCE_STEP) throw new Error('other fence step')
      const fenceCount = Math.ceil(count / step)
      const fenceBuf = Buffer.alloc(fenceCount * 4)
      if (fs.readSync(fd, fenceBuf, 0, fenceBuf.length, RUN_HEADER_BYTES) !== fenceBuf.length)
        throw new Error('short fence')
      if (crc32c(fenceBuf) !== head.readUInt32BE(12)) throw new Error('fence CRC mismatch')
      const size = fs.fstatSync(fd).size
      if (size !== RUN_HEADER_BYTES + fenceBuf.length + count * RUN_ENTRY_BYTES) throw new Error('bad size')
      const fence = new Uint32Array(fenceCount)
      for (let i = 0; i < fenceCount; i++) fence[i] = fenceBuf.readUInt32BE(i * 4)
      return { base, file, fd, count, fence, refs: 0, retired: false }
    } catch (err) {
      fs.closeSync(fd)
      this.logger.warn({ file, err: String(err) }, 'index run unusable; rebuilding it from its segment')
      return undefined
    }
  }

  /** Scans a sealed segment and writes its run. */
  private async buildRun(base: number, end: number): Promise<Run> {
    const hashes = new ActiveHashes()
    await this.log.scan(base, end, checkEntry, (buf, pos, _len, offset) => {
      hashes.push(buf.readUInt32BE(pos + 12), buf.readUInt32BE(pos + 16), offset)
    })
    return this.writeRun(base, hashes)
  }

  /**
   * Writes the run of a sealed segment's hashes: sorted and laid out here (CPU only), written off the
   * event loop (temp file, fdatasync, rename, directory fsync: the run of a segment of 16 MiB is a few
   * MiB, and a synchronous write with its fsyncs stalled every connection of the broker for tens of ms
   * on a busy disk). A run that is missing or incomplete after a crash is rebuilt at open.
   */
  private async writeRun(base: number, h: ActiveHashes): Promise<Run> {
    const n = h.n
    // Sorted by h1 (entries with equal h1 in log order): runs are scanned by h1, matched on (h1, h2).
    const rel = new Uint32Array(n)
    for (let i = 0; i < n; i++) rel[i] = (h.off[i] as number) - base
    const sorted = await sortByH1(h.h1, h.h2, rel, n)
    const fenceCount = Math.ceil(n / FENCE_STEP)
    const entriesAt = RUN_HEADER_BYTES + fenceCount * 4
    // Buffer.alloc never hands out a slice of the shared pool: byteOffset 0, so the entries (at a
    // multiple of 4) can be filled as 32-bit words, then turned big-endian at once (swap32, native):
    // 3 typed-array stores per entry instead of 3 writeUInt32BE calls (~20x faster on 200k entries).
    const buf = Buffer.alloc(entriesAt + n * RUN_ENTRY_BYTES)
    const words = new Uint32Array(buf.buffer, buf.byteOffset + entriesAt, n * 3)
    const fence = new Uint32Array(fenceCount)
    await sliced(n, (from, to) => {
      const { h1, a: h2, b: off } = sorted
      for (let i = from, w = from * 3; i < to; i++, w += 3) {
        const v = h1[i] as number
        if (i % FENCE_STEP === 0) fence[i / FENCE_STEP] = v
        words[w] = v
        words[w + 1] = h2[i] as number
        words[w + 2] = off[i] as number
      }
    })
    if (LITTLE_ENDIAN && n > 0) buf.subarray(entriesAt).swap32()
    for (let j = 0; j < fenceCount; j++) buf.writeUInt32BE(fence[j] as number, RUN_HEADER_BYTES + j * 4)
    buf.writeUInt32BE(RUN_MAGIC, 0)
    buf.writeUInt32BE(n, 4)
    buf.writeUInt32BE(FENCE_STEP, 8)
    buf.writeUInt32BE(crc32cRange(buf, RUN_HEADER_BYTES, RUN_HEADER_BYTES + fenceCount * 4), 12)
    const file = this.runFile(base)
    try {
      await writeRunFile(file, buf)
      const fd = await new Promise<number>((resolve, reject) => {
        fs.open(file, 'r', (err, fd) => (err ? reject(err) : resolve(fd)))
      })
      return { base, file, fd, count: n, fence, refs: 0, retired: false }
    } catch (err) {
      throw fsError(err, `writing ${file}`)
    }
  }

  // ---- writing ----

  /**
   * Indexes a stored record: by id, and by each business key of its qmq_keys property. The keys are
   * hashed from the record's bytes in place, nothing decoded; a value with non-ASCII bytes takes the
   * string path (decoded, split and encoded again, so that bytes that are not valid UTF-8 hash as the
   * query's string does).
   */
  addMessage(record: Buffer, recordOffset: number, storedAt: number, sequence: number): void {
    if (this.closed) return
    const size = record.length
    const idEnd = RECORD_FIXED_BYTES + record.readUInt16BE(28)
    this.refEntry(
      IndexKind.MESSAGE,
      crc32cRange(record, RECORD_FIXED_BYTES, idEnd),
      fnv1a(record, RECORD_FIXED_BYTES, idEnd),
      storedAt,
      recordOffset,
      size,
      sequence,
    )
    const end = recordOffset + size
    if (end > this.coveredEnd) this.coveredEnd = end
    // Properties follow the id, the subject, the tags and the order key (when FLAG_ORDER_KEY is set).
    let p = idEnd + record.readUInt16BE(30)
    const tags = record[10] as number
    for (let i = 0; i < tags && p + 2 <= size; i++) p += 2 + record.readUInt16BE(p)
    if (((record[9] as number) & FLAG_ORDER_KEY) !== 0 && p + 2 <= size) p += 2 + record.readUInt16BE(p)
    const at = findRecordPropertyAt(record, p, size, KEYS_PROPERTY)
    if (at < 0) return
    const valueEnd = at + record.readUInt32BE(at - 4)
    for (let i = at; i < valueEnd; i++) {
      if ((record[i] as number) >= 0x80) {
        for (const key of splitKeys(record.toString('utf8', at, valueEnd))) {
          const kn = keyInto(key)
          const h1 = crc32cRange(scratch, 0, kn)
          const h2 = fnv1a(scratch, 0, kn)
          this.refEntry(IndexKind.KEY, h1, h2, storedAt, recordOffset, size, sequence)
        }
        return
      }
    }
    // ASCII: the keys are the runs between spaces (splitKeys), hashed after the prefix of keyBytes.
    for (let k = at; k < valueEnd; ) {
      let e = k
      while (e < valueEnd && record[e] !== SPACE) e++
      if (e > k) {
        const h1 = crc32cRange(record, k, e, KEY_PREFIX_CRC)
        const h2 = fnv1a(record, k, e, KEY_PREFIX_FNV)
        this.refEntry(IndexKind.KEY, h1, h2, storedAt, recordOffset, size, sequence)
      }
      k = e + 1
    }
  }

  /**
   * Queues a MESSAGE or KEY entry (three empty strings). Byte stores by hand: this runs for every
   * stored message and key.
   */
  private refEntry(
    kind: number,
    h1: number,
    h2: number,
    time: number,
    ref: number,
    refSize: number,
    extra: number,
  ): void {
    const len = REF_ENTRY_BYTES
    const b = this.room(len)
    const o = this.chunkPos
    put32(b, len, o)
    b[o + 8] = kind
    b[o + 9] = 0
    b[o + 10] = 0
    b[o + 11] = 0
    put32(b, h1, o + 12)
    put32(b, h2, o + 16)
    putI64(b, time, o + 20)
    putI64(b, ref, o + 28)
    put32(b, refSize, o + 36)
    putI64(b, extra, o + 40)
    for (let i = o + ENTRY_FIXED_BYTES; i < o + len; i++) b[i] = 0
    put32(b, crc32cRange(b, o + 8, o + len), o + 4)
    this.queued(h1, h2, len)
  }

  /**
   * Records one event of a message's life. The events of a pull's answer or an ack share their
   * subject, group, consumer and key: those are encoded and hashed once (`traceFor`), and each entry
   * copies the encoded strings and hashes only its sequence's digits after them.
   */
  addTrace(t: TraceInput): void {
    if (this.closed) return
    const tk = this.traceFor(t.key ?? t.subject, t.subject, t.group, t.consumer)
    const dn = sequenceDigits(t.sequence)
    const h1 = crc32cRange(digits, 0, dn, tk.crc)
    const h2 = fnv1a(digits, 0, dn, tk.fnv)
    const strs = tk.strs
    const len = ENTRY_FIXED_BYTES + strs.length
    const b = this.room(len)
    const o = this.chunkPos
    put32(b, len, o)
    b[o + 8] = IndexKind.TRACE
    b[o + 9] = t.event
    const d = Math.min(t.deliveryCount, 0xffff)
    b[o + 10] = d >>> 8
    b[o + 11] = d
    put32(b, h1, o + 12)
    put32(b, h2, o + 16)
    putI64(b, t.time, o + 20)
    putI64(b, t.sequence, o + 28)
    put32(b, 0, o + 36)
    putI64(b, t.retryAt ?? 0, o + 40)
    const p = o + ENTRY_FIXED_BYTES
    for (let i = 0; i < strs.length; i++) b[p + i] = strs[i] as number
    put32(b, crc32cRange(b, o + 8, o + len), o + 4)
    this.queued(h1, h2, len)
  }

  /** The last trace's key, strings and their encoding (see addTrace). */
  private lastTrace: TraceKey = {
    key: '',
    subject: '',
    group: '',
    consumer: '',
    crc: 0,
    fnv: 0,
    strs: Buffer.alloc(6),
  }

  private traceFor(key: string, subject: string, group: string, consumer: string): TraceKey {
    const last = this.lastTrace
    if (last.key === key && last.subject === subject && last.group === group && last.consumer === consumer)
      return last
    // keyBytes(TRACE, key, sequence) up to the sequence: 't' 0 key 0
    const need = 3 * key.length + 3
    if (need > scratch.length) scratch = Buffer.allocUnsafe(need)
    scratch[0] = 0x74 // 't'
    scratch[1] = 0
    let n = 2 + scratch.write(key, 2, 'utf8')
    scratch[n++] = 0
    const room = entryRoom(subject, group, consumer) - ENTRY_FIXED_BYTES
    const strs = Buffer.allocUnsafe(room)
    let p = putStr16(strs, subject, 0)
    p = putStr16(strs, group, p)
    p = putStr16(strs, consumer, p)
    const next: TraceKey = {
      key,
      subject,
      group,
      consumer,
      crc: crc32cRange(scratch, 0, n),
      fnv: fnv1a(scratch, 0, n),
      strs: strs.subarray(0, p),
    }
    this.lastTrace = next
    return next
  }

  /** The chunk to encode the next entry into, with at least `bytes` free at `chunkPos`. */
  private room(bytes: number): Buffer {
    if (this.chunkPos + bytes > this.chunk.length) {
      if (this.chunkPos > this.chunkStart)
        this.pending.push(this.chunk.subarray(this.chunkStart, this.chunkPos))
      this.chunk = Buffer.allocUnsafe(Math.max(CHUNK_BYTES, bytes))
      this.chunkStart = 0
      this.chunkPos = 0
    }
    return this.chunk
  }

  /** Accounts an entry of `len` bytes just encoded at `chunkPos`; a write follows in the next turn. */
  private queued(h1: number, h2: number, len: number): void {
    this.queue.push(h1, h2, this.pendingBytes)
    this.chunkPos += len
    this.pendingBytes += len
    if (!this.scheduled) {
      this.scheduled = true
      setImmediate(this.flushSoon)
    }
  }

  private readonly flushSoon = (): void => {
    this.scheduled = false
    this.flush().catch((err) => this.logger.warn({ err }, 'index log write failed'))
  }

  /**
   * Writes every entry queued so far; resolves when they are written. One write is in flight at a
   * time: what is queued meanwhile goes in the next one, which every caller of that time shares (a
   * caller waits for at most the write in flight and the next; waiting in a loop per caller piled up
   * one waiter per busy turn of the event loop, each woken by every write).
   */
  flush(): Promise<void> {
    if (this.nextWrite) return this.nextWrite
    const inFlight = this.flushing
    if (!inFlight) return this.write()
    if (this.pendingBytes === 0) return inFlight
    const next = inFlight
      .catch(() => undefined)
      .then(() => {
        this.nextWrite = undefined
        return this.write()
      })
    this.nextWrite = next
    return next
  }

  /** Starts the write of every queued entry (none in flight); resolves when it is written. */
  private write(): Promise<void> {
    if (this.pendingBytes === 0 || this.closed) return Promise.resolve()
    if (this.chunkPos > this.chunkStart)
      this.pending.push(this.chunk.subarray(this.chunkStart, this.chunkPos))
    // The rest of the current chunk stays in use: the written part is never written to again.
    this.chunkStart = this.chunkPos
    const bufs = this.pending
    const q = this.queue
    const bytes = this.pendingBytes
    this.pending = []
    this.queue = this.spareQueue ?? new ActiveHashes(q.capacity)
    this.spareQueue = undefined
    this.pendingBytes = 0
    const written = (async () => {
      const before = this.log.activeBase
      const hadSegment = this.log.endOffset > 0 || this.active.n > 0
      const start = await this.log.appendv(bufs, bytes)
      const after = this.log.activeBase
      if (hadSegment && after !== before && this.active.n > 0) {
        // The log rolled: the previous segment is sealed; its hashes go to a run file.
        this.seal(before, this.active)
        // As large as the last one: a segment's hashes are not grown from 1024 again.
        this.active = new ActiveHashes(this.active.capacity)
      }
      this.active.append(q, start)
      q.n = 0
      this.spareQueue = q
    })().finally(() => {
      if (this.flushing === written) this.flushing = undefined
    })
    this.flushing = written
    return written
  }

  /**
   * Writes the run of the sealed segment at `base` in the background (flushes go on meanwhile):
   * lookups search `hashes` until the run is in `runs`.
   */
  private seal(base: number, hashes: ActiveHashes): void {
    const entry = { base, hashes }
    const done: Promise<void> = this.writeRun(base, hashes).then(
      (run) => {
        if (!this.sealing.includes(entry)) {
          // Deleted by retention, or the index closed, while it was written.
          closeQuietly(run.fd)
          if (!this.closed) fs.rmSync(run.file, { force: true })
          return
        }
        this.sealing.splice(this.sealing.indexOf(entry), 1)
        this.runs.push(run)
        this.runs.sort((a, b) => a.base - b.base)
      },
      (err: unknown) => {
        // The hashes stay in memory (lookups still find the segment's entries); the next open
        // finds no usable run and rebuilds it.
        this.logger.warn({ err, base }, 'index run write failed; kept in memory')
      },
    )
    this.sealing.push(entry)
    this.runWrites.add(done)
    void done.finally(() => this.runWrites.delete(done))
  }

  /** Resolves when every run write started so far has ended (written, or failed and kept in memory). */
  async sealed(): Promise<void> {
    while (this.runWrites.size > 0) await Promise.all([...this.runWrites])
  }

  async sync(): Promise<void> {
    await this.flush()
    await this.log.sync()
  }

  // ---- reading ----

  /** Every entry of `kind` whose key hashes like `kb` (the caller checks the real key), oldest first. */
  async lookup(kind: IndexKindValue, kb: Buffer): Promise<IndexEntry[]> {
    await this.flush()
    const h1 = crc32c(kb)
    const h2 = fnv1a(kb)
    const offsets: number[] = []
    // One view of where each segment's hashes are, taken at once: a run written meanwhile moves its
    // segment from `sealing` to `runs`, so looking at `sealing` only after awaiting the runs' reads
    // missed the entries of a segment whose run completed during them. The runs of that view are held
    // until read: retention (or close) removing one meanwhile leaves its descriptor open for this
    // lookup (closed under it, the read failed with EBADF, or read another file given its number).
    // The entries of a removed segment are then not read (readEntry): cleanly not found.
    const runs = [...this.runs]
    for (const run of runs) run.refs++
    try {
      for (const a of [...this.sealing.map((e) => e.hashes), this.active])
        for (let i = 0; i < a.n; i++) if (a.h1[i] === h1 && a.h2[i] === h2) offsets.push(a.off[i] as number)
      for (const run of runs) await this.searchRun(run, h1, h2, offsets)
    } finally {
      for (const run of runs) releaseRun(run)
    }
    // Oldest first: index-log offsets grow with time (runs and sealed segments may finish out of order).
    offsets.sort((x, y) => x - y)
    const out: IndexEntry[] = []
    for (const off of offsets) {
      const e = await this.readEntry(off)
      if (e && e.kind === kind) out.push(e)
    }
    return out
  }

  private async searchRun(run: Run, h1: number, h2: number, into: number[]): Promise<void> {
    if (run.count === 0) return
    // First fence slot whose h1 is >= the target; matches start in the slot before it at the earliest.
    let lo = 0
    let hi = run.fence.length
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if ((run.fence[mid] as number) < h1) lo = mid + 1
      else hi = mid
    }
    let i = Math.max(0, lo - 1) * FENCE_STEP
    const entriesAt = RUN_HEADER_BYTES + run.fence.length * 4
    const chunk = Buffer.allocUnsafe(FENCE_STEP * 2 * RUN_ENTRY_BYTES)
    while (i < run.count) {
      const n = Math.min(FENCE_STEP * 2, run.count - i)
      const got = await this.io.read(run.fd, chunk, 0, n * RUN_ENTRY_BYTES, entriesAt + i * RUN_ENTRY_BYTES)
      if (got < n * RUN_ENTRY_BYTES) return
      for (let k = 0; k < n; k++) {
        const e1 = chunk.readUInt32BE(k * RUN_ENTRY_BYTES)
        if (e1 > h1) return
        if (e1 === h1 && chunk.readUInt32BE(k * RUN_ENTRY_BYTES + 4) === h2)
          into.push(run.base + chunk.readUInt32BE(k * RUN_ENTRY_BYTES + 8))
      }
      i += n
    }
  }

  private async readEntry(offset: number): Promise<IndexEntry | undefined> {
    try {
      const head = await this.log.read(offset, 4)
      if (head.length < 4) return undefined
      const len = head.readUInt32BE(0)
      if (len > MAX_ENTRY_BYTES) return undefined
      const buf = await this.log.read(offset, len)
      if (checkEntry(buf, 0, buf.length).kind !== 'record') return undefined
      return decodeEntry(buf, 0, offset)
    } catch {
      return undefined // removed by retention meanwhile
    }
  }

  // ---- retention ----

  /**
   * Deletes sealed segments last written before `time` (ms since epoch, wall clock: segment mtimes),
   * with their runs. Returns how many.
   */
  retain(time: number): number {
    let n = 0
    for (const s of this.log.segments()) {
      if (s.base === this.log.activeBase || s.mtimeMs >= time) break
      this.log.deleteOldest()
      // A run still being written is closed and removed when its write ends (see `seal`).
      this.sealing = this.sealing.filter((e) => e.base !== s.base)
      const k = this.runs.findIndex((r) => r.base === s.base)
      if (k >= 0) {
        const r = this.runs[k] as Run
        this.runs.splice(k, 1)
        retireRun(r, true) // a lookup reading it closes it when done (see `lookup`)
      }
      n++
    }
    return n
  }

  get segmentCount(): number {
    return this.runs.length + this.sealing.length + 1
  }

  async close(): Promise<void> {
    try {
      await this.sync()
      await this.sealed()
    } finally {
      this.closed = true
      this.sealing = []
      for (const r of this.runs) retireRun(r, false)
      this.runs = []
      this.log.close()
    }
  }

  /**
   * Stops without writing what is queued (a crash; tests). The descriptors are closed only once the
   * write in flight is over: closed under it, their numbers went to the next files opened (a store
   * reopened on the directory) and the write landed in one of those (its message log).
   */
  async abandon(): Promise<void> {
    this.closed = true
    this.pending = []
    this.queue.n = 0
    this.pendingBytes = 0
    this.sealing = []
    await this.flushing?.catch(() => undefined)
    await this.sealed() // a run written in the background: closed, not installed (sealing is empty)
    for (const r of this.runs) retireRun(r, false)
    this.runs = []
    this.log.close()
  }
}

let tmpSeq = 0

const LITTLE_ENDIAN = os.endianness() === 'LE'

/** Entries handled per turn of the event loop while a run is built (a few ms of work). */
const SLICE = 32 * 1024

/** Runs `body` over [0, n) in slices of SLICE, letting the event loop run between them. */
async function sliced(n: number, body: (from: number, to: number) => void): Promise<void> {
  for (let from = 0; from < n; from += SLICE) {
    if (from > 0) await new Promise<void>((resolve) => setImmediate(resolve))
    body(from, Math.min(n, from + SLICE))
  }
}

/** Indexes 0..n-1 ordered by h1[i], equal h1 in index order (log order): see sortByH1. */
export async function orderByH1(h1: Uint32Array, n: number): Promise<Uint32Array> {
  const iota = new Uint32Array(n)
  for (let i = 0; i < n; i++) iota[i] = i
  return (await sortByH1(h1, iota, iota, n)).a
}

const RADIX_BITS = 11
const RADIX_MASK = (1 << RADIX_BITS) - 1

/**
 * The first n entries of (h1, a, b) ordered by h1, equal h1 in index order (log order), in new
 * arrays: a stable LSD radix sort in three passes of 11 bits that moves the values themselves, in
 * slices (see `sliced`). A native sort of doubles (h1 * 2^21 + i) took 0.1-0.5 s of the event loop
 * for a sealed 16 MiB segment (~240k entries) on a loaded 2-core VM; two passes of 16 bits over
 * indexes, then a gather of the entries through them, 130-250 ns per entry (65536 buckets and the
 * gather miss the caches on every entry; 2048 buckets stay in them).
 */
export async function sortByH1(
  h1: Uint32Array,
  a: Uint32Array,
  b: Uint32Array,
  n: number,
): Promise<{ h1: Uint32Array; a: Uint32Array; b: Uint32Array }> {
  const counts = [0, 1, 2].map(() => new Uint32Array(RADIX_MASK + 2))
  const [c0, c1, c2] = counts as [Uint32Array, Uint32Array, Uint32Array]
  await sliced(n, (from, to) => {
    for (let i = from; i < to; i++) {
      const v = h1[i] as number
      const d0 = (v & RADIX_MASK) + 1
      const d1 = ((v >>> RADIX_BITS) & RADIX_MASK) + 1
      const d2 = (v >>> (2 * RADIX_BITS)) + 1
      c0[d0] = (c0[d0] as number) + 1
      c1[d1] = (c1[d1] as number) + 1
      c2[d2] = (c2[d2] as number) + 1
    }
  })
  for (const c of counts)
    for (let j = 0; j <= RADIX_MASK; j++) c[j + 1] = (c[j + 1] as number) + (c[j] as number)
  let src = { h1, a, b }
  // Pass 1 writes into fresh arrays (the inputs are left as they are), later passes ping-pong.
  const x = { h1: new Uint32Array(n), a: new Uint32Array(n), b: new Uint32Array(n) }
  const y = { h1: new Uint32Array(n), a: new Uint32Array(n), b: new Uint32Array(n) }
  for (let pass = 0; pass < 3; pass++) {
    const count = counts[pass] as Uint32Array
    const shift = pass * RADIX_BITS
    const from_ = src
    const dst = pass === 1 ? y : x
    await sliced(n, (from, to) => {
      const { h1: sh, a: sa, b: sb } = from_
      const { h1: dh, a: da, b: db } = dst
      for (let i = from; i < to; i++) {
        const v = sh[i] as number
        const d = (v >>> shift) & RADIX_MASK
        const at = count[d] as number
        count[d] = at + 1
        dh[at] = v
        da[at] = sa[i] as number
        db[at] = sb[i] as number
      }
    })
    src = dst
  }
  return src
}

/**
 * Replaces a run file atomically and durably (temp file, fdatasync, rename, directory fsync), off the
 * event loop. The temp name is unique: a run may be written again (rebuilt at open) while an earlier
 * write of it is still going on (a store abandoned in a test, as a crash would leave it).
 */
function writeRunFile(file: string, data: Buffer): Promise<void> {
  return writeFileAtomic(file, data, `${file}.${process.pid}-${++tmpSeq}.tmp`)
}

function closeQuietly(fd: number): void {
  try {
    fs.closeSync(fd)
  } catch {
    // already closed
  }
}
