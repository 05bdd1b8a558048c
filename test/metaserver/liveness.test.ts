import t, { type Test } from 'tap'
import { ManualClock } from '../../src/common/clock'
import { HEARTBEAT_TIMEOUT_MS, hb, locationFor, STORE_KINDS, startWithClient } from './helpers'

const TIMEOUT_MS = HEARTBEAT_TIMEOUT_MS

const names = (r: { groups: { name: string }[] }) => r.groups.map((g) => g.name).sort()

for (const kind of STORE_KINDS) {
  const start = async (t: Test, dataDir: string, clock: ManualClock, extra: Record<string, unknown> = {}) =>
    startWithClient(t, { location: await locationFor(t, kind, dataDir), clock, extra })

  t.test(
    `metaserver [${kind}] - heartbeat loss removes a group from routes, heartbeats bring it back`,
    async (t) => {
      const clock = new ManualClock()
      const { client, server } = await start(t, t.testdir(), clock)
      await client.heartbeat(hb('a', 1001))
      await client.heartbeat(hb('b', 1002))
      const first = await client.route({ subject: 's', kind: 'producer' })
      t.same(names(first), ['a', 'b'])

      // a keeps heartbeating, b goes silent
      clock.advance(TIMEOUT_MS - 1)
      await client.heartbeat(hb('a', 1001))
      t.same(
        names(await client.route({ subject: 's', kind: 'producer' })),
        ['a', 'b'],
        'still within the timeout',
      )
      clock.advance(2)
      t.same(
        names(await client.route({ subject: 's', kind: 'producer' })),
        ['a'],
        'b left the producer route',
      )
      t.same(
        names(await client.route({ subject: 's', kind: 'consumer', group: 'cg' })),
        ['a'],
        'and the consumer route',
      )
      const b = await client.getGroup('b')
      t.equal(b.alive, false)
      t.equal(b.subjects, 1, 'the stored route keeps b')
      t.same((await client.getSubject('s')).groups, ['a', 'b'])
      await server.sweep()
      const metrics = await (await fetch(`${server.url}/metrics`)).text()
      t.match(metrics, /qmq_metaserver_group_transitions_total\{to="dead",service="metaserver"\} 1/)

      // b comes back
      await client.heartbeat(hb('b', 1002))
      t.same(names(await client.route({ subject: 's', kind: 'producer' })), ['a', 'b'], 'b is back')
      t.equal((await client.getGroup('b')).alive, true)

      // both silent: no route, a bounded retriable error
      clock.advance(TIMEOUT_MS + 1)
      await t.rejects(client.route({ subject: 's', kind: 'producer' }), {
        code: 'QMQ_ERR_NO_ROUTE',
        retriable: true,
      })
      await t.rejects(client.route({ subject: 'new.subject', kind: 'producer' }), {
        code: 'QMQ_ERR_NO_ROUTE',
      })
    },
  )

  t.test(`metaserver [${kind}] - an offline heartbeat takes a group out at once`, async (t) => {
    const clock = new ManualClock()
    const { client } = await start(t, t.testdir(), clock)
    await client.heartbeat(hb('a', 1001))
    await client.heartbeat(hb('b', 1002))
    await client.route({ subject: 's', kind: 'producer' })
    await client.heartbeat(hb('b', 1002, { state: 'offline' }))
    t.same(names(await client.route({ subject: 's', kind: 'consumer', group: 'cg' })), ['a'])
    t.equal((await client.getGroup('b')).lastSeenAt, 0)
  })

  t.test(
    `metaserver [${kind}] - when all route groups are dead, producers get another alive group`,
    async (t) => {
      const clock = new ManualClock()
      const { client } = await start(t, t.testdir(), clock, { minGroupsPerSubject: 1 })
      await client.heartbeat(hb('a', 1001))
      t.same(names(await client.route({ subject: 's', kind: 'producer' })), ['a'])
      await client.heartbeat(hb('b', 1002))
      clock.advance(TIMEOUT_MS / 2)
      await client.heartbeat(hb('b', 1002))
      clock.advance(TIMEOUT_MS / 2 + 1) // a is dead, b alive
      await t.rejects(client.route({ subject: 's', kind: 'consumer', group: 'cg' }), {
        code: 'QMQ_ERR_NO_ROUTE',
      })
      t.same(names(await client.route({ subject: 's', kind: 'producer' })), ['b'])
      t.same((await client.getSubject('s')).groups, ['a', 'b'], 'a stays in the route for its consumers')
    },
  )

  t.test(`metaserver [${kind}] - outage extension can be turned off`, async (t) => {
    const clock = new ManualClock()
    const { client } = await start(t, t.testdir(), clock, { minGroupsPerSubject: 1, extendOnOutage: false })
    await client.heartbeat(hb('a', 1001))
    await client.route({ subject: 's', kind: 'producer' })
    await client.heartbeat(hb('b', 1002))
    await client.setReadOnly({ group: 'a', readOnly: true })
    await t.rejects(client.route({ subject: 's', kind: 'producer' }), { code: 'QMQ_ERR_NO_ROUTE' })
    t.same((await client.getSubject('s')).groups, ['a'])
  })

  t.test(
    `metaserver [${kind}] - a restarted metaserver keeps routes, read-only marks and liveness`,
    async (t) => {
      const dir = t.testdir()
      const clock = new ManualClock()
      const first = await start(t, dir, clock)
      await first.client.heartbeat(hb('a', 1001, { load: { backlog: 7 } }))
      await first.client.heartbeat(hb('b', 1002))
      await first.client.heartbeat(hb('c', 1003))
      const route = await first.client.route({ subject: 's', kind: 'producer' })
      t.same(names(route), ['b', 'c'], 'a reported a backlog: b and c are less loaded')
      await first.client.setReadOnly({ group: 'c', subject: 'x', readOnly: true })
      await first.client.clientHeartbeat({
        clientId: 'c1',
        kind: 'consumer',
        subscriptions: [{ subject: 's', consumerGroup: 'g' }],
      })
      // a keeps beating for a while (throttled writes still land within lastSeenWriteIntervalMs)
      for (let i = 0; i < 5; i++) {
        clock.advance(1_500)
        await first.client.heartbeat(hb('a', 1001))
      }
      const aLastSeen = clock.now()
      await first.client.close()
      await first.server.close()

      // restart right away: everything that was alive is still alive
      const second = await start(t, dir, clock)
      t.same(
        (await second.client.getSubject('s')).groups,
        route.groups.map((g) => g.name),
      )
      const groups = await second.client.listGroups()
      t.same(
        groups.map((g) => [g.name, g.alive]),
        [
          ['a', true],
          ['b', true],
          ['c', true],
        ],
        `b and c were last seen ${clock.now() - (groups[1]?.lastSeenAt ?? 0)} ms ago`,
      )
      t.ok((groups[0]?.lastSeenAt ?? 0) >= aLastSeen - 1_000, 'last-seen persisted within the write interval')
      t.same(groups[0]?.load, { backlog: 7 })
      t.same(
        (await second.client.listReadOnly()).map((s) => [s.group, s.subject]),
        [['c', 'x']],
      )
      t.same(
        (await second.client.listConsumers()).map((c) => c.clientId),
        ['c1'],
      )
      await second.client.close()
      await second.server.close()

      // The metaserver is down for 8 s; a's master keeps running, b and c die. b and c were last seen
      // 7.5 s + 8 s ago (dead), a 8 s ago (still within the timeout).
      clock.advance(8_000)
      const third = await start(t, dir, clock)
      const after = await third.client.listGroups()
      t.same(
        after.map((g) => [g.name, g.alive]),
        [
          ['a', true],
          ['b', false],
          ['c', false],
        ],
        'the restarted metaserver knows at once that b and c died while it was down',
      )
      const p = await third.client.route({ subject: 's', kind: 'producer' })
      t.same(names(p), ['a'], 'dead groups are not routed after the restart (a joined the route on outage)')
      t.same((await third.client.getSubject('s')).groups, ['b', 'c', 'a'])
      // b's heartbeats resume: it is back
      await third.client.heartbeat(hb('b', 1002))
      t.same(names(await third.client.route({ subject: 's', kind: 'consumer', group: 'g' })), ['a', 'b'])
      t.equal((await third.client.getGroup('b')).alive, true)
    },
  )
}
