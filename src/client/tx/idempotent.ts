import { QmqError } from '../../common/errors'
import type { Logger } from '../../common/logger'
import { silentLogger } from '../../common/logger'
import type { ConsumedMessage } from '../consumer/consumed-message'
import type { MessageHandler } from '../consumer/decorators'
import type { TransactionProvider } from './provider'

export interface IdempotentCheckerOptions {
  /** How long a "processed" record is kept (a redelivery later than this is applied again). Default 7 days. */
  retentionMs?: number
  /** Between deletions of expired records (0 = never by itself; call expire()). Default 10 minutes. */
  expireIntervalMs?: number
  /** The key of a message (default: its message id). */
  key?: (message: ConsumedMessage) => string
  logger?: Logger
}

const DEFAULT_RETENTION_MS = 7 * 24 * 3_600_000 // 7 days
const DEFAULT_EXPIRE_INTERVAL_MS = 10 * 60_000 // 10 minutes

/** What a handler wrapped by the checker does with a delivery. */
export type IdempotentOutcome = 'applied' | 'duplicate'

/**
 * QMQ's idempotent checker on the application's database: the handler runs inside a transaction of
 * the provider that first inserts (consumer group, message id) into the processed table
 * (`INSERT ... ON CONFLICT DO NOTHING RETURNING`). A redelivered message finds its record and is
 * skipped (acked, handler not called); the business writes of the handler and the record commit
 * together, or neither does (the handler threw: rollback, nack, a redelivery applies it).
 *
 * Two deliveries of one message at the same time on PostgreSQL: the second INSERT waits for the
 * first transaction, then finds the record (skipped) or not (the first rolled back: applied).
 * Messages the handler sends through a producer on the same provider go out only if it commits.
 *
 * @example
 * const checker = new IdempotentChecker(provider)
 * consumer.addListener('order.created', 'billing', checker.wrap('billing', async (message, tx) => {
 *   await tx.query('UPDATE accounts SET ...', [...])
 * }))
 */
export class IdempotentChecker<Tx extends object> {
  private readonly retentionMs: number
  private readonly expireIntervalMs: number
  private readonly key: (message: ConsumedMessage) => string
  private readonly log: Logger
  private timer: NodeJS.Timeout | undefined
  private closed = false
  private readonly insertSql: string

  constructor(
    readonly provider: TransactionProvider<Tx>,
    options: IdempotentCheckerOptions = {},
  ) {
    this.retentionMs = options.retentionMs ?? DEFAULT_RETENTION_MS
    this.expireIntervalMs = options.expireIntervalMs ?? DEFAULT_EXPIRE_INTERVAL_MS
    for (const [k, v, min] of [
      ['retentionMs', this.retentionMs, 1],
      ['expireIntervalMs', this.expireIntervalMs, 0],
    ] as const) {
      if (!Number.isSafeInteger(v) || v < min)
        throw new QmqError(
          'QMQ_ERR_INVALID_ARGUMENT',
          `IdempotentChecker ${k} must be an integer >= ${min} (got ${v})`,
        )
    }
    this.key = options.key ?? ((m) => m.getMessageId())
    this.log = (options.logger ?? silentLogger).child({ component: 'idempotent-checker' })
    this.insertSql =
      `INSERT INTO ${provider.processedTable} (consumer_group, message_id, processed_at) VALUES (?, ?, ?) ` +
      'ON CONFLICT (consumer_group, message_id) DO NOTHING RETURNING message_id'
  }

  /**
   * Runs `handler(message, tx)` once per (consumerGroup, message key): inside a transaction that also
   * records the message as processed. Resolves 'duplicate' without calling it when already done.
   */
  async process(
    consumerGroup: string,
    message: ConsumedMessage,
    handler: (message: ConsumedMessage, tx: Tx) => unknown,
  ): Promise<IdempotentOutcome> {
    this.startExpiry()
    const key = this.key(message)
    return this.provider.transaction(async (tx) => {
      const rows = await this.provider.query(tx, this.insertSql, [consumerGroup, key, Date.now()])
      if (rows.length === 0) {
        this.log.debug(
          { messageId: message.getMessageId(), key, consumerGroup },
          'already processed: skipped',
        )
        return 'duplicate'
      }
      await handler(message, tx)
      return 'applied'
    })
  }

  /**
   * A consumer handler doing `process()`: pass it to `consumer.addListener()`. The handler gets the
   * transaction handle as its second argument (also `provider.current()`).
   */
  wrap(consumerGroup: string, handler: (message: ConsumedMessage, tx: Tx) => unknown): MessageHandler {
    return async (message) => {
      await this.process(consumerGroup, message, handler)
    }
  }

  /** @internal The `idempotent` option of @QmqConsumer / addListener. */
  wrapHandler(handler: MessageHandler, consumerGroup: string): MessageHandler {
    return this.wrap(consumerGroup, (message) => handler(message))
  }

  /** Deletes the records older than the retention. */
  async expire(now = Date.now()): Promise<void> {
    await this.provider.query(
      undefined,
      `DELETE FROM ${this.provider.processedTable} WHERE processed_at < ?`,
      [now - this.retentionMs],
    )
  }

  /** Stops the periodic expiry. */
  close(): void {
    this.closed = true
    if (this.timer !== undefined) clearInterval(this.timer)
    this.timer = undefined
  }

  private startExpiry(): void {
    if (this.timer !== undefined || this.closed || this.expireIntervalMs === 0) return
    this.timer = setInterval(() => {
      this.expire().catch((err: unknown) =>
        this.log.warn({ err: (err as Error).message }, 'expiring processed records failed'),
      )
    }, this.expireIntervalMs)
    this.timer.unref()
  }
}
