import type { Registry } from 'prom-client'
import { QmqError, toQmqError } from '../../common/errors'
import type { Logger } from '../../common/logger'
import { encodeRecord } from '../../common/record'
import { Message } from '../producer/message'
import type { MessageSendStateListener, SendResult } from '../producer/producer'
import { OutboxMetrics } from './metrics'
import type { TransactionProvider, TxScope } from './provider'
import {
  deleteRows,
  messageFromRow,
  type OutboxOptions,
  type OutboxSender,
  OutboxWatchdog,
  sendWhenRoom,
} from './watchdog'

/** The `group` of the SendResult of a message written to the outbox (not sent yet). */
export const OUTBOX_GROUP = 'outbox'

/** A message sent in an open transaction. */
interface Written {
  id: string
  subject: string
  deliverAt: number | null
  createdAt: number
  /** The record as written to the row: what is sent after COMMIT. */
  record: Buffer
  /** The caller's message (handed to their listener). */
  message: Message
  listener: MessageSendStateListener | undefined
}

function ignore(): void {}

/** The outbox's data in one transaction. */
interface ScopeData {
  /** Every message sent in it: sent after COMMIT. */
  written: Written[]
  /** Those not INSERTed yet. */
  unwritten: Written[]
}

/** Rows per INSERT statement (5 parameters each: well under PostgreSQL's and SQLite's limits). */
const ROWS_PER_INSERT = 500

/**
 * The producer's side of transactional messages (producer.setTransactionProvider()).
 *
 * sendMessage() inside a transaction of the provider (found through AsyncLocalStorage, or given
 * explicitly) does not send: it encodes the message, keeps it with the transaction and resolves at
 * once (SendResult.group is 'outbox'); just before COMMIT the messages are INSERTed into the outbox
 * table on the transaction's connection (a failed INSERT fails the transaction: rolled back).
 * When the transaction commits, the messages are handed to the producer at once and their rows
 * deleted once stored; when it rolls back, they are dropped with it. A crash between COMMIT and
 * the send leaves the rows: the watchdog (watchdog.ts) sends them later with the same ids.
 */
export class Outbox<Tx extends object> {
  readonly watchdog: OutboxWatchdog<Tx>
  private readonly metrics: OutboxMetrics | undefined
  private readonly inflight = new Set<Promise<void>>()
  private readonly insertSql: string

  constructor(
    readonly provider: TransactionProvider<Tx>,
    private readonly sender: OutboxSender,
    options: Partial<OutboxOptions>,
    private readonly log: Logger,
    registry: Registry | undefined,
  ) {
    this.metrics = registry === undefined ? undefined : new OutboxMetrics(registry, provider.outboxTable)
    this.watchdog = new OutboxWatchdog(provider, sender, options, log, this.metrics)
    this.insertSql = `INSERT INTO ${provider.outboxTable} (message_id, subject, record, deliver_at, created_at) VALUES`
    if (options.watchdog !== false) this.watchdog.start()
  }

  /**
   * When the caller is inside a transaction of the provider (or gave one), takes the message into it
   * (written to the outbox before COMMIT) and returns a resolved SendResult; otherwise undefined (send
   * as usual).
   */
  intercept(
    message: Message,
    listener: MessageSendStateListener | undefined,
    explicit: object | undefined,
  ): Promise<SendResult> | undefined {
    if (!(message instanceof Message)) return undefined
    let scope: TxScope<Tx> | undefined
    try {
      scope = this.provider.scopeOf(explicit as Tx | undefined)
    } catch (err) {
      return Promise.reject(err)
    }
    if (scope === undefined) return undefined
    const id = message.getMessageId()
    if (scope.state !== 'open' || scope.sealed) {
      const what =
        scope.state === 'rolledBack' ? 'rolled back' : scope.sealed ? 'committing or committed' : scope.state
      return Promise.reject(
        new QmqError('QMQ_ERR_TX_STATE', `message ${id}: the transaction is already ${what}`),
      )
    }
    let record: Buffer
    try {
      record = encodeRecord(message.encodable())
    } catch (err) {
      return Promise.reject(toQmqError(err, 'QMQ_ERR_INVALID_ARGUMENT'))
    }
    let data = scope.data.get(this) as ScopeData | undefined
    if (data === undefined) {
      const d: ScopeData = { written: [], unwritten: [] }
      data = d
      scope.data.set(this, d)
      scope.onCommit(() => this.afterCommit(d.written))
    }
    const subject = message.getSubject()
    const w: Written = {
      id,
      subject,
      deliverAt: message.scheduleAtMs() ?? null,
      createdAt: Date.now(),
      record,
      message,
      listener,
    }
    data.written.push(w)
    const s = scope
    const d = data
    if (d.unwritten.length === 0) s.beforeCommit(() => this.write(s, d))
    d.unwritten.push(w)
    return Promise.resolve({ messageId: id, subject, group: OUTBOX_GROUP })
  }

  /**
   * INSERTs the messages sent in the transaction, a few hundred rows per statement, just before
   * COMMIT (one round trip for many messages, instead of one each as they are sent).
   */
  private async write(scope: TxScope<Tx>, data: ScopeData): Promise<void> {
    const rows = data.unwritten
    data.unwritten = []
    try {
      for (let i = 0; i < rows.length; i += ROWS_PER_INSERT) {
        const chunk = rows.slice(i, i + ROWS_PER_INSERT)
        const params: (string | number | Buffer | null)[] = []
        for (const r of chunk) params.push(r.id, r.subject, r.record, r.deliverAt, r.createdAt)
        await this.provider.query(
          scope.tx,
          `${this.insertSql} ${chunk.map(() => '(?, ?, ?, ?, ?)').join(', ')} ON CONFLICT (message_id) DO NOTHING`,
          params,
        )
      }
    } catch (cause) {
      const err = new QmqError(
        'QMQ_ERR_OUTBOX_WRITE',
        `writing ${rows.length} message(s) to ${this.provider.outboxTable} failed: ${(cause as Error)?.message ?? cause}`,
        { cause },
      )
      for (const r of rows) {
        if (r.listener === undefined) continue
        try {
          r.listener.onFailed(r.message, err)
        } catch (e) {
          this.log.error(e as Error, 'send listener threw')
        }
      }
      throw err
    }
  }

  /** Sends the messages of a committed transaction, then deletes the rows of those stored. */
  private afterCommit(list: Written[]): void {
    this.metrics?.committed(list.length)
    const run = (async () => {
      const stored: string[] = []
      await Promise.all(
        list.map(async (w) => {
          try {
            if (!this.sender.ready())
              throw new QmqError(
                'QMQ_ERR_CLIENT_CLOSED',
                'producer is not running; the watchdog will send it',
              )
            await sendWhenRoom(this.sender, messageFromRow(w.record))
            stored.push(w.id)
            this.tell(w, undefined)
          } catch (err) {
            this.log.warn(
              { messageId: w.id, err: toQmqError(err).message },
              'committed message not sent; its outbox row is kept for the watchdog',
            )
            this.tell(w, toQmqError(err))
          }
        }),
      )
      if (stored.length > 0) {
        await deleteRows(this.provider, undefined, stored).catch((err: unknown) =>
          this.log.warn(
            { n: stored.length, err: (err as Error).message },
            'outbox rows of stored messages not deleted; the watchdog resends them (deduped by id)',
          ),
        )
      }
    })()
    this.inflight.add(run)
    void run.finally(() => this.inflight.delete(run)).catch(ignore)
  }

  /** Calls the listener given to sendMessage (with the caller's message) once its send settled. */
  private tell(w: Written, err: QmqError | undefined): void {
    const l = w.listener
    if (l === undefined) return
    try {
      if (err === undefined) l.onSuccess(w.message)
      else l.onFailed(w.message, err)
    } catch (e) {
      this.log.error(e as Error, 'send listener threw')
    }
  }

  /** Resolves when the sends (and row deletions) of committed transactions are done. */
  async settled(): Promise<void> {
    while (this.inflight.size > 0) await Promise.all(this.inflight)
  }

  /** Stops the watchdog and waits for the after-commit sends. */
  async close(): Promise<void> {
    await this.watchdog.stop()
    await this.settled()
    this.metrics?.close()
  }
}

/** The second argument of sendMessage() in its transactional form. */
/** sendMessage()'s options, given in place of the listener or after it. */
export interface SendOptions {
  /** Send in this transaction (a handle from the provider's transaction() or attach()). */
  transaction?: object
  listener?: MessageSendStateListener
  /** Withdraws the send while it was not admitted to the send queue (see sendMessage). */
  signal?: AbortSignal
}

/**
 * Splits sendMessage()'s arguments: a listener (QMQ's form) or SendOptions second, and SendOptions
 * third (after a listener). Options given second win over the third argument's.
 */
export function sendArgs(
  arg: MessageSendStateListener | SendOptions | undefined,
  more?: SendOptions,
): {
  listener: MessageSendStateListener | undefined
  transaction: object | undefined
  signal: AbortSignal | undefined
} {
  if (arg === undefined || typeof (arg as MessageSendStateListener).onSuccess === 'function')
    return {
      listener: (arg as MessageSendStateListener | undefined) ?? more?.listener,
      transaction: more?.transaction,
      signal: more?.signal,
    }
  const o = arg as SendOptions
  return {
    listener: o.listener ?? more?.listener,
    transaction: o.transaction ?? more?.transaction,
    signal: o.signal ?? more?.signal,
  }
}
