import t from 'tap'
import { MessageConsumerProvider, MessageProducerProvider } from '../../src/client'
import { MetaClient } from '../../src/common/meta/meta-client'
import { CLUSTER_SECRET } from '../metaserver/helpers'
import {
  kill9,
  portOf,
  type RunningService,
  replicatedBrokerArgs as brokerArgs,
  startMetaserver,
  startService,
  until,
} from '../helpers/services'

/**
 * `npm run test:faults` (about 1.5 min; not part of `npm test`).
 * Replication across real processes started through the CLI (issue 14), one broker group of a master
 * and a slave:
 * - 4 producers send and 4 consumers consume while the master is SIGKILLed: every acknowledged message
 *   is consumed, producers resume within heartbeat timeout + 5 s, and the former master, restarted,
 *   rejoins as the slave.
 * - the slave is SIGKILLed: under 'sync' the master refuses writes (retriable) until a slave is in sync
 *   again; restarted, the slave catches up and writes go on; nothing acknowledged is lost.
 */
const HEARTBEAT_TIMEOUT_MS = 3_000 // startMetaserver's
const CLIENT = { appCode: 'repl-kill', routeRefreshMs: 300, firstLookupTimeoutMs: 5_000 }
const SUBJECT = 'repl.orders'

t.test('replication - SIGKILL of the master under load loses no acknowledged message', async (t) => {
  const dir = t.testdir()
  const meta = await startMetaserver(t, dir)
  const admin = new MetaClient({ url: meta.address, clusterSecret: CLUSTER_SECRET })
  t.teardown(() => admin.close())
  let a: RunningService = await startService(t, 'a', brokerArgs(dir, 'a', meta.address, 'master'))
  const b = await startService(t, 'b', brokerArgs(dir, 'b', meta.address, 'slave'))
  await until('the master reports its slave in sync', async () => {
    const g = await admin.getGroup('g1').catch(() => undefined)
    const m = g?.servers.find((s) => s.role === 'master')
    return m?.replication?.inSyncSlaves?.includes(b.address) === true
  })

  const metaServer = `${meta.address}/meta/address`
  const acked = new Set<string>()
  const consumed = new Set<string>()
  let stop = false
  let killedAt = 0
  let firstAckAfterKill = 0
  const producers = await Promise.all(
    Array.from({ length: 4 }, async () => {
      const p = new MessageProducerProvider({ ...CLIENT, metaServer })
      await p.init()
      t.teardown(() => p.close())
      return p
    }),
  )
  const consumers = await Promise.all(
    Array.from({ length: 4 }, async () => {
      const c = new MessageConsumerProvider({ ...CLIENT, metaServer })
      await c.init()
      t.teardown(() => c.close())
      return c.getOrCreatePullConsumer(SUBJECT, 'audit', { startFrom: 'earliest' })
    }),
  )
  const produceLoops = producers.map(async (p) => {
    while (!stop) {
      const batch = Array.from({ length: 20 }, () => p.generateMessage(SUBJECT))
      const results = await Promise.allSettled(batch.map((m) => p.sendMessage(m)))
      results.forEach((r, i) => {
        if (r.status !== 'fulfilled') return
        acked.add((batch[i] as (typeof batch)[number]).getMessageId())
        if (killedAt > 0 && firstAckAfterKill === 0) firstAckAfterKill = Date.now()
      })
      if (results.every((r) => r.status === 'rejected')) await new Promise((r) => setTimeout(r, 100))
    }
  })
  let consuming = true
  const consumeLoops = consumers.map(async (c) => {
    while (consuming) {
      try {
        for (const m of await c.pull(100, 300)) {
          consumed.add(m.getMessageId())
          await m.ack().catch(() => undefined)
        }
      } catch {
        await new Promise((r) => setTimeout(r, 100))
      }
    }
  })

  await until('traffic flows', () => acked.size >= 400 && consumed.size >= 100)
  await kill9(a)
  killedAt = Date.now()
  await until('producers resume on the promoted slave', () => firstAckAfterKill > 0, 30_000)
  const resumeMs = firstAckAfterKill - killedAt
  t.ok(
    resumeMs <= HEARTBEAT_TIMEOUT_MS + 5_000,
    `producers resumed ${resumeMs} ms after the kill (limit ${HEARTBEAT_TIMEOUT_MS + 5_000})`,
  )
  const g = await admin.getGroup('g1')
  t.equal(g.address, b.address, 'the slave is the master')
  t.equal(g.epoch, 1, 'epoch 1')
  const ackedBefore = acked.size
  await until('more acknowledged after the failover', () => acked.size >= ackedBefore + 200)

  // The former master comes back on its address: it rejoins as the slave.
  a = await startService(t, 'a', brokerArgs(dir, 'a', meta.address, 'master', portOf(a)))
  await until('the former master rejoined as slave', async () => {
    const g2 = await admin.getGroup('g1')
    const slave = g2.servers.find((s) => s.role === 'slave' && s.alive)
    const master = g2.servers.find((s) => s.role === 'master')
    return slave?.address === a.address && master?.replication?.inSyncSlaves?.includes(a.address) === true
  })
  stop = true
  await Promise.all(produceLoops)
  await until(
    'every acknowledged message consumed',
    () => [...acked].every((id) => consumed.has(id)),
    60_000,
  ).catch((err: unknown) => t.comment(String(err)))
  consuming = false
  await Promise.race([Promise.all(consumeLoops), new Promise((r) => setTimeout(r, 3_000))])
  const missing = [...acked].filter((id) => !consumed.has(id))
  if (missing.length > 0) t.comment(`missing ${missing.length}: ${missing.slice(0, 5).join(' ')}`)
  if (missing.length > 0) {
    const c = new MessageConsumerProvider({ ...CLIENT, metaServer })
    await c.init()
    const pc = c.getOrCreatePullConsumer(SUBJECT, 'recheck', { startFrom: 'earliest' })
    const all = new Set<string>()
    for (let i = 0; i < 40; i++) for (const m of await pc.pull(1000, 300)) all.add(m.getMessageId())
    t.comment(
      `a fresh group sees ${all.size} messages; missing ones stored: ${missing.filter((id) => all.has(id)).length}`,
    )
    await c.close()
  }
  t.same(missing.length, 0, `every acknowledged message is consumed (${acked.size} acknowledged)`)
  t.comment(`acknowledged ${acked.size}, consumed ${consumed.size} distinct, resumed after ${resumeMs} ms`)
})

t.test(
  'replication - SIGKILL of the slave: sync refuses writes until it is back, nothing is lost',
  async (t) => {
    const dir = t.testdir()
    const meta = await startMetaserver(t, dir)
    const admin = new MetaClient({ url: meta.address, clusterSecret: CLUSTER_SECRET })
    t.teardown(() => admin.close())
    await startService(t, 'a', brokerArgs(dir, 'a', meta.address, 'master'))
    let b: RunningService = await startService(t, 'b', brokerArgs(dir, 'b', meta.address, 'slave'))
    const inSync = async (): Promise<boolean> => {
      const g = await admin.getGroup('g1').catch(() => undefined)
      return (
        g?.servers.find((s) => s.role === 'master')?.replication?.inSyncSlaves?.includes(b.address) === true
      )
    }
    await until('the master reports its slave in sync', inSync)
    const metaServer = `${meta.address}/meta/address`
    const producer = new MessageProducerProvider({ ...CLIENT, metaServer, sendTimeoutMs: 2_000 })
    await producer.init()
    t.teardown(() => producer.close())
    const acked = new Set<string>()
    const sendSome = async (n: number): Promise<{ ok: number; failed: string[] }> => {
      const batch = Array.from({ length: n }, () => producer.generateMessage(SUBJECT))
      const results = await Promise.allSettled(batch.map((m) => producer.sendMessage(m)))
      const failed: string[] = []
      results.forEach((r, i) => {
        if (r.status === 'fulfilled') acked.add((batch[i] as (typeof batch)[number]).getMessageId())
        else failed.push(String((r.reason as { code?: string }).code ?? r.reason))
      })
      return { ok: n - failed.length, failed }
    }
    t.equal((await sendSome(50)).ok, 50, 'writes acknowledged with the slave in sync')
    await kill9(b)
    // Until the master sees the slave out of sync, SENDs wait for it (and time out, retriable).
    await until('the master refuses writes without an in-sync slave', async () => {
      const r = await sendSome(5)
      return r.ok === 0
    })
    b = await startService(t, 'b', brokerArgs(dir, 'b', meta.address, 'slave', portOf(b)))
    await until('slave back in sync', inSync)
    await until('writes go on', async () => (await sendSome(20)).ok === 20)
    const consumer = new MessageConsumerProvider({ ...CLIENT, metaServer })
    await consumer.init()
    t.teardown(() => consumer.close())
    const pc = consumer.getOrCreatePullConsumer(SUBJECT, 'audit', { startFrom: 'earliest' })
    const consumed = new Set<string>()
    await until('every acknowledged message consumed', async () => {
      for (const m of await pc.pull(200, 300)) {
        consumed.add(m.getMessageId())
        await m.ack()
      }
      return [...acked].every((id) => consumed.has(id))
    })
    t.pass(`all ${acked.size} acknowledged messages consumed`)
  },
)

t.test(
  'replication - master and slave SIGKILLed in turn, with restarts: nothing acknowledged is lost',
  async (t) => {
    const dir = t.testdir()
    const meta = await startMetaserver(t, dir)
    const admin = new MetaClient({ url: meta.address, clusterSecret: CLUSTER_SECRET })
    t.teardown(() => admin.close())
    const nodes: Record<'a' | 'b', RunningService> = {
      a: await startService(t, 'a', brokerArgs(dir, 'a', meta.address, 'master')),
      b: await startService(t, 'b', brokerArgs(dir, 'b', meta.address, 'slave')),
    }
    const masterIs = async (name: 'a' | 'b'): Promise<boolean> => {
      const g = await admin.getGroup('g1').catch(() => undefined)
      const other = nodes[name === 'a' ? 'b' : 'a'].address
      const m = g?.servers.find((s) => s.role === 'master')
      return (
        g?.alive === true &&
        m?.address === nodes[name].address &&
        m.replication?.inSyncSlaves?.includes(other) === true
      )
    }
    await until('a is master with b in sync', () => masterIs('a'))
    const metaServer = `${meta.address}/meta/address`
    const producer = new MessageProducerProvider({ ...CLIENT, metaServer })
    await producer.init()
    t.teardown(() => producer.close())
    const acked = new Set<string>()
    let stop = false
    const loop = (async () => {
      while (!stop) {
        const batch = Array.from({ length: 20 }, () => producer.generateMessage(SUBJECT))
        const results = await Promise.allSettled(batch.map((m) => producer.sendMessage(m)))
        results.forEach((r, i) => {
          if (r.status === 'fulfilled') acked.add((batch[i] as (typeof batch)[number]).getMessageId())
        })
        if (results.every((r) => r.status === 'rejected')) await new Promise((r) => setTimeout(r, 100))
      }
    })()
    for (const [victim, survivor] of [
      ['a', 'b'],
      ['b', 'a'],
    ] as const) {
      const before = acked.size
      await until(`traffic before killing ${victim}`, () => acked.size >= before + 200)
      const port = portOf(nodes[victim])
      await kill9(nodes[victim])
      await until(
        `${survivor} promoted and acknowledging`,
        async () => {
          const g = await admin.getGroup('g1').catch(() => undefined)
          return g?.address === nodes[survivor].address && g.alive
        },
        30_000,
      )
      nodes[victim] = await startService(t, victim, brokerArgs(dir, victim, meta.address, 'master', port))
      await until(`${victim} rejoined in sync`, () => masterIs(survivor), 30_000)
    }
    const before = acked.size
    await until('traffic after both failovers', () => acked.size >= before + 200)
    stop = true
    await loop
    const consumer = new MessageConsumerProvider({ ...CLIENT, metaServer })
    await consumer.init()
    t.teardown(() => consumer.close())
    const pc = consumer.getOrCreatePullConsumer(SUBJECT, 'audit', { startFrom: 'earliest' })
    const consumed = new Set<string>()
    await until(
      'every acknowledged message consumed',
      async () => {
        for (const m of await pc.pull(500, 300)) {
          consumed.add(m.getMessageId())
          await m.ack()
        }
        return [...acked].every((id) => consumed.has(id))
      },
      60_000,
    ).catch((err: unknown) => t.comment(String(err)))
    const missing = [...acked].filter((id) => !consumed.has(id))
    t.same(
      missing.length,
      0,
      `every acknowledged message is consumed (${acked.size} acknowledged, two failovers)`,
    )
    const g = await admin.getGroup('g1')
    t.equal(g.epoch, 2, 'epoch 2 after two promotions')
  },
)
