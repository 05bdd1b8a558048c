import t from 'tap'
import {
  type ConsumedMessage,
  type Message,
  MessageConsumerProvider,
  MessageProducerProvider,
  NonRetriableError,
  QmqConsumer,
} from '../../src/client'
import { startFakeCluster } from './helpers/fake-cluster'

type Teardown = { teardown: (fn: () => unknown) => void }

async function setup(t: Teardown, consumerExtra: Record<string, unknown> = {}, nackBaseMs = 30) {
  const cluster = await startFakeCluster({ nackBaseMs })
  const producer = new MessageProducerProvider({ appCode: 'p', metaServer: cluster.meta.url })
  await producer.init()
  const consumer = new MessageConsumerProvider({
    appCode: 'c',
    metaServer: cluster.meta.url,
    pullTimeoutMs: 200,
    ...consumerExtra,
  })
  t.teardown(async () => {
    await consumer.close()
    await producer.close()
    await cluster.close()
  })
  return { cluster, producer, consumer }
}

async function until(cond: () => boolean, ms = 5_000): Promise<void> {
  const end = Date.now() + ms
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time')
    await new Promise((r) => setTimeout(r, 10))
  }
}

t.test('consumer - decorated handler receives messages; return acks them', async (t) => {
  const { cluster, producer, consumer } = await setup(t)
  const got: string[] = []
  class Listener {
    @QmqConsumer({ subject: 'qmq_subject', consumerGroup: 'group' })
    onMessage(message: Message): void {
      got.push(message.getStringProperty('key') ?? '')
    }
  }
  consumer.register(new Listener())
  await consumer.start()
  for (let i = 0; i < 50; i++) {
    await producer.sendMessage(producer.generateMessage('qmq_subject').setProperty('key', `v${i}`))
  }
  await until(() => got.length === 50)
  await until(() => cluster.a.acks.length + cluster.b.acks.length === 50)
  t.same(new Set(got).size, 50)
  t.equal(cluster.a.nacks.length + cluster.b.nacks.length, 0)
  t.ok(cluster.a.pulls.length > 0 && cluster.b.pulls.length > 0, 'pulls from both broker groups')
})

t.test('consumer - a throwing handler is retried with growing delays, then dead-lettered', async (t) => {
  const { cluster, producer, consumer } = await setup(t, {}, 40)
  const times: number[] = []
  const counts: number[] = []
  class Failing {
    @QmqConsumer({ subject: 'fail', consumerGroup: 'g', maxRetries: 4 })
    async onMessage(message: Message) {
      times.push(Date.now())
      counts.push(message.getDeliveryCount())
      throw new Error('boom')
    }
  }
  consumer.register(new Failing())
  await consumer.start()
  await producer.sendMessage(producer.generateMessage('fail'))
  await until(() => cluster.a.deadLetters.length + cluster.b.deadLetters.length === 1)
  t.same(counts, [1, 2, 3, 4], 'handled maxRetries times')
  const gaps = times.slice(1).map((x, i) => x - (times[i] as number))
  t.ok((gaps[2] as number) > (gaps[0] as number), `delays grow: ${gaps.join(', ')}`)
  const nacks = [...cluster.a.nacks, ...cluster.b.nacks]
  t.same(
    nacks.map((n) => n.deadLetter),
    [false, false, false, true],
  )
})

t.test('consumer - NonRetriableError dead-letters at once', async (t) => {
  const { cluster, producer, consumer } = await setup(t)
  let calls = 0
  consumer.addListener('poison', 'g', () => {
    calls++
    throw new NonRetriableError('bad payload')
  })
  await consumer.start()
  await producer.sendMessage(producer.generateMessage('poison'))
  await until(() => cluster.a.deadLetters.length + cluster.b.deadLetters.length === 1)
  t.equal(calls, 1)
})

t.test('consumer - consumeMostOnce: no acks, no redelivery', async (t) => {
  const { cluster, producer, consumer } = await setup(t)
  let calls = 0
  class Once {
    @QmqConsumer({ subject: 'once', consumerGroup: 'group', consumeMostOnce: true })
    onMessage(_message: Message): void {
      calls++
      throw new Error('ignored')
    }
  }
  consumer.register(new Once())
  await consumer.start()
  await producer.sendMessage(producer.generateMessage('once'))
  await until(() => calls === 1)
  await new Promise((r) => setTimeout(r, 150))
  t.equal(calls, 1)
  const pulls = [...cluster.a.pulls, ...cluster.b.pulls].filter((p) => p.subject === 'once')
  t.ok(pulls.every((p) => p.atMostOnce))
  t.equal(cluster.a.acks.length + cluster.b.acks.length + cluster.a.nacks.length + cluster.b.nacks.length, 0)
})

t.test('consumer - isBroadcast: every instance gets every message, named by instanceName', async (t) => {
  const { cluster, producer, consumer } = await setup(t, { instanceName: 'web-1' })
  const other = new MessageConsumerProvider({
    appCode: 'c',
    metaServer: cluster.meta.url,
    pullTimeoutMs: 200,
    instanceName: 'web-2',
  })
  t.teardown(() => other.close())
  const seen = { 'web-1': 0, 'web-2': 0 }
  const make = (name: 'web-1' | 'web-2') => {
    class Broadcast {
      @QmqConsumer({ subject: 'config', consumerGroup: 'group', isBroadcast: true })
      onMessage(_m: Message): void {
        seen[name]++
      }
    }
    return new Broadcast()
  }
  consumer.register(make('web-1'))
  other.register(make('web-2'))
  await Promise.all([consumer.start(), other.start()])
  for (let i = 0; i < 10; i++) await producer.sendMessage(producer.generateMessage('config'))
  await until(() => seen['web-1'] === 10 && seen['web-2'] === 10)
  const ids = new Set(
    [...cluster.a.pulls, ...cluster.b.pulls].filter((p) => p.broadcast).map((p) => p.consumerId),
  )
  t.same([...ids].sort(), ['web-1', 'web-2'])
})

t.test('consumer - tags filter and concurrency bound', async (t) => {
  const { producer, consumer } = await setup(t)
  let running = 0
  let maxRunning = 0
  const got: string[] = []
  consumer.addListener(
    'tagged',
    'g',
    async (m: ConsumedMessage) => {
      running++
      maxRunning = Math.max(maxRunning, running)
      await new Promise((r) => setTimeout(r, 5))
      got.push(m.getTags().join(','))
      running--
    },
    { tags: ['red'], concurrency: 3 },
  )
  await consumer.start()
  await Promise.all(
    Array.from({ length: 40 }, (_, i) =>
      producer.sendMessage(producer.generateMessage('tagged').addTag(i % 2 === 0 ? 'red' : 'blue')),
    ),
  )
  await until(() => got.length === 20)
  await new Promise((r) => setTimeout(r, 50))
  t.equal(got.length, 20)
  t.ok(got.every((g) => g === 'red'))
  t.ok(maxRunning <= 3, `max ${maxRunning} handlers at once`)
})

t.test('consumer - close() waits for running handlers and flushes their acks', async (t) => {
  const { cluster, producer, consumer } = await setup(t)
  let finished = 0
  let started = 0
  consumer.addListener(
    'slow',
    'g',
    async () => {
      started++
      await new Promise((r) => setTimeout(r, 150))
      finished++
    },
    { concurrency: 5 },
  )
  await consumer.start()
  await Promise.all(Array.from({ length: 5 }, () => producer.sendMessage(producer.generateMessage('slow'))))
  await until(() => started === 5)
  await producer.close() // so that every connection left would be the consumer's
  await consumer.close()
  t.equal(finished, 5, 'handlers finished before close() resolved')
  t.equal(cluster.a.acks.length + cluster.b.acks.length, 5, 'their acks reached the brokers')
  const pulls = cluster.a.pulls.length + cluster.b.pulls.length
  await new Promise((r) => setTimeout(r, 300))
  t.equal(cluster.a.pulls.length + cluster.b.pulls.length, pulls, 'no pull after close()')
  await until(() => cluster.a.connections + cluster.b.connections === 0)
  t.pass('no connection left open')
})

t.test('consumer - pull API: pull(max, timeout), ack/nack, async iterator', async (t) => {
  const { cluster, producer, consumer } = await setup(t)
  const pc = consumer.getOrCreatePullConsumer('pulled', 'g', { startFrom: 'earliest' })
  t.equal(consumer.getOrCreatePullConsumer('pulled', 'g', { startFrom: 'earliest' }), pc, 'same instance')
  const empty = await pc.pull(10, 100)
  t.same(empty, [])
  for (let i = 0; i < 6; i++)
    await producer.sendMessage(producer.generateMessage('pulled').setProperty('i', i))
  const got: ConsumedMessage[] = []
  while (got.length < 6) got.push(...(await pc.pull(10, 500)))
  t.equal(got.length, 6)
  await Promise.all(got.slice(0, 5).map((m) => m.ack()))
  await (got[5] as ConsumedMessage).nack({ retryAfterMs: 10 })
  t.equal(cluster.a.acks.length + cluster.b.acks.length, 5)
  const again = await pc.pull(10, 1000)
  t.equal(again[0]?.getMessageId(), got[5]?.getMessageId(), 'nacked message comes back')
  t.equal(again[0]?.getDeliveryCount(), 2)
  await again[0]?.ack()
  const it = pc[Symbol.asyncIterator]()
  await producer.sendMessage(producer.generateMessage('pulled').setProperty('i', 'iter'))
  const next = await it.next()
  t.equal((next.value as ConsumedMessage).getStringProperty('i'), 'iter')
  await (next.value as ConsumedMessage).ack()
})

t.test('consumer - metaserver down: a started consumer keeps consuming', async (t) => {
  const { cluster, producer, consumer } = await setup(t)
  let got = 0
  consumer.addListener('keep', 'g', () => {
    got++
  })
  await consumer.start()
  await producer.sendMessage(producer.generateMessage('keep'))
  await until(() => got === 1)
  await cluster.meta.stop()
  for (let i = 0; i < 5; i++) await producer.sendMessage(producer.generateMessage('keep'))
  await until(() => got === 6)
  t.pass('consumed with the metaserver down')
})

t.test('consumer - start() fails within the bound when the metaserver is down', async (t) => {
  const cluster = await startFakeCluster()
  await cluster.meta.stop()
  t.teardown(() => cluster.close())
  const consumer = new MessageConsumerProvider({
    appCode: 'c',
    metaServer: cluster.meta.url,
    firstLookupTimeoutMs: 300,
    metaTimeoutMs: 100,
  })
  t.teardown(() => consumer.close())
  consumer.addListener('x', 'g', () => {})
  await t.rejects(consumer.start(), { code: 'QMQ_ERR_METASERVER_UNAVAILABLE', message: /subject x/ })
})

t.test('consumer - heartbeats to brokers and registration with the metaserver', async (t) => {
  const { cluster, consumer } = await setup(t, { heartbeatIntervalMs: 100 })
  consumer.addListener('hb', 'g', () => {})
  await consumer.start()
  await until(() => cluster.a.heartbeats.length > 0 && cluster.b.heartbeats.length > 0)
  await until(() => cluster.meta.clientHeartbeats.length > 0)
  t.match(cluster.meta.clientHeartbeats[0], {
    kind: 'consumer',
    subscriptions: [{ subject: 'hb', consumerGroup: 'g' }],
  })
  t.same(cluster.a.heartbeats[0]?.subjects, ['hb'])
})

t.test('consumer - a pull consumer keeps its leases with heartbeats too', async (t) => {
  const { cluster, consumer } = await setup(t, { heartbeatIntervalMs: 100 })
  const pc = consumer.getOrCreatePullConsumer('held', 'g')
  await pc.pull(10, 0) // learns its broker groups
  const heard = (b: typeof cluster.a) => b.heartbeats.some((h) => h.subjects.includes('held'))
  await until(() => heard(cluster.a) && heard(cluster.b))
  t.pass('both broker groups hear about the pull consumer')
})

t.test('consumer - decorator checks its options when the class is defined', async (t) => {
  t.throws(() => QmqConsumer({ subject: 'bad subject', consumerGroup: 'g' }), {
    code: 'QMQ_ERR_SUBJECT_INVALID',
  })
  t.throws(() => QmqConsumer({ subject: 's' }), { code: 'QMQ_ERR_INVALID_ARGUMENT' })
  t.throws(() => QmqConsumer({ subject: 's', consumerGroup: 'g', concurrency: 0 }), {
    code: 'QMQ_ERR_INVALID_ARGUMENT',
  })
  const c = new MessageConsumerProvider({ appCode: 'a', metaServer: 'http://127.0.0.1:1/meta/address' })
  t.throws(() => c.register({}), { code: 'QMQ_ERR_INVALID_ARGUMENT' })
  await c.close()
})
