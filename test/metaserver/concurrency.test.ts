import t, { type Test } from 'tap'
import { ManualClock } from '../../src/common/clock'
import { silentLogger } from '../../src/common/logger'
import { MetaClient } from '../../src/common/meta/meta-client'
import type { ServerLoad } from '../../src/common/meta/types'
import { Metaserver } from '../../src/metaserver/main'
import { SqliteMetaStore } from '../../src/metaserver/sqlite-store'
import { CLUSTER_SECRET, locationFor, locationOptions, STORE_KINDS, type StoreKind } from './helpers'

async function start(t: Test, dataDir: string, clock: ManualClock, kind: StoreKind = 'sqlite') {
  const server = new Metaserver(
    { port: 0, ...locationOptions(await locationFor(t, kind, dataDir)), clusterSecret: CLUSTER_SECRET },
    { clock, logger: silentLogger },
  )
  await server.start()
  const client = new MetaClient({ url: server.url, connections: 16, clusterSecret: CLUSTER_SECRET })
  t.teardown(async () => {
    await client.close()
    await server.close()
  })
  return { server, client }
}

async function register(client: MetaClient, loads: Record<string, ServerLoad>): Promise<void> {
  let port = 1000
  for (const [group, load] of Object.entries(loads)) {
    await client.heartbeat({ group, kind: 'broker', role: 'master', address: `127.0.0.1:${++port}`, load })
  }
}

for (const kind of STORE_KINDS) {
  t.test(`metaserver [${kind}] - concurrent first lookups of a subject agree on one route`, async (t) => {
    const clock = new ManualClock()
    const { client } = await start(t, t.testdir(), clock, kind)
    await register(client, { a: {}, b: {}, c: {}, d: {}, e: {} })
    const answers = await Promise.all(
      Array.from({ length: 40 }, (_, i) =>
        client.route({ subject: 'hot.subject', kind: i % 2 === 0 ? 'producer' : 'consumer', group: 'cg' }),
      ),
    )
    const first = answers[0]!.groups.map((g) => g.name)
    t.equal(first.length, 2)
    for (const a of answers)
      t.same(
        a.groups.map((g) => g.name),
        first,
      )
    const info = await client.getSubject('hot.subject')
    t.same(info.groups, first)
    t.equal(info.version, 1, 'stored once')
  })

  t.test(
    `metaserver [${kind}] - two metaservers sharing one database agree on first placement`,
    async (t) => {
      const dir = t.testdir()
      const clock = new ManualClock()
      const m1 = await start(t, dir, clock, kind)
      const m2 = await start(t, dir, clock, kind)
      // Each metaserver sees different loads, so each on its own would pick different groups.
      await register(m1.client, { a: {}, b: {}, c: { backlog: 100 }, d: { backlog: 100 } })
      await register(m2.client, { a: { backlog: 100 }, b: { backlog: 100 }, c: {}, d: {} })
      for (let round = 0; round < 5; round++) {
        const subject = `shared.${round}`
        const answers = await Promise.all(
          Array.from({ length: 10 }, (_, i) =>
            (i % 2 === 0 ? m1 : m2).client.route({ subject, kind: 'producer' }),
          ),
        )
        const first = answers[0]!.groups.map((g) => g.name)
        for (const a of answers)
          t.same(
            a.groups.map((g) => g.name),
            first,
            `${subject}: one route for both`,
          )
      }
    },
  )

  t.test(
    `metaserver [${kind}] - a metaserver sharing the store picks up the changes of the other on refresh`,
    async (t) => {
      const dir = t.testdir()
      const clock = new ManualClock()
      const m1 = await start(t, dir, clock, kind)
      const m2 = await start(t, dir, clock, kind)
      await register(m1.client, { a: {}, b: {}, c: {} })
      const placed = await m1.client.route({ subject: 's', kind: 'producer' })
      t.same(
        placed.groups.map((g) => g.name),
        ['a', 'b'],
      )
      await m1.server.service.extendSubject('s', 'c')
      await m1.server.service.setReadOnly('a', undefined, true)
      await t.rejects(m2.client.getSubject('s'), { code: 'QMQ_ERR_NOT_FOUND' }, 'm2 has not looked yet')
      await m2.server.service.refresh()
      t.same((await m2.client.getSubject('s')).groups, ['a', 'b', 'c'])
      t.same(
        (await m2.client.listReadOnly()).map((r) => [r.group, r.subject]),
        [['a', '*']],
      )
      t.same(
        (await m2.client.route({ subject: 's', kind: 'producer' })).groups.map((g) => g.name),
        ['b', 'c'],
      )
      // heartbeats that reach only m1 keep the groups alive on m2 too
      clock.advance(8_000)
      await register(m1.client, { a: {}, b: {}, c: {} })
      clock.advance(8_000)
      await m2.server.service.refresh()
      t.same(
        (await m2.client.route({ subject: 's', kind: 'consumer', group: 'cg' })).groups.map((g) => g.name),
        ['a', 'b', 'c'],
      )
    },
  )
}

t.test(
  'metaserver - SqliteMetaStore: assignRouteIfAbsent keeps the first route, updateRoute is a CAS',
  async (t) => {
    const file = `${t.testdir()}/meta.db`
    const s1 = new SqliteMetaStore(file)
    const s2 = new SqliteMetaStore(file)
    t.teardown(async () => {
      await s1.close()
      await s2.close()
    })
    const r1 = await s1.assignRouteIfAbsent('s', ['a', 'b'], 1)
    const r2 = await s2.assignRouteIfAbsent('s', ['c', 'd'], 2)
    t.same(r1.groups, ['a', 'b'])
    t.same(r2, r1, 'the second assignment answers the stored route')
    const u1 = await s2.updateRoute('s', ['a', 'b', 'c'], 1, 3)
    t.same(u1?.groups, ['a', 'b', 'c'])
    t.equal(u1?.version, 2)
    t.equal(await s1.updateRoute('s', ['a', 'b', 'd'], 1, 4), undefined, 'a stale version changes nothing')
    t.same((await s1.getRoute('s'))?.groups, ['a', 'b', 'c'])
    t.equal(await s1.updateRoute('missing', ['a'], 1, 5), undefined)
  },
)
