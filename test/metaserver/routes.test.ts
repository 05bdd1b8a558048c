import t, { type Test } from 'tap'
import { silentLogger } from '../../src/common/logger'
import { MetaClient } from '../../src/common/meta/meta-client'
import { deadLetterSubject } from '../../src/common/names'
import { Metaserver, startMetaserver } from '../../src/metaserver/main'
import { CLUSTER_SECRET, hb, STORE_KINDS, startWithClient } from './helpers'

function start(t: Test, extra: Record<string, unknown> = {}) {
  return startWithClient(t, { extra })
}

for (const kind of STORE_KINDS) {
  const start = (t: Test, extra: Record<string, unknown> = {}) => startWithClient(t, { kind, extra })

  t.test(`metaserver [${kind}] - a heartbeat registers a group with no manual step`, async (t) => {
    const { client, clock } = await start(t)
    const res = await client.heartbeat(
      hb('g1', 20881, { httpAddress: '127.0.0.1:9081', load: { subjects: 3, backlog: 10 } }),
    )
    t.equal(res.group, 'g1')
    t.equal(res.heartbeatTimeoutMs, 10_000)
    t.ok(res.heartbeatIntervalMs > 0)
    t.equal(res.readOnly, false)
    t.equal(res.serverTime, clock.now())
    const groups = await client.listGroups()
    t.equal(groups.length, 1)
    const g = groups[0]!
    t.match(g, {
      name: 'g1',
      kind: 'broker',
      address: '127.0.0.1:20881',
      httpAddress: '127.0.0.1:9081',
      alive: true,
      lastSeenAt: clock.now(),
      load: { subjects: 3, backlog: 10 },
    })
    // a slave is recorded but does not replace the master's address
    await client.heartbeat(hb('g1', 20991, { role: 'slave' }))
    const g1 = await client.getGroup('g1')
    t.equal(g1.address, '127.0.0.1:20881')
    t.same(g1.servers.map((s) => s.role).sort(), ['master', 'slave'])
    // the group serves a new subject at once
    const route = await client.route({ subject: 'order.created', kind: 'producer' })
    t.same(
      route.groups.map((x) => x.name),
      ['g1'],
    )
    t.equal(route.groups[0]!.address, '127.0.0.1:20881')
    t.equal(route.groups[0]!.state, 'rw')
  })

  t.test(`metaserver [${kind}] - a slave alone does not make a group alive`, async (t) => {
    const { client } = await start(t)
    await client.heartbeat(hb('g1', 20881, { role: 'slave' }))
    const g = await client.getGroup('g1')
    t.equal(g.alive, false)
    await t.rejects(client.route({ subject: 's', kind: 'producer' }), {
      code: 'QMQ_ERR_NO_ROUTE',
      retriable: true,
    })
  })

  t.test(`metaserver [${kind}] - placement: at least 2 groups, least loaded first, persisted`, async (t) => {
    const { client } = await start(t)
    await client.heartbeat(hb('a', 1001, { load: { messagesInPerSecond: 100 } }))
    await client.heartbeat(hb('b', 1002, { load: { messagesInPerSecond: 5 } }))
    await client.heartbeat(hb('c', 1003, { load: { messagesInPerSecond: 50 } }))
    const r1 = await client.route({ subject: 's1', kind: 'producer' })
    t.same(
      r1.groups.map((g) => g.name),
      ['b', 'c'],
      'the two least loaded by rate',
    )
    t.equal(r1.version, 1)
    // b and c now hold one subject each: a (0 subjects) comes first
    const r2 = await client.route({ subject: 's2', kind: 'producer' })
    t.same(
      r2.groups.map((g) => g.name),
      ['a', 'b'],
    )
    // sticky: asking again answers the same route
    const again = await client.route({ subject: 's1', kind: 'consumer', group: 'cg' })
    t.same(
      again.groups.map((g) => g.name),
      ['b', 'c'],
    )
    // a brand-new group takes the next new subject
    await client.heartbeat(hb('d', 1004, { load: { messagesInPerSecond: 1000 } }))
    const r3 = await client.route({ subject: 's3', kind: 'producer' })
    t.equal(r3.groups[0]!.name, 'd', 'the new, empty group is first')
    t.equal(r3.groups.length, 2)
    const subjects = await client.listSubjects()
    t.same(
      subjects.map((s) => s.subject),
      ['s1', 's2', 's3'],
    )
    t.same(await client.getSubject('s1'), { ...subjects[0], subject: 's1' })
  })

  t.test(
    `metaserver [${kind}] - minGroupsPerSubject is configurable and a short route is topped up`,
    async (t) => {
      const { client } = await start(t, { minGroupsPerSubject: 3 })
      await client.heartbeat(hb('a', 1001))
      const r1 = await client.route({ subject: 's', kind: 'producer' })
      t.same(
        r1.groups.map((g) => g.name),
        ['a'],
        'fewer groups only because fewer exist',
      )
      await client.heartbeat(hb('b', 1002))
      await client.heartbeat(hb('c', 1003))
      await client.heartbeat(hb('d', 1004))
      const r2 = await client.route({ subject: 's', kind: 'producer' })
      t.same(
        r2.groups.map((g) => g.name),
        ['a', 'b', 'c'],
      )
      t.equal(r2.version, 2)
    },
  )

  t.test(`metaserver [${kind}] - read-only groups: hidden from producers, kept for consumers`, async (t) => {
    const { client } = await start(t)
    await client.heartbeat(hb('a', 1001))
    await client.heartbeat(hb('b', 1002))
    await client.route({ subject: 's1', kind: 'producer' })
    await client.route({ subject: 's2', kind: 'producer' })
    // per subject
    await client.setReadOnly({ group: 'a', subject: 's1', readOnly: true })
    let p = await client.route({ subject: 's1', kind: 'producer' })
    t.same(
      p.groups.map((g) => g.name),
      ['b'],
    )
    p = await client.route({ subject: 's2', kind: 'producer' })
    t.same(p.groups.map((g) => g.name).sort(), ['a', 'b'], 'other subjects are not affected')
    const c = await client.route({ subject: 's1', kind: 'consumer', group: 'cg' })
    t.same(c.groups.map((g) => [g.name, g.state]).sort(), [
      ['a', 'r'],
      ['b', 'rw'],
    ])
    // global
    const settings = await client.setReadOnly({ group: 'b', readOnly: true })
    t.same(settings.map((s) => [s.group, s.subject]).sort(), [
      ['a', 's1'],
      ['b', '*'],
    ])
    p = await client.route({ subject: 's2', kind: 'producer' })
    t.same(
      p.groups.map((g) => g.name),
      ['a'],
    )
    const hbAnswer = await client.heartbeat(hb('a', 1001))
    t.same(hbAnswer.readOnlySubjects, ['s1'])
    t.equal((await client.heartbeat(hb('b', 1002))).readOnly, true)
    // unmark
    await client.setReadOnly({ group: 'b', subject: '*', readOnly: false })
    p = await client.route({ subject: 's2', kind: 'producer' })
    t.same(p.groups.map((g) => g.name).sort(), ['a', 'b'])
    t.same(
      (await client.listReadOnly()).map((s) => s.group),
      ['a'],
    )
  })

  t.test(
    `metaserver [${kind}] - dead-letter subjects use the real subject route; delay producers get delay groups`,
    async (t) => {
      const { client } = await start(t)
      await client.heartbeat(hb('a', 1001))
      await client.heartbeat(hb('b', 1002))
      await client.heartbeat(hb('d1', 2001, { kind: 'delay' }))
      await client.heartbeat(hb('d2', 2002, { kind: 'delay' }))
      const real = await client.route({ subject: 'order.paid', kind: 'producer' })
      const dead = await client.route({
        subject: deadLetterSubject('order.paid', 'billing'),
        kind: 'consumer',
        group: 'ops',
      })
      t.equal(dead.routeSubject, 'order.paid')
      t.same(dead.groups.map((g) => g.name).sort(), real.groups.map((g) => g.name).sort())
      t.same(
        (await client.listSubjects()).map((s) => s.subject),
        ['order.paid'],
        'no route is stored for the dead-letter subject',
      )
      // delay groups never take broker routes, and delay producers get only delay groups
      t.notOk(real.groups.some((g) => g.name.startsWith('d')))
      const d1 = await client.route({ subject: 'order.paid', kind: 'delay-producer' })
      const d2 = await client.route({ subject: 'order.paid', kind: 'delay-producer' })
      t.same(d1.groups.map((g) => g.name).sort(), ['d1', 'd2'])
      t.not(d1.groups[0]!.name, d2.groups[0]!.name, 'the order rotates to spread the load')
      t.equal(d1.version, 0)
      await t.rejects(client.extendSubject('order.paid', 'd1'), { code: 'QMQ_ERR_INVALID_ARGUMENT' })
    },
  )

  t.test(`metaserver [${kind}] - admin extends a subject to another group`, async (t) => {
    const { client } = await start(t, { minGroupsPerSubject: 1 })
    await client.heartbeat(hb('a', 1001))
    await client.heartbeat(hb('b', 1002))
    const r = await client.route({ subject: 's', kind: 'producer' })
    t.same(
      r.groups.map((g) => g.name),
      ['a'],
    )
    const info = await client.extendSubject('s', 'b')
    t.same(info.groups, ['a', 'b'])
    t.equal(info.version, 2)
    const again = await client.extendSubject('s', 'b')
    t.equal(again.version, 2, 'extending with a group already there changes nothing')
    const p = await client.route({ subject: 's', kind: 'producer' })
    t.same(
      p.groups.map((g) => g.name),
      ['a', 'b'],
    )
    // extending a subject that has no route places it first
    const fresh = await client.extendSubject('fresh', 'b')
    t.ok(fresh.groups.includes('b'))
    await t.rejects(client.extendSubject('s', 'nope'), { code: 'QMQ_ERR_NOT_FOUND' })
  })

  t.test(
    `metaserver [${kind}] - client registry: online consumers listed, offline and expiry drop them`,
    async (t) => {
      const { client, server, clock } = await start(t, { clientTimeoutMs: 5_000 })
      await client.heartbeat(hb('a', 1001))
      const res = await client.clientHeartbeat({
        clientId: 'c1',
        appCode: 'billing-app',
        kind: 'consumer',
        subscriptions: [
          { subject: 'order.created', consumerGroup: 'billing' },
          { subject: 'order.paid', consumerGroup: 'billing' },
        ],
        includeRoutes: true,
      })
      t.equal(res.clientTimeoutMs, 5_000)
      t.same(res.routes.map((r) => r.subject).sort(), ['order.created', 'order.paid'])
      await client.clientHeartbeat({
        clientId: 'c2',
        kind: 'consumer',
        subscriptions: [{ subject: 'order.created', consumerGroup: 'ship' }],
      })
      await client.clientHeartbeat({
        clientId: 'p1',
        kind: 'producer',
        subscriptions: [{ subject: 'order.created' }],
      })
      const all = await client.listConsumers({ subject: 'order.created' })
      t.same(all.map((c) => c.clientId).sort(), ['c1', 'c2', 'p1'])
      const billing = await client.listConsumers({ consumerGroup: 'billing' })
      t.equal(billing.length, 2)
      t.match(billing[0], { clientId: 'c1', appCode: 'billing-app', kind: 'consumer', online: true })
      t.same(
        (await client.listConsumers({ kind: 'producer' })).map((c) => c.clientId),
        ['p1'],
      )
      // offline removes at once
      await client.clientHeartbeat({
        clientId: 'c2',
        kind: 'consumer',
        state: 'offline',
        subscriptions: [{ subject: 'order.created', consumerGroup: 'ship' }],
      })
      t.same((await client.listConsumers({ subject: 'order.created' })).map((c) => c.clientId).sort(), [
        'c1',
        'p1',
      ])
      // expiry: c1 keeps heartbeating, p1 does not
      clock.advance(4_000)
      await client.clientHeartbeat({
        clientId: 'c1',
        kind: 'consumer',
        subscriptions: [{ subject: 'order.created', consumerGroup: 'billing' }],
      })
      clock.advance(2_000)
      await server.sweep()
      t.same(
        (await client.listConsumers()).map((c) => [c.clientId, c.subject]),
        [['c1', 'order.created']],
      )
    },
  )
}

t.test('metaserver - /meta/address, /health and /metrics', async (t) => {
  const { client, server } = await start(t)
  t.same(await client.getAddresses(), [server.url])
  await client.heartbeat(hb('a', 1001))
  await client.route({ subject: 's', kind: 'producer' })
  t.match(await client.health(), {
    status: 'ok',
    groups: 1,
    groupsAlive: 1,
    subjects: 1,
    store: 'sqlite',
    storeDown: false,
  })
  const res = await fetch(`${server.url}/metrics`)
  const text = await res.text()
  t.match(text, /qmq_metaserver_http_requests_total\{route="route",status="200"/)
  t.match(text, /qmq_metaserver_groups_alive\{kind="broker",service="metaserver"\} 1/)
  t.match(text, /qmq_metaserver_subjects\{service="metaserver"\} 1/)

  const other = new Metaserver(
    {
      port: 0,
      dataDir: t.testdir(),
      clusterSecret: CLUSTER_SECRET,
      advertisedAddresses: ['http://m1:8080', 'http://m2:8080'],
    },
    { logger: silentLogger },
  )
  await other.start()
  t.teardown(() => other.close())
  const c2 = new MetaClient({ url: other.url })
  t.teardown(() => c2.close())
  t.same(await c2.getAddresses(), ['http://m1:8080', 'http://m2:8080'])
})

t.test('metaserver - options are validated with precise messages', async (t) => {
  t.throws(() => new Metaserver({ port: 0, dataDir: t.testdir(), heartbeatTimeoutMS: 5 }), {
    code: 'QMQ_ERR_CONFIG_INVALID',
    message: /heartbeatTimeoutMS: unknown option \(did you mean heartbeatTimeoutMs\?\)/,
  })
  t.throws(() => new Metaserver({ port: -1, minGroupsPerSubject: 0 }), {
    code: 'QMQ_ERR_CONFIG_INVALID',
    message: /port: must be an integer from 0 to 65535[\s\S]*minGroupsPerSubject/,
  })
  const s = await startMetaserver(
    { port: 0, dataDir: t.testdir(), clusterSecret: CLUSTER_SECRET },
    { logger: silentLogger },
  )
  t.teardown(() => s.close())
  t.ok(s.port > 0)
  t.equal(s.options.heartbeatTimeoutMs, 10_000)
  t.equal(s.options.minGroupsPerSubject, 2)
  t.equal(s.options.adminToken, undefined)
})
