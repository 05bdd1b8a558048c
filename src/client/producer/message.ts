import { QmqError } from '../../common/errors'
import { newMessageId } from '../../common/ids'
import {
  decodeRecord,
  KEY_SEPARATOR,
  KEYS_PROPERTY,
  MAX_KEY_BYTES,
  MAX_KEYS,
  MAX_ORDER_KEY_BYTES,
  MAX_TAG_BYTES,
  MAX_TAGS,
  type MessageRecord,
  splitKeys,
} from '../../common/record'
import type { Pending } from './batch'

/** Units of `Message.setDelayTime(n, unit)`, as QMQ's `java.util.concurrent.TimeUnit`. */
export enum TimeUnit {
  MILLISECONDS = 'MILLISECONDS',
  SECONDS = 'SECONDS',
  MINUTES = 'MINUTES',
  HOURS = 'HOURS',
  DAYS = 'DAYS',
}

const UNIT_MS: Record<TimeUnit, number> = {
  [TimeUnit.MILLISECONDS]: 1,
  [TimeUnit.SECONDS]: 1_000,
  [TimeUnit.MINUTES]: 60_000,
  [TimeUnit.HOURS]: 3_600_000,
  [TimeUnit.DAYS]: 86_400_000,
}

/** Property keys starting with this are the SDK's own (QMQ's `qmq_appCode`, ...); users may not set them. */
export const RESERVED_PROPERTY_PREFIX = 'qmq_'
export { APP_CODE_PROPERTY } from '../../common/record'

/** A value `setProperty` accepts. Everything is stored as a string, as in QMQ. */
export type PropertyValue = string | number | bigint | boolean | Date

function toPropertyString(key: string, value: PropertyValue): string {
  if (typeof value === 'string') return value
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) {
      throw new QmqError('QMQ_ERR_PROPERTY_INVALID', `property ${key} must be a finite number (got ${value})`)
    }
    return String(value)
  }
  if (typeof value === 'bigint' || typeof value === 'boolean') return String(value)
  if (value instanceof Date) {
    const ms = value.getTime()
    if (Number.isNaN(ms)) throw new QmqError('QMQ_ERR_PROPERTY_INVALID', `property ${key} is an invalid Date`)
    return String(ms)
  }
  throw new QmqError('QMQ_ERR_PROPERTY_INVALID', `property ${key} has an unsupported type ${typeof value}`)
}

/**
 * A message: QMQ's key/value model plus an optional body and tags.
 *
 * Produced messages come from `producer.generateMessage(subject)`; consumed ones are handed to
 * handlers (with `getDeliveryCount()` set). Properties are strings on the wire; the typed getters parse
 * them (`getIntProperty`, `getLongProperty` as bigint, `getBooleanProperty`, `getDateProperty`).
 *
 * @example
 * const message = producer.generateMessage('order.created')
 * message.setProperty('orderId', 42)
 * message.setDelayTime(15, TimeUnit.MINUTES)
 * await producer.sendMessage(message)
 */
export class Message {
  /** @internal */ protected readonly id: string
  /** @internal */ protected readonly subject: string
  /** @internal */ protected readonly createdAt: number
  /** @internal */ protected scheduleAt: number | undefined
  /** @internal */ protected readonly tags: string[]
  /** @internal */ protected orderKey: string | undefined
  /** @internal Use props(): a received message decodes it on first use. */
  protected properties: Map<string, string>
  /** @internal Use bodyValue(): a received message decodes it on first use. */
  protected body: Buffer | string | undefined
  /**
   * @internal The verified record bytes of a received message whose properties and body are not
   * decoded yet (a view into the PULL answer; dropped once decoded).
   */
  protected undecoded: Buffer | undefined
  /** @internal */ protected deliveryCount: number
  /** @internal */ protected readOnly: boolean
  /**
   * @internal `properties` is a map shared with other messages (the producer's appCode-only map):
   * copied before the first change.
   */
  protected sharedProperties: boolean
  /**
   * @internal The producer's record of this message's last sendMessage() (producer.ts): a message is
   * stored at most once per send, and a second send of it joins or repeats the first.
   */
  lastSend: Pending | undefined

  /** Use `producer.generateMessage(subject)`; this constructor is for the SDK and tests. */
  constructor(
    record: MessageRecord,
    options: {
      deliveryCount?: number
      readOnly?: boolean
      undecoded?: Buffer
      sharedProperties?: boolean
    } = {},
  ) {
    this.id = record.id
    this.subject = record.subject
    this.createdAt = record.createdAt
    this.scheduleAt = record.scheduleAt
    this.tags = record.tags
    this.orderKey = record.orderKey
    this.properties = record.properties
    this.body = record.body
    this.deliveryCount = options.deliveryCount ?? 0
    this.readOnly = options.readOnly ?? false
    this.undecoded = options.undecoded
    this.sharedProperties = options.sharedProperties ?? false
    this.lastSend = undefined
  }

  /** @internal The properties, decoding them first when the message was received lazily. */
  protected props(): Map<string, string> {
    if (this.undecoded !== undefined) this.decodeRest()
    return this.properties
  }

  /** @internal The properties to change: this message's own map (copying a shared one first). */
  private ownProps(): Map<string, string> {
    const m = this.props()
    if (!this.sharedProperties) return m
    this.sharedProperties = false
    this.properties = new Map(m)
    return this.properties
  }

  /** @internal The body, decoding it first when the message was received lazily. */
  protected bodyValue(): Buffer | string | undefined {
    if (this.undecoded !== undefined) this.decodeRest()
    return this.body
  }

  /**
   * Decodes properties and body of a received record (its CRC was verified when it was pulled). A
   * binary body is copied out, so the message no longer holds the PULL answer's bytes.
   */
  private decodeRest(): void {
    const bytes = this.undecoded as Buffer
    const r = decodeRecord(bytes, 0, { verify: false })
    this.undecoded = undefined
    this.properties = r.properties
    // decodeRecord hands a binary body out as a view of the answer: copy it, so this message
    // does not keep the whole PULL answer alive.
    this.body = Buffer.isBuffer(r.body) ? Buffer.from(r.body) : r.body
  }

  /**
   * A new message with a fresh id (what `generateMessage` does). `properties`, when given, are its first
   * properties, shared (not copied) until the message changes one: the producer's map of SDK properties
   * (qmq_appCode), made once rather than per message.
   */
  static create(subject: string, properties?: ReadonlyMap<string, string>): Message {
    return new Message(
      {
        id: newMessageId(),
        subject,
        createdAt: Date.now(),
        tags: [],
        properties: properties === undefined ? new Map() : (properties as Map<string, string>),
      },
      { sharedProperties: properties !== undefined },
    )
  }

  getMessageId(): string {
    return this.id
  }

  getSubject(): string {
    return this.subject
  }

  getCreatedTime(): Date {
    return new Date(this.createdAt)
  }

  /**
   * How many times this message has been delivered to the consumer group, 1 on the first delivery
   * (QMQ's `times`). 0 on a message that was never consumed.
   */
  getDeliveryCount(): number {
    return this.deliveryCount
  }

  /** QMQ's name for getDeliveryCount(). */
  times(): number {
    return this.deliveryCount
  }

  // ------------------------------------------------------------------ properties

  /**
   * Sets a property. Numbers, bigints and booleans are stored as their string form, Dates as
   * milliseconds since the epoch. Keys starting with `qmq_` are reserved for the SDK.
   */
  setProperty(key: string, value: PropertyValue): this {
    this.checkWritable()
    if (typeof key !== 'string' || key.length === 0) {
      throw new QmqError('QMQ_ERR_PROPERTY_INVALID', 'property key must be a non-empty string')
    }
    if (key.startsWith(RESERVED_PROPERTY_PREFIX)) {
      throw new QmqError('QMQ_ERR_PROPERTY_INVALID', `property key ${key} is reserved (prefix qmq_)`)
    }
    this.ownProps().set(key, toPropertyString(key, value))
    return this
  }

  /**
   * Sets the message's business keys (QMQ/RocketMQ "keys": an order number, a user id...): the broker
   * indexes them, so `qmq messages --key K` and the console find the message by any of them. At most
   * MAX_KEYS keys of 1 to MAX_KEY_BYTES bytes, without spaces; replaces earlier keys. Stored in the
   * `qmq_keys` property.
   */
  setKeys(...keys: string[]): this {
    this.checkWritable()
    if (keys.length > MAX_KEYS) {
      throw new QmqError('QMQ_ERR_PROPERTY_INVALID', `${keys.length} keys; at most ${MAX_KEYS}`)
    }
    for (const k of keys) {
      const n = typeof k === 'string' ? Buffer.byteLength(k, 'utf8') : 0
      if (n === 0 || n > MAX_KEY_BYTES || k.includes(KEY_SEPARATOR)) {
        throw new QmqError(
          'QMQ_ERR_PROPERTY_INVALID',
          `key ${JSON.stringify(k)} must be 1 to ${MAX_KEY_BYTES} bytes without spaces`,
        )
      }
    }
    if (keys.length === 0) this.ownProps().delete(KEYS_PROPERTY)
    else this.ownProps().set(KEYS_PROPERTY, [...new Set(keys)].join(KEY_SEPARATOR))
    return this
  }

  /** The business keys set with setKeys (or by the producer of a received message). */
  getKeys(): string[] {
    return splitKeys(this.props().get(KEYS_PROPERTY))
  }

  removeProperty(key: string): boolean {
    this.checkWritable()
    return this.ownProps().delete(key)
  }

  hasProperty(key: string): boolean {
    return this.props().has(key)
  }

  /** All properties (including the SDK's `qmq_` ones), read-only. */
  getProperties(): ReadonlyMap<string, string> {
    return this.props()
  }

  getStringProperty(key: string): string | undefined {
    return this.props().get(key)
  }

  /** The property as an integer; undefined when absent; throws QMQ_ERR_PROPERTY_INVALID when not one. */
  getIntProperty(key: string): number | undefined {
    const s = this.props().get(key)
    if (s === undefined) return undefined
    const n = Number(s)
    if (s.trim() === '' || !Number.isSafeInteger(n)) this.badProperty(key, s, 'an integer')
    return n
  }

  /** The property as a bigint (QMQ's long); undefined when absent. */
  getLongProperty(key: string): bigint | undefined {
    const s = this.props().get(key)
    if (s === undefined) return undefined
    try {
      if (!/^[-+]?\d+$/.test(s.trim())) throw new Error('not an integer')
      return BigInt(s.trim())
    } catch {
      return this.badProperty(key, s, 'an integer')
    }
  }

  /** The property as a number (any finite value); undefined when absent. */
  getNumberProperty(key: string): number | undefined {
    const s = this.props().get(key)
    if (s === undefined) return undefined
    const n = Number(s)
    if (s.trim() === '' || !Number.isFinite(n)) this.badProperty(key, s, 'a number')
    return n
  }

  /** `"true"` is true, anything else false (as Java's Boolean.valueOf); undefined when absent. */
  getBooleanProperty(key: string): boolean | undefined {
    const s = this.props().get(key)
    if (s === undefined) return undefined
    return s.toLowerCase() === 'true'
  }

  /** A property set from a Date (stored as ms since the epoch); undefined when absent. */
  getDateProperty(key: string): Date | undefined {
    const s = this.props().get(key)
    if (s === undefined) return undefined
    const n = Number(s)
    if (s.trim() !== '' && Number.isFinite(n)) return new Date(n)
    const parsed = Date.parse(s)
    if (Number.isNaN(parsed)) return this.badProperty(key, s, 'a date')
    return new Date(parsed)
  }

  // ------------------------------------------------------------------ body and tags

  /** A binary body (Buffer / Uint8Array) or a text body (string, sent as UTF-8 and read back as a string). */
  setBody(body: Buffer | Uint8Array | string): this {
    this.checkWritable()
    this.body = typeof body === 'string' || Buffer.isBuffer(body) ? body : Buffer.from(body)
    return this
  }

  /** The body as bytes (a text body is encoded as UTF-8); undefined when there is none. */
  getBody(): Buffer | undefined {
    const body = this.bodyValue()
    if (body === undefined) return undefined
    return typeof body === 'string' ? Buffer.from(body, 'utf8') : body
  }

  /** The body as text (a binary body is decoded as UTF-8); undefined when there is none. */
  getStringBody(): string | undefined {
    const body = this.bodyValue()
    if (body === undefined) return undefined
    return typeof body === 'string' ? body : body.toString('utf8')
  }

  /** Adds a tag (at most 10; consumers can filter on tags broker-side). */
  addTag(tag: string): this {
    this.checkWritable()
    if (typeof tag !== 'string' || tag.length === 0 || Buffer.byteLength(tag) > MAX_TAG_BYTES) {
      throw new QmqError('QMQ_ERR_TAG_INVALID', `tag must be 1 to ${MAX_TAG_BYTES} bytes`)
    }
    if (this.tags.includes(tag)) return this
    if (this.tags.length >= MAX_TAGS) {
      throw new QmqError('QMQ_ERR_TOO_MANY_TAGS', `a message has at most ${MAX_TAGS} tags`)
    }
    this.tags.push(tag)
    return this
  }

  getTags(): readonly string[] {
    return this.tags
  }

  // ------------------------------------------------------------------ order

  /**
   * Orders this message after the earlier ones of its subject with the same key: each consumer group
   * gets the messages of one key one at a time, in the order they were sent (the next only after the
   * previous one was acked or dead-lettered), while other keys flow on. 1 to 256 bytes of UTF-8.
   * Delayed messages are not ordered by send time (docs/client.md "Ordered messages").
   */
  setOrderKey(key: string): this {
    this.checkWritable()
    if (typeof key !== 'string' || key.length === 0 || Buffer.byteLength(key) > MAX_ORDER_KEY_BYTES) {
      throw new QmqError('QMQ_ERR_INVALID_ARGUMENT', `order key must be 1 to ${MAX_ORDER_KEY_BYTES} bytes`)
    }
    this.orderKey = key
    return this
  }

  /** The order key set with setOrderKey(); undefined for an unordered message. */
  getOrderKey(): string | undefined {
    return this.orderKey
  }

  // ------------------------------------------------------------------ delay

  /**
   * Delivers the message later: `setDelayTime(15, TimeUnit.MINUTES)` or `setDelayTime(date)`.
   * Delayed messages go to a delay group and reach consumers when due. A time less than 500 ms ahead
   * is sent as a real-time message (as QMQ does).
   */
  setDelayTime(date: Date): this
  setDelayTime(delay: number, unit: TimeUnit): this
  setDelayTime(a: Date | number, unit?: TimeUnit): this {
    this.checkWritable()
    let at: number
    if (a instanceof Date) {
      at = a.getTime()
      if (Number.isNaN(at)) throw new QmqError('QMQ_ERR_SCHEDULE_INVALID', 'delay date is an invalid Date')
    } else {
      if (unit === undefined || !(unit in UNIT_MS)) {
        throw new QmqError('QMQ_ERR_SCHEDULE_INVALID', 'setDelayTime(n, unit) needs a TimeUnit')
      }
      if (!Number.isFinite(a) || a < 0) {
        throw new QmqError('QMQ_ERR_SCHEDULE_INVALID', `delay must be a finite number >= 0 (got ${a})`)
      }
      at = Date.now() + Math.round(a * UNIT_MS[unit])
    }
    this.scheduleAt = Math.round(at)
    return this
  }

  /** When a delayed message is due (QMQ's scheduleReceiveTime); undefined for real-time messages. */
  getScheduleReceiveTime(): Date | undefined {
    return this.scheduleAt === undefined ? undefined : new Date(this.scheduleAt)
  }

  /**
   * @internal What the producer encodes: the message itself, whose own fields are named and typed as
   * a MessageRecord's (no record object per send); a copy for a received message not decoded yet.
   */
  encodable(): MessageRecord {
    if (this.undecoded !== undefined) return this.toRecord()
    return this as unknown as MessageRecord
  }

  /** @internal The record this message encodes to (shared maps: encode before changing it again). */
  toRecord(): MessageRecord {
    return {
      id: this.id,
      subject: this.subject,
      createdAt: this.createdAt,
      scheduleAt: this.scheduleAt,
      tags: this.tags,
      orderKey: this.orderKey,
      properties: this.props(),
      body: this.bodyValue(),
    }
  }

  /** @internal The schedule time in ms (no Date allocated); undefined for real-time messages. */
  scheduleAtMs(): number | undefined {
    return this.scheduleAt
  }

  /** @internal Drops a schedule time too close to matter (sent as real-time). */
  clearDelay(): void {
    this.scheduleAt = undefined
  }

  toJSON(): Record<string, unknown> {
    return {
      messageId: this.id,
      subject: this.subject,
      createdTime: this.createdAt,
      scheduleReceiveTime: this.scheduleAt,
      tags: this.tags,
      ...(this.orderKey !== undefined ? { orderKey: this.orderKey } : {}),
      properties: Object.fromEntries(this.props()),
      deliveryCount: this.deliveryCount,
    }
  }

  private checkWritable(): void {
    if (this.readOnly) {
      throw new QmqError('QMQ_ERR_INVALID_ARGUMENT', `message ${this.id} was received and is read-only`)
    }
  }

  private badProperty(key: string, value: string, what: string): never {
    throw new QmqError('QMQ_ERR_PROPERTY_INVALID', `property ${key}=${JSON.stringify(value)} is not ${what}`)
  }
}
