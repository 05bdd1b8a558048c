import { tmpdir } from 'node:os'
import t, { type Test } from 'tap'
import { ManualClock } from '../../src/common/clock'
import { silentLogger } from '../../src/common/logger'
import type { ServerHeartbeatRequest } from '../../src/common/meta/types'
import { resolveMetaserverOptions } from '../../src/metaserver/options'
import { PostgresMetaStore } from '../../src/metaserver/postgres-store'
import { MetaService } from '../../src/metaserver/service'
import { SqliteMetaStore } from '../../src/metaserver/sqlite-store'
import type { MetaStore } from '../../src/metaserver/store'
import { CLUSTER_SECRET, freshDatabase } from './helpers'

/**
 * What a promotion needs (the master's in-sync report, its slaves and their offsets, a step-down) is
 * read from the store, not from the memory of the metaserver that heard the master: another
 * metaserver sharing the store, or one restarted while the master is down, promotes the same slave.
 */

const TIMEOUT_MS = 10_000
const MASTER = '127.0.0.1:1001'

function options() {
  return resolveMetaserverOptions({
    // Not t.testdir(): called again it empties the directory (the SQLite file of a restart).
    dataDir: tmpdir(),
    heartbeatTimeoutMs: TIMEOUT_MS,
    clusterSecret: CLUSTER_SECRET,
  })
}

function masterHb(inSync: string[], address = MASTER): ServerHeartbeatRequest {
  return {
    group: 'g',
    kind: 'broker',
    role: 'master',
    address,
    replication: { epoch: 0, messageOffset: 500, actionOffset: 50, inSyncSlaves: inSync, replicated: true },
  }
}

function slaveHb(address: string, offset = 400): ServerHeartbeatRequest {
  return {
    group: 'g',
    kind: 'broker',
    role: 'slave',
    address,
    replication: { epoch: 0, messageOffset: offset, actionOffset: 40, lagBytes: 0, lagMs: 0 },
  }
}

async function service(store: MetaStore, clock: ManualClock): Promise<MetaService> {
  const svc = new MetaService(options(), store, clock, silentLogger, false)
  await svc.load()
  return svc
}

async function postgresPair(t: Test, clock: ManualClock): Promise<[MetaService, MetaService]> {
  const url = await freshDatabase()
  const [sa, sb] = await Promise.all([PostgresMetaStore.open(url), PostgresMetaStore.open(url)])
  t.teardown(() => Promise.all([sa.close(), sb.close()]))
  return [await service(sa, clock), await service(sb, clock)]
}

t.test('two metaservers on PostgreSQL: the master reported to A, only B is left: B promotes', async (t) => {
  const clock = new ManualClock()
  const [a, b] = await postgresPair(t, clock)
  await a.heartbeat(masterHb(['127.0.0.1:1002']))
  await a.heartbeat(slaveHb('127.0.0.1:1002'))
  await b.refresh()
  // The master dies; A is gone too (never asked again). The slave heartbeats to B.
  for (let i = 0; i < 4; i++) {
    clock.advance(3_500)
    await b.heartbeat(slaveHb('127.0.0.1:1002'))
    await b.refresh() // the reload timer
  }
  t.same(await b.sweepFailover(), ['g'], 'B promotes the slave the master reported in sync to A')
  const answer = await b.heartbeat(slaveHb('127.0.0.1:1002'))
  t.match(answer, { role: 'master', epoch: 1, masterAddress: '127.0.0.1:1002' })
  t.match(b.getGroup('g'), { epoch: 1, failovers: 1, address: '127.0.0.1:1002', alive: true })
})

t.test(
  'two metaservers on PostgreSQL: `qmq failover` asked of A, the master heartbeating to B',
  async (t) => {
    const clock = new ManualClock()
    const [a, b] = await postgresPair(t, clock)
    await b.heartbeat(masterHb(['127.0.0.1:1002']))
    await b.heartbeat(slaveHb('127.0.0.1:1002'))
    await a.refresh()
    await a.failover('g')
    clock.advance(100)
    const told = await b.heartbeat(masterHb(['127.0.0.1:1002']))
    t.equal(told.role, 'slave', 'B tells the master to step down at its next heartbeat')
    t.same(await b.sweepFailover(), [], 'not before the lease ran out')
    // The stepped-down master heartbeats as a slave; after the lease, either metaserver promotes.
    clock.advance(TIMEOUT_MS / 2)
    await b.heartbeat({ ...slaveHb(MASTER), replication: { epoch: 0, messageOffset: 500, actionOffset: 50 } })
    await b.heartbeat(slaveHb('127.0.0.1:1002'))
    await b.refresh()
    t.same(await b.sweepFailover(), ['g'], 'B promotes the slave after the lease')
    t.same(await a.sweepFailover(), [], 'once')
    t.match(b.getGroup('g'), { epoch: 1, address: '127.0.0.1:1002' })
    const former = await a.heartbeat({
      ...slaveHb(MASTER),
      replication: { epoch: 0, messageOffset: 500, actionOffset: 50 },
    })
    t.match(former, { role: 'slave', epoch: 1, masterAddress: '127.0.0.1:1002' }, 'A reloaded the new epoch')
  },
)

t.test('a metaserver restarted while the master is down promotes from the store (SQLite)', async (t) => {
  const clock = new ManualClock()
  const file = `${t.testdir()}/meta.db`
  const first = new SqliteMetaStore(file)
  const a = await service(first, clock)
  await a.heartbeat(masterHb(['127.0.0.1:1002']))
  await a.heartbeat(slaveHb('127.0.0.1:1002'))
  await first.close()
  // The metaserver and the master go down; the metaserver comes back alone.
  clock.advance(TIMEOUT_MS + 1)
  const second = new SqliteMetaStore(file)
  t.teardown(() => second.close())
  const restarted = await service(second, clock)
  await restarted.heartbeat(slaveHb('127.0.0.1:1002'))
  t.same(await restarted.sweepFailover(), ['g'], 'the in-sync slave is promoted')
  t.match(restarted.getGroup('g'), { epoch: 1, address: '127.0.0.1:1002' })
})

t.test('several slaves: the in-sync one with the most data is promoted, the others stay', async (t) => {
  const clock = new ManualClock()
  const store = new SqliteMetaStore(`${t.testdir()}/meta.db`)
  t.teardown(() => store.close())
  const svc = await service(store, clock)
  await svc.heartbeat(masterHb(['127.0.0.1:1002', '127.0.0.1:1003']))
  await svc.heartbeat(slaveHb('127.0.0.1:1002', 300))
  await svc.heartbeat(slaveHb('127.0.0.1:1003', 450))
  await svc.heartbeat(slaveHb('127.0.0.1:1004', 500)) // most data, but not in sync
  t.same(
    svc.getGroup('g').servers.map((s) => [s.role, s.address]),
    [
      ['master', MASTER],
      ['slave', '127.0.0.1:1002'],
      ['slave', '127.0.0.1:1003'],
      ['slave', '127.0.0.1:1004'],
    ],
    'every slave is tracked',
  )
  clock.advance(TIMEOUT_MS + 1)
  for (const [port, offset] of [
    [1002, 300],
    [1003, 450],
    [1004, 500],
  ] as const)
    await svc.heartbeat(slaveHb(`127.0.0.1:${port}`, offset))
  t.same(await svc.sweepFailover(), ['g'])
  t.same(
    svc.getGroup('g').servers.map((s) => [s.role, s.address]),
    [
      ['master', '127.0.0.1:1003'],
      ['slave', '127.0.0.1:1002'],
      ['slave', '127.0.0.1:1004'],
    ],
  )
  t.match(await svc.heartbeat(slaveHb('127.0.0.1:1002')), { role: 'slave', masterAddress: '127.0.0.1:1003' })
  // The former master comes back claiming to be master: a slave of the new one.
  t.match(await svc.heartbeat(masterHb([])), { role: 'slave', epoch: 1 })
  t.equal(svc.getGroup('g').servers.filter((s) => s.role === 'slave').length, 3)
})

t.test('a `qmq failover` whose slave fell out of sync before the lease ran out is cancelled', async (t) => {
  const clock = new ManualClock()
  const store = new SqliteMetaStore(`${t.testdir()}/meta.db`)
  t.teardown(() => store.close())
  const svc = await service(store, clock)
  await svc.heartbeat(masterHb(['127.0.0.1:1002']))
  await svc.heartbeat(slaveHb('127.0.0.1:1002'))
  await svc.failover('g')
  t.equal((await svc.heartbeat(masterHb(['127.0.0.1:1002']))).role, 'slave', 'told to step down')
  // The slave stops heartbeating; the stepped-down master still does (as a slave-to-be).
  for (let i = 0; i < 4; i++) {
    clock.advance(3_000)
    await svc.heartbeat({
      ...slaveHb(MASTER),
      replication: { epoch: 0, messageOffset: 500, actionOffset: 50 },
    })
  }
  t.same(await svc.sweepFailover(), [], 'no slave to promote')
  const back = await svc.heartbeat({
    ...slaveHb(MASTER),
    replication: { epoch: 0, messageOffset: 500, actionOffset: 50 },
  })
  t.match(back, { role: 'master', epoch: 0 }, 'the master is told to be master again')
  t.match(
    (await store.loadAll()).replication,
    [{ stepDownAt: undefined }],
    'the step-down is cleared in the store',
  )
})
