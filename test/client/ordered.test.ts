import { execFile } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'
import {
  type ConsumedMessage,
  MessageConsumerProvider,
  MessageProducerProvider,
  type SendResult,
} from '../../src/client'
import { ORDER_SLOTS, orderSlot, slotGroupOrder } from '../../src/client/producer/producer'
import { startCluster } from '../helpers/cluster'

const QMQ_BIN = join(__dirname, '..', '..', 'bin', 'qmq.js')

/**
 * Ordered messages end to end (docs/client.md "Ordered messages"): a metaserver, two broker groups,
 * producers with order keys, several consumers of one group.
 */
async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms
  while (!cond()) {
    if (Date.now() > end) throw new Error(`${what} not met in ${ms} ms`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

t.test('ordered - slots and their group order are stable and spread keys', async (t) => {
  t.equal(orderSlot('order-42'), orderSlot('order-42'))
  const slots = new Set(Array.from({ length: 1000 }, (_, i) => orderSlot(`k${i}`)))
  t.equal(slots.size, ORDER_SLOTS, 'a thousand keys use every slot')
  const groups = [{ name: 'broker-a' }, { name: 'broker-b' }, { name: 'broker-c' }]
  const firsts = new Map<string, number>()
  let stable = true
  let failover = true
  for (let s = 0; s < ORDER_SLOTS; s++) {
    const order = slotGroupOrder(s, groups)
    // Independent of the route's order; without its first group a slot goes to its second one.
    if (slotGroupOrder(s, [...groups].reverse())[0] !== order[0]) stable = false
    if (slotGroupOrder(s, order.slice(1))[0] !== order[1]) failover = false
    const first = (order[0] as { name: string }).name
    firsts.set(first, (firsts.get(first) ?? 0) + 1)
  }
  t.ok(stable, 'a slot group order does not depend on the route order')
  t.ok(failover, 'without its first group, a slot goes to its second one')
  t.equal(firsts.size, 3, 'every group is first for some slots')
})

t.test('ordered - a failing key is retried in place while the other keys flow', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'qmq-ordered-'))
  const cluster = await startCluster({ dir, broker: { retryBaseMs: 100, retryMaxMs: 200, maxRetries: 1000 } })
  const producer = new MessageProducerProvider({ appCode: 'p', metaServer: cluster.metaUrl })
  await producer.init()
  const consumers = [0, 1, 2].map(
    () => new MessageConsumerProvider({ appCode: 'c', metaServer: cluster.metaUrl, pullTimeoutMs: 300 }),
  )
  t.teardown(async () => {
    for (const c of consumers) await c.close()
    await producer.close()
    await cluster.close()
    rmSync(dir, { recursive: true, force: true })
  })
  const seen = new Map<string, number[]>() // key -> indexes in handling order
  let badFails = true
  let badCalls = 0
  const handler = async (m: ConsumedMessage): Promise<void> => {
    const key = m.getOrderKey() as string
    const index = Number(m.getStringProperty('i'))
    if (key === 'bad' && badFails) {
      badCalls++
      t.equal(index, 0, 'only the first message of the failing key is handed out')
      throw new Error('bad key fails')
    }
    await new Promise((r) => setTimeout(r, Math.random() * 3))
    const list = seen.get(key) ?? []
    list.push(index)
    seen.set(key, list)
  }
  for (const c of consumers) {
    c.addListener('ordered.s', 'g', handler, { startFrom: 'earliest', concurrency: 8, maxRetries: 1000 })
    await c.start()
  }
  const keys = Array.from({ length: 10 }, (_, i) => `k${i}`)
  const perKey = 30
  const sends: Promise<SendResult>[] = []
  const groupOf = new Map<string, Set<string>>()
  const send = (key: string, i: number): void => {
    const m = producer.generateMessage('ordered.s').setOrderKey(key).setProperty('i', i)
    const p = producer.sendMessage(m)
    p.then((r) => {
      const g = groupOf.get(key) ?? new Set()
      g.add(r.group)
      groupOf.set(key, g)
    })
    sends.push(p)
  }
  for (let i = 0; i < 5; i++) send('bad', i)
  for (let i = 0; i < perKey; i++) for (const k of keys) send(k, i)
  await Promise.all(sends)
  for (const [k, g] of groupOf) t.equal(g.size, 1, `every message of ${k} went to one broker group`)
  await until(() => keys.every((k) => (seen.get(k)?.length ?? 0) >= perKey), 30_000, 'the good keys done')
  for (const k of keys) {
    t.same(
      seen.get(k),
      Array.from({ length: perKey }, (_, i) => i),
      `${k} handled once each, in send order`,
    )
  }
  t.ok(badCalls >= 2, `the failing key was retried meanwhile (${badCalls} calls)`)
  t.notOk(seen.has('bad'), 'nothing of the failing key overtook its first message')
  let blocked = 0
  for (const b of cluster.brokers) {
    for (const e of b.messageStore.backlog('ordered.s', 'g')) blocked += e.keysBlocked ?? 0
  }
  t.equal(blocked, 1, 'the backlog shows one key blocked')
  // The operator sees it too: `qmq backlog` shows the blocked key and how long it has been blocked.
  const { stdout } = await promisify(execFile)(
    process.execPath,
    [QMQ_BIN, 'backlog', 'ordered.s', 'g', '--metaserver', cluster.metaUrl, '--json'],
    { encoding: 'utf8' },
  )
  const rows = JSON.parse(stdout) as { keysBlocked: number; oldestBlockedMs: number; waiting: number }[]
  t.equal(
    rows.reduce((n, r) => n + r.keysBlocked, 0),
    1,
    'qmq backlog: one key blocked',
  )
  t.equal(
    rows.reduce((n, r) => n + r.waiting, 0),
    4,
    'qmq backlog: its 4 later messages wait',
  )
  t.ok(
    rows.some((r) => r.oldestBlockedMs > 0),
    'qmq backlog: the age of the oldest blocked key',
  )
  const table = await promisify(execFile)(
    process.execPath,
    [QMQ_BIN, 'backlog', 'ordered.s', 'g', '--metaserver', cluster.metaUrl],
    { encoding: 'utf8' },
  )
  t.match(table.stdout, /KEYS BLOCKED\s+OLDEST BLOCKED/)
  badFails = false
  await until(() => (seen.get('bad')?.length ?? 0) >= 5, 15_000, 'the failing key drained')
  t.same(seen.get('bad'), [0, 1, 2, 3, 4], 'then the failing key goes on, in order')
})

t.test('ordered - a broadcast instance handles each key in order', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'qmq-ordered-bc-'))
  const cluster = await startCluster({ dir })
  const producer = new MessageProducerProvider({ appCode: 'p', metaServer: cluster.metaUrl })
  await producer.init()
  const consumer = new MessageConsumerProvider({
    appCode: 'c',
    metaServer: cluster.metaUrl,
    pullTimeoutMs: 300,
    instanceName: 'inst-1',
  })
  t.teardown(async () => {
    await consumer.close()
    await producer.close()
    await cluster.close()
    rmSync(dir, { recursive: true, force: true })
  })
  const seen = new Map<string, number[]>()
  let running = 0
  let overlap = false
  const runningKeys = new Set<string>()
  consumer.addListener(
    'ordered.bc',
    'g',
    async (m: ConsumedMessage) => {
      const key = m.getOrderKey() as string
      if (runningKeys.has(key)) overlap = true
      runningKeys.add(key)
      running++
      await new Promise((r) => setTimeout(r, Math.random() * 4))
      running--
      runningKeys.delete(key)
      const list = seen.get(key) ?? []
      list.push(Number(m.getStringProperty('i')))
      seen.set(key, list)
    },
    { isBroadcast: true, startFrom: 'earliest', concurrency: 16 },
  )
  await consumer.start()
  const sends: Promise<SendResult>[] = []
  for (let i = 0; i < 20; i++) {
    for (const k of ['a', 'b', 'c']) {
      sends.push(
        producer.sendMessage(producer.generateMessage('ordered.bc').setOrderKey(k).setProperty('i', i)),
      )
    }
  }
  await Promise.all(sends)
  await until(() => ['a', 'b', 'c'].every((k) => (seen.get(k)?.length ?? 0) >= 20), 20_000, 'all handled')
  for (const k of ['a', 'b', 'c'])
    t.same(
      seen.get(k),
      Array.from({ length: 20 }, (_, i) => i),
      `${k} in order`,
    )
  t.notOk(overlap, 'never two handlers of one key at once')
  t.equal(running, 0)
})
