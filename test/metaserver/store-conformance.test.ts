import t, { type Test } from 'tap'
import { PostgresMetaStore } from '../../src/metaserver/postgres-store'
import { MIGRATIONS, SCHEMA_VERSION, VERSION_TABLE } from '../../src/metaserver/schema'
import { SqliteMetaStore } from '../../src/metaserver/sqlite-store'
import { type AppCredentialStore, changeApp, type StoredApp } from '../../src/metaserver/app-store'
import type { MetaStore, StoredGroup, StoredServer } from '../../src/metaserver/store'
import { freshDatabase, STORE_KINDS, type StoreKind } from './helpers'

/**
 * The MetaStore contract (store.ts), checked on every implementation with the same cases. Several
 * handles on one database stand for several metaservers sharing it. A method added to MetaStore gets
 * its case here.
 */

/** Opens `n` handles on one fresh database of `kind`; closed at teardown. */
async function openShared(t: Test, kind: StoreKind, n: number): Promise<MetaStore[]> {
  const stores: MetaStore[] = []
  if (kind === 'sqlite') {
    const file = `${t.testdir()}/meta.db`
    for (let i = 0; i < n; i++) stores.push(new SqliteMetaStore(file))
  } else {
    const url = await freshDatabase()
    // Opened at once: concurrent migrations of an empty database must not collide.
    stores.push(...(await Promise.all(Array.from({ length: n }, () => PostgresMetaStore.open(url)))))
  }
  t.teardown(() => Promise.all(stores.map((s) => s.close())))
  return stores
}

function group(name: string, load: StoredGroup['load'] = {}): StoredGroup {
  return { name, kind: 'broker', firstSeenAt: 100, load }
}

function master(g: string, lastSeenAt: number, port = 1000): StoredServer {
  return { group: g, role: 'master', address: `127.0.0.1:${port}`, httpAddress: undefined, lastSeenAt }
}

/** A server of group 'g'; a slave with `offset` as both of its offsets. */
function server(address: string, role: 'master' | 'slave', offset = 0): StoredServer {
  const out: StoredServer = { group: 'g', role, address, httpAddress: undefined, lastSeenAt: 0 }
  return role === 'slave' ? { ...out, messageOffset: offset, actionOffset: offset } : out
}

function appsOf(t: Test, s: MetaStore | undefined): AppCredentialStore {
  if (s === undefined) throw new Error('no store')
  t.ok(s.apps, `${s.kind} store keeps application credentials`)
  return s.apps
}

function app(appCode: string, tokenHashes: string[], at: number): StoredApp {
  return {
    appCode,
    tokenHashes,
    grants: [{ action: 'produce', subject: `${appCode}.*` }],
    createdAt: at,
    updatedAt: at,
    version: 0,
  }
}

for (const kind of STORE_KINDS) {
  t.test(`store [${kind}] - schema created once at the current version, reopened as it is`, async (t) => {
    const [a, b, c] = await openShared(t, kind, 3)
    const snap = await a!.loadAll()
    t.same(snap, {
      replication: [],
      epochs: [],
      groups: [],
      servers: [],
      routes: [],
      readOnly: [],
      clients: [],
      liveness: [],
    })
    await b!.assignRouteIfAbsent('s', ['g1'], 1)
    t.same((await c!.getRoute('s'))?.groups, ['g1'])
    t.equal(SCHEMA_VERSION, 9)
  })

  t.test(`store [${kind}] - promote: racing promotions of one epoch, one wins`, async (t) => {
    const stores = await openShared(t, kind, 3)
    const s0 = stores[0]!
    const addresses = ['10.0.0.1:20881', '10.0.0.2:20881', '10.0.0.3:20881', '10.0.0.4:20881']
    let masterAddress = addresses[0]!
    let at = 1_000
    for (let epoch = 0; epoch < 3; epoch++) {
      // The master reports every other server in sync; they heartbeat as its slaves.
      const others = addresses.filter((a) => a !== masterAddress)
      await s0.recordHeartbeat(group('g'), { ...server(masterAddress, 'master'), lastSeenAt: at }, epoch, {
        replicated: true,
        inSync: others,
      })
      at += 10_000
      for (const [i, a] of others.entries())
        await s0.recordHeartbeat(group('g'), { ...server(a, 'slave', 100 * i), lastSeenAt: at }, epoch)
      const req = {
        group: 'g',
        expectedEpoch: epoch,
        now: at,
        deadBefore: at - 5_000,
        slaveSeenAfter: at - 5_000,
      }
      const results = await Promise.all(stores.map((s) => s.promote(req)))
      const won = results.filter((r) => 'promoted' in r)
      t.equal(won.length, 1, `epoch ${epoch} -> ${epoch + 1}: one promotion`)
      t.same(
        results.filter((r) => 'refused' in r),
        [{ refused: 'epoch' }, { refused: 'epoch' }],
        'the others lost the compare-and-set',
      )
      const promoted = (won[0] as { promoted: StoredServer }).promoted
      t.equal(promoted.address, others[others.length - 1], 'the in-sync slave with the most data')
      const snap = await stores[1]!.loadAll()
      t.match(snap.epochs, [{ group: 'g', epoch: epoch + 1, failovers: epoch + 1 }])
      t.same(
        snap.servers.filter((x) => x.role === 'master').map((x) => [x.address, x.lastSeenAt]),
        [[promoted.address, at]],
        'the winner is master',
      )
      t.same(
        snap.servers
          .filter((x) => x.role === 'slave')
          .map((x) => x.address)
          .sort(),
        others.filter((a) => a !== promoted.address).sort(),
        'its slave row is gone, the other slaves stay',
      )
      t.match(snap.replication, [
        { group: 'g', replicated: true, epoch: epoch + 1, inSync: [], stepDownAt: undefined },
      ])
      masterAddress = promoted.address
      at += 1
    }
    t.same(
      await stores[2]!.promote({ group: 'g', expectedEpoch: 0, now: at, deadBefore: at, slaveSeenAfter: 0 }),
      { refused: 'epoch' },
      'a stale epoch changes nothing',
    )
  })

  t.test(`store [${kind}] - promote: decided from the stored report, slaves and master`, async (t) => {
    const [a, b] = await openShared(t, kind, 2)
    const req = (now: number, deadBefore: number) => ({
      group: 'g',
      expectedEpoch: 0,
      now,
      deadBefore,
      slaveSeenAfter: now - 5_000,
    })
    await a!.recordHeartbeat(group('g'), { ...server('m:1', 'master'), lastSeenAt: 1_000 }, 0)
    await a!.recordHeartbeat(group('g'), { ...server('s:1', 'slave', 500), lastSeenAt: 9_000 }, 0)
    await a!.recordHeartbeat(group('g'), { ...server('s:2', 'slave', 900), lastSeenAt: 9_000 }, 0)
    await a!.recordHeartbeat(group('g'), { ...server('s:3', 'slave', 999), lastSeenAt: 1_000 }, 0)
    t.same(await b!.promote(req(10_000, 5_000)), { refused: 'no-in-sync-slave' }, 'no report: no promotion')
    // The report comes with a master heartbeat to one metaserver; another one promotes from the store.
    await a!.recordHeartbeat(group('g'), { ...server('m:1', 'master'), lastSeenAt: 2_000 }, 0, {
      replicated: true,
      inSync: ['s:1', 's:3'],
    })
    t.same(
      await b!.promote(req(10_000, 1_000)),
      { refused: 'master-alive' },
      'the master was heard after deadBefore',
    )
    let snap = await b!.loadAll()
    t.same(snap.replication, [
      {
        group: 'g',
        replicated: true,
        epoch: 0,
        inSync: ['s:1', 's:3'],
        reportedAt: 2_000,
        reportSeq: 0,
        stepDownAt: undefined,
        priorInSync: [],
        served: true,
      },
    ])
    // An older report (a slower metaserver) does not replace it.
    await b!.recordHeartbeat(group('g'), { ...server('m:1', 'master'), lastSeenAt: 1_500 }, 0, {
      replicated: true,
      inSync: ['s:2'],
    })
    snap = await a!.loadAll()
    t.same(snap.replication[0]?.inSync, ['s:1', 's:3'], 'the newest report is kept')
    // s:2 has more data but is not in sync; s:3 is in sync but silent: s:1 is promoted.
    const r = await b!.promote(req(10_000, 5_000))
    t.match(r, { promoted: { group: 'g', role: 'master', address: 's:1', messageOffset: 500 } })
    snap = await a!.loadAll()
    t.same(snap.servers.map((x) => [x.role, x.address]).sort(), [
      ['master', 's:1'],
      ['slave', 's:2'],
      ['slave', 's:3'],
    ])
  })

  t.test(
    `store [${kind}] - a slave that cannot be promoted is skipped; a refused promotion is given up`,
    async (t) => {
      const [a, b] = await openShared(t, kind, 2)
      const req = (expectedEpoch: number, now: number) => ({
        group: 'g',
        expectedEpoch,
        now,
        deadBefore: now - 5_000,
        slaveSeenAfter: now - 5_000,
      })
      await a!.recordHeartbeat(group('g'), { ...server('m:1', 'master'), lastSeenAt: 1_000 }, 0, {
        replicated: true,
        inSync: ['s:1', 's:2', 's:3'],
      })
      const cannot = 'holds no checkpoint'
      await a!.recordHeartbeat(group('g'), { ...server('s:1', 'slave', 900), lastSeenAt: 9_000 }, 0)
      await a!.recordHeartbeat(group('g'), { ...server('s:2', 'slave', 800), lastSeenAt: 9_000 }, 0)
      await a!.recordHeartbeat(
        group('g'),
        { ...server('s:3', 'slave', 999), lastSeenAt: 9_000, notPromotable: cannot },
        0,
      )
      t.match(
        (await b!.loadAll()).servers.find((x) => x.address === 's:3'),
        { notPromotable: cannot },
        'stored with the slave',
      )
      // s:3 has the most data but said it cannot be promoted: s:1 is.
      t.match(await b!.promote(req(0, 10_000)), { promoted: { address: 's:1' } })
      t.match((await a!.loadAll()).replication, [{ epoch: 1, inSync: [], priorInSync: ['s:2', 's:3'] }])
      const refuser = {
        ...server('s:1', 'slave', 900),
        lastSeenAt: 10_500,
        heardAt: 10_500,
        notPromotable: cannot,
      }
      t.same(
        await a!.abandonPromotion({ group: 'g', epoch: 0, now: 10_500, slave: refuser }),
        { refused: 'epoch' },
        'only the current epoch',
      )
      t.same(
        await a!.abandonPromotion({
          group: 'g',
          epoch: 1,
          now: 10_500,
          slave: { ...refuser, address: 's:2' },
        }),
        { refused: 'not-master' },
        "only the epoch's master",
      )
      const results = await Promise.all(
        [a, b].map((s) => s!.abandonPromotion({ group: 'g', epoch: 1, now: 10_500, slave: refuser })),
      )
      t.same(
        results.map((r) => ('abandoned' in r ? r.abandoned : r.refused)).sort(),
        [2, 'epoch'],
        'racing metaservers: one gives the epoch up',
      )
      let snap = await b!.loadAll()
      t.match(snap.epochs, [{ group: 'g', epoch: 2, failovers: 1 }], 'a new epoch; no failover counted')
      t.same(
        snap.servers.map((x) => [x.role, x.address, x.notPromotable]).sort(),
        [
          ['slave', 's:1', cannot],
          ['slave', 's:2', undefined],
          ['slave', 's:3', cannot],
        ],
        'no master; the refusing server is a slave that cannot be promoted',
      )
      t.match(snap.replication, [{ epoch: 2, inSync: ['s:2', 's:3'], priorInSync: [], reportSeq: 0 }])
      // The next promotion: s:2 (in sync, promotable), at epoch 3.
      t.match(await a!.promote(req(2, 11_000)), { promoted: { address: 's:2' } })
      // A slave saying it can be promoted again (its newest heartbeat) is a candidate again.
      await a!.recordHeartbeat(group('g'), { ...server('s:3', 'slave', 999), lastSeenAt: 11_500 }, 3)
      snap = await b!.loadAll()
      t.equal(snap.servers.find((x) => x.address === 's:3')?.notPromotable, undefined, 'cleared')
    },
  )

  /** m:1 reports s:1 and s:2 in sync, then dies; s:1 (more data) is promoted to epoch 1. */
  const promoteS1 = async (t: Test, a: MetaStore, b: MetaStore): Promise<void> => {
    await a.recordHeartbeat(group('g'), { ...server('m:1', 'master'), lastSeenAt: 1_000 }, 0, {
      replicated: true,
      inSync: ['s:1', 's:2'],
    })
    await a.recordHeartbeat(group('g'), { ...server('s:1', 'slave', 900), lastSeenAt: 9_000 }, 0)
    await a.recordHeartbeat(group('g'), { ...server('s:2', 'slave', 800), lastSeenAt: 9_000 }, 0)
    const promote = { group: 'g', expectedEpoch: 0, now: 10_000, deadBefore: 5_000, slaveSeenAfter: 5_000 }
    t.match(await b.promote(promote), { promoted: { address: 's:1' } })
  }

  t.test(`store [${kind}] - an epoch a master served is not given up by a later refusal`, async (t) => {
    const [a, b] = await openShared(t, kind, 2)
    await promoteS1(t, a!, b!)
    t.match((await a!.loadAll()).replication, [{ epoch: 1, priorInSync: ['s:2'] }])
    // Its heartbeat that learns of the promotion (sent as a slave; the metaserver stores it with the
    // recorded master's role, without a report) does not mark the epoch served.
    await a!.recordHeartbeat(group('g'), { ...server('s:1', 'master'), lastSeenAt: 10_100 }, 1)
    t.equal((await b!.loadAll()).replication[0]?.served, undefined, 'not served before it reports as master')
    // s:1 takes the role and serves epoch 1 (its in-sync set is empty now: s:2 lags behind it).
    await a!.recordHeartbeat(group('g'), { ...server('s:1', 'master'), lastSeenAt: 11_000 }, 1, {
      replicated: true,
      inSync: [],
    })
    t.match((await b!.loadAll()).replication, [{ epoch: 1, served: true }], 'the epoch was served')
    // Much later it heartbeats as a slave that refuses epoch 1 (restarted with --role slave, say).
    const refuser = {
      ...server('s:1', 'slave', 5_000),
      lastSeenAt: 20_000,
      heardAt: 20_000,
      notPromotable: 'holds no checkpoint',
    }
    t.same(
      await a!.abandonPromotion({ group: 'g', epoch: 1, now: 20_000, slave: refuser }),
      { refused: 'served' },
      'not given up: s:2, in sync when s:1 was chosen, lacks what s:1 acknowledged since',
    )
    const snap = await b!.loadAll()
    t.match(snap.epochs, [{ group: 'g', epoch: 1 }], 'the epoch stays')
    t.same(snap.replication[0]?.inSync, [], 's:2 is not made in sync')
    // A slave's heartbeat does not clear the mark.
    await a!.recordHeartbeat(group('g'), { ...server('s:2', 'slave', 800), lastSeenAt: 21_000 }, 1)
    t.match(await a!.loadAll(), { replication: [{ epoch: 1, served: true }] })
  })

  t.test(
    `store [${kind}] - a promoted slave's heartbeats without a report leave its refusal possible`,
    async (t) => {
      const [a, b] = await openShared(t, kind, 2)
      await promoteS1(t, a!, b!)
      // As the metaserver stores them: the recorded master's role, no report (it never served).
      await a!.recordHeartbeat(group('g'), { ...server('s:1', 'master'), lastSeenAt: 10_100 }, 1)
      await b!.recordHeartbeat(group('g'), { ...server('s:1', 'master'), lastSeenAt: 0 }, 1)
      const refuser = {
        ...server('s:1', 'slave', 900),
        lastSeenAt: 10_200,
        heardAt: 10_200,
        notPromotable: 'x',
      }
      t.same(await a!.abandonPromotion({ group: 'g', epoch: 1, now: 10_200, slave: refuser }), {
        abandoned: 2,
      })
      t.match(
        (await b!.loadAll()).replication,
        [{ epoch: 2, inSync: ['s:2'] }],
        's:2 is in sync in the next epoch',
      )
    },
  )

  t.test(`store [${kind}] - heartbeats of an older epoch do not replace the promoted master`, async (t) => {
    const [a, b] = await openShared(t, kind, 2)
    await a!.recordHeartbeat(group('g'), { ...server('m:1', 'master'), lastSeenAt: 1_000 }, 0, {
      replicated: true,
      inSync: ['s:1'],
    })
    await a!.recordHeartbeat(group('g'), { ...server('s:1', 'slave', 10), lastSeenAt: 9_000 }, 0)
    t.match(
      await b!.promote({
        group: 'g',
        expectedEpoch: 0,
        now: 10_000,
        deadBefore: 5_000,
        slaveSeenAfter: 5_000,
      }),
      { promoted: { address: 's:1' } },
    )
    // A metaserver that has not reloaded yet hears the former master claiming to be master.
    const stale = await a!.recordHeartbeat(
      group('g'),
      { ...server('m:1', 'master'), lastSeenAt: 11_000 },
      0,
      {
        replicated: true,
        inSync: ['s:9'],
      },
    )
    t.match(stale, { written: false, epoch: 1, replication: { epoch: 1, inSync: [] } })
    const snap = await b!.loadAll()
    t.same(
      snap.servers.map((x) => [x.role, x.address, x.lastSeenAt]),
      [['master', 's:1', 9_000]],
      'master row, slave rows and report unchanged',
    )
    t.same(snap.replication[0]?.inSync, [])
    const fresh = await a!.recordHeartbeat(
      group('g'),
      { ...server('m:1', 'slave', 5), lastSeenAt: 11_000 },
      1,
    )
    t.match(fresh, { written: true, epoch: 1 })
  })

  t.test(
    `store [${kind}] - step-down: stored after the master's last heartbeat, then promotes`,
    async (t) => {
      const [a, b] = await openShared(t, kind, 2)
      t.equal(await a!.setStepDown('g', 100), undefined, 'no replication state: nothing to step down')
      await a!.recordHeartbeat(group('g'), { ...server('m:1', 'master'), lastSeenAt: 5_000 }, 0, {
        replicated: true,
        inSync: ['s:1'],
      })
      await a!.recordHeartbeat(group('g'), { ...server('s:1', 'slave', 10), lastSeenAt: 5_000 }, 0)
      // Asked at 4_000 on a clock behind the heartbeat's: stored at the heartbeat's time.
      t.match(await b!.setStepDown('g', 4_000), { stepDownAt: 5_000 })
      t.match(await a!.setStepDown('g', 7_000), { stepDownAt: 5_000 }, 'an earlier step-down is kept')
      const hb = await a!.recordHeartbeat(group('g'), { ...server('m:1', 'master'), lastSeenAt: 6_000 }, 0, {
        replicated: true,
        inSync: ['s:1'],
      })
      t.match(
        hb,
        { written: true, replication: { stepDownAt: 5_000 } },
        "the master's next heartbeat sees it",
      )
      const req = { group: 'g', expectedEpoch: 0, now: 6_000, deadBefore: 1_000, slaveSeenAfter: 1_000 }
      t.same(
        await b!.promote({ ...req, stepDownBefore: 4_999 }),
        { refused: 'master-alive' },
        'lease not run out',
      )
      t.same(await b!.setStepDown('g', undefined), {
        group: 'g',
        replicated: true,
        epoch: 0,
        inSync: ['s:1'],
        reportedAt: 6_000,
        reportSeq: 0,
        stepDownAt: undefined,
        priorInSync: [],
        served: true,
      })
      t.same(await b!.promote({ ...req, stepDownBefore: 6_000 }), { refused: 'master-alive' }, 'cleared')
      await a!.setStepDown('g', 6_000)
      t.match(await b!.promote({ ...req, stepDownBefore: 6_000 }), { promoted: { address: 's:1' } })
      t.match((await a!.loadAll()).replication, [{ epoch: 1, stepDownAt: undefined }])
    },
  )

  t.test(`store [${kind}] - placement: concurrent assignments store one route`, async (t) => {
    const stores = await openShared(t, kind, 3)
    for (let round = 0; round < 10; round++) {
      const subject = `s.${round}`
      const answers = await Promise.all(
        stores.flatMap((s, i) => [
          s.assignRouteIfAbsent(subject, [`a${i}`, `b${i}`], 10 + i),
          s.assignRouteIfAbsent(subject, [`c${i}`], 20 + i),
        ]),
      )
      const first = answers[0]!
      t.equal(first.version, 1)
      for (const r of answers) t.same(r, first, `${subject}: one stored route for every caller`)
    }
  })

  t.test(`store [${kind}] - updateRoute is a compare-and-set on version`, async (t) => {
    const [s1, s2] = await openShared(t, kind, 2)
    const r1 = await s1!.assignRouteIfAbsent('s', ['a', 'b'], 1)
    t.same(await s2!.assignRouteIfAbsent('s', ['c', 'd'], 2), r1)
    const tries = await Promise.all([
      s1!.updateRoute('s', ['a', 'b', 'c'], 1, 3),
      s2!.updateRoute('s', ['a', 'b', 'd'], 1, 3),
    ])
    t.equal(tries.filter((r) => r !== undefined).length, 1, 'one of two racing updates wins')
    const won = tries.find((r) => r !== undefined)
    t.equal(won?.version, 2)
    t.same(await s1!.getRoute('s'), won)
    t.equal(await s1!.updateRoute('missing', ['a'], 1, 5), undefined)
  })

  t.test(`store [${kind}] - heartbeats: last-seen never goes back, offline sets 0`, async (t) => {
    const [s1, s2] = await openShared(t, kind, 2)
    await s1!.recordHeartbeat(group('g', { backlog: 3 }), master('g', 5_000), 0)
    await s2!.recordHeartbeat(group('g', { backlog: 4 }), master('g', 4_000, 1001), 0)
    let snap = await s1!.loadAll()
    t.same(snap.groups, [group('g', { backlog: 4 })])
    t.same(
      snap.servers,
      [{ ...master('g', 5_000, 1001) }],
      'an older time from a slower metaserver is ignored',
    )
    await s2!.recordHeartbeat(group('g'), master('g', 0, 1001), 0)
    snap = await s1!.loadAll()
    t.equal(snap.servers[0]?.lastSeenAt, 0, 'offline')
  })

  t.test(`store [${kind}] - slaves: heard-at survives offline; expiry and removal`, async (t) => {
    const [s1, s2] = await openShared(t, kind, 2)
    const slave = (address: string, lastSeenAt: number, heardAt: number): StoredServer => ({
      ...server(address, 'slave', 7),
      lastSeenAt,
      heardAt,
    })
    const slaves = async () =>
      (await s1!.loadAll()).servers
        .filter((s) => s.role === 'slave')
        .map((s) => [s.address, s.lastSeenAt, s.heardAt])
        .sort()
    await s1!.recordHeartbeat(group('g'), master('g', 5_000), 0)
    await s1!.recordHeartbeat(group('g'), slave('s:1', 1_000, 1_000), 0)
    await s1!.recordHeartbeat(group('g'), slave('s:1', 0, 2_000), 0)
    await s2!.recordHeartbeat(group('g'), slave('s:2', 4_000, 4_000), 0)
    await s2!.recordHeartbeat(group('g'), slave('s:2', 3_500, 3_500), 0)
    t.same(
      await slaves(),
      [
        ['s:1', 0, 2_000],
        ['s:2', 4_000, 4_000],
      ],
      "an 'offline' slave keeps when it was heard; an older time from a slower metaserver is ignored",
    )
    t.same(await s2!.expireSlaves(2_000), [], 'none heard from before 2000')
    t.same(
      await s2!.expireSlaves(3_000),
      [{ group: 'g', address: 's:1' }],
      'the one not heard from since 2000',
    )
    t.same(await slaves(), [['s:2', 4_000, 4_000]])
    t.equal(await s1!.removeSlave('g', 's:2', 4_000), 'alive', 'seen at or after the bound: refused')
    t.equal(await s1!.removeSlave('g', 's:2', 4_001), 'removed')
    t.equal(await s2!.removeSlave('g', 's:2', 4_001), 'unknown', 'gone')
    t.same(await slaves(), [])
    t.same(
      (await s1!.loadAll()).servers.map((s) => s.role),
      ['master'],
      'the master row is not touched',
    )
  })

  t.test(`store [${kind}] - liveness: each transition decided once among racing callers`, async (t) => {
    const stores = await openShared(t, kind, 3)
    await stores[0]!.recordHeartbeat(group('g'), master('g', 1_000), 0)
    // dead is refused while the stored master last-seen is recent
    const refused = await stores[1]!.decideLiveness('g', false, 2_000, 500)
    t.same(refused, { changed: false, alive: true, version: 0, masterLastSeenAt: 1_000 })
    let version = 0
    for (const alive of [false, true, false, true]) {
      const ds = await Promise.all(stores.map((s) => s.decideLiveness('g', alive, 3_000, 2_000)))
      t.equal(ds.filter((d) => d.changed).length, 1, `one caller decides alive=${alive}`)
      version++
      for (const d of ds) {
        t.equal(d.alive, alive)
        t.equal(d.version, version)
      }
    }
    const snap = await stores[2]!.loadAll()
    t.same(snap.liveness, [{ group: 'g', alive: true, version: 4, changedAt: 3_000 }])
  })

  t.test(`store [${kind}] - read-only marks, clients, metaservers`, async (t) => {
    const [s1, s2] = await openShared(t, kind, 2)
    await Promise.all([s1!.setReadOnly('g', '*', true, 1), s2!.setReadOnly('g', '*', true, 2)])
    await s1!.setReadOnly('g', 'x', true, 3)
    await s2!.setReadOnly('g', 'x', false, 4)
    t.same(
      (await s1!.loadAll()).readOnly.map((r) => [r.group, r.subject]),
      [['g', '*']],
    )

    const c = { clientId: 'c1', kind: 'consumer' as const, subject: 's', consumerGroup: 'cg', appCode: '' }
    await s1!.upsertClient({ ...c, lastSeenAt: 100 })
    await s2!.upsertClient({ ...c, lastSeenAt: 50 })
    await s2!.upsertClient({ ...c, clientId: 'c2', lastSeenAt: 10 })
    t.same((await s1!.loadAll()).clients.map((x) => [x.clientId, x.lastSeenAt]).sort(), [
      ['c1', 100],
      ['c2', 10],
    ])
    t.equal(await s1!.deleteClientsSeenBefore(20), 1)
    await s2!.deleteClient(c)
    t.same((await s1!.loadAll()).clients, [])

    await s1!.registerMetaserver({ id: 'm1', url: 'http://a:1', startedAt: 10, lastSeenAt: 100 })
    await s2!.registerMetaserver({ id: 'm2', url: 'http://b:1', startedAt: 20, lastSeenAt: 100 })
    await s2!.registerMetaserver({ id: 'm3', url: 'http://c:1', startedAt: 5, lastSeenAt: 40 })
    t.same(
      (await s1!.listMetaservers(50)).map((m) => m.url),
      ['http://a:1', 'http://b:1'],
      'live ones, oldest start first',
    )
    await s1!.removeMetaserver('m1')
    t.same(
      (await s2!.listMetaservers(0)).map((m) => m.id),
      ['m3', 'm2'],
    )
    const offset = await s1!.clockOffsetMs(Date.now())
    t.ok(Math.abs(offset) < 2_000, `store clock offset ${offset} ms`)
  })

  t.test(`store [${kind}] - application credentials: insert if absent, update, delete, list`, async (t) => {
    const [s1, s2] = await openShared(t, kind, 2)
    const a1 = appsOf(t, s1)
    const a2 = appsOf(t, s2)
    t.same(await a1.listApps(), [])
    t.equal(await a1.getApp('billing'), undefined)
    t.equal(await a1.insertApp(app('billing', ['h1'], 1_000)), true)
    t.equal(await a2.insertApp(app('billing', ['other'], 2_000)), false, 'an existing appCode is kept')
    const created = (await a2.getApp('billing'))!
    t.same(created, { ...app('billing', ['h1'], 1_000), version: created.version })
    t.equal(await a2.insertApp(app('audit', [], 3_000)), true)
    t.same(
      (await a1.listApps()).map((a) => a.appCode),
      ['audit', 'billing'],
      'ordered by appCode',
    )

    const rotated: StoredApp = {
      ...app('billing', ['h1', 'h2'], 1_000),
      version: created.version,
      grants: [
        { action: 'consume', subject: 'orders.*', group: 'billing' },
        { action: 'admin', subject: '*' },
      ],
      updatedAt: 4_000,
    }
    t.equal(await a2.updateApp(rotated), true)
    t.same(
      await a1.getApp('billing'),
      { ...rotated, version: created.version + 1 },
      'hashes and grants replaced, createdAt kept, version + 1',
    )
    t.equal(await a1.updateApp(app('missing', ['h'], 5_000)), false, 'update of an absent app')
    t.equal(await a1.getApp('missing'), undefined, 'update does not create')

    t.equal(await a1.deleteApp('billing'), true)
    t.equal(await a2.deleteApp('billing'), false, 'already deleted')
    t.same(
      (await a2.listApps()).map((a) => a.appCode),
      ['audit'],
    )
  })

  t.test(
    `store [${kind}] - application credentials: an update applies to the version read only`,
    async (t) => {
      const [s1, s2] = await openShared(t, kind, 2)
      const a1 = appsOf(t, s1)
      const a2 = appsOf(t, s2)
      await a1.insertApp(app('billing', ['h1'], 1_000))
      // Two metaservers read the app at once, each adds a grant.
      const read1 = (await a1.getApp('billing'))!
      const read2 = (await a2.getApp('billing'))!
      t.equal(read2.version, read1.version)
      const g1 = { action: 'admin' as const, subject: 'one' }
      const g2 = { action: 'admin' as const, subject: 'two' }
      t.equal(
        await a1.updateApp({ ...read1, grants: [...read1.grants, g1], updatedAt: 2_000 }),
        true,
        'first',
      )
      t.equal(
        await a2.updateApp({ ...read2, grants: [...read2.grants, g2], updatedAt: 3_000 }),
        false,
        'the second, from a stale read, writes nothing',
      )
      const now = (await a2.getApp('billing'))!
      t.same(
        [now.grants.at(-1), now.version, now.updatedAt],
        [g1, read1.version + 1, 2_000],
        'the first change is kept',
      )
      t.equal(await a2.updateApp({ ...now, grants: [...now.grants, g2], updatedAt: 3_000 }), true, 'redone')
      t.same((await a1.getApp('billing'))?.grants.slice(1), [g1, g2])

      // changeApp redoes the change on the new row: concurrent changes through both handles all stick.
      const subjects = Array.from({ length: 10 }, (_, i) => `s${i}`)
      await Promise.all(
        subjects.map(async (subject, i) => {
          const store = i % 2 === 0 ? a1 : a2
          const first = (await store.getApp('billing'))!
          return changeApp(store, first, (a) => ({
            ...a,
            grants: [...a.grants, { action: 'produce', subject }],
          }))
        }),
      )
      const last = (await a1.getApp('billing'))!
      t.same(
        last.grants
          .slice(3)
          .map((g) => g.subject)
          .sort(),
        subjects,
        'every change stuck',
      )
      t.equal(last.version, read1.version + 2 + subjects.length, 'one version per change')
      await a1.deleteApp('billing')
      await t.rejects(
        changeApp(a1, last, (a) => a),
        { code: 'QMQ_ERR_NOT_FOUND' },
        'a deleted app',
      )
    },
  )

  t.test(
    `store [${kind}] - application credentials: a change read before a delete and re-create does not apply`,
    async (t) => {
      const [s1, s2] = await openShared(t, kind, 2)
      const a1 = appsOf(t, s1)
      const a2 = appsOf(t, s2)
      for (const updates of [0, 1, 3]) {
        const code = `recreated${updates}`
        await a1.insertApp(app(code, ['old'], 1_000))
        for (let i = 0; i < updates; i++) {
          const cur = (await a1.getApp(code))!
          t.equal(await a1.updateApp({ ...cur, updatedAt: 1_001 + i }), true)
        }
        // A grant/revoke/rotate of the old app reads it, the app is deleted and created again (new token)
        // on the other metaserver, with as many changes, then the stale change writes.
        const stale = (await a1.getApp(code))!
        t.equal(await a2.deleteApp(code), true)
        t.equal(await a2.insertApp(app(code, ['new'], 1_000)), true)
        for (let i = 0; i < updates; i++) {
          const cur = (await a2.getApp(code))!
          t.equal(await a2.updateApp({ ...cur, updatedAt: 1_001 + i }), true)
        }
        t.equal(
          await a1.updateApp({ ...stale, tokenHashes: [...stale.tokenHashes, 'rotated'] }),
          false,
          `${code}: the stale update writes nothing`,
        )
        t.same((await a1.getApp(code))?.tokenHashes, ['new'], `${code}: the old token does not come back`)
      }
    },
  )

  t.test(`store [${kind}] - application credentials: racing creates of one appCode, one wins`, async (t) => {
    const stores = await openShared(t, kind, 2)
    const apps = stores.map((s) => appsOf(t, s))
    for (let round = 0; round < 10; round++) {
      const code = `app${round}`
      const tries = await Promise.all(
        apps.flatMap((a, i) => [
          a.insertApp(app(code, [`h${i}a`], 10 + i)),
          a.insertApp(app(code, [`h${i}b`], 20 + i)),
        ]),
      )
      t.equal(tries.filter((won) => won).length, 1, `${code}: exactly one insert wins`)
      const winner = tries.indexOf(true)
      const stored = await apps[1]!.getApp(code)
      t.same(
        stored?.tokenHashes,
        [`h${Math.floor(winner / 2)}${winner % 2 === 0 ? 'a' : 'b'}`],
        `${code}: the winner's hashes are stored`,
      )
    }
  })
}

t.test('store [postgres] - a closed or unreachable store fails with a retriable code', async (t) => {
  const [s] = await openShared(t, 'postgres', 1)
  await s!.close()
  await t.rejects(s!.getRoute('s'), { code: 'QMQ_ERR_METASERVER_STORE' })
  await t.rejects(s!.apps.insertApp(app('a', ['h'], 1)), { code: 'QMQ_ERR_METASERVER_STORE' })
  await t.rejects(s!.apps.listApps(), { code: 'QMQ_ERR_METASERVER_STORE' })
  await t.rejects(PostgresMetaStore.open('postgresql://postgres@127.0.0.1:1/none'), {
    code: 'QMQ_ERR_METASERVER_STORE',
  })
})

t.test(
  'store [postgres] - application credentials: a database outage fails with a retriable code',
  async (t) => {
    const url = await freshDatabase()
    const s = await PostgresMetaStore.open(url)
    t.teardown(() => s.close())
    const apps = appsOf(t, s)
    t.equal(await apps.insertApp(app('a', ['h'], 1)), true)
    // The database goes away under the store's pooled connections (they are terminated).
    const { Client } = await import('pg')
    const admin = new Client({ connectionString: url.replace(/\/[^/]+$/, '/postgres') })
    await admin.connect()
    await admin.query(`DROP DATABASE ${new URL(url).pathname.slice(1)} WITH (FORCE)`)
    await admin.end()
    const calls: (() => Promise<unknown>)[] = [
      () => apps.insertApp(app('b', ['h'], 2)),
      () => apps.updateApp(app('a', ['h2'], 2)),
      () => apps.deleteApp('a'),
      () => apps.listApps(),
    ]
    for (const call of calls) await t.rejects(call(), { code: 'QMQ_ERR_METASERVER_STORE' })
  },
)

/** Prepares a database of `kind` as an older metaserver left it: migrations up to `version` only. */
async function seedAt(
  t: Test,
  kind: StoreKind,
  version: number,
  extraSql: string[],
): Promise<() => Promise<MetaStore>> {
  const sql = [
    VERSION_TABLE,
    ...MIGRATIONS.filter((m) => m.version <= version).flatMap((m) => [
      m.sql[kind],
      `INSERT INTO schema_version (version) VALUES (${m.version})`,
    ]),
    ...extraSql,
  ]
  if (kind === 'sqlite') {
    const file = `${t.testdir()}/meta.db`
    const Database = require('better-sqlite3') as typeof import('better-sqlite3')
    const db = new Database(file)
    for (const s of sql) db.exec(s)
    db.close()
    return async () => new SqliteMetaStore(file)
  }
  const url = await freshDatabase()
  const { Client } = await import('pg')
  const c = new Client({ connectionString: url })
  await c.connect()
  for (const s of sql) await c.query(s)
  await c.end()
  return () => PostgresMetaStore.open(url)
}

for (const kind of STORE_KINDS) {
  t.test(`store [${kind}] - a version 1 database is migrated on open, its routes kept`, async (t) => {
    const open = await seedAt(t, kind, 1, [
      `INSERT INTO subject_routes (subject, groups_json, version, created_at, updated_at) VALUES ('old', '["a","b"]', 3, 1, 2)`,
    ])
    const s = await open()
    t.teardown(() => s.close())
    t.same(await s.getRoute('old'), {
      subject: 'old',
      groups: ['a', 'b'],
      version: 3,
      createdAt: 1,
      updatedAt: 2,
    })
    t.same(await s.decideLiveness('a', false, 10, 5), {
      changed: true,
      alive: false,
      version: 1,
      masterLastSeenAt: 0,
    })
    await s.registerMetaserver({ id: 'm', url: 'http://m', startedAt: 1, lastSeenAt: 2 })
    t.equal((await s.listMetaservers(0)).length, 1, 'version 2 tables exist')
    t.equal(await appsOf(t, s).insertApp(app('a', ['h'], 1)), true, 'version 3 table exists')
  })

  t.test(`store [${kind}] - a version 4 database: its slave rows move to the slaves table`, async (t) => {
    const open = await seedAt(t, kind, 4, [
      `INSERT INTO groups (name, kind, first_seen_at, load_json, updated_at) VALUES ('g', 'broker', 1, '{}', 1)`,
      `INSERT INTO servers (group_name, role, address, http_address, last_seen_at) VALUES ('g', 'master', 'm:1', NULL, 50)`,
      `INSERT INTO servers (group_name, role, address, http_address, last_seen_at) VALUES ('g', 'slave', 's:1', 'h:1', 40)`,
      `INSERT INTO group_epochs (group_name, epoch, failovers, updated_at) VALUES ('g', 2, 2, 30)`,
    ])
    const s = await open()
    t.teardown(() => s.close())
    const snap = await s.loadAll()
    t.same(snap.servers, [
      { group: 'g', role: 'master', address: 'm:1', httpAddress: undefined, lastSeenAt: 50 },
      {
        group: 'g',
        role: 'slave',
        address: 's:1',
        httpAddress: 'h:1',
        lastSeenAt: 40,
        messageOffset: 0,
        actionOffset: 0,
        heardAt: 40,
      },
    ])
    t.same(snap.replication, [])
    // The master row carries the group's epoch: a heartbeat written in epoch 2 replaces it.
    t.match(await s.recordHeartbeat(group('g'), { ...master('g', 60), address: 'm:1' }, 2), {
      written: true,
      epoch: 2,
    })
    t.match(await s.recordHeartbeat(group('g'), master('g', 70), 1), { written: false, epoch: 2 })
  })

  t.test(`store [${kind}] - a version 5 database: slave rows get a heard-at`, async (t) => {
    const open = await seedAt(t, kind, 5, [
      `INSERT INTO groups (name, kind, first_seen_at, load_json, updated_at) VALUES ('g', 'broker', 1, '{}', 1)`,
      `INSERT INTO servers (group_name, role, address, http_address, last_seen_at, epoch) VALUES ('g', 'master', 'm:1', NULL, 50, 0)`,
      `INSERT INTO slaves (group_name, address, http_address, last_seen_at, message_offset, action_offset) VALUES ('g', 's:1', NULL, 40, 1, 1)`,
      `INSERT INTO slaves (group_name, address, http_address, last_seen_at, message_offset, action_offset) VALUES ('g', 's:2', NULL, 0, 2, 2)`,
    ])
    const s = await open()
    t.teardown(() => s.close())
    const slaves = (await s.loadAll()).servers
      .filter((x) => x.role === 'slave')
      .map((x) => [x.address, x.heardAt])
      .sort()
    t.same(
      slaves,
      [
        ['s:1', 40],
        ['s:2', 50],
      ],
      "its last-seen; an 'offline' one: the newest master last-seen",
    )
  })

  t.test(`store [${kind}] - a database newer than this metaserver is refused`, async (t) => {
    const open = await seedAt(t, kind, SCHEMA_VERSION, [
      `INSERT INTO schema_version (version) VALUES (${SCHEMA_VERSION + 1})`,
    ])
    await t.rejects(open(), { code: 'QMQ_ERR_METASERVER_STORE', message: /newer than this metaserver/ })
  })
}
