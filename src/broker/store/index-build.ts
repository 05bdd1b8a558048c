import { toQmqError } from '../../common/errors'
import type { Logger } from '../../common/logger'
import type { IndexLog } from './index-log'
import { FRAME_BYTES, type MessageLog, readFrame } from './message-log'

/** Wait after a failed pass (a segment deleted by retention under the scan, an I/O error). */
const RETRY_MS = 1_000

/**
 * Brings the message index (index-log.ts) up to the message log in the background, so that a store
 * whose index lags far behind its log (a promoted slave: it has none; a lost or deleted index) serves
 * producers and consumers at once instead of after a scan of the whole log.
 *
 * Invariant (index-log.ts): MESSAGE entries are queued in message-log order, so that the largest one
 * (`coveredEnd`) tells how far the index covers the log, also after a crash in the middle of a build.
 * While building, the store queues no entry for the records it commits (`live` is false): the build
 * scans up to the log's committed end, one segment at a time, and goes on while the committed end
 * moves; in the same synchronous step in which it finds nothing left to scan it turns `live` on,
 * and from then on every committed record is indexed as it is committed. Trace entries are queued
 * as they happen throughout (they carry no message-log offset).
 */
export class IndexBuild {
  /** The index covers the committed log: records are indexed as they are committed. */
  live = false
  private stopped = false
  private wake: (() => void) | undefined
  private readonly done: Promise<void>

  constructor(
    private readonly index: IndexLog,
    private readonly mlog: MessageLog,
    private readonly log: Logger,
  ) {
    const from = Math.max(index.coveredEnd, mlog.log.startOffset)
    if (from >= mlog.committedEnd) {
      this.live = true
      this.done = Promise.resolve()
    } else this.done = this.run(from)
  }

  /** Share of the message log (from its first retained byte) the index covers, 0..1. */
  get covered(): number {
    if (this.live) return 1
    const start = this.mlog.log.startOffset
    const span = this.mlog.committedEnd - start
    return span <= 0 ? 1 : Math.min(1, Math.max(0, this.index.coveredEnd - start) / span)
  }

  /** Stops a build in progress (store closing): it ends after the segment it is scanning. */
  stop(): Promise<void> {
    this.stopped = true
    this.wake?.()
    return this.done
  }

  private async run(start: number): Promise<void> {
    const t0 = Date.now()
    const log = this.mlog.log
    let from = start
    let messages = 0
    this.log.info(
      { from, end: this.mlog.committedEnd },
      'index: building from the message log in the background (queries by id and key answer QMQ_ERR_INDEX_BUILDING until it is done)',
    )
    while (!this.stopped) {
      const end = this.mlog.committedEnd
      from = Math.max(from, log.startOffset)
      if (from >= end) {
        this.live = true
        this.log.info(
          { messages, ms: Date.now() - t0 },
          'index: built; records are indexed as they are stored',
        )
        return
      }
      // One segment per pass (segments start at record boundaries); the rest at once from a gap.
      const segEnd = log.segmentEnd(from)
      const to = segEnd > from ? Math.min(end, segEnd) : end
      try {
        await log.scan(
          from,
          to,
          this.mlog.frameCheck(to),
          (buf, pos, length, offset) => {
            const f = readFrame(buf, pos)
            // The scan reuses its buffer: the index keeps nothing of it but the hashes it computes.
            this.index.addMessage(
              buf.subarray(pos + FRAME_BYTES, pos + length),
              offset + FRAME_BYTES,
              f.storedAt,
              f.seq,
            )
            messages++
          },
          { resync: true },
        )
        await this.index.flush()
        from = to
      } catch (err) {
        if (this.stopped) return
        this.log.warn({ err: toQmqError(err).message, from }, 'index: build pass failed; retrying')
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, RETRY_MS)
          timer.unref()
          this.wake = () => {
            clearTimeout(timer)
            resolve()
          }
        })
        this.wake = undefined
        from = Math.max(this.index.coveredEnd, log.startOffset)
      }
    }
  }
}
