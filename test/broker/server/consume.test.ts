import t from 'tap'
import { RawClient } from '../../helpers/raw-client'
import { ack, message, nack, pull, sendOk } from './ops'
import { startBroker } from './start-broker'

t.test('consume - produce then consume over TCP', async (t) => {
  const b = await startBroker(t)
  const c = await RawClient.connect(b.port)
  t.teardown(() => c.destroy())
  await sendOk(c, [message('orders', 'a', 'hello'), message('orders', 'b', Buffer.from([1, 2, 3]))])
  const got = await pull(c, { subject: 'orders', group: 'billing', consumerId: 'c1' })
  t.same(
    got.map((m) => [m.record.id, m.record.body, m.deliveryCount]),
    [
      ['a', 'hello', 1],
      ['b', Buffer.from([1, 2, 3]), 1],
    ],
  )
  t.equal(
    await ack(c, {
      subject: 'orders',
      group: 'billing',
      consumerId: 'c1',
      sequences: got.map((m) => m.sequence),
    }),
    2,
  )
  t.same(await pull(c, { subject: 'orders', group: 'billing', consumerId: 'c1' }), [], 'nothing left')
})

t.test('consume - a duplicate id is stored once', async (t) => {
  const b = await startBroker(t)
  const c = await RawClient.connect(b.port)
  t.teardown(() => c.destroy())
  await sendOk(c, [message('s', 'same')])
  await sendOk(c, [message('s', 'same')])
  const got = await pull(c, { subject: 's', group: 'g', consumerId: 'c1' })
  t.equal(got.length, 1)
})

t.test('consume - 8 consumers of one group share a 50k backlog with no loss and no duplicates', async (t) => {
  const b = await startBroker(t)
  const producer = await RawClient.connect(b.port)
  t.teardown(() => producer.destroy())
  const total = 50_000
  const batch = 1000
  for (let i = 0; i < total; i += batch) {
    await sendOk(
      producer,
      Array.from({ length: batch }, (_, j) => message('big', `m${i + j}`, 'x')),
    )
  }
  const seen = new Map<string, number>()
  const perConsumer: number[] = []
  const consumers = await Promise.all(Array.from({ length: 8 }, () => RawClient.connect(b.port)))
  t.teardown(() => {
    for (const c of consumers) c.destroy()
  })
  await Promise.all(
    consumers.map(async (c, i) => {
      let mine = 0
      for (;;) {
        const msgs = await pull(c, { subject: 'big', group: 'g', consumerId: `c${i}`, maxMessages: 200 })
        if (msgs.length === 0) break
        for (const m of msgs) seen.set(m.record.id, (seen.get(m.record.id) ?? 0) + 1)
        mine += msgs.length
        await ack(c, {
          subject: 'big',
          group: 'g',
          consumerId: `c${i}`,
          sequences: msgs.map((m) => m.sequence),
        })
      }
      perConsumer[i] = mine
    }),
  )
  t.equal(seen.size, total, 'no loss')
  t.ok(
    [...seen.values()].every((n) => n === 1),
    'no duplicates',
  )
  t.ok(perConsumer.filter((n) => n > 0).length >= 2, `work was shared: ${perConsumer.join(',')}`)
})

t.test('consume - a consumer joining mid-backlog gets messages on its first pull', async (t) => {
  const b = await startBroker(t)
  const c1 = await RawClient.connect(b.port)
  const c2 = await RawClient.connect(b.port)
  t.teardown(() => {
    c1.destroy()
    c2.destroy()
  })
  await sendOk(
    c1,
    Array.from({ length: 100 }, (_, i) => message('s', `m${i}`)),
  )
  const first = await pull(c1, { subject: 's', group: 'g', consumerId: 'old', maxMessages: 10 })
  t.equal(first.length, 10)
  const joined = await pull(c2, { subject: 's', group: 'g', consumerId: 'new', maxMessages: 10 })
  t.equal(joined.length, 10, 'the newcomer gets part of the backlog at once')
  const ids = new Set([...first, ...joined].map((m) => m.record.id))
  t.equal(ids.size, 20, 'different messages')
})

t.test('consume - acks in any order; an unacked message does not hold back the others', async (t) => {
  const b = await startBroker(t)
  const c = await RawClient.connect(b.port)
  t.teardown(() => c.destroy())
  await sendOk(
    c,
    Array.from({ length: 5 }, (_, i) => message('s', `m${i}`)),
  )
  const got = await pull(c, { subject: 's', group: 'g', consumerId: 'c1' })
  t.equal(got.length, 5)
  const seqs = got.map((m) => m.sequence)
  const order = [seqs[4], seqs[1], seqs[3]] as number[]
  for (const s of order)
    t.equal(await ack(c, { subject: 's', group: 'g', consumerId: 'c1', sequences: [s] }), 1)
  t.equal(
    await ack(c, { subject: 's', group: 'g', consumerId: 'c1', sequences: [seqs[4] as number] }),
    0,
    'acked twice counts once',
  )
  const backlog = b.broker.messageStore.backlog('s', 'g')[0]
  t.equal(backlog?.inFlight, 2, 'two still in flight')
})

t.test('consume - nack comes back after the given delay with its delivery count', async (t) => {
  const b = await startBroker(t)
  const c = await RawClient.connect(b.port)
  t.teardown(() => c.destroy())
  await sendOk(c, [message('s', 'retry-me')])
  const [first] = await pull(c, { subject: 's', group: 'g', consumerId: 'c1' })
  t.equal(first?.deliveryCount, 1)
  const nackedAt = Date.now()
  t.equal(
    await nack(c, {
      subject: 's',
      group: 'g',
      consumerId: 'c1',
      sequences: [first?.sequence as number],
      retryAfterMs: 300,
    }),
    1,
  )
  t.same(await pull(c, { subject: 's', group: 'g', consumerId: 'c1' }), [], 'not before the delay')
  const again = await pull(c, { subject: 's', group: 'g', consumerId: 'c1', timeoutMs: 3_000 })
  t.equal(again.length, 1, 'the long poll is woken by the redelivery')
  t.equal(again[0]?.record.id, 'retry-me')
  t.equal(again[0]?.deliveryCount, 2)
  t.ok(Date.now() - nackedAt >= 250, 'after the backoff')
})

t.test('consume - long poll answers as soon as a message arrives, and empty on timeout', async (t) => {
  const b = await startBroker(t)
  const c = await RawClient.connect(b.port)
  const p = await RawClient.connect(b.port)
  t.teardown(() => {
    c.destroy()
    p.destroy()
  })
  const started = Date.now()
  const empty = await pull(c, { subject: 'lp', group: 'g', consumerId: 'c1', timeoutMs: 200 })
  t.same(empty, [])
  t.ok(Date.now() - started >= 150, 'waited')
  const waiting = pull(c, { subject: 'lp', group: 'g', consumerId: 'c1', timeoutMs: 10_000 })
  await new Promise((r) => setTimeout(r, 50))
  await sendOk(p, [message('lp', 'wake')])
  const got = await waiting
  t.equal(got[0]?.record.id, 'wake')
})

t.test('consume - closing the broker answers waiting long polls with an empty list', async (t) => {
  const b = await startBroker(t)
  const c = await RawClient.connect(b.port)
  t.teardown(() => c.destroy())
  const waiting = pull(c, { subject: 'lp', group: 'g', consumerId: 'c1', timeoutMs: 20_000 })
  await new Promise((r) => setTimeout(r, 50))
  const closing = b.broker.close()
  t.same(await waiting, [])
  await closing
})

t.test('consume - restart on the same data dir and port keeps messages and consumer state', async (t) => {
  const b = await startBroker(t)
  const c = await RawClient.connect(b.port)
  await sendOk(
    c,
    Array.from({ length: 6 }, (_, i) => message('r', `m${i}`)),
  )
  const got = await pull(c, { subject: 'r', group: 'g', consumerId: 'c1', maxMessages: 2 })
  await ack(c, { subject: 'r', group: 'g', consumerId: 'c1', sequences: got.map((m) => m.sequence) })
  c.destroy()
  const { port } = await b.broker.restart()
  t.equal(port, b.port, 'same port')
  const c2 = await RawClient.connect(port)
  t.teardown(() => c2.destroy())
  const rest = await pull(c2, { subject: 'r', group: 'g', consumerId: 'c1', maxMessages: 10 })
  t.same(
    rest.map((m) => m.record.id),
    ['m2', 'm3', 'm4', 'm5'],
    'acked ones are not delivered again',
  )
})
