import { FLAG_DELAYED, type RecordHeader } from '../../common/record'
import { Message } from '../producer/message'
import type { AckSender } from './ack-sender'

/** Options of `ConsumedMessage.nack()`. */
export interface NackOptions {
  /** Redeliver after this long instead of the broker's exponential backoff. */
  retryAfterMs?: number
  /** Skip the remaining retries: the message goes to the dead-letter subject now. */
  deadLetter?: boolean
}

/** Stands in for the properties of a received message until they are decoded (never exposed). */
const NOT_DECODED = new Map<string, string>()

/**
 * A message handed to a consumer. Besides the Message getters it knows where it came from and can
 * be settled explicitly: `ack()` (done) or `nack()` (redeliver later, or dead-letter). Decorated
 * handlers need neither: returning acks, throwing nacks. Settling twice is a no-op.
 */
export class ConsumedMessage extends Message {
  private settled = false

  /**
   * @internal From a pulled record whose CRC was verified: `header` is its routing header and `bytes`
   * the record; properties and body are decoded from `bytes` when first asked for. `maxRetries`: the
   * subscription's (a nack on delivery number maxRetries or later dead-letters); undefined = the broker's.
   */
  constructor(
    sequence: number,
    deliveryCount: number,
    header: RecordHeader,
    bytes: Buffer,
    private readonly acks: AckSender | undefined,
    private readonly brokerGroup: string,
    private readonly consumerGroup: string,
    private readonly maxRetries?: number,
  ) {
    super(
      {
        id: header.id,
        subject: header.subject,
        createdAt: header.createdAt,
        scheduleAt: header.flags & FLAG_DELAYED ? header.scheduleAt : undefined,
        tags: header.tags,
        orderKey: header.orderKey,
        properties: NOT_DECODED,
        body: undefined,
      },
      { deliveryCount, readOnly: true, undecoded: bytes },
    )
    this.sequence = sequence
    // Held (its lease extended by heartbeats) until it is settled.
    acks?.hold(sequence)
  }

  /** The subject's sequence on its broker group. */
  readonly sequence: number

  /** The broker group the message was pulled from. */
  getBrokerGroup(): string {
    return this.brokerGroup
  }

  getConsumerGroup(): string {
    return this.consumerGroup
  }

  /** Whether ack() or nack() was called (by you or by the SDK). */
  isSettled(): boolean {
    return this.settled
  }

  /** Acknowledges the message; resolves when the broker confirmed it. */
  ack(): Promise<void> {
    if (this.settled || this.acks === undefined) return Promise.resolve()
    this.settled = true
    return this.acks.ack(this.sequence)
  }

  /**
   * Gives the message back for redelivery after a backoff (or dead-letters it with `deadLetter`). On
   * delivery number `maxRetries` (of the subscription) or later it is dead-lettered, as a throw is.
   */
  nack(options: NackOptions = {}): Promise<void> {
    if (this.settled || this.acks === undefined) return Promise.resolve()
    this.settled = true
    const last = this.maxRetries !== undefined && this.getDeliveryCount() >= this.maxRetries
    return this.acks.nack(this.sequence, last ? { ...options, deadLetter: true } : options)
  }

  /** @internal Marks the message settled without sending anything (consume-at-most-once). */
  markSettled(): void {
    this.settled = true
  }
}
