import type { Clock } from '../../common/clock'
import { crc32c } from '../../common/crc32c'
import { QmqError } from '../../common/errors'
import type { Logger } from '../../common/logger'
import type { DelayStore } from '../store/delay-store'
import { FRAME_HEADER_BYTES } from '../store/schedule-log'
import { EntryRing } from './entry-ring'
import type { Sender } from './sender'

/**
 * Sends due messages to their subject's brokers, oldest first, and records each delivery.
 *
 *   wheel.advance ─> ready ring ─> pump: read frames (contiguous ones in one read), skip cancelled,
 *   group by subject ─> Sender.send (at most `inFlight` requests) ─> per record:
 *     stored  ─> store.markDelivered (dispatch log), lateness observed
 *     refused for good (a non-retriable per-record status) ─> parked as a dead letter (store.park)
 *     failed  ─> the subject's retry ring; the subject backs off (exponential, capped, forever)
 *
 * While a subject has entries waiting to be retried, its newly due entries queue behind them (so they
 * keep their order and a down broker is probed by one request at a time, not hammered). When a probe
 * succeeds the backoff resets and the retry ring drains at full speed. Nothing is ever dropped: a
 * message leaves the rings only when a broker acknowledged it, it was cancelled, or it was parked as
 * a dead letter (listed and redriven with `qmq delay-dlq`).
 */
export interface DispatcherOptions {
  store: DelayStore
  sender: Sender
  clock: Clock
  log: Logger
  batch: number
  inFlight: number
  retryInitialMs: number
  retryMaxMs: number
  /** Observed per delivered message: ms from due time to broker ack. */
  /** A due message was stored by a broker group (`record`: its bytes, for the trace). */
  onDelivered?: (latenessMs: number, record: Buffer, sentAt: number) => void
  onFailed?: (subject: string, err: QmqError | Error, records: number) => void
  /** Called for each due message a broker refused for good (parked as a dead letter). */
  onParked?: (subject: string, err: QmqError, record: Buffer) => void
  /** Called for each error a tick or pump ran into (it is retried at the next tick). */
  onTickError?: (err: unknown) => void
}

/** A tick error is logged at most this often (the count is in the tick-error metric). */
const TICK_ERROR_LOG_MS = 10_000

interface Retry {
  ring: EntryRing
  attempt: number
  resumeAt: number
  probing: boolean
}

interface Item {
  due: number
  offset: number
  slot: number
  length: number
  record: Buffer
  idHash: number
}

export class Dispatcher {
  private readonly ready = new EntryRing(4096)
  private readonly retries = new Map<string, Retry>()
  private inFlight = 0
  private closed = false
  /** Errors ticks and pumps ran into (an I/O error reading a schedule log, ...). */
  tickErrors = 0
  private tickErrorLoggedAt = Number.NEGATIVE_INFINITY
  private tickErrorsUnlogged = 0
  readonly onDue = (due: number, offset: number, slot: number, length: number): void => {
    this.ready.push(due, offset, slot, length)
  }

  constructor(private readonly o: DispatcherOptions) {}

  /** Entries waiting to be sent: ready + retrying (not those in requests in flight). */
  get backlog(): number {
    let n = this.ready.size
    for (const r of this.retries.values()) n += r.ring.size
    return n
  }

  /**
   * Moves due wheel entries to the ready ring and starts sends. Never throws (it runs from a timer):
   * an error (e.g. an I/O error reading a schedule log) is counted, logged (at most every
   * TICK_ERROR_LOG_MS) and the work is retried at the next tick: entries leave the rings only once
   * their frames were read.
   */
  tick(): void {
    if (this.closed) return
    try {
      this.o.store.advance(this.o.clock.now(), this.onDue)
    } catch (err) {
      this.tickError(err)
    }
    this.pump()
  }

  private tickError(err: unknown): void {
    this.tickErrors++
    this.o.onTickError?.(err)
    const now = Date.now()
    if (now - this.tickErrorLoggedAt < TICK_ERROR_LOG_MS) {
      this.tickErrorsUnlogged++
      return
    }
    this.o.log.error(
      { err, errorsSinceLastLog: this.tickErrorsUnlogged },
      'delay dispatch tick failed; retrying at the next tick',
    )
    this.tickErrorLoggedAt = now
    this.tickErrorsUnlogged = 0
  }

  /** Starts sends; never throws (see tick()). */
  pump(): void {
    try {
      this.pumpUnsafe()
    } catch (err) {
      this.tickError(err)
    }
  }

  private pumpUnsafe(): void {
    while (!this.closed && this.inFlight < this.o.inFlight) {
      if (this.pumpRetry()) continue
      if (this.ready.size === 0) break
      this.pumpReady()
    }
  }

  /** Starts one probe/drain batch of a subject whose backoff has passed; true if one was started. */
  private pumpRetry(): boolean {
    const now = this.o.clock.now()
    for (const [subject, r] of this.retries) {
      if (r.probing || r.resumeAt > now || r.ring.size === 0) continue
      const n = Math.min(r.ring.size, this.o.batch)
      const items = this.readItems(r.ring, n)
      r.ring.shift(n)
      if (items.length === 0) continue
      r.probing = true
      this.start(subject, items)
      return true
    }
    return false
  }

  /** Takes a batch off the ready ring and sends it, grouped by subject. */
  private pumpReady(): void {
    const n = Math.min(this.ready.size, this.o.batch)
    const items = this.readItems(this.ready, n)
    this.ready.shift(n)
    const bySubject = new Map<string, Item[]>()
    for (const it of items) {
      const subject = recordSubject(it.record)
      let list = bySubject.get(subject)
      if (list === undefined) {
        list = []
        bySubject.set(subject, list)
      }
      list.push(it)
    }
    for (const [subject, list] of bySubject) {
      const r = this.retries.get(subject)
      if (r !== undefined && r.ring.size + (r.probing ? 1 : 0) > 0) {
        // Keep order behind what is already waiting for this subject.
        for (const it of list) r.ring.push(it.due, it.offset, it.slot, it.length)
        continue
      }
      this.start(subject, list)
    }
  }

  /**
   * Reads the frames of the first n entries of a ring (contiguous frames in one read), skipping
   * cancelled ones. All reads happen before anything is recorded: when one throws, the ring is left as
   * it was and the same entries are read again later (no cancelled frame is marked twice).
   */
  private readItems(ring: EntryRing, n: number): Item[] {
    const out: Item[] = []
    const cancelled: Item[] = []
    let k = 0
    while (k < n) {
      // A run: same bucket, each frame right after the previous one.
      const slot = ring.slotAt(k)
      const start = ring.offsetAt(k)
      let end = start + ring.lengthAt(k)
      let j = k + 1
      while (j < n && ring.slotAt(j) === slot && ring.offsetAt(j) === end && end - start < 4 * 1024 * 1024) {
        end += ring.lengthAt(j)
        j++
      }
      const buf = this.o.store.readFrames(slot, start, end - start)
      for (let m = k; m < j; m++) {
        const at = ring.offsetAt(m) - start
        const length = ring.lengthAt(m)
        const record = buf.subarray(at + FRAME_HEADER_BYTES, at + length)
        const idLen = record.readUInt16BE(28)
        const idBytes = record.subarray(32, 32 + idLen)
        const idHash = crc32c(idBytes)
        const item = { due: ring.dueAt(m), offset: ring.offsetAt(m), slot, length, record, idHash }
        if (this.o.store.isCancelled(idBytes.toString('utf8'))) cancelled.push(item)
        else out.push(item)
      }
      k = j
    }
    for (const it of cancelled) this.o.store.markCancelled(it.slot, it.offset, it.idHash, it.record)
    return out
  }

  private start(subject: string, items: Item[]): void {
    this.inFlight++
    const sentAt = this.o.clock.now()
    this.o.sender
      .send(
        subject,
        items.map((it) => it.record),
      )
      .then(
        (results) => this.finish(subject, items, results, undefined, sentAt),
        (err: QmqError | Error) => this.finish(subject, items, undefined, err, sentAt),
      )
      .catch((err: unknown) => this.o.log.error({ err }, 'dispatcher bookkeeping failed'))
  }

  private finish(
    subject: string,
    items: Item[],
    results: (QmqError | undefined)[] | undefined,
    err: QmqError | Error | undefined,
    sentAt: number,
  ): void {
    this.inFlight--
    const now = this.o.clock.now()
    let failed = 0
    let firstErr: QmqError | Error | undefined = err
    let r = this.retries.get(subject)
    for (let i = 0; i < items.length; i++) {
      const it = items[i] as Item
      const res = results === undefined ? err : results[i]
      if (res === undefined) {
        this.o.store.markDelivered(it.slot, it.offset, it.idHash)
        this.o.onDelivered?.(now - it.due, it.record, sentAt)
        continue
      }
      if (results !== undefined && isPermanent(res)) {
        // Refused for good: retrying cannot help and would hold back the subject's later messages.
        this.o.store.park(it.slot, it.offset, it.idHash, it.record, res)
        this.o.onParked?.(subject, res, it.record)
        this.o.log.warn(
          { subject, err: res, id: recordId(it.record) },
          'a broker refused a due message for good; parked as a dead letter of the delay group',
        )
        continue
      }
      failed++
      firstErr ??= res
      if (r === undefined) {
        r = { ring: new EntryRing(64), attempt: 0, resumeAt: 0, probing: false }
        this.retries.set(subject, r)
      }
      r.ring.push(it.due, it.offset, it.slot, it.length)
    }
    if (r !== undefined) {
      r.probing = false
      if (failed > 0) {
        const base = Math.min(this.o.retryMaxMs, this.o.retryInitialMs * 2 ** Math.min(r.attempt, 30))
        r.resumeAt = now + Math.round(base * (0.5 + Math.random() * 0.5))
        r.attempt++
        this.o.onFailed?.(subject, firstErr as QmqError | Error, failed)
        this.o.log.warn(
          { subject, failed, attempt: r.attempt, retryInMs: r.resumeAt - now, err: firstErr },
          'dispatch failed; will retry',
        )
      } else {
        r.attempt = 0
        r.resumeAt = 0
        if (r.ring.size === 0) this.retries.delete(subject)
      }
    }
    if (!this.closed) this.pump()
  }

  /** Stops sending; waits (bounded) for requests in flight to settle so their acks are recorded. */
  async close(timeoutMs = 5_000): Promise<void> {
    this.closed = true
    const until = Date.now() + timeoutMs
    while (this.inFlight > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 5))
  }
}

/**
 * A per-record answer that retrying cannot change: a non-retriable status about the record. Retried
 * all the same: QMQ_ERR_INTERNAL (also what an unknown status from a newer broker maps to: not known
 * to be final) and QMQ_ERR_UNAUTHORIZED (a configuration to fix, not a bad record).
 */
function isPermanent(err: QmqError | Error): err is QmqError {
  return (
    err instanceof QmqError &&
    !err.retriable &&
    err.code !== 'QMQ_ERR_INTERNAL' &&
    err.code !== 'QMQ_ERR_UNAUTHORIZED'
  )
}

function recordId(record: Buffer): string {
  return record.toString('utf8', 32, 32 + record.readUInt16BE(28))
}

/** The subject of a record (record.ts: id at 32, subject after it). */
export function recordSubject(record: Buffer): string {
  const idLen = record.readUInt16BE(28)
  const subjectLen = record.readUInt16BE(30)
  return record.toString('utf8', 32 + idLen, 32 + idLen + subjectLen)
}
