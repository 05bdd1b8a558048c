import { QmqError } from '../../common/errors'
import { validateGroup, validateSubject } from '../../common/names'
import type { ConsumedMessage } from './consumed-message'

/** Options of `@QmqConsumer` (and of `provider.addListener`). */
export interface QmqConsumerOptions {
  subject: string
  /** Consumer group: its members share the messages. Optional only for broadcast (default: appCode). */
  consumerGroup?: string
  /** Ack on receipt, never redeliver (QMQ's consumeMostOnce). */
  consumeMostOnce?: boolean
  /** Every instance gets every message; the instance is named by the provider's `instanceName`. */
  isBroadcast?: boolean
  /** Handlers of this subscription running at once (default: provider's `concurrency`). */
  concurrency?: number
  /** Messages pulled ahead of the handlers (default: 10 x concurrency). */
  prefetch?: number
  /** Only messages with these tags (broker-side filter). */
  tags?: string[]
  /** 'any' (default, QMQ's OR) or 'all' (QMQ's AND) of `tags`. */
  tagType?: 'any' | 'all'
  /** A message whose handler failed on its maxRetries-th delivery goes to the dead letters. */
  maxRetries?: number
  /** Where a new consumer group starts: 'latest' (default, as QMQ) or 'earliest'. */
  startFrom?: 'latest' | 'earliest'
  /**
   * A handler still running after this long has its message nacked, and its result is ignored
   * (default: the provider's `handlerTimeoutMs`; 0 = no limit).
   */
  handlerTimeoutMs?: number
}

/** A message handler: return (or resolve) = ack; throw (or reject) = nack. */
export type MessageHandler = (message: ConsumedMessage) => unknown

/** One decorated method bound to its instance. */
export interface ConsumerBinding {
  options: QmqConsumerOptions
  handler: MessageHandler
  /** `Class.method`, for logs. */
  name: string
}

/**
 * Throw this (or an error whose `nonRetriable` is true) from a handler to send the message to the
 * dead letters at once instead of retrying it.
 */
export class NonRetriableError extends Error {
  override readonly name: string = 'NonRetriableError'
  readonly nonRetriable = true
  constructor(message?: string, options?: { cause?: unknown }) {
    super(message, options)
  }
}

export function isNonRetriable(err: unknown): boolean {
  return (
    err instanceof NonRetriableError ||
    (typeof err === 'object' && err !== null && (err as { nonRetriable?: unknown }).nonRetriable === true) ||
    (err instanceof QmqError && err.code === 'QMQ_ERR_NON_RETRIABLE')
  )
}

const bindings = new WeakMap<object, ConsumerBinding[]>()

/** Checks options early, so a typo fails when the class is defined, not when messages arrive. */
export function validateConsumerOptions(options: QmqConsumerOptions): void {
  if (options === null || typeof options !== 'object') {
    throw new QmqError('QMQ_ERR_INVALID_ARGUMENT', '@QmqConsumer needs an options object')
  }
  validateSubject(options.subject)
  if (options.consumerGroup !== undefined) validateGroup(options.consumerGroup)
  else if (!options.isBroadcast) {
    throw new QmqError(
      'QMQ_ERR_INVALID_ARGUMENT',
      `@QmqConsumer for subject ${options.subject}: consumerGroup is required (except with isBroadcast)`,
    )
  }
  for (const [key, min] of [
    ['concurrency', 1],
    ['prefetch', 1],
    ['maxRetries', 1],
  ] as const) {
    const v = options[key]
    if (v !== undefined && (!Number.isSafeInteger(v) || v < min)) {
      throw new QmqError(
        'QMQ_ERR_INVALID_ARGUMENT',
        `@QmqConsumer ${key} must be an integer >= ${min} (got ${v})`,
      )
    }
  }
  if (options.tagType !== undefined && options.tagType !== 'any' && options.tagType !== 'all') {
    throw new QmqError('QMQ_ERR_INVALID_ARGUMENT', `@QmqConsumer tagType must be 'any' or 'all'`)
  }
  if (options.startFrom !== undefined && options.startFrom !== 'latest' && options.startFrom !== 'earliest') {
    throw new QmqError('QMQ_ERR_INVALID_ARGUMENT', `@QmqConsumer startFrom must be 'latest' or 'earliest'`)
  }
}

/**
 * Marks a method as the handler of a subject for a consumer group (TC39 standard decorator; no
 * `experimentalDecorators`). Register an instance with `provider.register(instance)`.
 *
 * @example
 * class OrderListener {
 *   @QmqConsumer({ subject: 'order.created', consumerGroup: 'billing' })
 *   async onMessage(message: Message) {
 *     const orderId = message.getStringProperty('orderId')
 *   }
 * }
 */
export function QmqConsumer(options: QmqConsumerOptions) {
  validateConsumerOptions(options)
  const frozen: QmqConsumerOptions = Object.freeze({
    ...options,
    tags: options.tags ? [...options.tags] : undefined,
  })
  return <This extends object>(
    method: (this: This, message: ConsumedMessage) => unknown,
    context: ClassMethodDecoratorContext<This, (this: This, message: ConsumedMessage) => unknown>,
  ): void => {
    if (context.kind !== 'method' || context.static || context.private) {
      throw new TypeError('@QmqConsumer goes on public instance methods')
    }
    const methodName = String(context.name)
    context.addInitializer(function (this: This) {
      let list = bindings.get(this)
      if (list === undefined) {
        list = []
        bindings.set(this, list)
      }
      list.push({
        options: frozen,
        handler: (message) => method.call(this, message),
        name: `${this.constructor?.name ?? 'Object'}.${methodName}`,
      })
    })
  }
}

/** The decorated handlers of an instance (empty when it has none). */
export function consumerBindings(instance: object): readonly ConsumerBinding[] {
  return bindings.get(instance) ?? []
}
