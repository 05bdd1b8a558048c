import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { MessageConsumerProvider, MessageProducerProvider } from '../../src/client'
import { QmqError } from '../../src/common/errors'
import { startCluster } from '../helpers/cluster'
import { freshDatabase, sharedPostgres } from './helpers'

/**
 * Issue 15's fault test: two metaservers on one PostgreSQL, two broker groups, producers and consumers
 * running. PostgreSQL is stopped for longer than the groups' heartbeat timeout, then started again.
 * Known routes keep working (no send or consume error), a change (placing a new subject) is refused
 * with a retriable code meanwhile, and accepted again once PostgreSQL is back, with no restart.
 */

const SUBJECTS = ['outage.a', 'outage.b']

async function until(cond: () => Promise<boolean>, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`${what}: not within ${ms} ms`)
    await new Promise((r) => setTimeout(r, 100))
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

t.test('postgres outage - routes answered from memory, changes refused then accepted', async (t) => {
  const pg = await sharedPostgres()
  const url = await freshDatabase()
  const dir = mkdtempSync(join(tmpdir(), 'qmq-pg-outage-'))
  const cluster = await startCluster({ dir, brokers: 2, metaStore: url, metaservers: 2 })
  const producer = new MessageProducerProvider({ appCode: 'outage', metaServer: cluster.metaUrl })
  const consumer = new MessageConsumerProvider({
    appCode: 'outage',
    metaServer: cluster.metaUrl,
    pullTimeoutMs: 300,
    heartbeatIntervalMs: 300,
  })
  t.teardown(async () => {
    await consumer.close()
    await producer.close()
    await cluster.close()
    rmSync(dir, { recursive: true, force: true })
  })
  t.same(
    [...(await cluster.meta.getAddresses())].sort(),
    cluster.metaservers.map((m) => m.url).sort(),
    'both metaservers listed',
  )
  await producer.init()
  const received = new Set<string>()
  /** Redeliveries: a message that had to come again (a failed pull or ack) is a consume error here. */
  const consumeErrors: string[] = []
  for (const s of SUBJECTS)
    consumer.addListener(s, 'cg', (m) => {
      if (m.getDeliveryCount() > 1) consumeErrors.push(m.getMessageId())
      received.add(m.getMessageId())
    })
  await consumer.start()

  const sent = new Set<string>()
  const sendErrors: unknown[] = []
  let running = true
  const load = (async () => {
    let i = 0
    while (running) {
      const m = producer.generateMessage(SUBJECTS[i++ % SUBJECTS.length] as string)
      try {
        await producer.sendMessage(m)
        sent.add(m.getMessageId())
      } catch (err) {
        sendErrors.push(err)
      }
      await sleep(20)
    }
  })()
  await until(async () => received.size >= 20, 15_000, 'messages flowing before the outage')
  // Every metaserver has loaded the routes (a reload each reloadIntervalMs): the outage must find
  // them in memory, not a metaserver that never heard of them.
  const knows = (m: (typeof cluster.metaservers)[number], subject: string) => {
    try {
      return m.service.getSubject(subject).groups.length > 0
    } catch {
      return false
    }
  }
  await until(
    async () => cluster.metaservers.every((m) => SUBJECTS.every((s) => knows(m, s))),
    10_000,
    'every metaserver knows the routes',
  )

  await pg.stop()
  t.teardown(() => pg.start().catch(() => {})) // never leave the shared server down for later tests
  try {
    // Longer than heartbeatTimeoutMs (1.5 s): groups stay alive although no heartbeat is stored.
    await sleep(3_000)
    const err = await cluster.meta.route({ subject: 'outage.new', kind: 'producer' }).then(
      () => undefined,
      (e: unknown) => e,
    )
    t.ok(err instanceof QmqError, 'placing a new subject is refused')
    t.equal((err as QmqError).code, 'QMQ_ERR_METASERVER_STORE')
    t.equal((err as QmqError).retriable, true, 'with a retriable code')
    for (const m of cluster.metaservers) {
      t.equal(m.service.storeDown, true, 'the metaserver knows its store is down')
      t.same(
        (await m.service.route('outage.a', 'producer')).groups.map((g) => g.name).sort(),
        ['broker-a', 'broker-b'],
        'known routes answered from memory, both groups alive',
      )
    }
    const health = await cluster.meta.health()
    t.match(health, { groupsAlive: 2, store: 'postgres', storeDown: true }, 'health says the store is down')
    const metrics = await (await fetch(`${cluster.metaserver.url}/metrics`)).text()
    t.match(metrics, /qmq_metaserver_store_up\{service="metaserver"\} 0/)
  } finally {
    await pg.start()
  }
  await until(
    async () =>
      cluster.meta.route({ subject: 'outage.new', kind: 'producer' }).then(
        () => true,
        () => false,
      ),
    15_000,
    'a new subject placed after PostgreSQL is back',
  )
  for (const m of cluster.metaservers) {
    await until(
      async () => {
        await m.sweep()
        return !m.service.storeDown
      },
      10_000,
      'every metaserver recovered',
    )
  }
  t.match(await cluster.meta.health(), { storeDown: false })
  await sleep(1_000)
  running = false
  await load
  await until(async () => [...sent].every((id) => received.has(id)), 15_000, 'every sent message consumed')
  t.same(sendErrors, [], 'no send error')
  t.same(consumeErrors, [], 'no consume error (no redelivery)')
  t.ok(sent.size > 50, `${sent.size} messages sent and consumed across the outage`)
})
