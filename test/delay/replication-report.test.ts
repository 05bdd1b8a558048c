import path from 'node:path'
import t from 'tap'
import { silentLogger } from '../../src/common/logger'
import { type DelayOptions, DelayServer } from '../../src/delay/delay-server'
import { Metaserver, SqliteMetaStore } from '../../src/metaserver/main'
import { RawClient } from '../helpers/raw-client'
import { cancel, DELAY_TEST_SECRET, delayed, FakeSender, send } from './helpers/delay-helpers'
import { freshDir as freshDirNamed, until as untilEvery } from './helpers/replication-helpers'

/**
 * The delay group's side of the in-sync report rule (docs/replication.md, "Which acknowledgements
 * count"): a slave that leaves the master's in-sync set is still waited for, by SENDs and CANCELs,
 * until the metaserver has stored a report without it (it could be promoted until then). The
 * metaserver's real SQLite store is watched: each master report is stored late (held) and recorded.
 */

const HOLD_MS = 400

const FAST: Partial<DelayOptions> = {
  port: 0,
  clusterSecret: DELAY_TEST_SECRET,
  group: 'd1',
  bucketMinutes: 1,
  checkpointIntervalMs: 100,
  replication: 'sync',
  replicationFetchWaitMs: 50,
  replicationInSyncLagMs: 1_000,
  replicationAckTimeoutMs: 10_000,
}

const freshDir = (t: Parameters<typeof freshDirNamed>[0]) => freshDirNamed(t, 'delay-report')
const until = (what: string, cond: () => boolean, timeoutMs = 20_000) => untilEvery(what, cond, timeoutMs, 20)

t.test(
  'delay in-sync report - SENDs and CANCELs wait for a leaving slave until the metaserver stored a report without it',
  async (t) => {
    const store = new SqliteMetaStore(path.join(freshDir(t), 'meta.db'))
    const reports: string[][] = []
    const record = store.recordHeartbeat.bind(store)
    store.recordHeartbeat = async (group, server, epoch, report) => {
      if (report !== undefined) await new Promise((r) => setTimeout(r, HOLD_MS))
      const res = await record(group, server, epoch, report)
      if (report !== undefined && res.written) reports.push([...report.inSync])
      return res
    }
    const stored = () => reports.at(-1)
    const meta = new Metaserver(
      {
        port: 0,
        dataDir: freshDir(t),
        clusterSecret: DELAY_TEST_SECRET,
        heartbeatIntervalMs: 1_000,
        heartbeatTimeoutMs: 20_000,
      },
      { logger: silentLogger, store },
    )
    await meta.start()
    t.teardown(() => meta.close())
    const server = (extra: Partial<DelayOptions>) => {
      const s = new DelayServer(
        { ...FAST, dataDir: freshDir(t), metaserver: meta.url, ...extra },
        { logger: silentLogger, sender: new FakeSender(), routes: { groups: async () => [] } },
      )
      t.teardown(() => s.close())
      return s
    }
    const m = server({})
    await m.start()
    const a = server({ role: 'slave' })
    const b = server({ role: 'slave' })
    await a.start()
    await b.start()
    const both = [a.address, b.address].sort().join()
    await until('the stored report names both slaves in sync', () => stored()?.slice().sort().join() === both)

    const producer = await RawClient.connect(m.port)
    t.teardown(() => producer.close())
    const far = Date.now() + 3_600_000
    t.same(
      (await send(producer, [delayed('before', far)])).map((r) => r.status),
      [0],
    )

    await b.close({ offline: false })
    const deadline = Date.now() + 3_000
    let acked = 0
    let early = 0
    for (let i = 0; Date.now() < deadline; i++) {
      const sent = await send(producer, [delayed(`after-${i}`, far)]).catch(() => [])
      if (sent[0]?.status === 0) {
        acked++
        if (stored()?.includes(b.address) !== false) early++
      }
      const cancelled = await cancel(producer, [`after-${i}`]).catch(() => [])
      if (cancelled[0] === true) {
        acked++
        if (stored()?.includes(b.address) !== false) early++
      }
    }
    t.equal(
      early,
      0,
      'no SEND or CANCEL acknowledged while the metaserver could still promote the stalled slave',
    )
    t.ok(acked > 0, `writes go on once the report without it is stored (${acked} acknowledged)`)
    t.notOk(stored()?.includes(b.address), 'the stored in-sync set no longer names the stalled slave')
  },
)
