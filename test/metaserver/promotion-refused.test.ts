import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import t, { type Test } from 'tap'
import { QMQ_BIN } from '../../src/cli/child-service'
import { ManualClock } from '../../src/common/clock'
import { silentLogger } from '../../src/common/logger'
import type { ServerHeartbeatRequest } from '../../src/common/meta/types'
import { resolveMetaserverOptions } from '../../src/metaserver/options'
import { PostgresMetaStore } from '../../src/metaserver/postgres-store'
import { MetaService } from '../../src/metaserver/service'
import { SqliteMetaStore } from '../../src/metaserver/sqlite-store'
import type { MetaStore } from '../../src/metaserver/store'
import { CLUSTER_SECRET, freshDatabase, startWithClient } from './helpers'

/**
 * A slave that cannot be promoted (a delay slave holding no checkpoint whose message-log copy starts
 * past 0) says so in its heartbeats (`promotable: false`): the metaserver never promotes it. A
 * promotion decided before it said so is refused by the slave, which reports the refused epoch
 * (`refusedEpoch`): the metaserver gives that epoch up instead of keeping the group pointing at a
 * master that does not serve, promotes another in-sync slave, or lets the former master serve again.
 */

const TIMEOUT_MS = 10_000
const MASTER = '127.0.0.1:1001'
const A = '127.0.0.1:1002'
const B = '127.0.0.1:1003'
const CANNOT = 'holds no checkpoint of the derived files and its message-log copy starts at 65536'

function options() {
  return resolveMetaserverOptions({
    dataDir: t.testdir(),
    heartbeatTimeoutMs: TIMEOUT_MS,
    clusterSecret: CLUSTER_SECRET,
  })
}

function masterHb(inSync: string[], address = MASTER): ServerHeartbeatRequest {
  return {
    group: 'd',
    kind: 'delay',
    role: 'master',
    address,
    replication: { epoch: 0, messageOffset: 500, actionOffset: 0, inSyncSlaves: inSync, replicated: true },
  }
}

/** A slave's heartbeat; without `promotable` (an older server, or one that can be promoted). */
function slaveHb(
  address: string,
  offset: number,
  extra: { promotable?: boolean; refusedEpoch?: number } = {},
): ServerHeartbeatRequest {
  const replication: ServerHeartbeatRequest['replication'] = {
    epoch: 0,
    messageOffset: offset,
    actionOffset: 0,
    lagBytes: 0,
  }
  if (extra.promotable === false) {
    replication.promotable = false
    replication.notPromotableReason = CANNOT
  }
  if (extra.refusedEpoch !== undefined) replication.refusedEpoch = extra.refusedEpoch
  return { group: 'd', kind: 'delay', role: 'slave', address, replication }
}

async function service(store: MetaStore, clock: ManualClock): Promise<MetaService> {
  const svc = new MetaService(options(), store, clock, silentLogger, false)
  await svc.load()
  return svc
}

async function sqliteService(t: Test, clock: ManualClock): Promise<{ svc: MetaService; store: MetaStore }> {
  const store = new SqliteMetaStore(`${t.testdir()}/meta.db`)
  t.teardown(() => store.close())
  return { svc: await service(store, clock), store }
}

function roles(svc: MetaService): [string, string, string | undefined][] {
  return svc.getGroup('d').servers.map((s) => [s.role, s.address, s.notPromotable])
}

/** The master reported A and B in sync, then went silent past the timeout; A has the most data. */
async function masterGone(svc: MetaService, clock: ManualClock, a: Parameters<typeof slaveHb>[2] = {}) {
  await svc.heartbeat(masterHb([A, B]))
  await svc.heartbeat(slaveHb(A, 500))
  await svc.heartbeat(slaveHb(B, 400))
  clock.advance(TIMEOUT_MS + 1)
  await svc.heartbeat(slaveHb(A, 500, a))
  await svc.heartbeat(slaveHb(B, 400))
}

t.test('a slave that says it cannot be promoted is skipped: the other in-sync slave is', async (t) => {
  const clock = new ManualClock()
  const { svc, store } = await sqliteService(t, clock)
  await masterGone(svc, clock, { promotable: false })
  t.match(
    svc.getGroup('d').servers.find((s) => s.address === A),
    { role: 'slave', notPromotable: CANNOT },
    'GroupInfo shows why A cannot be promoted',
  )
  t.match(
    (await store.loadAll()).servers.find((s) => s.address === A),
    { notPromotable: CANNOT },
    'stored: any metaserver sharing the store skips it',
  )
  t.same(await svc.sweepFailover(), ['d'])
  t.same(roles(svc), [
    ['master', B, undefined],
    ['slave', A, CANNOT],
  ])
  t.match(await svc.heartbeat(slaveHb(B, 400)), { role: 'master', epoch: 1 }, 'B (no field: promotable) is')
  t.match(await svc.heartbeat(slaveHb(A, 500, { promotable: false })), { role: 'slave', epoch: 1 })
})

t.test('the only in-sync slave cannot be promoted: no promotion; promotable again, it is', async (t) => {
  const clock = new ManualClock()
  const { svc } = await sqliteService(t, clock)
  await svc.heartbeat(masterHb([A]))
  await svc.heartbeat(slaveHb(A, 500, { promotable: false }))
  clock.advance(TIMEOUT_MS + 1)
  await svc.heartbeat(slaveHb(A, 500, { promotable: false }))
  t.same(await svc.sweepFailover(), [], 'not promoted')
  await t.rejects(svc.failover('d'), { code: 'QMQ_ERR_NO_IN_SYNC_SLAVE' }, '`qmq failover` refused too')
  await svc.heartbeat(slaveHb(A, 500)) // it adopted a checkpoint meanwhile: no field any more
  t.equal(svc.getGroup('d').servers.find((s) => s.address === A)?.notPromotable, undefined)
  t.same(await svc.sweepFailover(), ['d'], 'promoted once it says nothing against it')
})

t.test('a refused promotion is given up and another in-sync slave promoted', async (t) => {
  const clock = new ManualClock()
  const { svc, store } = await sqliteService(t, clock)
  await masterGone(svc, clock) // A says nothing yet: the race
  t.same(await svc.sweepFailover(), ['d'])
  t.match(svc.getGroup('d'), { epoch: 1, address: A })
  t.match(await svc.heartbeat(slaveHb(A, 500)), { role: 'master', epoch: 1 }, 'A is told to be master')
  // A refuses (its switch failed): its next heartbeat, still a slave's, names the refused epoch.
  const answer = await svc.heartbeat(slaveHb(A, 500, { promotable: false, refusedEpoch: 1 }))
  t.match(answer, { role: 'slave', epoch: 2, masterAddress: '' }, 'A stays a slave; epoch 1 is given up')
  t.match(svc.getGroup('d'), { epoch: 2, failovers: 1, address: '', alive: false })
  t.same(roles(svc), [
    ['slave', A, CANNOT],
    ['slave', B, undefined],
  ])
  t.match((await store.loadAll()).replication, [{ epoch: 2, inSync: [B] }], 'B is in sync in epoch 2')
  t.same(await svc.sweepFailover(), ['d'], 'B is promoted')
  t.match(svc.getGroup('d'), { epoch: 3, failovers: 2, address: B })
  t.match(await svc.heartbeat(slaveHb(B, 400)), { role: 'master', epoch: 3 })
  t.match(await svc.heartbeat(slaveHb(A, 500, { promotable: false, refusedEpoch: 1 })), {
    role: 'slave',
    masterAddress: B,
  })
  t.match(svc.getGroup('d'), { epoch: 3, address: B }, 'a repeated refusal of epoch 1 changes nothing')
})

t.test('a refused promotion, no other slave: the former master comes back and serves', async (t) => {
  const clock = new ManualClock()
  const { svc } = await sqliteService(t, clock)
  await svc.heartbeat(masterHb([A]))
  await svc.heartbeat(slaveHb(A, 500))
  clock.advance(TIMEOUT_MS + 1)
  await svc.heartbeat(slaveHb(A, 500))
  t.same(await svc.sweepFailover(), ['d'])
  // Before: A heartbeating (refusing) kept the recorded master alive for ever, and the former
  // master coming back was told to be its slave.
  await svc.heartbeat(slaveHb(A, 500, { promotable: false, refusedEpoch: 1 }))
  t.match(svc.getGroup('d'), { epoch: 2, address: '', alive: false })
  t.same(await svc.sweepFailover(), [], 'no slave to promote')
  clock.advance(1_000)
  const back = await svc.heartbeat(masterHb([], '127.0.0.1:1009')) // restarted on another port
  t.match(back, { role: 'master', epoch: 2, masterAddress: '127.0.0.1:1009' }, 'the former master serves')
  t.match(svc.getGroup('d'), { epoch: 2, address: '127.0.0.1:1009', alive: true })
  t.match(await svc.heartbeat(slaveHb(A, 500, { promotable: false, refusedEpoch: 1 })), {
    role: 'slave',
    masterAddress: '127.0.0.1:1009',
  })
})

t.test('`qmq failover` whose slave refuses: the stepped-down master is promoted back', async (t) => {
  const clock = new ManualClock()
  const { svc } = await sqliteService(t, clock)
  await svc.heartbeat(masterHb([A]))
  await svc.heartbeat(slaveHb(A, 500))
  await svc.failover('d')
  t.equal((await svc.heartbeat(masterHb([A]))).role, 'slave', 'the master steps down')
  const stepped = () => slaveHb(MASTER, 500) // it heartbeats on as a slave
  clock.advance(TIMEOUT_MS / 2 + 1)
  await svc.heartbeat(stepped())
  await svc.heartbeat(slaveHb(A, 500))
  t.same(await svc.sweepFailover(), ['d'], 'A is promoted after the lease')
  t.match(await svc.heartbeat(stepped()), { role: 'slave', epoch: 1 }, 'the former master: a slave of A')
  await svc.heartbeat(slaveHb(A, 500, { promotable: false, refusedEpoch: 1 }))
  t.match(svc.getGroup('d'), { epoch: 2, address: '' }, 'A refused: epoch 1 given up')
  await svc.heartbeat(stepped())
  t.same(await svc.sweepFailover(), ['d'], 'the former master (it holds everything) is promoted')
  t.match(svc.getGroup('d'), { epoch: 3, address: MASTER })
  t.match(await svc.heartbeat(stepped()), { role: 'master', epoch: 3 })
})

t.test('a refusal of an epoch already superseded changes nothing', async (t) => {
  const clock = new ManualClock()
  const { svc } = await sqliteService(t, clock)
  await masterGone(svc, clock)
  t.same(await svc.sweepFailover(), ['d'])
  // A serves epoch 1 (it did not refuse) and heartbeats as master; B, a slave, names an old refusal.
  await svc.heartbeat({ ...masterHb([B], A), replication: { ...masterHb([B]).replication!, epoch: 1 } })
  t.match(await svc.heartbeat(slaveHb(B, 400, { refusedEpoch: 1 })), { role: 'slave', epoch: 1 })
  t.match(svc.getGroup('d'), { epoch: 1, address: A, alive: true }, 'only the recorded master can refuse')
})

t.test('two metaservers on PostgreSQL: the refusal heard by B, A reloads and promotes', async (t) => {
  const clock = new ManualClock()
  const url = await freshDatabase()
  const [sa, sb] = await Promise.all([PostgresMetaStore.open(url), PostgresMetaStore.open(url)])
  t.teardown(() => Promise.all([sa.close(), sb.close()]))
  const a = await service(sa, clock)
  const b = await service(sb, clock)
  await masterGone(a, clock)
  t.same(await a.sweepFailover(), ['d'])
  // A's refusal reaches B, which has not reloaded since the promotion.
  await b.refresh()
  await b.heartbeat(slaveHb(A, 500, { promotable: false, refusedEpoch: 1 }))
  t.match(b.getGroup('d'), { epoch: 2, address: '' })
  // The same refusal, retried to A (stale memory): refused by the store, A reloads.
  await a.heartbeat(slaveHb(A, 500, { promotable: false, refusedEpoch: 1 }))
  await a.heartbeat(slaveHb(B, 400))
  t.match(a.getGroup('d'), { epoch: 2, address: '' })
  t.same(await a.sweepFailover(), ['d'], 'B is promoted')
  t.match(a.getGroup('d'), { epoch: 3, address: B })
  await b.refresh()
  t.match(b.getGroup('d'), { epoch: 3, address: B })
})

t.test('over HTTP: the field is validated, GroupInfo and `qmq groups` show why', async (t) => {
  const { server, client } = await startWithClient(t)
  await client.heartbeat(masterHb([A, B]))
  await client.heartbeat(slaveHb(A, 500, { promotable: false }))
  await client.heartbeat(slaveHb(B, 400))
  const g = await client.getGroup('d')
  t.match(
    g.servers.find((s) => s.address === A),
    { role: 'slave', notPromotable: CANNOT, replication: { promotable: false } },
  )
  t.equal(g.servers.find((s) => s.address === B)?.notPromotable, undefined)
  const bad = slaveHb(A, 500)
  await t.rejects(
    client.heartbeat({
      ...bad,
      replication: { ...bad.replication!, promotable: 'no' as unknown as boolean },
    }),
    { code: 'QMQ_ERR_INVALID_ARGUMENT' },
  )
  const out = (
    await promisify(execFile)(process.execPath, [QMQ_BIN, 'groups', '--metaserver', server.url], {
      timeout: 60_000,
    })
  ).stdout
  t.match(out, `${A} (NOT PROMOTABLE)`, '`qmq groups` marks it')
  t.match(out, `d: slave ${A} cannot be promoted: ${CANNOT}`, 'and says why')
})
