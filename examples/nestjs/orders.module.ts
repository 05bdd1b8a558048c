/**
 * A feature module using QmqModule: OrdersService sends with the injected producer, BillingListener
 * consumes with @QmqConsumer (registered by QmqModule because it is marked @QmqListener()).
 */
import { Injectable, Logger, Module } from '@nestjs/common'
// A value import, not `import type`: emitDecoratorMetadata names the class for constructor injection.
import { type Message, MessageProducerProvider, QmqConsumer } from '../../src/client'
import { QmqListener } from './qmq.module'

export const ORDER_CREATED = 'example.nest.order.created'

@Injectable()
export class Ledger {
  readonly billed: string[] = []
}

@Injectable()
export class OrdersService {
  constructor(private readonly producer: MessageProducerProvider) {}

  async placeOrder(orderId: string, total: number): Promise<string> {
    const message = this.producer.generateMessage(ORDER_CREATED)
    message.setProperty('orderId', orderId).setProperty('total', total)
    const result = await this.producer.sendMessage(message)
    return result.messageId
  }
}

@QmqListener()
@Injectable()
export class BillingListener {
  private readonly log = new Logger('billing')

  constructor(private readonly ledger: Ledger) {}

  // Return = ack; throw = redelivered later with backoff.
  @QmqConsumer({ subject: ORDER_CREATED, consumerGroup: 'billing', startFrom: 'earliest' })
  async onOrderCreated(message: Message): Promise<void> {
    const orderId = message.getStringProperty('orderId') ?? '?'
    this.ledger.billed.push(orderId)
    this.log.log(`billed order ${orderId} (total ${message.getIntProperty('total')})`)
  }
}

@Module({ providers: [Ledger, OrdersService, BillingListener], exports: [OrdersService, Ledger] })
export class OrdersModule {}
