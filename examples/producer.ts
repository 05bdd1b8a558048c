/**
 * Sends messages, QMQ style. Run against a local cluster:
 *   npx tsx examples/producer.ts            (QMQ_META defaults to http://127.0.0.1:8080/meta/address)
 * In your application, import from 'qmq' instead of '../src/client'.
 */
import { type Message, MessageProducerProvider, type QmqError } from '../src/client'

const metaServer = process.env.QMQ_META ?? 'http://127.0.0.1:8080/meta/address'

async function main(): Promise<void> {
  const producer = new MessageProducerProvider()
  producer.setAppCode('example-app')
  producer.setMetaServer(metaServer)
  await producer.init()

  // Every send needs a new message from generateMessage().
  const message = producer.generateMessage('qmq_subject')
  message.setProperty('key', 'value')
  message.setProperty('orderId', 1001)
  message.setBody(JSON.stringify({ total: 42 }))

  // sendMessage returns a promise...
  const result = await producer.sendMessage(message)
  console.log(`sent ${result.messageId} to ${result.group}`)

  // ...and also takes QMQ's listener.
  const second = producer.generateMessage('qmq_subject').setProperty('key', 'second')
  void producer.sendMessage(second, {
    onSuccess: (m: Message) => console.log(`sent ${m.getMessageId()} (listener)`),
    onFailed: (m: Message, err: QmqError) =>
      console.error(`failed ${m.getMessageId()}: ${err.code} ${err.message}`),
  })

  // close() sends what is still queued before it resolves.
  await producer.close()
}

main().catch((err: unknown) => {
  console.error(err)
  process.exit(1)
})
