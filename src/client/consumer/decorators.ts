import { QmqError } from '../../common/errors'
import { validateGroup, validateSubject } from '../../common/names'
import type { ConsumedMessage } from './consumed-message'
import { type StartFrom, startPosition } from './start-from'

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
  /**
   * Where a NEW consumer group starts (start-from.ts): 'latest' (default, as QMQ), 'earliest', or a
   * time (Date or ms since the epoch): the first message stored at or after it. A group the broker
   * already knows keeps its cursor (move it with `resetCursor`).
   */
  startFrom?: StartFrom
  /**
   * An IdempotentChecker (docs/transactions.md): the handler runs in a database transaction that also
   * records the message id, and a redelivered message already processed is skipped.
   */
  idempotent?: { wrapHandler(handler: MessageHandler, consumerGroup: string): MessageHandler }
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
  startPosition(options.startFrom, '@QmqConsumer startFrom')
}

/** A handler method as `@QmqConsumer` accepts it. */
type HandlerMethod<This> = (this: This, message: ConsumedMessage) => unknown

/**
 * What `@QmqConsumer(...)` returns: a decorator usable in both flavours, so the one typing compiles
 * under either compiler setting (TypeScript picks the overload matching its call shape).
 */
export interface QmqConsumerDecorator {
  /** TC39 standard decorator (TypeScript 5+, no `experimentalDecorators`). */
  <This extends object>(
    method: HandlerMethod<This>,
    context: ClassMethodDecoratorContext<This, HandlerMethod<This>>,
  ): void
  /** Legacy decorator (`experimentalDecorators: true`, NestJS's default). */
  <M extends (message: ConsumedMessage) => unknown>(
    target: object,
    propertyKey: string | symbol,
    descriptor: TypedPropertyDescriptor<M>,
  ): void
}

/** Legacy-decorated methods, per class prototype: bound to each instance by consumerBindings(). */
const legacyBindings = new WeakMap<
  object,
  { options: QmqConsumerOptions; method: HandlerMethod<object>; methodName: string }[]
>()

function isStandardContext(value: unknown): value is ClassMethodDecoratorContext {
  return typeof value === 'object' && value !== null && typeof (value as { kind?: unknown }).kind === 'string'
}

/**
 * Marks a method as the handler of a subject for a consumer group. Works as a TC39 standard
 * decorator and as a legacy one (`experimentalDecorators`): the call shape tells them apart,
 * `(value, context)` against `(target, propertyKey, descriptor)`. Register an instance with
 * `provider.register(instance)`.
 *
 * @example
 * class OrderListener {
 *   @QmqConsumer({ subject: 'order.created', consumerGroup: 'billing' })
 *   async onMessage(message: Message) {
 *     const orderId = message.getStringProperty('orderId')
 *   }
 * }
 */
export function QmqConsumer(options: QmqConsumerOptions): QmqConsumerDecorator {
  validateConsumerOptions(options)
  const frozen: QmqConsumerOptions = Object.freeze({
    ...options,
    tags: options.tags ? [...options.tags] : undefined,
  })
  return ((first: unknown, second: unknown, third?: unknown): void => {
    if (isStandardContext(second)) {
      if (second.kind !== 'method' || second.static || second.private) {
        throw new TypeError(
          `@QmqConsumer goes on public instance methods (not on a ${second.static ? 'static ' : ''}${second.private ? 'private ' : ''}${second.kind})`,
        )
      }
      const method = first as HandlerMethod<object>
      const methodName = String(second.name)
      second.addInitializer(function (this: unknown) {
        const self = this as object
        let list = bindings.get(self)
        if (list === undefined) {
          list = []
          bindings.set(self, list)
        }
        list.push({
          options: frozen,
          handler: (message) => method.call(self, message),
          name: `${self.constructor?.name ?? 'Object'}.${methodName}`,
        })
      })
      return
    }
    if (
      (typeof second === 'string' || typeof second === 'symbol') &&
      typeof third === 'object' &&
      third !== null
    ) {
      const method = (third as PropertyDescriptor).value as unknown
      if (typeof first === 'function' || typeof method !== 'function') {
        throw new TypeError(
          `@QmqConsumer goes on instance methods (${String(second)} is ${typeof first === 'function' ? 'static' : 'not a method'})`,
        )
      }
      const target = first as object
      let list = legacyBindings.get(target)
      if (list === undefined) {
        list = []
        legacyBindings.set(target, list)
      }
      list.push({ options: frozen, method: method as HandlerMethod<object>, methodName: String(second) })
      return
    }
    throw new TypeError(
      '@QmqConsumer goes on a class method: it was called neither as a standard decorator (value, context) nor as a legacy one (target, key, descriptor)',
    )
  }) as QmqConsumerDecorator
}

/** The decorated handlers of an instance (empty when it has none). */
export function consumerBindings(instance: object): readonly ConsumerBinding[] {
  const out = [...(bindings.get(instance) ?? [])]
  // Legacy decorators recorded on the prototypes of the instance's class chain, base classes first.
  const protos: object[] = []
  for (
    let p = Object.getPrototypeOf(instance) as object | null;
    p !== null && p !== Object.prototype;
    p = Object.getPrototypeOf(p) as object | null
  )
    protos.unshift(p)
  for (const proto of protos) {
    for (const b of legacyBindings.get(proto) ?? []) {
      out.push({
        options: b.options,
        handler: (message) => b.method.call(instance, message),
        name: `${instance.constructor?.name ?? 'Object'}.${b.methodName}`,
      })
    }
  }
  return out
}
