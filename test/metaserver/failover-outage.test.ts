import t from 'tap'
import { ManualClock } from '../../src/common/clock'
import { QmqError } from '../../src/common/errors'
import { silentLogger } from '../../src/common/logger'
import type { ServerHeartbeatRequest } from '../../src/common/meta/types'
import { resolveMetaserverOptions } from '../../src/metaserver/options'
import { MetaService } from '../../src/metaserver/service'
import { CLUSTER_SECRET } from './helpers'
import { SqliteMetaStore } from '../../src/metaserver/sqlite-store'
import type { MetaStore } from '../../src/metaserver/store'

/**
 * Two metaservers share one store; one loses it for a while. The broker master keeps heartbeating to
 * the other one, so right after the outage the first one's view of the master is stale: it must not
 * promote the slave (two masters).
 */

const TIMEOUT_MS = 10_000

/** A store whose calls fail like an unreachable one while `down` is set (the real SQLite store behind). */
function outageable(store: MetaStore): { store: MetaStore; down: { on: boolean } } {
  const down = { on: false }
  const proxy = new Proxy(store, {
    get(target, prop, receiver) {
      const v: unknown = Reflect.get(target, prop, receiver)
      if (typeof v !== 'function' || prop === 'close') return v
      return (...args: unknown[]) => {
        if (down.on) return Promise.reject(new QmqError('QMQ_ERR_METASERVER_STORE', 'store is down (test)'))
        return (v as (...a: unknown[]) => unknown).apply(target, args)
      }
    },
  })
  return { store: proxy, down }
}

const masterHb = (): ServerHeartbeatRequest => ({
  group: 'g',
  kind: 'broker',
  role: 'master',
  address: '127.0.0.1:1001',
  replication: {
    epoch: 0,
    messageOffset: 0,
    actionOffset: 0,
    inSyncSlaves: ['127.0.0.1:1002'],
    replicated: true,
  },
})
const slaveHb = (): ServerHeartbeatRequest => ({
  group: 'g',
  kind: 'broker',
  role: 'slave',
  address: '127.0.0.1:1002',
  replication: { epoch: 0, messageOffset: 0, actionOffset: 0 },
})

t.test('a metaserver holding liveness after a store outage does not promote a slave', async (t) => {
  const dir = t.testdir()
  const options = resolveMetaserverOptions({
    dataDir: dir,
    heartbeatTimeoutMs: TIMEOUT_MS,
    clusterSecret: CLUSTER_SECRET,
  })
  const file = `${dir}/meta.db`
  const rawA = new SqliteMetaStore(file)
  const storeB = new SqliteMetaStore(file)
  t.teardown(() => Promise.all([rawA.close(), storeB.close()]))
  const { store: storeA, down } = outageable(rawA)
  const clock = new ManualClock()
  const a = new MetaService(options, storeA, clock, silentLogger, false)
  await a.load()
  await a.heartbeat(masterHb())
  await a.heartbeat(slaveHb())
  const b = new MetaService(options, storeB, clock, silentLogger, false)
  await b.load()

  // A loses the store; the master heartbeats to B, the slave to A (answered from memory).
  down.on = true
  for (let i = 0; i < 4; i++) {
    clock.advance(TIMEOUT_MS / 4)
    await b.heartbeat(masterHb())
    await a.heartbeat(slaveHb())
  }
  t.same(await a.sweepFailover(), [], 'nothing promoted while the store is down')
  // The store is back: A's next write succeeds; its view of the master is TIMEOUT_MS + 1 old.
  down.on = false
  clock.advance(1)
  await a.heartbeat(slaveHb())
  await b.heartbeat(masterHb())
  t.same(await a.sweepFailover(), [], 'nothing promoted while liveness is held after the outage')
  const snap = await storeB.loadAll()
  t.same(
    snap.epochs.filter((e) => e.epoch > 0),
    [],
    'the epoch did not move',
  )
  t.same(
    snap.servers.map((s) => [s.role, s.address]).sort(),
    [
      ['master', '127.0.0.1:1001'],
      ['slave', '127.0.0.1:1002'],
    ],
    'one master: the one heartbeating to the other metaserver',
  )
  t.same(await b.sweepFailover(), [], 'the metaserver hearing the master promotes nothing either')
})
