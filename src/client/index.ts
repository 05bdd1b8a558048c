/**
 * qmq client SDK: the package root (`import { ... } from 'qmq'`). Everything public is listed here,
 * explicitly; anything not exported from this file is internal.
 */

// Producer
export {
  MessageProducerProvider,
  type MessageSendStateListener,
  MIN_DELAY_MS,
  type ProducerInit,
  type ProducerOptions,
  type SendOutcome,
  type SendResult,
} from './producer/producer'
export { Message, type PropertyValue, RESERVED_PROPERTY_PREFIX, TimeUnit } from './producer/message'

// Consumer
export {
  type ConsumerInit,
  type ConsumerOptions,
  MessageConsumerProvider,
} from './consumer/consumer-provider'
export {
  type MessageHandler,
  NonRetriableError,
  QmqConsumer,
  type QmqConsumerOptions,
} from './consumer/decorators'
export { ConsumedMessage, type NackOptions } from './consumer/consumed-message'
export { PullConsumer, type PullConsumerOptions } from './consumer/pull-consumer'
export type { StartFrom } from './consumer/start-from'

// Transactional messages and idempotent consumers (docs/transactions.md)
export {
  AttachedTransaction,
  postgresProvider,
  sqliteProvider,
  TransactionProvider,
  type TransactionProviderOptions,
} from './tx/provider'
export { OUTBOX_GROUP, type SendOptions } from './tx/outbox'
export { OutboxWatchdog, type OutboxOptions, type OutboxSender, type PassResult } from './tx/watchdog'
export {
  IdempotentChecker,
  type IdempotentCheckerOptions,
  type IdempotentOutcome,
} from './tx/idempotent'
export type { SqlAdapter, SqlDialect, SqlParam, SqlRow } from './tx/sql'
export { outboxMigration, processedMigration } from './tx/sql'
export type { PgPoolClientLike, PgPoolLike, PgQueryable } from './tx/pg'
export type { SqliteDatabaseLike } from './tx/sqlite'

// Shared
export type { ClientExtras } from './client-base'
export type { ClientEventMap } from './events'
export type { CommonClientOptions } from './options'
export { type ErrorCode, isQmqError, QmqError } from '../common/errors'
export { createLogger, type Logger, type LogLevel } from '../common/logger'
