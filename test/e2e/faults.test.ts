import t from 'tap'
import { MessageConsumerProvider, MessageProducerProvider, TimeUnit } from '../../src/client'
import { kill9, portOf, startBroker, startDelay, startMetaserver } from '../helpers/services'
import { testDir } from '../helpers/testdir'

/**
 * Crash tests across real processes started through the CLI. In each, every message whose send
 * was acknowledged must be consumed: a SIGKILLed broker mid-produce, a stopped metaserver, and a
 * SIGKILLed delay server with messages pending.
 */
const CLIENT = { appCode: 'faults', routeRefreshMs: 300, firstLookupTimeoutMs: 5_000 }

async function consumeAll(
  metaServer: string,
  subject: string,
  group: string,
  expected: ReadonlySet<string>,
  timeoutMs: number,
): Promise<string[]> {
  const consumer = new MessageConsumerProvider({ ...CLIENT, metaServer })
  await consumer.init()
  const pull = consumer.getOrCreatePullConsumer(subject, group, { startFrom: 'earliest' })
  const got = new Set<string>()
  const deadline = Date.now() + timeoutMs
  try {
    while ([...expected].some((id) => !got.has(id)) && Date.now() < deadline) {
      for (const m of await pull.pull(200, 500)) {
        got.add(m.getMessageId())
        await m.ack()
      }
    }
  } finally {
    await consumer.close()
  }
  return [...expected].filter((id) => !got.has(id))
}

t.test('faults - a broker SIGKILLed during a produce run loses nothing it acknowledged', async (t) => {
  const dir = testDir(t)
  const meta = await startMetaserver(t, dir)
  const b1 = await startBroker(t, dir, 'broker-1', meta.address)
  await startBroker(t, dir, 'broker-2', meta.address)
  const metaServer = `${meta.address}/meta/address`
  const producer = new MessageProducerProvider({ ...CLIENT, metaServer })
  await producer.init()
  t.teardown(() => producer.close())

  const acked = new Set<string>()
  let failed = 0
  let restarted: Promise<unknown> | undefined
  for (let round = 0; round < 30; round++) {
    const batch = Array.from({ length: 100 }, (_, i) => {
      const m = producer.generateMessage('faults.orders')
      m.setProperty('n', round * 100 + i)
      return m
    })
    const results = await Promise.allSettled(batch.map((m) => producer.sendMessage(m)))
    results.forEach((r, i) => {
      if (r.status === 'fulfilled') acked.add((batch[i] as (typeof batch)[number]).getMessageId())
      else failed++
    })
    if (round === 10) {
      await kill9(b1)
      // Back on the same port and data dir a little later, while producing goes on.
      restarted = new Promise((r) => setTimeout(r, 1_000)).then(() =>
        startBroker(t, dir, 'broker-1', meta.address, portOf(b1)),
      )
    }
  }
  await restarted
  t.ok(acked.size >= 2_500, `most sends were acknowledged (${acked.size} acked, ${failed} failed)`)
  const missing = await consumeAll(metaServer, 'faults.orders', 'audit', acked, 60_000)
  t.same(missing, [], 'every acknowledged message is consumed')
})

t.test('faults - with the metaserver stopped, produce and consume go on from cached routes', async (t) => {
  const dir = testDir(t)
  const meta = await startMetaserver(t, dir)
  await startBroker(t, dir, 'broker-1', meta.address)
  await startBroker(t, dir, 'broker-2', meta.address)
  const metaServer = `${meta.address}/meta/address`
  const producer = new MessageProducerProvider({ ...CLIENT, metaServer })
  await producer.init()
  t.teardown(() => producer.close())
  const consumer = new MessageConsumerProvider({ ...CLIENT, metaServer })
  await consumer.init()
  t.teardown(() => consumer.close())
  const pull = consumer.getOrCreatePullConsumer('faults.meta', 'billing', { startFrom: 'earliest' })

  // Warm the routes of both sides, then take the metaserver away.
  const first = producer.generateMessage('faults.meta')
  await producer.sendMessage(first)
  const acked = new Set<string>([first.getMessageId()])
  const got = new Set<string>()
  for (const m of await pull.pull(1, 1000)) {
    got.add(m.getMessageId())
    await m.ack()
  }
  await kill9(meta)

  for (let i = 0; i < 300; i++) {
    const m = producer.generateMessage('faults.meta')
    await producer.sendMessage(m)
    acked.add(m.getMessageId())
  }
  const deadline = Date.now() + 30_000
  while ([...acked].some((id) => !got.has(id)) && Date.now() < deadline) {
    for (const m of await pull.pull(100, 500)) {
      got.add(m.getMessageId())
      await m.ack()
    }
  }
  t.same(
    [...acked].filter((id) => !got.has(id)),
    [],
    'every message sent while the metaserver was down is consumed',
  )
})

t.test(
  'faults - a delay server SIGKILLed with messages pending delivers them all after a restart',
  async (t) => {
    const dir = testDir(t)
    const meta = await startMetaserver(t, dir)
    await startBroker(t, dir, 'broker-1', meta.address)
    await startBroker(t, dir, 'broker-2', meta.address)
    const d1 = await startDelay(t, dir, 'delay-1', meta.address)
    const metaServer = `${meta.address}/meta/address`
    const producer = new MessageProducerProvider({ ...CLIENT, metaServer })
    await producer.init()
    t.teardown(() => producer.close())

    const acked = new Set<string>()
    const sends = Array.from({ length: 300 }, (_, i) => {
      const m = producer.generateMessage('faults.delayed')
      m.setProperty('n', i)
      m.setDelayTime(3, TimeUnit.SECONDS)
      return producer.sendMessage(m).then(() => acked.add(m.getMessageId()))
    })
    await Promise.all(sends)
    await kill9(d1)
    await startDelay(t, dir, 'delay-1', meta.address, portOf(d1))
    const missing = await consumeAll(metaServer, 'faults.delayed', 'billing', acked, 30_000)
    t.equal(acked.size, 300)
    t.same(missing, [], 'every pending delayed message is delivered after the restart')
  },
)
