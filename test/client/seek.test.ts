import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import {
  type ConsumedMessage,
  MessageConsumerProvider,
  MessageProducerProvider,
  type QmqError,
} from '../../src/client'
import { startCluster } from '../helpers/cluster'

/**
 * Seek from the SDK (issue 19 item 10) over a real cluster of two broker groups: `startFrom` a time
 * for a new consumer group, and `resetCursor` of a running group (an admin operation: the brokers
 * have an admin token). Messages are numbered by a property; a time T taken between two batches
 * splits them (the brokers run in this process: same clock).
 */
const ADMIN_TOKEN = 'seek-test-admin-token'
const SUBJECT = 'seek.orders'
type T = { teardown: (fn: () => unknown) => void }

async function until(cond: () => boolean, ms = 10_000, what = 'condition'): Promise<void> {
  const end = Date.now() + ms
  while (!cond()) {
    if (Date.now() > end) throw new Error(`${what} not met in ${ms} ms`)
    await new Promise((r) => setTimeout(r, 10))
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** A cluster holding messages 0..9 of SUBJECT: 0..4 stored before the returned time, 5..9 after it. */
async function setup(t: T) {
  const dir = mkdtempSync(join(tmpdir(), 'qmq-seek-'))
  const cluster = await startCluster({ dir, brokers: 2, broker: { adminToken: ADMIN_TOKEN } })
  const producer = new MessageProducerProvider({ appCode: 'seek', metaServer: cluster.metaUrl })
  await producer.init()
  const consumer = new MessageConsumerProvider({
    appCode: 'seek',
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
  const send = (from: number) =>
    Promise.all(
      Array.from({ length: 5 }, (_, i) =>
        producer.sendMessage(producer.generateMessage(SUBJECT).setProperty('n', String(from + i))),
      ),
    )
  await send(0)
  await sleep(30)
  const splitAt = Date.now()
  await sleep(30)
  await send(5)
  return { cluster, producer, consumer, splitAt }
}

const numbers = (ms: ConsumedMessage[]) =>
  ms.map((m) => Number(m.getStringProperty('n'))).sort((a, b) => a - b)

t.test('a new group started from a time gets exactly the messages stored at or after it', async (t) => {
  const { consumer, splitAt } = await setup(t)

  // Push API, with a Date.
  const pushed: ConsumedMessage[] = []
  consumer.addListener(SUBJECT, 'from-date', (m) => void pushed.push(m), { startFrom: new Date(splitAt) })
  // Pull API, with ms since the epoch.
  const pull = consumer.getOrCreatePullConsumer(SUBJECT, 'from-ms', { startFrom: splitAt })
  // And the earliest, for contrast.
  const all: ConsumedMessage[] = []
  consumer.addListener(SUBJECT, 'from-earliest', (m) => void all.push(m), { startFrom: 'earliest' })
  await consumer.start()

  const pulled: ConsumedMessage[] = []
  while (pulled.length < 5) {
    const got = await pull.pull(10, 2_000)
    for (const m of got) await m.ack()
    pulled.push(...got)
    if (got.length === 0) throw new Error('pull from a time returned nothing')
  }
  await until(() => pushed.length >= 5 && all.length >= 10, 10_000, 'push consumers')
  // Nothing older comes later.
  t.same(await pull.pull(10, 500), [], 'nothing stored before the time is pulled')
  await sleep(300)
  t.same(numbers(pulled), [5, 6, 7, 8, 9], 'pull consumer: exactly the messages after the time')
  t.same(numbers(pushed), [5, 6, 7, 8, 9], 'push consumer: exactly the messages after the time')
  t.same(numbers(all), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], "'earliest' gets them all")
})

t.test('startFrom is checked when the listener is added', async (t) => {
  const { consumer } = await setup(t)
  for (const bad of [Number.NaN, -1, new Date('not a date'), 'oldest']) {
    t.throws(
      () => consumer.addListener(SUBJECT, 'bad', () => undefined, { startFrom: bad as 'earliest' }),
      { code: 'QMQ_ERR_INVALID_ARGUMENT' },
      `startFrom ${String(bad)} refused`,
    )
  }
  t.throws(() => consumer.getOrCreatePullConsumer(SUBJECT, 'bad', { startFrom: Number.NaN }), {
    code: 'QMQ_ERR_INVALID_ARGUMENT',
  })
})

t.test('resetCursor on a running group redelivers from the time; it needs the admin token', async (t) => {
  const { consumer, producer, splitAt } = await setup(t)
  const seen: ConsumedMessage[] = []
  consumer.addListener(SUBJECT, 'billing', (m) => void seen.push(m), { startFrom: 'earliest' })
  await consumer.start()
  await until(() => seen.length >= 10, 10_000, 'first pass over the 10 messages')
  await sleep(300) // the acks reach the brokers
  t.same(numbers(seen), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])

  // Without the token (and with a wrong one) the brokers refuse.
  const refused = await consumer.resetCursor(SUBJECT, 'billing', splitAt).catch((e: QmqError) => e)
  t.match(refused, { code: 'QMQ_ERR_UNAUTHORIZED' }, 'no token: refused')
  const wrong = await consumer
    .resetCursor(SUBJECT, 'billing', splitAt, { adminToken: 'not-the-admin-token' })
    .catch((e: QmqError) => e)
  t.match(wrong, { code: 'QMQ_ERR_UNAUTHORIZED' }, 'wrong token: refused')
  await sleep(300)
  t.equal(seen.length, 10, 'nothing redelivered by a refused reset')

  // With the token: the running listener gets 5..9 again, and nothing older.
  const reset = await consumer.resetCursor(SUBJECT, 'billing', new Date(splitAt), { adminToken: ADMIN_TOKEN })
  t.same([...reset].sort(), ['broker-a', 'broker-b'], 'reset on both broker groups of the route')
  await until(() => seen.length >= 15, 10_000, 'redelivery after the reset')
  await sleep(500)
  t.same(numbers(seen.slice(10)), [5, 6, 7, 8, 9], 'redelivered from the time on, exactly')

  // A new message, then a reset to 'earliest': everything again.
  await producer.sendMessage(producer.generateMessage(SUBJECT).setProperty('n', '10'))
  await until(() => seen.length >= 16, 10_000, 'message 10')
  await consumer.resetCursor(SUBJECT, 'billing', 'earliest', { adminToken: ADMIN_TOKEN })
  await until(() => seen.length >= 27, 10_000, 'everything again after a reset to earliest')
  t.same(numbers(seen.slice(16)), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
})

t.test('resetCursor with the adminToken option; unknown subject', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'qmq-seek-'))
  const cluster = await startCluster({ dir, brokers: 1, broker: { adminToken: ADMIN_TOKEN } })
  const consumer = new MessageConsumerProvider({
    appCode: 'seek',
    metaServer: cluster.metaUrl,
    adminToken: ADMIN_TOKEN,
  })
  t.teardown(async () => {
    await consumer.close()
    await cluster.close()
    rmSync(dir, { recursive: true, force: true })
  })
  const err = await consumer.resetCursor('seek.nobody', 'g', 'earliest').catch((e: QmqError) => e)
  t.match(err, { code: 'QMQ_ERR_NOT_FOUND' }, 'a subject without a route')
  t.rejects(consumer.resetCursor(SUBJECT, 'g', new Date(Number.NaN)), { code: 'QMQ_ERR_INVALID_ARGUMENT' })
})
