import path from 'node:path'
import { History } from '../broker/store/history'
import { IndexKind, IndexLog, keyBytes, TRACE_EVENT_NAMES, TraceEvent } from '../broker/store/index-log'
import type { Logger } from '../common/logger'
import type {
  HistoryAnswer,
  ListAnswer,
  MessageAnswer,
  QueryRequest,
  TraceEventType,
  TraceEventView,
} from '../common/protocol/query'
import { readRecordHeader } from '../common/record'

/**
 * What a delay server records for message query and history (docs/query.md): a trace log (the
 * broker's index log, TRACE entries only, keyed by message id: scheduled, dispatched, parked) and
 * per-minute counts (scheduled as `produced` and `bytes`, dispatched as `delivered`, parked as `dead`).
 * Trace segments are kept for `traceRetentionMs` (default 7 days; a message delayed longer keeps its
 * `scheduled` event only that long), history for 25 hours.
 */
export const DEFAULT_TRACE_RETENTION_MS = 7 * 24 * 3_600_000
const TRACE_SEGMENT_BYTES = 16 * 1024 * 1024

export class DelayTrace {
  private timer: NodeJS.Timeout | undefined

  private constructor(
    private readonly index: IndexLog,
    readonly history: History,
    private readonly now: () => number,
    private readonly retentionMs: number,
  ) {}

  static async open(opts: {
    dataDir: string
    now: () => number
    log: Logger
    traceRetentionMs?: number
  }): Promise<DelayTrace> {
    const index = await IndexLog.open({
      dataDir: path.join(opts.dataDir, 'trace'),
      segmentBytes: TRACE_SEGMENT_BYTES,
      log: opts.log,
    })
    const history = await History.open({
      dir: path.join(opts.dataDir, 'history'),
      now: opts.now,
      log: opts.log,
    })
    const t = new DelayTrace(index, history, opts.now, opts.traceRetentionMs ?? DEFAULT_TRACE_RETENTION_MS)
    t.timer = setInterval(() => t.index.retain(Date.now() - t.retentionMs), 3_600_000)
    t.timer.unref()
    return t
  }

  private add(
    event: (typeof TraceEvent)[keyof typeof TraceEvent],
    record: Buffer,
    extra = 0,
    time = this.now(),
  ): void {
    let id: string
    let subject: string
    try {
      const h = readRecordHeader(record, 0, { verify: false })
      id = h.id
      subject = h.subject
    } catch {
      return
    }
    this.index.addTrace({
      key: id,
      event,
      subject,
      sequence: -1,
      group: '',
      consumer: id,
      deliveryCount: 0,
      time,
      ...(extra > 0 ? { retryAt: extra } : {}),
    })
    if (event === TraceEvent.SCHEDULED) {
      this.history.add(subject, '', 'produced')
      this.history.add(subject, '', 'bytes', record.length)
    } else if (event === TraceEvent.DISPATCHED) this.history.add(subject, '', 'delivered')
    else this.history.add(subject, '', 'dead')
  }

  scheduled(record: Buffer, scheduleAt: number): void {
    this.add(TraceEvent.SCHEDULED, record, scheduleAt)
  }

  /** `sentAt`: when the send to the broker started (the broker stores it after that). */
  dispatched(record: Buffer, sentAt: number): void {
    this.add(TraceEvent.DISPATCHED, record, 0, sentAt)
  }

  parked(record: Buffer): void {
    this.add(TraceEvent.PARKED, record)
  }

  async query(req: QueryRequest, server: string): Promise<MessageAnswer | ListAnswer | HistoryAnswer> {
    if (req.op === 'history') return this.history.query(req)
    if (req.op !== 'message') return { messages: [] }
    const entries = await this.index.lookup(IndexKind.TRACE, keyBytes(IndexKind.TRACE, req.id, -1))
    const events: TraceEventView[] = []
    for (const e of entries) {
      if (e.consumer !== req.id || e.ref !== -1) continue // a hash collision
      const v: TraceEventView = {
        time: e.time,
        type: (TRACE_EVENT_NAMES[e.event] ?? 'scheduled') as TraceEventType,
        server,
        subject: e.subject,
      }
      if (e.event === TraceEvent.SCHEDULED && e.extra > 0) v.scheduleAt = e.extra
      events.push(v)
    }
    return { messages: [], events }
  }

  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer)
    await this.index.close()
    await this.history.close()
  }
}
