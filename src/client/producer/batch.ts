import type { QmqError } from '../../common/errors'
import type { Logger } from '../../common/logger'
import type { Message } from './message'
import type { MessageSendStateListener, SendResult } from './producer'

/**
 * Batches of a producer lane, written in place.
 *
 * sendMessage() writes each record (planRecord + writeRecord, at send time as before) straight into
 * its lane's open batch buffer, laid out as the body of a SEND request (protocol/commands.ts):
 *
 *   0   u32   count     written when the batch is sealed
 *   4         records   back to back, each Pending knowing its (buf, offset, length)
 *
 * Sealing writes the count and hands `buf.subarray(0, used)` to the connection as the whole request
 * body: no Buffer per record, no copy afterwards. A buffer is never written again once handed to a
 * connection (a timed-out request's frame may still sit in the socket's queue): a retry of the same
 * batch resends the same body; a retry of a subset packs a new buffer (`packBatch`), rare.
 */

// Promise capabilities of a new Pending, handed out by one shared executor: a send then allocates no
// closure of its own (only the promise and its resolving functions).
let nextResolve: (r: SendResult) => void = () => {}
let nextReject: (e: QmqError) => void = () => {}
function captureExecutor(resolve: (r: SendResult) => void, reject: (e: QmqError) => void): void {
  nextResolve = resolve
  nextReject = reject
}

/** Pending.state: not settled yet, stored by a group, failed for good. */
export const SEND_PENDING = 0
export const SEND_STORED = 1
export const SEND_FAILED = 2

/** Nothing: what a settled Pending points at instead of its batch buffer (recycled by then). */
const NO_BYTES = Buffer.alloc(0)

/**
 * One accepted message until it settles. It keeps where its encoded record lies and the id, not the
 * Message: the Message (its property map, tags, body) becomes garbage as soon as it is encoded. The
 * Message keeps its last Pending (`Message.lastSend`), so a second sendMessage() of it is answered from
 * there (producer.ts); a settled Pending lets go of the batch buffer.
 */
export class Pending {
  readonly promise: Promise<SendResult>
  readonly resolve: (r: SendResult) => void
  readonly reject: (e: QmqError) => void
  attempts = 0
  state: typeof SEND_PENDING | typeof SEND_STORED | typeof SEND_FAILED = SEND_PENDING
  /**
   * Set when it failed: the group that may hold it nonetheless (a SEND to it went unanswered, e.g.
   * timed out, and the group was not proven unreachable). Sending the Message again goes there first.
   */
  mayBeOn: string | undefined = undefined
  /** QMQ's listener, called on settlement (with the message, kept only then). */
  listener: MessageSendStateListener | undefined = undefined
  message: Message | undefined = undefined
  constructor(
    readonly id: string,
    /** Its own subject: the delay lane carries messages of every subject. */
    readonly subject: string,
    /** The batch buffer holding its record at [offset, offset + length). */
    public buf: Buffer,
    public offset: number,
    readonly length: number,
    readonly deadline: number,
  ) {
    this.promise = new Promise<SendResult>(captureExecutor)
    this.resolve = nextResolve
    this.reject = nextReject
  }

  succeed(r: SendResult, log: Logger): void {
    this.state = SEND_STORED
    this.buf = NO_BYTES
    this.resolve(r)
    const l = this.listener
    if (l === undefined) return
    try {
      l.onSuccess(this.message as Message)
    } catch (err) {
      log.error(err as Error, 'send listener threw')
    }
  }

  fail(e: QmqError, log: Logger): void {
    this.state = SEND_FAILED
    this.buf = NO_BYTES
    this.reject(e)
    const l = this.listener
    if (l === undefined) return
    try {
      l.onFailed(this.message as Message, e)
    } catch (err) {
      log.error(err as Error, 'send listener threw')
    }
  }
}

/** Bytes of the count in front of a SEND body's records. */
export const BATCH_HEAD_BYTES = 4
/** First capacity of a lane's batch buffer (below Buffer's pool threshold: small batches share a slab). */
const MIN_CAPACITY = 2048

/** Buffers smaller than this are not recycled (Buffer's own pool slabs, 8 KiB, must never be). */
const MIN_RECYCLED_BYTES = 16 * 1024
const STEP = 16 * 1024

/**
 * Batch buffers whose SEND was answered, for the next batches. A new large buffer is fresh memory the
 * kernel maps page by page on first write (a page fault per 4 KiB, then an unmap when it is freed):
 * writing records into recycled memory costs a fraction of that. Only a body sent exactly once and
 * answered comes back (`give`): an answer means the peer read every byte, so the connection is done
 * with it; a body sent again after a failure may still sit in an earlier connection's queue.
 */
export class BatchBufferPool {
  private readonly free: ArrayBuffer[] = []
  private bytes = 0
  constructor(private readonly maxBytes = 4 * 1024 * 1024) {}

  /** A recycled buffer of at least `min` bytes, if the last one returned is that big. */
  take(min: number): Buffer | undefined {
    const ab = this.free[this.free.length - 1]
    if (ab === undefined || ab.byteLength < min) return undefined
    this.free.pop()
    this.bytes -= ab.byteLength
    return Buffer.from(ab)
  }

  /** Takes back the memory of an answered SEND body (a whole buffer of its own only). */
  give(body: Buffer): void {
    const ab = body.buffer
    if (!(ab instanceof ArrayBuffer) || body.byteOffset !== 0 || ab.byteLength < MIN_RECYCLED_BYTES) return
    if (this.bytes + ab.byteLength > this.maxBytes) return
    this.free.push(ab)
    this.bytes += ab.byteLength
  }

  clear(): void {
    this.free.length = 0
    this.bytes = 0
  }
}

/** The batch a lane is filling. */
export class OpenBatch {
  buf: Buffer | undefined = undefined
  /** Bytes used in `buf`, head included. */
  used = BATCH_HEAD_BYTES
  items: Pending[] = []
  /** Capacity for the next buffer: follows the sizes of recent batches (grows at once, shrinks slowly). */
  private hint = MIN_CAPACITY

  constructor(private readonly pool: BatchBufferPool) {}

  /** Record bytes queued (head excluded). */
  get recordBytes(): number {
    return this.used - BATCH_HEAD_BYTES
  }

  /**
   * Where the next record of `size` bytes goes: a buffer with room at `this.used` (a new or bigger
   * one when needed; growing copies the records written so far, and re-points their Pendings).
   */
  room(size: number, maxCapacity: number): Buffer {
    const buf = this.buf
    const need = this.used + size
    if (buf !== undefined && need <= buf.length) return buf
    let cap = Math.max(need, Math.min(maxCapacity, buf === undefined ? this.hint : buf.length * 2))
    // Capacities in steps of 16 KiB: batches a few bytes apart in size then fit each other's recycled
    // buffers.
    if (cap > MIN_RECYCLED_BYTES) cap = Math.max(need, Math.min(maxCapacity, Math.ceil(cap / STEP) * STEP))
    else if (cap < MIN_CAPACITY) cap = MIN_CAPACITY
    const next = (buf === undefined ? this.pool.take(cap) : undefined) ?? Buffer.allocUnsafe(cap)
    if (buf !== undefined) {
      buf.copy(next, 0, 0, this.used)
      for (const p of this.items) p.buf = next
    }
    this.buf = next
    return next
  }

  /** Closes the batch: its items and its SEND body (count + records); the lane starts a new one. */
  seal(): { items: Pending[]; body: Buffer } {
    const buf = this.buf as Buffer
    const items = this.items
    const used = this.used
    buf.writeUInt32BE(items.length, 0)
    this.hint = used >= this.hint ? used : this.hint - ((this.hint - used) >> 3)
    this.buf = undefined
    this.used = BATCH_HEAD_BYTES
    this.items = []
    return { items, body: buf.subarray(0, used) }
  }
}

/** A SEND body of a subset of records (a partial retry): copies them into one new buffer. */
export function packBatch(items: readonly Pending[]): Buffer {
  let size = BATCH_HEAD_BYTES
  for (const p of items) size += p.length
  const buf = Buffer.allocUnsafe(size)
  buf.writeUInt32BE(items.length, 0)
  let o = BATCH_HEAD_BYTES
  for (const p of items) {
    p.buf.copy(buf, o, p.offset, p.offset + p.length)
    p.buf = buf
    p.offset = o
    o += p.length
  }
  return buf
}
