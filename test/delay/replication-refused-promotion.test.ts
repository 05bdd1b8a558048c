import type { Test } from 'tap'
import t from 'tap'
import type { ReplicationFollower } from '../../src/broker/replication/follower'
import { createLogger, silentLogger } from '../../src/common/logger'
import type { MetaClient } from '../../src/common/meta/meta-client'
import type { GroupInfo } from '../../src/common/meta/types'
import { type DelayOptions, DelayServer } from '../../src/delay/delay-server'
import type { DelayMirror } from '../../src/delay/replication/mirror'
import { RawClient } from '../helpers/raw-client'
import { holdsLease, startReplicationMetaserver } from '../helpers/replication'
import { DELAY_TEST_SECRET, delayed, FakeSender, send } from './helpers/delay-helpers'
import { FAST_REPLICATION, freshDir, until } from './helpers/replication-helpers'

/**
 * A delay slave that cannot be promoted (no adopted checkpoint, its message-log copy starting past 0:
 * as master it would lose pending messages) must not leave its group stuck. It says so in its
 * heartbeats, so the metaserver promotes another slave; and when a promotion was decided before the
 * metaserver heard it (a race), it refuses it and reports the refused epoch, which the metaserver
 * gives up: another in-sync slave is promoted, or the former master coming back serves again.
 * Before, the refusing slave kept the recorded "master" alive for ever: nothing was promoted, and the
 * former master coming back was told to be its slave.
 */

const TOKEN = 'delay-refused-admin-token'
const GROUP = 'dr'

/**
 * No dedupe window (a slave keeps message-log segments past its checkpoint for it, and the copy would
 * still start at 0), async replication (writes need not wait for the slaves' rounds).
 */
const CUT: Partial<DelayOptions> = {
  ...FAST_REPLICATION,
  segmentBytes: 65_536,
  dedupeWindowMs: 0,
  replication: 'async',
  replicationInSyncLagMs: 60_000,
  group: GROUP,
}

function server(t: Test, dir: string, meta: string, extra: Partial<DelayOptions> = {}): DelayServer {
  const s = new DelayServer(
    { ...CUT, dataDir: dir, metaserver: meta, ...extra },
    {
      logger: process.env.DEBUG_REPL
        ? createLogger({ level: 'info', destination: process.stderr })
        : silentLogger,
      sender: new FakeSender(),
      routes: { groups: async () => [] },
    },
  )
  t.teardown(() => s.close())
  return s
}

function internals(s: DelayServer): { follower: ReplicationFollower; mirror: DelayMirror } {
  return s as unknown as { follower: ReplicationFollower; mirror: DelayMirror }
}

/** Drops the slave's copy of the derived files (as following another master does: mirror.ts `forget`). */
function dropCopy(s: DelayServer): void {
  internals(s).mirror.onMasterChange('127.0.0.1:1', 0)
}

/** The slave drops its copy just before acting on a promotion: the metaserver decided it before. */
function dropOnPromotion(s: DelayServer): void {
  const inner = s as unknown as { switchRole(role: 'master' | 'slave', epoch: number): Promise<void> }
  const real = inner.switchRole.bind(s)
  inner.switchRole = (role, epoch) => {
    if (role === 'master') dropCopy(s)
    return real(role, epoch)
  }
}

/**
 * A master with `slaves` slaves, all in sync as the metaserver stored it, every slave's message-log
 * copy starting past 0 (the master checkpointed and the slaves deleted copied segments below it).
 */
async function group(
  t: Test,
  slaves: number,
): Promise<{ admin: MetaClient; meta: string; m: DelayServer; mDir: string; s: DelayServer[] }> {
  const { meta, admin } = await startReplicationMetaserver(t, {
    dataDir: freshDir(t, 'refused-meta'),
    clusterSecret: DELAY_TEST_SECRET,
    adminToken: TOKEN,
    heartbeatTimeoutMs: 2_000,
  })
  const mDir = freshDir(t, 'refused-m')
  const m = server(t, mDir, meta.url)
  await m.start()
  const s: DelayServer[] = []
  for (let i = 0; i < slaves; i++) {
    const slave = server(t, freshDir(t, `refused-s${i}`), meta.url, { role: 'slave', httpPort: 0 })
    await slave.start()
    s.push(slave)
  }
  const producer = await RawClient.connect(m.port)
  const far = Date.now() + 3_600_000
  let refused = 0
  for (let i = 0; i < 40; i++) {
    const batch = Array.from({ length: 100 }, (_, j) => delayed(`m-${i}-${j}`, far, 'order.created'))
    refused += (await send(producer, batch)).filter((r) => r.status !== 0).length
  }
  t.equal(refused, 0, '4000 messages stored')
  await producer.close()
  for (const slave of s)
    await until(
      'the slave deleted copied segments below its checkpoint',
      () => internals(slave).follower.copyStart(0) > 0,
    )
  const end = m.store.messageSegmentLog?.endOffset ?? 0
  await until('every slave in sync with the whole log, as the metaserver stored it', async () => {
    const g = await admin.getGroup(GROUP)
    const master = g.servers.find((x) => x.role === 'master')
    return s.every(
      (slave) =>
        master?.replication?.inSyncSlaves?.includes(slave.address) === true &&
        g.servers.find((x) => x.address === slave.address)?.replication?.messageOffset === end,
    )
  })
  return { admin, meta: meta.url, m, mDir, s }
}

/** The slave the metaserver promotes first: the most data (all equal here), then the lowest address. */
function preferred(s: DelayServer[]): [DelayServer, DelayServer] {
  const [x, y] = s as [DelayServer, DelayServer]
  return x.address < y.address ? [x, y] : [y, x]
}

async function health(s: DelayServer): Promise<{ replication: Record<string, unknown> }> {
  const res = await fetch(`http://127.0.0.1:${s.httpPort}/health`)
  return (await res.json()) as { replication: Record<string, unknown> }
}

function serverInfo(g: GroupInfo, s: DelayServer): GroupInfo['servers'][number] | undefined {
  return g.servers.find((x) => x.address === s.address)
}

t.test(
  'refused promotion - the only slave refuses: the group is not stuck, the former master serves again',
  async (t) => {
    const { admin, meta, m, mDir, s } = await group(t, 1)
    const slave = s[0] as DelayServer
    dropOnPromotion(slave)
    await m.close({ offline: false }) // killed: silent, no offline heartbeat
    await until(
      'the metaserver promoted the slave (epoch 1)',
      async () => (await admin.getGroup(GROUP)).epoch >= 1,
    )
    // Before, the refusing slave kept the recorded master (itself) alive and nothing else happened.
    await until('the refused epoch given up: no master recorded', async () => {
      const g = await admin.getGroup(GROUP)
      return g.epoch === 2 && g.address === '' && !g.alive
    })
    t.equal(slave.currentRole, 'slave', 'the slave refused its promotion')
    t.match((await health(slave)).replication, { promotable: false, refusedEpoch: 1 })

    // The former master comes back (another port): it must serve, not be told to follow the refuser.
    const back = server(t, mDir, meta)
    await back.start()
    await until(
      'the former master serving',
      async () => {
        const g = await admin.getGroup(GROUP)
        return back.currentRole === 'master' && holdsLease(back) && g.alive && g.address === back.address
      },
      10_000,
    )
    const g = await admin.getGroup(GROUP)
    t.equal(g.epoch, 2, 'epoch 1 given up: the group is at epoch 2')
    const producer = await RawClient.connect(back.port)
    t.teardown(() => producer.close())
    const later = [delayed('after-refusal', Date.now() + 3_600_000, 'order.created')]
    t.same(
      (await send(producer, later)).map((r) => r.status),
      [0],
      'the former master acknowledges writes',
    )
    t.equal(slave.currentRole, 'slave', 'the refusing server stays a slave')
    // It follows the former master, adopts a checkpoint, and can be promoted again.
    await until('the slave promotable again', async () => {
      const info = serverInfo(await admin.getGroup(GROUP), slave)
      return info?.role === 'slave' && info.notPromotable === undefined
    })
    t.match((await health(slave)).replication, { role: 'slave', promotable: true, refusedEpoch: 1 })
  },
)

t.test('refused promotion - a slave that said it cannot be promoted is skipped', async (t) => {
  const { admin, m, s } = await group(t, 2)
  const [first, other] = preferred(s)
  await m.close({ offline: false })
  dropCopy(first)
  t.match(
    (await health(first)).replication,
    { role: 'slave', promotable: false, notPromotableReason: /no checkpoint/ },
    "the slave's /health says why",
  )
  // Read before the other slave is promoted (the first then follows it and can be promoted again).
  let said: string | undefined
  await until('the metaserver knows the first cannot be promoted', async () => {
    said = serverInfo(await admin.getGroup(GROUP), first)?.notPromotable
    return said !== undefined
  })
  t.match(said, /no checkpoint/, 'GroupInfo says why')
  await until('the other slave promoted', () => other.currentRole === 'master', 10_000)
  const g = await admin.getGroup(GROUP)
  t.match(g, { epoch: 1, address: other.address })
  t.equal(first.currentRole, 'slave')
  t.equal((await health(first)).replication.refusedEpoch, 0, 'it was never asked')
})

t.test('refused promotion - decided before the slave said so: the other slave is promoted', async (t) => {
  const { admin, m, s } = await group(t, 2)
  const [first, other] = preferred(s)
  dropOnPromotion(first)
  await m.close({ offline: false })
  await until('the other slave promoted', () => other.currentRole === 'master', 15_000)
  const g = await admin.getGroup(GROUP)
  t.match(g, { epoch: 3, address: other.address }, 'epoch 1 (refused) given up, the other promoted at 3')
  t.equal(first.currentRole, 'slave', 'the first refused')
  t.equal((await health(first)).replication.refusedEpoch, 1)
  const producer = await RawClient.connect(other.port)
  t.teardown(() => producer.close())
  await until('the promoted slave holds its lease', () => holdsLease(other))
  t.same(
    (await send(producer, [delayed('after', Date.now() + 3_600_000, 'order.created')])).map((r) => r.status),
    [0],
    'the promoted slave acknowledges writes',
  )
})
