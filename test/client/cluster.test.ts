import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import {
  type ConsumedMessage,
  type Message,
  MessageConsumerProvider,
  MessageProducerProvider,
  QmqConsumer,
  type QmqError,
  TimeUnit,
} from '../../src/client'
import { startCluster } from '../helpers/cluster'

/**
 * The SDK against the real servers, in-process: a metaserver, two broker groups and a delay group.
 */
type T = { teardown: (fn: () => unknown) => void }

async function until(cond: () => boolean, ms = 8_000, what = 'condition'): Promise<void> {
  const end = Date.now() + ms
  while (!cond()) {
    if (Date.now() > end) throw new Error(`${what} not met in ${ms} ms`)
    await new Promise((r) => setTimeout(r, 10))
  }
}

async function setup(t: T, opts: { delay?: boolean; broker?: Record<string, unknown> } = {}) {
  // Not t.testdir(): tap removes that before our teardown closes the servers that write into it.
  const dir = mkdtempSync(join(tmpdir(), 'qmq-client-'))
  const cluster = await startCluster({ dir, delay: opts.delay, broker: opts.broker })
  const producer = new MessageProducerProvider()
  producer.setAppCode('your-app')
  producer.setMetaServer(cluster.metaUrl)
  await producer.init()
  const consumer = new MessageConsumerProvider({
    appCode: 'your-app',
    metaServer: cluster.metaUrl,
    pullTimeoutMs: 300,
    heartbeatIntervalMs: 500,
  })
  t.teardown(async () => {
    await consumer.close()
    await producer.close()
    await cluster.close()
    rmSync(dir, { recursive: true, force: true })
  })
  return { cluster, producer, consumer }
}

t.test('cluster - QMQ snippets: properties, listener, decorated consumer', async (t) => {
  const { producer, consumer } = await setup(t)
  const values: string[] = []
  class Listener {
    @QmqConsumer({ subject: 'qmq_subject', consumerGroup: 'group' })
    onMessage(message: Message): void {
      values.push(message.getStringProperty('key') ?? '')
    }
  }
  consumer.register(new Listener())
  await consumer.start()

  const message = producer.generateMessage('qmq_subject')
  message.setProperty('key', 'value')
  const sent = await new Promise<string>((resolve) => {
    void producer.sendMessage(message, {
      onSuccess: () => resolve('ok'),
      onFailed: (_m: Message, e: QmqError) => resolve(e.code),
    })
  })
  t.equal(sent, 'ok')
  await until(() => values.length === 1)
  t.same(values, ['value'])
})

t.test('cluster - delayed message, consumeMostOnce and isBroadcast as in QMQ', async (t) => {
  const { cluster, producer, consumer } = await setup(t, { delay: true })
  const delayed: number[] = []
  const once: string[] = []
  const broadcast: string[] = []
  class Listeners {
    @QmqConsumer({ subject: 'qmq_delay_subject', consumerGroup: 'group' })
    onDelayed(message: Message): void {
      delayed.push(Date.now() - (message.getScheduleReceiveTime()?.getTime() ?? 0))
    }

    @QmqConsumer({ subject: 'qmq_once', consumerGroup: 'group', consumeMostOnce: true })
    onOnce(message: Message): void {
      once.push(message.getMessageId())
      throw new Error('not retried')
    }

    @QmqConsumer({ subject: 'qmq_broadcast', consumerGroup: 'group', isBroadcast: true })
    onBroadcast(message: Message): void {
      broadcast.push(message.getMessageId())
    }
  }
  consumer.register(new Listeners())
  await consumer.start()

  const message = producer.generateMessage('qmq_delay_subject')
  message.setProperty('key', 'value')
  message.setDelayTime(1, TimeUnit.SECONDS)
  const r = await producer.sendMessage(message)
  t.equal(r.group, 'delay-1', 'a delayed message goes to the delay group')

  await producer.sendMessage(producer.generateMessage('qmq_once'))
  await producer.sendMessage(producer.generateMessage('qmq_broadcast'))
  await until(() => delayed.length === 1 && once.length === 1 && broadcast.length === 1, 10_000)
  t.ok((delayed[0] as number) >= -50, `delivered when due (${delayed[0]} ms after)`)
  await new Promise((res) => setTimeout(res, 400))
  t.equal(once.length, 1, 'consumeMostOnce: a failed message is not redelivered')
  const inFlight = cluster.brokers
    .flatMap((b) => b.messageStore.backlog('qmq_once', 'group'))
    .reduce((n, x) => n + x.inFlight + x.retrying, 0)
  t.equal(inFlight, 0, 'nothing left in flight for the at-most-once group')
})

t.test('cluster - one broker group stopped: sends fail over, nothing acknowledged is lost', async (t) => {
  const { cluster, producer, consumer } = await setup(t)
  const got = new Set<string>()
  consumer.addListener('orders', 'billing', (m) => {
    got.add(m.getMessageId())
  })
  await consumer.start()
  const sent = new Set<string>()
  const first = []
  for (let i = 0; i < 10; i++) {
    // separate batches (one per turn): batches are spread over the groups
    first.push(
      ...(await Promise.all(
        Array.from({ length: 10 }, () => producer.sendMessage(producer.generateMessage('orders'))),
      )),
    )
  }
  for (const r of first) sent.add(r.messageId)
  t.same(new Set(first.map((r) => r.group)).size, 2, 'both groups in use')
  const b = cluster.brokers[1]
  await b?.close()
  const during = await Promise.all(
    Array.from({ length: 300 }, () => producer.sendMessage(producer.generateMessage('orders'))),
  )
  for (const r of during) sent.add(r.messageId)
  t.ok(
    during.every((r) => r.group === 'broker-a'),
    'all sends went to the live group',
  )
  await b?.start()
  await until(() => got.size === sent.size, 15_000, 'all acknowledged sends consumed')
  t.same(
    [...sent].filter((id) => !got.has(id)),
    [],
    'no acknowledged message lost',
  )
})

t.test('cluster - metaserver stopped: produce and consume keep working', async (t) => {
  const { cluster, producer, consumer } = await setup(t)
  const got = new Set<string>()
  consumer.addListener('keep', 'g', (m) => {
    got.add(m.getMessageId())
  })
  await consumer.start()
  await producer.sendMessage(producer.generateMessage('keep'))
  await until(() => got.size === 1)
  await cluster.metaserver.close()
  const sent = await Promise.all(
    Array.from({ length: 50 }, () => producer.sendMessage(producer.generateMessage('keep'))),
  )
  await until(() => got.size === 51)
  t.ok(sent.every((r) => got.has(r.messageId)))
})

t.test('cluster - a throwing handler is retried with growing delays, then dead-lettered', async (t) => {
  // Redelivery delays retryBaseMs * 2^(n-1), jittered +-20%: 200, 400, 800 ms (at least 160, 320, 640).
  // Each gap between two handler calls is at least its delay (the broker cannot redeliver earlier than
  // the nack plus its backoff); how much later depends on the load of the machine, so only a generous
  // upper bound is checked. The third delay's lower bound (640) is above the first's upper (240): the
  // delays must really grow.
  const retryBaseMs = 200
  const jitter = 0.2
  const { cluster, producer, consumer } = await setup(t, { broker: { retryBaseMs, retryJitter: jitter } })
  const at: number[] = []
  const counts: number[] = []
  class Failing {
    @QmqConsumer({ subject: 'fail', consumerGroup: 'g', maxRetries: 4 })
    async onMessage(message: ConsumedMessage) {
      at.push(Date.now())
      counts.push(message.getDeliveryCount())
      throw new Error('boom')
    }
  }
  consumer.register(new Failing())
  await consumer.start()
  await producer.sendMessage(producer.generateMessage('fail'))
  const dead = () =>
    cluster.brokers
      .flatMap((b) => b.messageStore.backlog('fail', 'g'))
      .reduce((n, x) => n + x.deadLettered, 0)
  await until(() => dead() === 1, 30_000, 'dead letter')
  t.same(counts, [1, 2, 3, 4], 'handled maxRetries times, delivery count growing')
  const gaps = at.slice(1).map((x, i) => x - (at[i] as number))
  gaps.forEach((gap, i) => {
    const delay = retryBaseMs * 2 ** i
    // -1: Date.now() has millisecond resolution on both sides.
    t.ok(
      gap >= delay * (1 - jitter) - 1,
      `redelivery ${i + 2} came ${gap} ms later, not before ${delay} ms -20%`,
    )
    t.ok(gap < delay * (1 + jitter) + 10_000, `redelivery ${i + 2} came ${gap} ms later, not stuck`)
  })
})

t.test('cluster - close() loses no acked work and leaves nothing running', async (t) => {
  const { cluster, producer, consumer } = await setup(t)
  const done = new Set<string>()
  consumer.addListener(
    'work',
    'g',
    async (m) => {
      await new Promise((r) => setTimeout(r, 20))
      done.add(m.getMessageId())
    },
    { concurrency: 8 },
  )
  await consumer.start()
  const ids = (
    await Promise.all(
      Array.from({ length: 200 }, () => producer.sendMessage(producer.generateMessage('work'))),
    )
  ).map((r) => r.messageId)
  await until(() => done.size >= 20)
  await consumer.close()
  const handled = done.size
  await new Promise((r) => setTimeout(r, 200))
  t.equal(done.size, handled, 'no handler runs after close()')
  const backlog = cluster.brokers.flatMap((b) => b.messageStore.backlog('work', 'g'))
  const inFlight = backlog.reduce((n, x) => n + x.inFlight, 0)
  t.equal(inFlight, 0, 'every message handed to this consumer was handled and its ack reached the broker')
  // A second consumer of the group gets exactly the rest.
  const rest = new Set<string>()
  const next = new MessageConsumerProvider({ appCode: 'x', metaServer: cluster.metaUrl, pullTimeoutMs: 300 })
  t.teardown(() => next.close())
  next.addListener('work', 'g', (m) => {
    rest.add(m.getMessageId())
  })
  await next.start()
  await until(() => handled + rest.size >= ids.length, 10_000, 'remaining messages')
  t.same(
    ids.filter((id) => !done.has(id) && !rest.has(id)),
    [],
    'every message handled once overall',
  )
  t.same(
    [...rest].filter((id) => done.has(id)),
    [],
    'nothing handled and acked was delivered again',
  )
})
