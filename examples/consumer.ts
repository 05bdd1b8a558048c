/**
 * A decorated consumer (TC39 standard decorators). Run against a local cluster:
 *   npx tsx examples/consumer.ts            (QMQ_META defaults to http://127.0.0.1:8080/meta/address)
 * then send with examples/producer.ts. Ctrl-C stops it cleanly (running handlers finish, acks flushed).
 */
import { type Message, MessageConsumerProvider, NonRetriableError, QmqConsumer } from '../src/client'

const metaServer = process.env.QMQ_META ?? 'http://127.0.0.1:8080/meta/address'

class OrderListener {
  // Return = ack; throw = retried later with backoff; NonRetriableError = dead letter at once.
  @QmqConsumer({ subject: 'qmq_subject', consumerGroup: 'group', concurrency: 4, maxRetries: 5 })
  async onMessage(message: Message): Promise<void> {
    const value = message.getStringProperty('key')
    if (value === undefined) throw new NonRetriableError('message without key')
    console.log(`got ${message.getMessageId()} key=${value} (delivery ${message.getDeliveryCount()})`)
  }

  // At most once: acked on receipt, never redelivered.
  @QmqConsumer({ subject: 'qmq_subject', consumerGroup: 'audit', consumeMostOnce: true })
  onAudit(message: Message): void {
    console.log(`audit ${message.getMessageId()}`)
  }

  // Broadcast: every instance gets every message (name instances with `instanceName`).
  @QmqConsumer({ subject: 'qmq_subject', consumerGroup: 'cache', isBroadcast: true })
  onBroadcast(message: Message): void {
    console.log(`broadcast ${message.getMessageId()}`)
  }
}

async function main(): Promise<void> {
  const consumer = new MessageConsumerProvider({ appCode: 'example-app', metaServer })
  consumer.register(new OrderListener())
  await consumer.start()
  console.log('consuming qmq_subject; Ctrl-C to stop')
  const stop = (): void => {
    consumer.close().then(
      () => process.exit(0),
      () => process.exit(1),
    )
  }
  process.once('SIGINT', stop)
  process.once('SIGTERM', stop)
}

main().catch((err: unknown) => {
  console.error(err)
  process.exit(1)
})
