/**
 * @QmqConsumer with legacy decorators (`experimentalDecorators: true`, as NestJS projects have), in the
 * shape of a NestJS module: a provider owning the qmq providers (created on init, closed by the
 * shutdown hook) and a listener class whose decorated methods it registers. docs/client.md shows the
 * same with @nestjs/common. Run against a local cluster (`npx qmq dev`):
 *   npx tsx --tsconfig examples/legacy-decorators/tsconfig.json examples/legacy-decorators/main.ts
 */
import { type Message, MessageConsumerProvider, MessageProducerProvider, QmqConsumer } from '../../src/client'

const metaServer = process.env.QMQ_META ?? 'http://127.0.0.1:8080/meta/address'

/** What a NestJS module would provide as a singleton: `onModuleInit` / `onApplicationShutdown`. */
class QmqService {
  readonly producer = new MessageProducerProvider({ appCode: 'legacy-example', metaServer })
  readonly consumer = new MessageConsumerProvider({ appCode: 'legacy-example', metaServer })

  constructor(private readonly listeners: object[]) {}

  async onModuleInit(): Promise<void> {
    for (const l of this.listeners) this.consumer.register(l)
    await Promise.all([this.producer.init(), this.consumer.start()])
  }

  async onApplicationShutdown(): Promise<void> {
    await Promise.all([this.consumer.close(), this.producer.close()])
  }
}

class OrderListener {
  received = 0
  @QmqConsumer({ subject: 'example.legacy', consumerGroup: 'billing', startFrom: 'earliest' })
  async onOrder(message: Message): Promise<void> {
    this.received++
    console.log(`order ${message.getStringProperty('orderId')} (${message.getMessageId()})`)
  }
}

async function main(): Promise<void> {
  const listener = new OrderListener()
  const qmq = new QmqService([listener])
  await qmq.onModuleInit()
  await qmq.producer.sendMessage(qmq.producer.generateMessage('example.legacy').setProperty('orderId', 42))
  while (listener.received === 0) await new Promise((r) => setTimeout(r, 50))
  await qmq.onApplicationShutdown()
  console.log('done')
}

main().catch((err: unknown) => {
  console.error(err)
  process.exit(1)
})
