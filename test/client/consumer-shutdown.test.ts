import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { MessageConsumerProvider, MessageProducerProvider, type QmqError } from '../../src/client'
import { startCluster } from '../helpers/cluster'

/**
 * Issue 19 item 3 over a real local cluster: handlers that never settle do not keep close() (or a
 * message) forever; close(), pull() and sendMessage() take an AbortSignal; `await using` closes.
 */
type T = { teardown: (fn: () => unknown) => void }

async function until(cond: () => boolean, ms = 8_000, what = 'condition'): Promise<void> {
  const end = Date.now() + ms
  while (!cond()) {
    if (Date.now() > end) throw new Error(`${what} not met in ${ms} ms`)
    await new Promise((r) => setTimeout(r, 10))
  }
}

/** Resolves with 'done' when `p` settles, or 'stuck' after `ms` (the test then fails, not hangs). */
function within(p: Promise<unknown>, ms: number): Promise<'done' | 'stuck'> {
  let timer: NodeJS.Timeout | undefined
  return Promise.race([
    p.then(
      () => 'done' as const,
      () => 'done' as const,
    ),
    new Promise<'stuck'>((r) => {
      timer = setTimeout(() => r('stuck'), ms)
    }),
  ]).finally(() => clearTimeout(timer))
}

const never = (): Promise<void> => new Promise<void>(() => {})

async function setup(t: T) {
  const dir = mkdtempSync(join(tmpdir(), 'qmq-shutdown-'))
  const cluster = await startCluster({ dir, brokers: 1 })
  const producer = new MessageProducerProvider({ appCode: 'app', metaServer: cluster.metaUrl })
  await producer.init()
  const consumers: MessageConsumerProvider[] = []
  const consumer = (extra: Record<string, unknown> = {}): MessageConsumerProvider => {
    const c = new MessageConsumerProvider({
      appCode: 'app',
      metaServer: cluster.metaUrl,
      pullTimeoutMs: 300,
      heartbeatIntervalMs: 300,
      ...extra,
    })
    consumers.push(c)
    return c
  }
  t.teardown(async () => {
    // A close() that never returns must not hang the teardown: the test has failed already then.
    for (const c of consumers) await within(c.close(), 3_000)
    await producer.close()
    await cluster.close()
    rmSync(dir, { recursive: true, force: true })
  })
  return { cluster, producer, consumer }
}

t.test('handlerTimeoutMs: a handler that never settles has its message nacked and redelivered', async (t) => {
  const { producer, consumer } = await setup(t)
  const c = consumer()
  const deliveries: number[] = []
  let acked = false
  c.addListener(
    'hang.timeout',
    'g',
    (m) => {
      deliveries.push(m.getDeliveryCount())
      if (m.getDeliveryCount() === 1) return never()
      acked = true
      return undefined
    },
    { handlerTimeoutMs: 300 },
  )
  await c.start()
  await producer.sendMessage(producer.generateMessage('hang.timeout'))
  await until(() => acked, 8_000, 'redelivered after the handler timeout')
  t.same(deliveries, [1, 2])
})

t.test('handlerTimeoutMs: the provider default applies; a late result is ignored', async (t) => {
  const { producer, consumer } = await setup(t)
  const c = consumer({ handlerTimeoutMs: 200 })
  const deliveries: number[] = []
  c.addListener('hang.default', 'g', async (m) => {
    deliveries.push(m.getDeliveryCount())
    if (m.getDeliveryCount() === 1) {
      await new Promise((r) => setTimeout(r, 600))
      throw new Error('late failure: must be ignored')
    }
  })
  await c.start()
  await producer.sendMessage(producer.generateMessage('hang.default'))
  await until(() => deliveries.length >= 2, 8_000, 'redelivered')
  // the late throw of delivery 1 must not nack delivery 2 (the second delivery is acked, no third)
  await new Promise((r) => setTimeout(r, 1_000))
  t.same(deliveries, [1, 2])
})

t.test('close() honours closeTimeoutMs with a hung handler; its message is redelivered', async (t) => {
  const { producer, consumer } = await setup(t)
  const hung = consumer({ closeTimeoutMs: 500 })
  let started = false
  hung.addListener('hang.close', 'g', () => {
    started = true
    return never()
  })
  await hung.start()
  await producer.sendMessage(producer.generateMessage('hang.close'))
  await until(() => started, 8_000, 'handler started')
  t.equal(await within(hung.close(), 5_000), 'done', 'close() returned')
  const other = consumer()
  const got: number[] = []
  other.addListener('hang.close', 'g', (m) => {
    got.push(m.getDeliveryCount())
  })
  await other.start()
  // Released on close (not left to its lease, which heartbeats extended): redelivered promptly.
  await until(() => got.length > 0, 8_000, 'redelivered to another consumer')
  t.equal(got[0], 2)
})

t.test('close({ signal }) stops waiting for handlers when aborted', async (t) => {
  const { producer, consumer } = await setup(t)
  const c = consumer({ closeTimeoutMs: 60_000 })
  let started = false
  c.addListener('hang.abort', 'g', () => {
    started = true
    return never()
  })
  await c.start()
  await producer.sendMessage(producer.generateMessage('hang.abort'))
  await until(() => started, 8_000, 'handler started')
  const ac = new AbortController()
  const closing = c.close({ signal: ac.signal })
  ac.abort()
  t.equal(await within(closing, 5_000), 'done', 'close() returned after the abort')
})

t.test('pull(max, timeout, { signal }) rejects with QMQ_ERR_ABORTED', async (t) => {
  const { consumer } = await setup(t)
  const c = consumer()
  const pc = c.getOrCreatePullConsumer('pull.abort', 'g')
  const ac = new AbortController()
  const p = pc.pull(10, 30_000, { signal: ac.signal })
  setTimeout(() => ac.abort(), 200)
  const err = await within(p, 5_000).then(() =>
    p.then(
      () => undefined,
      (e: QmqError) => e,
    ),
  )
  t.equal(err?.code, 'QMQ_ERR_ABORTED')
  const pre = new AbortController()
  pre.abort()
  await t.rejects(pc.pull(1, 1_000, { signal: pre.signal }), { code: 'QMQ_ERR_ABORTED' })
})

t.test('sendMessage(m, { signal }): an aborted send that was not handed over is refused', async (t) => {
  const { cluster, producer, consumer } = await setup(t)
  const ac = new AbortController()
  ac.abort()
  const m = producer.generateMessage('send.abort')
  await t.rejects(producer.sendMessage(m, { signal: ac.signal }), { code: 'QMQ_ERR_ABORTED' })
  const ok = producer.generateMessage('send.abort')
  await producer.sendMessage(ok, { signal: new AbortController().signal })
  // Waiting for room in a full send queue (maxQueueSize 1): an abort withdraws it.
  const small = new MessageProducerProvider({ appCode: 'app', metaServer: cluster.metaUrl, maxQueueSize: 1 })
  t.teardown(() => small.close())
  await small.init()
  const first = small.generateMessage('send.abort')
  const sending = small.sendMessage(first)
  const waiting = new AbortController()
  const second = small.sendMessage(small.generateMessage('send.abort'), { signal: waiting.signal })
  t.equal(small.waitingCount, 1, 'the second send waits for room')
  waiting.abort()
  await t.rejects(second, { code: 'QMQ_ERR_ABORTED' })
  await sending
  const pc = consumer().getOrCreatePullConsumer('send.abort', 'g', { startFrom: 'earliest' })
  const got = await pc.pull(10, 3_000)
  t.same(
    got.map((x) => x.getMessageId()),
    [ok.getMessageId(), first.getMessageId()],
    'only the send not aborted was stored',
  )
})

t.test('await using closes both providers', async (t) => {
  const { cluster } = await setup(t)
  let closedConsumer: MessageConsumerProvider | undefined
  let closedProducer: MessageProducerProvider | undefined
  {
    await using producer = new MessageProducerProvider({ appCode: 'app', metaServer: cluster.metaUrl })
    await using consumer = new MessageConsumerProvider({ appCode: 'app', metaServer: cluster.metaUrl })
    await producer.init()
    consumer.getOrCreatePullConsumer('dispose.x', 'g')
    closedConsumer = consumer
    closedProducer = producer
  }
  await t.rejects(closedProducer.sendMessage(closedProducer.generateMessage('dispose.x')), {
    code: 'QMQ_ERR_CLIENT_CLOSED',
  })
  t.throws(() => closedConsumer?.getOrCreatePullConsumer('dispose.y', 'g'), { code: 'QMQ_ERR_CLIENT_CLOSED' })
})

t.test('pause(subject, group) stops pulling; resume() starts again', async (t) => {
  const { producer, consumer } = await setup(t)
  const c = consumer()
  const got: string[] = []
  c.addListener('pause.x', 'g', (m) => {
    got.push(m.getMessageId())
  })
  await c.start()
  t.equal(c.pause('pause.x', 'g'), true, 'a subscription was paused')
  t.equal(c.isPaused('pause.x', 'g'), true)
  t.equal(c.pause('pause.none', 'g'), false, 'no such subscription')
  // The long polls in flight when pausing end within pullTimeoutMs (300 ms) empty; nothing is pulled
  // after them. 1.5 s is several pull rounds: an unpaused subscription gets the message well within it.
  const m = producer.generateMessage('pause.x')
  await producer.sendMessage(m)
  await new Promise((r) => setTimeout(r, 1_500))
  t.same(got, [], 'nothing delivered while paused')
  c.resume('pause.x', 'g')
  t.equal(c.isPaused('pause.x', 'g'), false)
  await until(() => got.length === 1, 8_000, 'delivered after resume')
  t.same(got, [m.getMessageId()])
})
