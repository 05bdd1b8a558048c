import { boolean, integer, type OptionsSchema, resolveOptions } from '../../common/config'
import { isQmqError, toQmqError } from '../../common/errors'
import type { Logger } from '../../common/logger'
import { decodeRecord } from '../../common/record'
import { Message } from '../producer/message'
import type { MessageSendStateListener, SendResult } from '../producer/producer'
import { backoffDelay } from '../retry'
import type { OutboxMetrics } from './metrics'
import type { TransactionProvider } from './provider'
import { bytes, inList, num, type SqlRow } from './sql'

/** First wait before a failed row is tried again (ms); doubles per attempt. */
const RETRY_BASE_MS = 1_000
/** Longest wait before a failed row is tried again (ms). */
const RETRY_MAX_MS = 5 * 60_000

/** What the outbox sends through: the producer's own send path (never back into an outbox). */
export interface OutboxSender {
  send(message: Message, listener?: MessageSendStateListener): Promise<SendResult>
  /** False until the producer can send (before init(), after close()). */
  ready(): boolean
}

export interface OutboxOptions {
  /** Run the watchdog in this process. */
  watchdog: boolean
  /** Between watchdog passes. */
  watchdogIntervalMs: number
  /**
   * Rows younger than this are left to the producer that committed them (it sends them right after
   * COMMIT); older ones are taken as left behind by a crash and resent.
   */
  watchdogMinAgeMs: number
  /** Rows claimed and resent at once. */
  watchdogBatchSize: number
  /** SQLite: how long a watchdog's claim on rows holds (longer than a send may take). */
  claimMs: number
}

export const outboxSchema: OptionsSchema<OutboxOptions> = {
  watchdog: boolean({ default: true, doc: 'resend rows left by a crash' }),
  watchdogIntervalMs: integer({ default: 5_000, min: 10, doc: 'between watchdog passes (ms)' }),
  watchdogMinAgeMs: integer({ default: 30_000, min: 0, doc: 'rows younger belong to their producer (ms)' }),
  watchdogBatchSize: integer({ default: 100, min: 1, max: 10_000, doc: 'rows per watchdog claim' }),
  claimMs: integer({ default: 60_000, min: 100, doc: 'SQLite claim duration (ms)' }),
}

export function resolveOutboxOptions(input: Partial<OutboxOptions> = {}): Readonly<OutboxOptions> {
  return resolveOptions('outbox', outboxSchema, input)
}

/** Longest wait for room in a full send queue before a send counts as failed (ms). */
const QUEUE_FULL_WAIT_MS = 30_000

/**
 * Sends through `sender`, waiting (10 ms doubling to 200 ms, up to QUEUE_FULL_WAIT_MS) while the
 * producer's send queue is full: messages that are already committed are not turned away for that.
 */
export async function sendWhenRoom(sender: OutboxSender, message: Message): Promise<SendResult> {
  const end = Date.now() + QUEUE_FULL_WAIT_MS
  for (let wait = 10; ; wait = Math.min(200, wait * 2)) {
    try {
      return await sender.send(message)
    } catch (err) {
      if (!isQmqError(err, 'QMQ_ERR_SEND_QUEUE_FULL') || Date.now() + wait >= end) throw err
      await new Promise((r) => setTimeout(r, wait))
    }
  }
}

/** The message of an outbox row: its record decoded (CRC checked), the same id as first written. */
export function messageFromRow(record: Buffer): Message {
  return new Message(decodeRecord(record))
}

/** Deletes outbox rows by message id (in `tx`, or on their own), in chunks the drivers accept. */
export async function deleteRows<Tx extends object>(
  provider: TransactionProvider<Tx>,
  tx: Tx | undefined,
  ids: readonly string[],
): Promise<void> {
  for (let i = 0; i < ids.length; i += 500) {
    const chunk = ids.slice(i, i + 500)
    await provider.query(
      tx,
      `DELETE FROM ${provider.outboxTable} WHERE message_id IN (${inList(chunk.length)})`,
      chunk,
    )
  }
}

export interface PassResult {
  /** Rows claimed in this pass. */
  claimed: number
  /** Sent again and deleted. */
  resent: string[]
  /** Kept: their send (or decoding) failed; attempts was raised. */
  failed: string[]
}

/**
 * Resends the outbox rows a crash left behind (committed, never known stored), oldest first, with
 * their own message ids: a copy of a message that did reach a broker is dropped by its dedupe.
 *
 * Claiming, so that two watchdogs (processes) on one database never send one row at the same time:
 * - PostgreSQL: one transaction per pass: `SELECT ... FOR UPDATE SKIP LOCKED` locks the batch (others
 *   skip it), the rows are sent, the stored ones deleted and the failed ones updated, COMMIT. A
 *   watchdog that dies mid-pass loses its connection and with it the locks.
 * - SQLite: a write transaction (BEGIN IMMEDIATE) picks unclaimed rows and sets `claimed_until` to
 *   now + claimMs; the rows are sent outside it; stored ones are deleted, failed ones released. A
 *   claim of a watchdog that died expires.
 * A row whose send keeps failing is kept, its `attempts` and `last_error` updated, counted and logged,
 * and left alone for a growing while (claimed_until, on both databases) so it does not hold up the rest.
 */
export class OutboxWatchdog<Tx extends object> {
  private readonly opts: Readonly<OutboxOptions>
  private timer: NodeJS.Timeout | undefined
  private running: Promise<void> | undefined
  private stopped = false
  private failing = false

  constructor(
    private readonly provider: TransactionProvider<Tx>,
    private readonly sender: OutboxSender,
    options: Partial<OutboxOptions>,
    private readonly log: Logger,
    private readonly metrics?: OutboxMetrics,
  ) {
    this.opts = resolveOutboxOptions(options)
  }

  /** Starts the periodic passes (the first one after watchdogIntervalMs). */
  start(): void {
    if (this.stopped || this.timer !== undefined) return
    this.schedule()
  }

  /** Stops the passes and waits for a running one. */
  async stop(): Promise<void> {
    this.stopped = true
    if (this.timer !== undefined) clearTimeout(this.timer)
    this.timer = undefined
    await this.running
  }

  private schedule(): void {
    if (this.stopped) return
    this.timer = setTimeout(() => {
      this.timer = undefined
      this.running = this.tick().finally(() => {
        this.running = undefined
        this.schedule()
      })
    }, this.opts.watchdogIntervalMs)
    this.timer.unref()
  }

  /** Passes until a pass finds less than a batch (or fails), then refreshes the row gauges. */
  async tick(): Promise<void> {
    try {
      if (this.sender.ready()) {
        for (;;) {
          const r = await this.pass()
          if (r.claimed < this.opts.watchdogBatchSize || r.failed.length > 0 || this.stopped) break
        }
      }
      await this.refreshStats()
      if (this.failing)
        this.log.info({ table: this.provider.outboxTable }, 'outbox watchdog: database reachable again')
      this.failing = false
    } catch (err) {
      this.metrics?.watchdogError()
      // Logged once per streak of failures (the database may be down for a while).
      if (!this.failing) {
        this.log.warn(
          { table: this.provider.outboxTable, err: (err as Error).message },
          'outbox watchdog pass failed; retrying every watchdogIntervalMs',
        )
      }
      this.failing = true
    }
  }

  /** One claim-send-settle round over at most watchdogBatchSize rows older than watchdogMinAgeMs. */
  pass(minAgeMs = this.opts.watchdogMinAgeMs): Promise<PassResult> {
    return this.provider.dialect === 'postgres' ? this.passLocked(minAgeMs) : this.passClaimed(minAgeMs)
  }

  /** Sends everything old enough now (minimum age ignored unless given): for `--once` and tests. */
  async drain(minAgeMs = 0): Promise<PassResult> {
    const total: PassResult = { claimed: 0, resent: [], failed: [] }
    for (;;) {
      const r = await this.pass(minAgeMs)
      total.claimed += r.claimed
      total.resent.push(...r.resent)
      total.failed.push(...r.failed)
      if (r.claimed < this.opts.watchdogBatchSize || r.failed.length > 0) return total
    }
  }

  private async passLocked(minAgeMs: number): Promise<PassResult> {
    const p = this.provider
    const now = Date.now()
    return p.adapter.transaction(async (tx) => {
      const rows = await p.query(
        tx,
        `SELECT message_id, record, attempts FROM ${p.outboxTable}
         WHERE created_at <= ? AND claimed_until < ? ORDER BY created_at LIMIT ? FOR UPDATE SKIP LOCKED`,
        [now - minAgeMs, now, this.opts.watchdogBatchSize],
      )
      return this.resendRows(rows, tx)
    })
  }

  private async passClaimed(minAgeMs: number): Promise<PassResult> {
    const p = this.provider
    const now = Date.now()
    const rows = await p.adapter.transaction(async (tx) => {
      const found = await p.query(
        tx,
        `SELECT message_id, record, attempts FROM ${p.outboxTable}
         WHERE created_at <= ? AND claimed_until < ? ORDER BY created_at LIMIT ?`,
        [now - minAgeMs, now, this.opts.watchdogBatchSize],
      )
      if (found.length > 0) {
        const ids = found.map((r) => String(r.message_id))
        await p.query(
          tx,
          `UPDATE ${p.outboxTable} SET claimed_until = ? WHERE message_id IN (${inList(ids.length)})`,
          [now + this.opts.claimMs, ...ids],
        )
      }
      return found
    })
    return this.resendRows(rows, undefined)
  }

  /** Sends the rows, deletes the stored ones and records the failures (in `tx` when given). */
  private async resendRows(rows: SqlRow[], tx: Tx | undefined): Promise<PassResult> {
    const result: PassResult = { claimed: rows.length, resent: [], failed: [] }
    if (rows.length === 0) return result
    const errors = new Map<string, string>()
    /** Attempts of each failed row, this one included. */
    const attempts0 = new Map<string, number>()
    await Promise.all(
      rows.map(async (row) => {
        const id = String(row.message_id)
        try {
          await sendWhenRoom(this.sender, messageFromRow(bytes(row.record)))
          result.resent.push(id)
        } catch (err) {
          result.failed.push(id)
          errors.set(id, toQmqError(err).message)
          const attempts = num(row.attempts) + 1
          attempts0.set(id, attempts)
          this.log.warn(
            { messageId: id, attempts, err: toQmqError(err).message },
            'outbox watchdog: resend failed; the row is kept and tried again',
          )
        }
      }),
    )
    const p = this.provider
    await deleteRows(p, tx, result.resent)
    // A failed row waits before its next try (claimed_until: RETRY_BASE_MS doubling per attempt up to
    // RETRY_MAX_MS), so rows that keep failing do not hold up the rows behind them.
    for (const id of result.failed) {
      const attempts = attempts0.get(id) ?? 1
      const wait = backoffDelay(attempts - 1, { initialMs: RETRY_BASE_MS, maxMs: RETRY_MAX_MS, jitter: 0 })
      await p.query(
        tx,
        `UPDATE ${p.outboxTable} SET attempts = attempts + 1, last_error = ?, claimed_until = ? WHERE message_id = ?`,
        [(errors.get(id) ?? '').slice(0, 1_000), Date.now() + wait, id],
      )
    }
    this.metrics?.resent(result.resent.length)
    this.metrics?.resendFailed(result.failed.length)
    if (result.resent.length > 0)
      this.log.info(
        { n: result.resent.length, table: p.outboxTable },
        'outbox watchdog: resent rows left behind',
      )
    return result
  }

  private async refreshStats(): Promise<void> {
    if (this.metrics === undefined) return
    const rows = await this.provider.query(
      undefined,
      `SELECT count(*) AS n, min(created_at) AS oldest FROM ${this.provider.outboxTable}`,
      [],
    )
    const r = rows[0] ?? {}
    this.metrics.pending = num(r.n) || 0
    this.metrics.oldest = r.oldest === null || r.oldest === undefined ? undefined : num(r.oldest)
  }
}
