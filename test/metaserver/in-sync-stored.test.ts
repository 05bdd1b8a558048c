import t from 'tap'
import { ManualClock } from '../../src/common/clock'
import { QmqError } from '../../src/common/errors'
import { silentLogger } from '../../src/common/logger'
import type { ServerHeartbeatRequest } from '../../src/common/meta/types'
import { resolveMetaserverOptions } from '../../src/metaserver/options'
import { MetaService } from '../../src/metaserver/service'
import { SqliteMetaStore } from '../../src/metaserver/sqlite-store'
import type { MetaStore } from '../../src/metaserver/store'
import { CLUSTER_SECRET } from './helpers'

/**
 * A master's answered heartbeat tells it the metaserver accepted its in-sync set: it then stops
 * waiting for a slave that left the set. The answer must therefore come only once that set is STORED
 * (promotion picks from the stored report). Here the write of a smaller set fails once: the next
 * heartbeat reporting the same set must write it before it is answered, not be answered from memory.
 */

const A = '127.0.0.1:1002'
const B = '127.0.0.1:1003'

/** The real SQLite store whose next write of a master report fails once when `failNext` is set. */
function failingOnce(store: SqliteMetaStore): { store: MetaStore; failNext: { on: boolean } } {
  const failNext = { on: false }
  const proxy = new Proxy(store, {
    get(target, prop, receiver) {
      const v: unknown = Reflect.get(target, prop, receiver)
      if (prop !== 'recordHeartbeat' || typeof v !== 'function') return v
      return (...args: unknown[]) => {
        if (failNext.on && args[3] !== undefined) {
          failNext.on = false
          return Promise.reject(new QmqError('QMQ_ERR_METASERVER_STORE', 'disk I/O error (test)'))
        }
        return (v as (...a: unknown[]) => unknown).apply(target, args)
      }
    },
  })
  return { store: proxy as MetaStore, failNext }
}

const masterHb = (inSync: string[]): ServerHeartbeatRequest => ({
  group: 'g',
  kind: 'broker',
  role: 'master',
  address: '127.0.0.1:1001',
  replication: { epoch: 0, messageOffset: 0, actionOffset: 0, inSyncSlaves: inSync, replicated: true },
})
const slaveHb = (address: string): ServerHeartbeatRequest => ({
  group: 'g',
  kind: 'broker',
  role: 'slave',
  address,
  replication: { epoch: 0, messageOffset: 0, actionOffset: 0 },
})

t.test('an in-sync set whose write failed is not accepted before it is stored', async (t) => {
  const dir = t.testdir()
  const options = resolveMetaserverOptions({ dataDir: dir, clusterSecret: CLUSTER_SECRET })
  const raw = new SqliteMetaStore(`${dir}/meta.db`)
  t.teardown(() => raw.close())
  const { store, failNext } = failingOnce(raw)
  const clock = new ManualClock()
  const meta = new MetaService(options, store, clock, silentLogger, false)
  await meta.load()
  await meta.heartbeat(masterHb([A, B]))
  await meta.heartbeat(slaveHb(A))
  await meta.heartbeat(slaveHb(B))
  const storedInSync = async () => (await raw.loadAll()).replication.find((r) => r.group === 'g')?.inSync
  t.same(await storedInSync(), [A, B], 'both slaves stored in sync')

  // A leaves the set; storing the smaller set fails: the heartbeat is refused.
  failNext.on = true
  clock.advance(10)
  await t.rejects(meta.heartbeat(masterHb([B])), { code: 'QMQ_ERR_METASERVER_STORE' })
  t.same(await storedInSync(), [A, B], 'the store still holds A in sync')

  // The next heartbeat reports the same set: answered only once it is stored.
  clock.advance(10)
  await meta.heartbeat(masterHb([B]))
  t.same(await storedInSync(), [B], 'the smaller set is stored before the heartbeat is answered')
})
