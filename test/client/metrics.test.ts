import { Registry } from 'prom-client'
import t from 'tap'
import { MessageConsumerProvider, MessageProducerProvider, NonRetriableError } from '../../src/client'
import { startFakeCluster } from './helpers/fake-cluster'

async function until(cond: () => boolean | Promise<boolean>, ms = 5_000): Promise<void> {
  const end = Date.now() + ms
  while (!(await cond())) {
    if (Date.now() > end) throw new Error('condition not met in time')
    await new Promise((r) => setTimeout(r, 10))
  }
}

/** The value of one sample of a metric (labels matched exactly on the given keys), or undefined. */
async function sample(
  registry: Registry,
  name: string,
  labels: Record<string, string> = {},
): Promise<number | undefined> {
  for (const m of await registry.getMetricsAsJSON()) {
    for (const v of m.values as { metricName?: string; labels: Record<string, unknown>; value: number }[]) {
      if ((v.metricName ?? m.name) !== name) continue
      if (Object.entries(labels).every(([k, x]) => v.labels[k] === x)) return v.value
    }
  }
  return undefined
}

t.test('client metrics - producer and consumer count what they do on the registry given', async (t) => {
  const cluster = await startFakeCluster({ nackBaseMs: 10 })
  const registry = new Registry()
  const producer = new MessageProducerProvider({ appCode: 'p', metaServer: cluster.meta.url, registry })
  await producer.init()
  const consumer = new MessageConsumerProvider({
    appCode: 'c',
    metaServer: cluster.meta.url,
    pullTimeoutMs: 200,
    registry,
  })
  t.teardown(async () => {
    await consumer.close()
    await producer.close()
    await cluster.close()
  })
  const seen: string[] = []
  consumer.addListener('orders', 'billing', (m) => {
    seen.push(m.getMessageId())
    if (m.getStringProperty('poison') === 'yes') throw new NonRetriableError('bad order')
  })
  await consumer.start()
  for (let i = 0; i < 5; i++) await producer.sendMessage(producer.generateMessage('orders'))
  await producer.sendMessage(producer.generateMessage('orders').setProperty('poison', 'yes'))
  await until(() => seen.length === 6)

  t.equal(await sample(registry, 'qmq_client_sent_messages_total', { subject: 'orders' }), 6)
  t.ok(
    ((await sample(registry, 'qmq_client_send_request_duration_seconds_count', { result: 'ok' })) ?? 0) >= 1,
    'SEND requests timed',
  )
  t.equal(await sample(registry, 'qmq_client_send_queue_messages'), 0, 'nothing left unsettled')
  const billing = { subject: 'orders', consumer_group: 'billing' }
  t.equal(await sample(registry, 'qmq_client_pulled_messages_total', billing), 6)
  await until(
    async () => (await sample(registry, 'qmq_client_handler_duration_seconds_count', billing)) === 6,
  )
  t.equal(await sample(registry, 'qmq_client_consumed_messages_total', { ...billing, result: 'ack' }), 5)
  t.equal(
    await sample(registry, 'qmq_client_consumed_messages_total', { ...billing, result: 'dead_letter' }),
    1,
  )
  t.equal(await sample(registry, 'qmq_client_consumer_held_messages', billing), 0)

  // Delayed messages of any subject share one batch lane: each is still counted under its own subject.
  await Promise.all(
    ['later-a', 'later-b', 'later-b'].map((subject) =>
      producer.sendMessage(producer.generateMessage(subject).setDelayTime(new Date(Date.now() + 60_000))),
    ),
  )
  t.equal(await sample(registry, 'qmq_client_sent_messages_total', { subject: 'later-a' }), 1)
  t.equal(await sample(registry, 'qmq_client_sent_messages_total', { subject: 'later-b' }), 2)

  // A second provider on the same registry shares its metrics rather than failing to register them.
  const other = new MessageProducerProvider({ appCode: 'p2', metaServer: cluster.meta.url, registry })
  await other.init()
  await other.sendMessage(other.generateMessage('orders'))
  await other.close()
  t.equal(await sample(registry, 'qmq_client_sent_messages_total', { subject: 'orders' }), 7)
  await t.rejects(other.sendMessage(other.generateMessage('orders')), { code: 'QMQ_ERR_CLIENT_CLOSED' })
  t.equal(
    await sample(registry, 'qmq_client_send_failed_messages_total', {
      subject: 'orders',
      code: 'QMQ_ERR_CLIENT_CLOSED',
    }),
    1,
  )
})

t.test('client metrics - none without a registry', async (t) => {
  const cluster = await startFakeCluster()
  const producer = new MessageProducerProvider({ appCode: 'p', metaServer: cluster.meta.url })
  await producer.init()
  t.teardown(async () => {
    await producer.close()
    await cluster.close()
  })
  const { register } = await import('prom-client')
  await producer.sendMessage(producer.generateMessage('quiet'))
  t.equal(
    register.getSingleMetric('qmq_client_sent_messages_total'),
    undefined,
    'the global registry is untouched',
  )
})
