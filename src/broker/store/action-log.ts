import { crc32c } from '../../common/crc32c'
import { QmqError } from '../../common/errors'
import type { FsIo } from './fs-io'
import { readI64, writeI64 } from './i64'
import { type ScanResult, SegmentLog, type Truncation } from './segment-log'

/**
 * The action log: every change of consumer progress, in order. Consumer state (cursors, what each
 * consumer holds, acks, redelivery times, delivery counts, dead letters) is a checkpoint plus the
 * replay of the actions written after it; the live path applies an action with the same function
 * the replay uses, so both always agree.
 *
 * Entry layout (big-endian), written by `encodeAction()`:
 *
 *   offset  size  field
 *   0       4     length      u32: whole entry
 *   4       4     crc         u32: CRC32C of bytes [8, length)
 *   8       1     type        u8: ActionType
 *   9       1     flags       u8: bit0 broadcast, bit1 at-most-once, bit2 seqs (EXPIRE with a body),
 *                                 bit3 keys (PULL followed by its keyed messages)
 *   10      2     reserved    u16: 0
 *   12      8     time        i64: ms since epoch
 *   20            subject     u16 length + UTF-8 (empty for MARK)
 *                 group       u16 length + UTF-8
 *                 consumerId  u16 length + UTF-8 (empty when not about one consumer)
 *                 body, by type:
 *     PULL     i64 cursorAfter (-1 = unchanged), u32 n, n x (i64 firstSeq, u32 count)   handed-out ranges;
 *              with the KEYS flag then u32 k, k x (i64 seq, u16 keyLength, key UTF-8): the messages
 *              with an order key that the cursor passed in this pull, in sequence order. Each joins
 *              its key's queue (consumer-state.ts): the first of a key with nothing unsettled is the
 *              key's head (handed out here if listed above, else deliverable), the others wait
 *     ACK      u32 n, n x (i64 firstSeq, u32 count)
 *     NACK     u32 n, n x (i64 seq, i64 redeliverAt)   redeliverAt -1 = dead-lettered
 *     EXPIRE   without the SEQS flag (written before per-message leases): no body; everything
 *              consumerId held becomes deliverable to its group. With SEQS: u32 n, n x (i64 firstSeq,
 *              u32 count): the leases of these handed-out messages ended (consumerId '' = whoever
 *              holds them; else only if that consumer does): each becomes deliverable again
 *     CURSOR   i64 cursor   (creates the group / broadcast consumer, or an operator reset)
 *     REDRIVE  u32 n, n x (i64 firstSeq, u32 count)   dead letters made deliverable again
 *     MARK     (none) written by a checkpoint: replay starts after it
 *     FORGET   (none) the group is removed with all its state (an operator's `forgetGroup`); with the
 *              BROADCAST flag only consumerId's broadcast cursor is (it stayed idle past broadcastIdleMs)
 */
export const ActionType = {
  PULL: 1,
  ACK: 2,
  NACK: 3,
  EXPIRE: 4,
  CURSOR: 5,
  REDRIVE: 6,
  MARK: 7,
  FORGET: 8,
} as const
export type ActionTypeValue = (typeof ActionType)[keyof typeof ActionType]

export const ACTION_FLAG_BROADCAST = 0x01
export const ACTION_FLAG_AT_MOST_ONCE = 0x02
/** EXPIRE: the action names the sequences whose lease ended (see the layout above). */
export const ACTION_FLAG_SEQS = 0x04
/** PULL: the entry lists the keyed messages its cursor passed (see the layout above). */
export const ACTION_FLAG_KEYS = 0x08

export interface Action {
  type: ActionTypeValue
  flags: number
  time: number
  subject: string
  group: string
  consumerId: string
  /** PULL: cursor after the pull (-1 unchanged); CURSOR: the new cursor. */
  cursor: number
  /** PULL / ACK / NACK / REDRIVE / EXPIRE with ACTION_FLAG_SEQS: the sequences. */
  seqs: number[]
  /** NACK: redeliver-after per sequence (-1 = dead letter). */
  dueAts?: number[]
  /** PULL with ACTION_FLAG_KEYS: the keyed messages the cursor passed, [seq, order key], by sequence. */
  keyed?: [number, string][]
}

const HEADER_BYTES = 20
const MAX_ACTION_BYTES = 64 * 1024 * 1024

/** Consecutive runs of sorted-or-not sequences: [first, count] pairs, in the given order. */
function toRanges(seqs: readonly number[]): number[] {
  const out: number[] = []
  for (const s of seqs) {
    const n = out.length
    if (n > 0 && (out[n - 2] as number) + (out[n - 1] as number) === s)
      out[n - 1] = (out[n - 1] as number) + 1
    else out.push(s, 1)
  }
  return out
}

/** Whether an entry of this type (and flags) has a body of sequence ranges. */
function hasRanges(type: number, flags: number): boolean {
  return (
    type === ActionType.PULL ||
    type === ActionType.ACK ||
    type === ActionType.REDRIVE ||
    (type === ActionType.EXPIRE && (flags & ACTION_FLAG_SEQS) !== 0)
  )
}

export function encodeAction(a: Action): Buffer {
  const subject = Buffer.from(a.subject, 'utf8')
  const group = Buffer.from(a.group, 'utf8')
  const consumer = Buffer.from(a.consumerId, 'utf8')
  let body = 0
  let ranges: number[] = []
  switch (a.type) {
    case ActionType.PULL:
      ranges = toRanges(a.seqs)
      body = 8 + 4 + (ranges.length / 2) * 12
      break
    case ActionType.ACK:
    case ActionType.REDRIVE:
      ranges = toRanges(a.seqs)
      body = 4 + (ranges.length / 2) * 12
      break
    case ActionType.EXPIRE:
      if (a.flags & ACTION_FLAG_SEQS) {
        ranges = toRanges(a.seqs)
        body = 4 + (ranges.length / 2) * 12
      }
      break
    case ActionType.NACK:
      body = 4 + a.seqs.length * 16
      break
    case ActionType.CURSOR:
      body = 8
      break
    default:
      body = 0
  }
  let keyBufs: Buffer[] | undefined
  if (a.type === ActionType.PULL && a.flags & ACTION_FLAG_KEYS) {
    keyBufs = (a.keyed ?? []).map(([, k]) => Buffer.from(k, 'utf8'))
    body += 4
    for (const k of keyBufs) body += 10 + k.length
  }
  const length = HEADER_BYTES + 6 + subject.length + group.length + consumer.length + body
  const b = Buffer.allocUnsafe(length)
  b.writeUInt32BE(length, 0)
  b.writeUInt8(a.type, 8)
  b.writeUInt8(a.flags, 9)
  b.writeUInt16BE(0, 10)
  writeI64(b, a.time, 12)
  let o = HEADER_BYTES
  for (const s of [subject, group, consumer]) {
    b.writeUInt16BE(s.length, o)
    s.copy(b, o + 2)
    o += 2 + s.length
  }
  if (a.type === ActionType.PULL || a.type === ActionType.CURSOR) {
    writeI64(b, a.cursor, o)
    o += 8
  }
  if (hasRanges(a.type, a.flags)) {
    b.writeUInt32BE(ranges.length / 2, o)
    o += 4
    for (let i = 0; i < ranges.length; i += 2) {
      writeI64(b, ranges[i] as number, o)
      b.writeUInt32BE(ranges[i + 1] as number, o + 8)
      o += 12
    }
  } else if (a.type === ActionType.NACK) {
    b.writeUInt32BE(a.seqs.length, o)
    o += 4
    const due = a.dueAts ?? []
    for (let i = 0; i < a.seqs.length; i++) {
      writeI64(b, a.seqs[i] as number, o)
      writeI64(b, due[i] ?? -1, o + 8)
      o += 16
    }
  }
  if (keyBufs !== undefined) {
    const keyed = a.keyed ?? []
    b.writeUInt32BE(keyBufs.length, o)
    o += 4
    for (let i = 0; i < keyBufs.length; i++) {
      const k = keyBufs[i] as Buffer
      writeI64(b, (keyed[i] as [number, string])[0], o)
      b.writeUInt16BE(k.length, o + 8)
      k.copy(b, o + 10)
      o += 10 + k.length
    }
  }
  b.writeUInt32BE(crc32c(b.subarray(8, length)), 4)
  return b
}

export function checkAction(buf: Buffer, pos: number, end: number): ScanResult {
  if (end - pos < 8) return { kind: 'short' }
  const length = buf.readUInt32BE(pos)
  if (length < HEADER_BYTES + 6 || length > MAX_ACTION_BYTES) {
    return { kind: 'corrupt', reason: `action length ${length} out of bounds` }
  }
  if (end - pos < length) return { kind: 'short' }
  if (buf.readUInt32BE(pos + 4) !== crc32c(buf.subarray(pos + 8, pos + length))) {
    return { kind: 'corrupt', reason: 'action checksum mismatch' }
  }
  return { kind: 'record', length }
}

export function decodeAction(b: Buffer, pos: number): Action {
  const type = b.readUInt8(pos + 8) as ActionTypeValue
  const flags = b.readUInt8(pos + 9)
  const time = readI64(b, pos + 12)
  let o = pos + HEADER_BYTES
  const strs: string[] = []
  for (let i = 0; i < 3; i++) {
    const n = b.readUInt16BE(o)
    strs.push(b.toString('utf8', o + 2, o + 2 + n))
    o += 2 + n
  }
  const a: Action = {
    type,
    flags,
    time,
    subject: strs[0] as string,
    group: strs[1] as string,
    consumerId: strs[2] as string,
    cursor: -1,
    seqs: [],
  }
  if (type === ActionType.PULL || type === ActionType.CURSOR) {
    a.cursor = readI64(b, o)
    o += 8
  }
  if (hasRanges(type, flags)) {
    const n = b.readUInt32BE(o)
    o += 4
    for (let i = 0; i < n; i++) {
      const first = readI64(b, o)
      const count = b.readUInt32BE(o + 8)
      o += 12
      for (let k = 0; k < count; k++) a.seqs.push(first + k)
    }
    if (type === ActionType.PULL && flags & ACTION_FLAG_KEYS) {
      const k = b.readUInt32BE(o)
      o += 4
      a.keyed = []
      for (let i = 0; i < k; i++) {
        const seq = readI64(b, o)
        const n = b.readUInt16BE(o + 8)
        a.keyed.push([seq, b.toString('utf8', o + 10, o + 10 + n)])
        o += 10 + n
      }
    }
  } else if (type === ActionType.NACK) {
    const n = b.readUInt32BE(o)
    o += 4
    a.dueAts = []
    for (let i = 0; i < n; i++) {
      a.seqs.push(readI64(b, o))
      a.dueAts.push(readI64(b, o + 8))
      o += 16
    }
  }
  return a
}

interface Pending {
  buf: Buffer
  waiters: { resolve: (end: number) => void; reject: (err: unknown) => void }[]
}

export interface ActionLogOptions {
  dir: string
  segmentBytes: number
  flush: 'sync' | 'async'
  io?: FsIo
  /** Retry delay after a failed write (disk full): queued actions are kept, in order. */
  retryMs?: number
  onError?: (err: unknown) => void
  /** An fdatasync of a batch ('sync') failed (called before onError). */
  onSyncError?: (err: unknown) => void
  /** The log failed closed (see `failed`); called once. */
  onFailed?: (err: QmqError) => void
}

/**
 * Batched writer: actions enqueued in the same turn of the event loop are written with one writev
 * (and one fdatasync under flush 'sync'). A failed write keeps the batch at the head of the queue and
 * retries it, so the log never has a gap: whatever is written is a prefix of what was applied.
 * Under 'sync', a batch whose write succeeded but whose fdatasync failed is cut off the file before
 * it is retried (written once, never twice: a replay would apply it twice). Retrying only the
 * fdatasync is not enough: after a failed one the kernel may report pages it dropped as synced. If
 * that cut fails, the log fails closed (`failed`): every write is refused until the store is reopened.
 */
export class ActionLog {
  readonly log: SegmentLog
  private readonly opts: ActionLogOptions
  private queue: Pending[] = []
  private running = false
  private scheduled = false
  private retryTimer: NodeJS.Timeout | undefined
  private closed = false
  /** abandon(): nothing more is written, not even what is queued (a crash). */
  private abandoned = false
  /** Set when a batch whose fdatasync failed could not be cut off: nothing is written any more. */
  failed: QmqError | undefined

  constructor(opts: ActionLogOptions) {
    this.opts = opts
    this.log = SegmentLog.open({
      dir: opts.dir,
      segmentBytes: opts.segmentBytes,
      ...(opts.io ? { io: opts.io } : {}),
    })
  }

  recover(from: number, visit: (a: Action) => void): Promise<Truncation[]> {
    return this.log.recover(from, checkAction, (buf, pos) => visit(decodeAction(buf, pos)))
  }

  get pendingCount(): number {
    return this.queue.length
  }

  /** Queues an action; resolves with the log's end offset once it is written (and synced for 'sync'). */
  write(a: Action): Promise<number> {
    if (this.failed !== undefined) return Promise.reject(this.failed)
    return new Promise((resolve, reject) => {
      this.queue.push({ buf: encodeAction(a), waiters: [{ resolve, reject }] })
      this.kick()
    })
  }

  /**
   * Queues an action no caller waits for (a hand-out, an expiry): as `write` without the promise. Its
   * failures reach `onError` and its batch is retried in order, as for every write.
   */
  enqueue(a: Action): void {
    if (this.failed !== undefined) return
    this.queue.push({ buf: encodeAction(a), waiters: [] })
    this.kick()
  }

  private kick(): void {
    if (this.running || this.scheduled || this.retryTimer || this.closed) return
    this.scheduled = true
    setImmediate(() => {
      this.scheduled = false
      void this.run()
    })
  }

  private async run(): Promise<void> {
    if (this.running) return
    this.running = true
    try {
      while (this.queue.length > 0 && !this.abandoned) {
        const batch = this.queue.slice(0, 4096)
        let bytes = 0
        for (const p of batch) bytes += p.buf.length
        let start = -1
        try {
          start = await this.log.appendv(
            batch.map((p) => p.buf),
            bytes,
          )
          if (this.opts.flush === 'sync') await this.log.sync()
        } catch (err) {
          if (start >= 0) {
            this.opts.onSyncError?.(err)
            // Written, not synced: cut it off so that the retry writes it once.
            try {
              await this.log.truncate(start)
            } catch (cutErr) {
              this.failClosed(cutErr)
              return
            }
          }
          // Keep the batch queued (a retry writes it in order); tell the waiters once.
          for (const p of batch) {
            for (const w of p.waiters) w.reject(err)
            p.waiters = []
          }
          this.opts.onError?.(err)
          if (!this.closed) {
            this.retryTimer = setTimeout(() => {
              this.retryTimer = undefined
              this.kick()
            }, this.opts.retryMs ?? 500) // not unref'd: queued progress keeps the process alive
          }
          return
        }
        this.queue.splice(0, batch.length)
        // Each waiter learns the end offset of its own entry (a checkpoint MARK needs exactly that).
        let end = start
        for (const p of batch) {
          end += p.buf.length
          for (const w of p.waiters) w.resolve(end)
        }
      }
    } finally {
      this.running = false
    }
  }

  /** Refuses everything queued and every later write (the log holds a batch it could not cut off). */
  private failClosed(cutErr: unknown): void {
    const failed = new QmqError(
      'QMQ_ERR_STORE_FAILED',
      `action log: a batch whose fdatasync failed could not be cut off (${
        cutErr instanceof Error ? cutErr.message : String(cutErr)
      }); consumer progress is refused until the store is reopened`,
      { cause: cutErr },
    )
    this.failed = failed
    const queued = this.queue
    this.queue = []
    for (const p of queued) for (const w of p.waiters) w.reject(failed)
    this.opts.onFailed?.(failed)
  }

  /** Writes everything queued now; resolves with the end offset. Throws if a write fails. */
  async drain(): Promise<number> {
    if (this.failed !== undefined) throw this.failed
    if (this.retryTimer) {
      clearTimeout(this.retryTimer)
      this.retryTimer = undefined
    }
    while (this.running) await new Promise((r) => setImmediate(r))
    if (this.queue.length > 0) {
      const last = this.queue[this.queue.length - 1] as Pending
      const done = new Promise<number>((resolve, reject) => last.waiters.push({ resolve, reject }))
      void this.run()
      await done
    }
    return this.log.endOffset
  }

  async sync(): Promise<void> {
    await this.log.sync()
  }

  async close(): Promise<void> {
    await this.drain().catch(() => undefined)
    this.closed = true
    if (this.retryTimer) clearTimeout(this.retryTimer)
    await this.log.sync().catch(() => undefined)
    this.log.close()
  }

  /**
   * Stops as a crash does: nothing queued is written (its waiters are rejected with
   * QMQ_ERR_STORE_CLOSED) and no write starts any more. Resolves once the write in flight, if any,
   * is over: from then on the files hold what a restarted process would find.
   */
  async abandon(): Promise<void> {
    this.closed = true
    this.abandoned = true
    if (this.retryTimer) clearTimeout(this.retryTimer)
    this.retryTimer = undefined
    const queued = this.queue
    this.queue = []
    const closed = new QmqError('QMQ_ERR_STORE_CLOSED')
    for (const p of queued) for (const w of p.waiters) w.reject(closed)
    while (this.running) await new Promise((r) => setImmediate(r))
  }
}
