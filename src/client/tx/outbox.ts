import type { Registry } from 'prom-client'
import { QmqError, toQmqError } from '../../common/errors'
import type { Logger } from '../../common/logger'
import { encodeRecord } from '../../common/record'
import { Message } from '../producer/message'
import type { MessageSendStateListener, SendResult } from '../producer/producer'
import { OutboxMetrics } from './metrics'
import type { TransactionProvider, TxScope } from './provider'
import { deleteRows, messageFromRow, type OutboxOptions, type OutboxSender, OutboxWatchdog } from './watchdog'

/** The `group` of the SendResult of a message written to the outbox (not sent yet). */
export const OUTBOX_GROUP = 'outbox'

/** A message written to the outbox in an open transaction. */
interface Written {
  id: string
  /** The record as written to the row: what is sent after COMMIT. */
  record: Buffer
  /** The caller's message (handed to their listener). */
  message: Message
  listener: MessageSendStateListener | undefined
}

function ignore(): void {}

/**
 * The producer's side of transactional messages (producer.setTransactionProvider()).
 *
 * sendMessage() inside a transaction of the provider (found through AsyncLocalStorage, or given
 * explicitly) does not send: it encodes the message and INSERTs it into the outbox table on the
 * transaction's connection, and resolves once the row is written (SendResult.group is 'outbox').
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
    this.insertSql =
      `INSERT INTO ${provider.outboxTable} (message_id, subject, record, deliver_at, created_at) ` +
      'VALUES (?, ?, ?, ?, ?) ON CONFLICT (message_id) DO NOTHING'
    if (options.watchdog !== false) this.watchdog.start()
  }

  /**
   * When the caller is inside a transaction of the provider (or gave one), writes the message to the
   * outbox in it and returns the promise of that write; otherwise undefined (send as usual).
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
    if (scope.state !== 'open') {
      return Promise.reject(
        new QmqError(
          'QMQ_ERR_TX_STATE',
          `message ${id}: the transaction is already ${scope.state === 'committed' ? 'committed' : 'rolled back'}`,
        ),
      )
    }
    let record: Buffer
    try {
      record = encodeRecord(message.encodable())
    } catch (err) {
      return Promise.reject(toQmqError(err, 'QMQ_ERR_INVALID_ARGUMENT'))
    }
    let list = scope.data.get(this) as Written[] | undefined
    if (list === undefined) {
      const l: Written[] = []
      list = l
      scope.data.set(this, l)
      scope.onCommit(() => this.afterCommit(l))
    }
    list.push({ id, record, message, listener })
    const subject = message.getSubject()
    const write = this.provider
      .query(scope.tx, this.insertSql, [id, subject, record, message.scheduleAtMs() ?? null, Date.now()])
      .then(
        (): SendResult => ({ messageId: id, subject, group: OUTBOX_GROUP }),
        (err: unknown) => {
          throw new QmqError(
            'QMQ_ERR_OUTBOX_WRITE',
            `message ${id}: writing it to ${this.provider.outboxTable} failed: ${(err as Error)?.message ?? err}`,
            { cause: err },
          )
        },
      )
    scope.track(write)
    if (listener !== undefined) {
      write.catch((err: QmqError) => {
        try {
          listener.onFailed(message, err)
        } catch (e) {
          this.log.error(e as Error, 'send listener threw')
        }
      })
    }
    return write
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
            const l = w.listener
            await this.sender.send(
              messageFromRow(w.record),
              l === undefined
                ? undefined
                : { onSuccess: () => l.onSuccess(w.message), onFailed: (_m, e) => l.onFailed(w.message, e) },
            )
            stored.push(w.id)
          } catch (err) {
            this.log.warn(
              { messageId: w.id, err: toQmqError(err).message },
              'committed message not sent; its outbox row is kept for the watchdog',
            )
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
export interface SendOptions {
  /** Send in this transaction (a handle from the provider's transaction() or attach()). */
  transaction?: object
  listener?: MessageSendStateListener
}

/** Splits sendMessage()'s second argument: a listener (QMQ's form) or SendOptions. */
export function sendArgs(arg: MessageSendStateListener | SendOptions | undefined): {
  listener: MessageSendStateListener | undefined
  transaction: object | undefined
} {
  if (arg === undefined || typeof (arg as MessageSendStateListener).onSuccess === 'function')
    return { listener: arg as MessageSendStateListener | undefined, transaction: undefined }
  const o = arg as SendOptions
  return { listener: o.listener, transaction: o.transaction }
}
