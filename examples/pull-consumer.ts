/**
 * The pull API: you decide when to pull, and ack (or nack) each message yourself. Run against a local
 * cluster:
 *   npx tsx examples/pull-consumer.ts       (QMQ_META defaults to http://127.0.0.1:8080/meta/address)
 */
import { MessageConsumerProvider, MessageProducerProvider } from '../src/client'

const metaServer = process.env.QMQ_META ?? 'http://127.0.0.1:8080/meta/address'

async function main(): Promise<void> {
  const consumer = new MessageConsumerProvider({ appCode: 'example-app', metaServer })
  const pullConsumer = consumer.getOrCreatePullConsumer('qmq_pull_subject', 'group', {
    startFrom: 'earliest',
  })

  const producer = new MessageProducerProvider({ appCode: 'example-app', metaServer })
  await producer.init()
  for (let i = 0; i < 5; i++) {
    await producer.sendMessage(producer.generateMessage('qmq_pull_subject').setProperty('i', i))
  }

  // pull(max, timeoutMs): up to 10 messages, waiting at most 1 s for the first.
  const batch = await pullConsumer.pull(10, 1000)
  for (const m of batch) {
    console.log(`pulled ${m.getMessageId()} i=${m.getIntProperty('i')}`)
    await m.ack()
  }

  // Or iterate: for await yields messages until the consumer is closed.
  await producer.sendMessage(producer.generateMessage('qmq_pull_subject').setProperty('i', 99))
  for await (const m of pullConsumer) {
    console.log(`iterated ${m.getMessageId()} i=${m.getIntProperty('i')}`)
    await m.ack()
    if (m.getIntProperty('i') === 99) break
  }

  await producer.close()
  await consumer.close()
}

main().catch((err: unknown) => {
  console.error(err)
  process.exit(1)
})
