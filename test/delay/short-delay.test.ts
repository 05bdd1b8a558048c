import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { type Message, MessageConsumerProvider, MessageProducerProvider, QmqConsumer } from '../../src/client'
import { startCluster } from '../helpers/cluster'
import { prng } from '../helpers/messages'
import { waitFor } from './helpers/delay-helpers'

/**
 * Short delays end to end (SDK producer -> delay server -> broker -> SDK consumer, all real, in
 * process): a message asked for in 200-1000 ms is never consumed before its schedule time.
 */
t.test('delay - 200-1000 ms delays are never delivered before their time', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'qmq-short-delay-'))
  const cluster = await startCluster({ dir, brokers: 1, delay: true })
  const producer = new MessageProducerProvider()
  producer.setAppCode('short-delay')
  producer.setMetaServer(cluster.metaUrl)
  await producer.init()
  const consumer = new MessageConsumerProvider({
    appCode: 'short-delay',
    metaServer: cluster.metaUrl,
    pullTimeoutMs: 200,
    heartbeatIntervalMs: 500,
  })
  t.teardown(async () => {
    await consumer.close()
    await producer.close()
    await cluster.close()
    rmSync(dir, { recursive: true, force: true })
  })
  const received = new Map<string, number>()
  class Listener {
    @QmqConsumer({ subject: 'short.delay', consumerGroup: 'g' })
    onMessage(message: Message): void {
      if (!received.has(message.getMessageId())) received.set(message.getMessageId(), Date.now())
    }
  }
  consumer.register(new Listener())
  await consumer.start()

  // Warm up: the consumer is pulling (a real-time message went through) before the delayed ones go.
  const warm = producer.generateMessage('short.delay')
  await producer.sendMessage(warm)
  await waitFor(() => received.has(warm.getMessageId()), 20_000, 'the warm-up message')
  received.clear()

  const rand = prng(13)
  const scheduled = new Map<string, number>()
  const groups = new Set<string>()
  const sends: Promise<unknown>[] = []
  for (let i = 0; i < 300; i++) {
    const m = producer.generateMessage('short.delay')
    m.setDelayTime(new Date(Date.now() + 200 + Math.floor(rand() * 800)))
    scheduled.set(m.getMessageId(), m.scheduleAtMs() as number)
    sends.push(producer.sendMessage(m).then((r) => groups.add(r.group)))
    if (i % 50 === 49) await new Promise((r) => setTimeout(r, 20))
  }
  await Promise.all(sends)
  t.same([...groups], ['delay-1'], 'every message with a future time goes to the delay group')
  await waitFor(() => received.size === scheduled.size, 20_000, 'every message consumed')
  const early = [...scheduled].filter(([id, at]) => (received.get(id) as number) < at)
  t.same(
    early.map(([id, at]) => ({ id, earlyMs: at - (received.get(id) as number) })),
    [],
    'none consumed before its schedule time',
  )
})
