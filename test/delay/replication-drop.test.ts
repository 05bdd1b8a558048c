import type { Test } from 'tap'
import t from 'tap'
import { silentLogger } from '../../src/common/logger'
import { type DelayOptions, DelayServer } from '../../src/delay/delay-server'
import type { ReplicationFollower } from '../../src/broker/replication/follower'
import type { DelayMirror } from '../../src/delay/replication/mirror'
import { RawClient } from '../helpers/raw-client'
import { DELAY_TEST_SECRET, delayed, FakeSender, send } from './helpers/delay-helpers'
import { freshDir, slaveSeenBy, until } from './helpers/replication-helpers'

/**
 * A delay slave that drops its copy of the derived files (its message-log copy cut below the adopted
 * checkpoint, or another master: mirror.ts `forget`) holds no pending message below its message-log
 * copy's start until it adopted a checkpoint again. It must stop counting as in sync (a promotion
 * candidate) at once, not at its next manifest round: it tells the master right away.
 */

const BASE: Partial<DelayOptions> = {
  port: 0,
  clusterSecret: DELAY_TEST_SECRET,
  bucketMinutes: 1,
  replication: 'sync',
  replicationFetchWaitMs: 50,
  replicationInSyncLagMs: 60_000,
  replicationAckTimeoutMs: 10_000,
}

function server(t: Test, extra: Partial<DelayOptions>): DelayServer {
  const s = new DelayServer(
    { ...BASE, dataDir: freshDir(t, 'delay-drop'), ...extra },
    { logger: silentLogger, sender: new FakeSender(), routes: { groups: async () => [] } },
  )
  t.teardown(() => s.close())
  return s
}

/** A master checkpointing every 100 ms and its slave in sync (manifest rounds every second). */
async function inSyncPair(t: Test): Promise<{
  m: DelayServer
  b: DelayServer
  seen: () => ReturnType<typeof slaveSeenBy>
  mirror: DelayMirror
}> {
  const m = server(t, { checkpointIntervalMs: 100 })
  await m.start()
  // Manifest rounds every second (min(1 s, checkpointIntervalMs)).
  const b = server(t, { role: 'slave', masterAddress: m.address, checkpointIntervalMs: 10_000 })
  await b.start()
  const seen = () => slaveSeenBy(m, b)
  await until('the slave in sync, holding a checkpoint', () => seen()?.inSync === true)
  const mirror = (b as unknown as { mirror: DelayMirror }).mirror
  return { m, b, seen, mirror }
}

t.test(
  'delay mirror drop - the slave is out of sync at once, until it adopted a checkpoint again',
  async (t) => {
    const { m, seen, mirror } = await inSyncPair(t)
    // Right after a round: the next one is a second away.
    const last = mirror.status().adoptedAt
    await until('a round', () => mirror.status().adoptedAt !== last)

    mirror.onMasterChange(m.address, 0)
    t.equal(mirror.status().checkpoint, -1, 'the slave dropped its copy')
    const dropped = Date.now()
    await until('the master counts the slave out of sync', () => seen()?.inSync === false, 5_000)
    const took = Date.now() - dropped
    t.ok(took < 500, `out of sync ${took} ms after the drop (rounds are 1000 ms apart)`)
    t.equal(seen()?.checkpoint, -1, 'the master knows it holds no checkpoint')
    await until('in sync again once it adopted a checkpoint', () => seen()?.inSync === true)
    t.ok((seen()?.checkpoint ?? -1) >= 0)
  },
)

t.test(
  'delay mirror drop - a slave holding no checkpoint and a cut message log refuses promotion',
  async (t) => {
    // No dedupe window: a slave keeps message-log segments past its checkpoint for it (the copy
    // would still start at 0), while this test needs a copy whose start moved past 0.
    const cut = { segmentBytes: 65_536, dedupeWindowMs: 0 }
    // async: these writes need not wait for the slave (its rounds trail the master's checkpoints).
    const m = server(t, { ...cut, checkpointIntervalMs: 100, replication: 'async' })
    await m.start()
    const b = server(t, { ...cut, role: 'slave', masterAddress: m.address, checkpointIntervalMs: 100 })
    await b.start()
    const producer = await RawClient.connect(m.port)
    t.teardown(() => producer.close())
    const far = Date.now() + 3_600_000
    for (let i = 0; i < 40; i++) {
      const batch = Array.from({ length: 100 }, (_, j) => delayed(`m-${i}-${j}`, far, 'order.created'))
      t.same(
        (await send(producer, batch)).map((r) => r.status),
        batch.map(() => 0),
      )
    }
    const follower = (b as unknown as { follower: ReplicationFollower }).follower
    const mirror = (b as unknown as { mirror: DelayMirror }).mirror
    await until('the slave deleted copied segments below its checkpoint', () => follower.copyStart(0) > 0)
    await m.close()
    mirror.onMasterChange('127.0.0.1:1', 0)
    const promote = (b as unknown as { switchRole: (r: 'master' | 'slave', e: number) => Promise<void> })
      .switchRole
    await t.rejects(promote.call(b, 'master', 1), { code: 'QMQ_ERR_NO_IN_SYNC_SLAVE' }, 'promotion refused')
    t.equal(b.currentRole, 'slave', 'still a slave')
  },
)

t.test(
  'delay mirror drop - repeated drops (a failing disk) run one round at once, then back off',
  async (t) => {
    const { m, seen, mirror } = await inSyncPair(t)
    const before = mirror.roundsStarted
    // A drop every 20 ms for 2.5 s: before, each one started a full round at once.
    const end = Date.now() + 2_500
    while (Date.now() < end) {
      mirror.onMasterChange(m.address, 0)
      await new Promise((r) => setTimeout(r, 20))
    }
    const rounds = mirror.roundsStarted - before
    t.ok(rounds <= 4, `${rounds} full rounds during 2.5 s of drops every 20 ms (rounds are 1000 ms apart)`)
    t.equal(seen()?.inSync, false, 'the master counts the slave out of sync meanwhile')
    await until('in sync again once the drops stopped', () => seen()?.inSync === true)
  },
)
