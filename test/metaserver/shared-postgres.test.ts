import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { ManualClock } from '../../src/common/clock'
import { silentLogger } from '../../src/common/logger'
import { MetaClient } from '../../src/common/meta/meta-client'
import type { ServerLoad } from '../../src/common/meta/types'
import { Metaserver } from '../../src/metaserver/main'
import { PostgresMetaStore } from '../../src/metaserver/postgres-store'
import { startService } from '../helpers/services'
import { CLUSTER_SECRET, freshDatabase, HEARTBEAT_TIMEOUT_MS, hb, TOKEN } from './helpers'

/**
 * Several metaservers on one PostgreSQL database (issue 15): every decision is made once, in the
 * database, and every metaserver answers the same. Each metaserver has its own hand-driven clock, an
 * hour apart from the next: times are kept on the database's clock, so they still agree on liveness.
 */

const HOUR = 3_600_000

interface Node {
  server: Metaserver
  client: MetaClient
  clock: ManualClock
}

async function startNodes(t: Test, n: number, url: string): Promise<Node[]> {
  const nodes: Node[] = []
  for (let i = 0; i < n; i++) {
    const clock = new ManualClock(1_700_000_000_000 + i * HOUR)
    const server = new Metaserver(
      {
        port: 0,
        dataDir: t.testdir(),
        store: url,
        adminToken: TOKEN,
        clusterSecret: CLUSTER_SECRET,
        heartbeatTimeoutMs: HEARTBEAT_TIMEOUT_MS,
      },
      { clock, logger: silentLogger },
    )
    await server.start()
    const client = new MetaClient({
      url: server.url,
      adminToken: TOKEN,
      clusterSecret: CLUSTER_SECRET,
      connections: 16,
    })
    t.teardown(async () => {
      await client.close()
      await server.close()
    })
    nodes.push({ server, client, clock })
  }
  return nodes
}

function advanceAll(nodes: Node[], ms: number): void {
  for (const n of nodes) n.clock.advance(ms)
}

async function refreshAll(nodes: Node[]): Promise<void> {
  await Promise.all(nodes.map((n) => n.server.service.refresh()))
}

const names = (r: { groups: { name: string }[] }) => r.groups.map((g) => g.name)

for (const n of [2, 3]) {
  t.test(
    `shared postgres [${n} metaservers] - placing the same new subjects at once: one route each`,
    async (t) => {
      const nodes = await startNodes(t, n, await freshDatabase())
      // Each metaserver hears different loads, so each alone would place subjects differently.
      const groups = ['a', 'b', 'c', 'd', 'e']
      for (const [i, node] of nodes.entries()) {
        for (const [j, g] of groups.entries()) {
          const load: ServerLoad = { backlog: ((i + 1) * (j + 3)) % 7 }
          await node.client.heartbeat(hb(g, 1001 + j, { load }))
        }
      }
      await refreshAll(nodes)
      const subjects = Array.from({ length: 20 }, (_, i) => `race.${i}`)
      const answers = await Promise.all(
        subjects.flatMap((subject) =>
          nodes.flatMap((node) => [
            node.client.route({ subject, kind: 'producer' }),
            node.client.route({ subject, kind: 'consumer', group: 'cg' }),
          ]),
        ),
      )
      const store = await PostgresMetaStore.open(nodes[0]!.server.options.store ?? '')
      t.teardown(() => store.close())
      const snap = await store.loadAll()
      t.equal(snap.routes.length, subjects.length, 'one stored route per subject')
      for (const r of snap.routes) t.equal(r.version, 1, `${r.subject} placed once, never rewritten`)
      const stored = new Map(snap.routes.map((r) => [r.subject, r.groups]))
      for (const a of answers) t.same(names(a), stored.get(a.subject), `${a.subject}: the stored route`)
      await refreshAll(nodes)
      const lists = await Promise.all(nodes.map((node) => node.client.listSubjects()))
      for (const l of lists) t.same(l, lists[0], 'every metaserver lists the same subjects')
    },
  )

  t.test(`shared postgres [${n} metaservers] - dead and alive decided once, same answers`, async (t) => {
    const nodes = await startNodes(t, n, await freshDatabase())
    const [m1] = nodes
    await m1!.client.heartbeat(hb('a', 1001))
    await m1!.client.heartbeat(hb('b', 1002))
    await m1!.client.route({ subject: 's', kind: 'producer' })
    await refreshAll(nodes)
    const sweepAll = async () =>
      (await Promise.all(nodes.map((x) => x.server.service.sweepLiveness()))).flat()

    // a beats to m1 only; the others still hold its old time. A dead decision by them is refused.
    advanceAll(nodes, 8_000)
    await m1!.client.heartbeat(hb('a', 1001))
    advanceAll(nodes, 3_000)
    const first = await sweepAll()
    t.same(first, [{ group: 'b', alive: false }], 'b died once; a is alive (its last beat is in the store)')
    for (const node of nodes)
      t.same(names(await node.client.route({ subject: 's', kind: 'consumer', group: 'g' })), ['a'])

    // a and b stop; every metaserver sweeps at once: one decision for a
    advanceAll(nodes, HEARTBEAT_TIMEOUT_MS)
    t.same(await sweepAll(), [{ group: 'a', alive: false }], 'a died once')
    t.same(await sweepAll(), [], 'nothing left to decide')
    // both come back, each heard by a different metaserver at the same time
    await Promise.all([
      nodes[0]!.client.heartbeat(hb('a', 1001)),
      nodes[n - 1]!.client.heartbeat(hb('b', 1002)),
      nodes[n - 1]!.client.heartbeat(hb('a', 1001)),
    ])
    await refreshAll(nodes)
    const back = await sweepAll()
    t.same(
      back.sort((x, y) => (x.group < y.group ? -1 : 1)),
      [
        { group: 'a', alive: true },
        { group: 'b', alive: true },
      ],
      'each return decided once',
    )
    const store = await PostgresMetaStore.open(nodes[0]!.server.options.store ?? '')
    t.teardown(() => store.close())
    t.same(
      (await store.loadAll()).liveness.map((l) => [l.group, l.alive, l.version]).sort(),
      [
        ['a', true, 2],
        ['b', true, 2],
      ],
      'two transitions each in the store',
    )
    const routes = await Promise.all(
      nodes.map((node) => node.client.route({ subject: 's', kind: 'producer' })),
    )
    for (const r of routes) t.same(names(r), ['a', 'b'], 'same answer from every metaserver')
  })
}

t.test(
  'shared postgres - read-only marks and GET /meta/address from the store; client failover',
  async (t) => {
    const nodes = await startNodes(t, 3, await freshDatabase())
    await nodes[0]!.client.heartbeat(hb('a', 1001))
    await nodes[0]!.client.heartbeat(hb('b', 1002))
    await nodes[1]!.client.setReadOnly({ group: 'a', readOnly: true })
    await refreshAll(nodes)
    for (const node of nodes)
      t.same(
        names(await node.client.route({ subject: 's', kind: 'producer' })),
        ['b'],
        'a is read-only everywhere',
      )

    await Promise.all(nodes.map((x) => x.server.beat()))
    const urls = nodes.map((x) => x.server.url)
    for (const node of nodes) t.same((await node.client.getAddresses()).sort(), [...urls].sort())

    // A client bootstrapped from m1's /meta/address keeps working when m1 goes away.
    const client = new MetaClient({ url: `${nodes[0]!.server.url}/meta/address`, timeoutMs: 1_000 })
    t.teardown(() => client.close())
    // s was placed while a was read-only: its route is b alone
    t.same(names(await client.route({ subject: 's', kind: 'consumer', group: 'g' })), ['b'])
    t.same([...client.knownAddresses].sort(), [...urls].sort())
    await nodes[0]!.client.close()
    await nodes[0]!.server.close()
    for (let i = 0; i < 5; i++) {
      const r = await client.route({ subject: 's', kind: 'consumer', group: 'g' })
      t.same(names(r), ['b'], 'answered by another metaserver')
    }
    await Promise.all(nodes.slice(1).map((x) => x.server.beat()))
    t.same(
      (await nodes[1]!.client.getAddresses()).sort(),
      urls.slice(1).sort(),
      'a closed metaserver leaves the list',
    )
  },
)

t.test(
  'shared postgres - qmq metaserver --store-file: two processes list each other, a stopped one leaves',
  async (t) => {
    // A password in the URL: it must reach PostgreSQL (trust auth ignores it) and never the start line.
    const url = (await freshDatabase()).replace('postgresql://postgres@', 'postgresql://postgres:s3cret@')
    const dir = t.testdir()
    const file = join(dir, 'store-url')
    writeFileSync(file, `${url}\n`)
    const start = () =>
      startService(t, 'metaserver', [
        'metaserver',
        '--port',
        '0',
        '--store-file',
        file,
        '--data-dir',
        join(dir, 'unused'),
      ])
    const m1 = await start()
    const m2 = await start()
    t.notMatch(JSON.stringify(m1.info), /s3cret/, 'the start line hides the password')
    t.match(m1.info.store, /postgres:\*\*\*@/)
    const c = new MetaClient({
      url: `${m1.address}/meta/address,${m2.address}/meta/address`,
      timeoutMs: 2_000,
    })
    t.teardown(() => c.close())
    const until = async (want: string[]) => {
      const end = Date.now() + 15_000
      for (;;) {
        const got = (await c.getAddresses()).sort()
        if (JSON.stringify(got) === JSON.stringify([...want].sort())) return got
        if (Date.now() > end) return got
        await new Promise((r) => setTimeout(r, 200))
      }
    }
    t.same(await until([m1.address, m2.address]), [m1.address, m2.address].sort(), 'both listed')
    m2.child.proc.kill('SIGTERM')
    await m2.child.exited
    t.same(await until([m1.address]), [m1.address], 'a cleanly stopped metaserver leaves the list')
  },
)
