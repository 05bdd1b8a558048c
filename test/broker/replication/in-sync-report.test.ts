import path from 'node:path'
import type { Test } from 'tap'
import t from 'tap'
import { Broker, type BrokerOptions } from '../../../src/broker/broker'
import { silentLogger } from '../../../src/common/logger'
import { Metaserver, SqliteMetaStore } from '../../../src/metaserver/main'
import { RawClient } from '../../helpers/raw-client'
import { tempDir, waitUntil } from '../../helpers/replication'
import { message, send } from '../server/ops'

/**
 * Under `sync` the metaserver promotes only a slave the master's last stored report names in sync.
 * A slave that leaves the master's in-sync set (it stopped fetching) must therefore be waited for
 * until the metaserver has STORED a report without it: acknowledging without it earlier would lose
 * those writes if the master died and that slave were promoted. The metaserver's store here is the
 * real SQLite store, watched: each master report is stored late (held), and its storing is recorded.
 */

const SECRET = 'replication-in-sync-report-test-secret'
const HOLD_MS = 400

const BASE: Partial<BrokerOptions> = {
  port: 0,
  httpPort: -1,
  clusterSecret: SECRET,
  group: 'g1',
  replication: 'sync',
  replicationInSyncLagMs: 1_000,
  replicationAckTimeoutMs: 10_000,
  replicationFetchWaitMs: 50,
  checkpointIntervalMs: 3_600_000,
}

function freshDir(t: Test): string {
  return tempDir(t, 'qmq-repl-report-')
}

function until(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  return waitUntil(what, cond, timeoutMs, 20)
}

/** A metaserver whose store records (and holds for HOLD_MS) every master report of group g1. */
async function watchedMetaserver(t: Test): Promise<{ meta: Metaserver; stored: () => string[] | undefined }> {
  const store = new SqliteMetaStore(path.join(freshDir(t), 'meta.db'))
  const reports: string[][] = []
  const record = store.recordHeartbeat.bind(store)
  store.recordHeartbeat = async (group, server, epoch, report) => {
    if (report !== undefined) await new Promise((r) => setTimeout(r, HOLD_MS))
    const res = await record(group, server, epoch, report)
    if (report !== undefined && res.written) reports.push([...report.inSync])
    return res
  }
  const meta = new Metaserver(
    {
      port: 0,
      dataDir: freshDir(t),
      clusterSecret: SECRET,
      heartbeatIntervalMs: 1_000,
      heartbeatTimeoutMs: 20_000,
    },
    { logger: silentLogger, store },
  )
  await meta.start()
  t.teardown(() => meta.close())
  return { meta, stored: () => reports.at(-1) }
}

t.test(
  'in-sync report - a slave that leaves the in-sync set is waited for until the metaserver stored a report without it',
  async (t) => {
    const { meta, stored } = await watchedMetaserver(t)
    const brokers: Broker[] = []
    const broker = (extra: Partial<BrokerOptions>) => {
      const b = new Broker(
        { ...BASE, dataDir: freshDir(t), metaserver: meta.url, ...extra },
        { logger: silentLogger },
      )
      brokers.push(b)
      t.teardown(() => b.close())
      return b
    }
    const master = broker({ flush: 'sync' })
    await master.start()
    const a = broker({ role: 'slave' })
    const b = broker({ role: 'slave' })
    await a.start()
    await b.start()
    const both = [a.addresses.address, b.addresses.address].sort()
    await until(
      'the stored report names both slaves in sync',
      () => stored()?.slice().sort().join() === both.join(),
    )

    const producer = await RawClient.connect(master.addresses.port)
    t.teardown(() => producer.close())
    t.same(await send(producer, [message('s', 'before')]), [{ status: 0, message: '' }])

    // B stalls for good (its process stops; it stays registered, alive as far as the metaserver knows
    // until the heartbeat timeout).
    const bAddress = b.addresses.address
    await b.close({ offline: false })

    // Every SEND from now on lacks B. Each one acknowledged must be acknowledged only once the stored
    // report no longer names B.
    const deadline = Date.now() + 3_000
    let acked = 0
    let early = 0
    for (let i = 0; Date.now() < deadline; i++) {
      const res = await send(producer, [message('s', `after-${i}`, Buffer.alloc(100, i))])
      if (res[0]?.status !== 0) continue
      acked++
      if (stored()?.includes(bAddress) !== false) early++
    }
    t.equal(early, 0, 'no SEND acknowledged while the metaserver could still promote the stalled slave')
    t.ok(
      acked > 0,
      `writes go on once the report without the stalled slave is stored (${acked} acknowledged)`,
    )
    t.notOk(stored()?.includes(bAddress), 'the stored in-sync set no longer names the stalled slave')
  },
)
