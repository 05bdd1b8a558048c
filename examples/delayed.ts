/**
 * A delayed message: sent to a delay group, delivered to consumers when due. Run against a local
 * cluster (with a delay server):
 *   npx tsx examples/delayed.ts             (QMQ_META defaults to http://127.0.0.1:8080/meta/address)
 */
import { type Message, MessageConsumerProvider, MessageProducerProvider, TimeUnit } from '../src/client'

const metaServer = process.env.QMQ_META ?? 'http://127.0.0.1:8080/meta/address'

async function main(): Promise<void> {
  const consumer = new MessageConsumerProvider({ appCode: 'example-app', metaServer })
  const received = new Promise<Message>((resolve) => {
    consumer.addListener('qmq_delay_subject', 'group', (m) => resolve(m))
  })
  await consumer.start()

  const producer = new MessageProducerProvider({ appCode: 'example-app', metaServer })
  await producer.init()
  const message = producer.generateMessage('qmq_delay_subject')
  message.setProperty('key', 'value')
  message.setDelayTime(3, TimeUnit.SECONDS) // or: message.setDelayTime(new Date(Date.now() + 3000))
  const r = await producer.sendMessage(message)
  console.log(`scheduled ${r.messageId} on ${r.group} for ${message.getScheduleReceiveTime()?.toISOString()}`)

  const m = await received
  const late = Date.now() - (m.getScheduleReceiveTime()?.getTime() ?? 0)
  console.log(`received ${m.getMessageId()} key=${m.getStringProperty('key')}, ${late} ms after its due time`)
  await producer.close()
  await consumer.close()
}

main().catch((err: unknown) => {
  console.error(err)
  process.exit(1)
})
