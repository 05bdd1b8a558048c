import t from 'tap'
import { ManualClock } from '../../src/common/clock'
import { QmqError } from '../../src/common/errors'
import { silentLogger } from '../../src/common/logger'
import { MetaHeartbeat } from '../../src/broker/server/meta-heartbeat'
import type { ServerHeartbeatRequest } from '../../src/common/meta/types'
import { HEARTBEAT_TIMEOUT_MS, STORE_KINDS, freshLocation, startWithClient } from './helpers'

/**
 * A master's in-sync reports are ordered by its reportSeq (ServerReplication): a very late retry of
 * an older heartbeat must not replace the newer in-sync set the metaserver stored (the master stopped
 * waiting for the slaves that left it, so promoting one of them could lose acknowledged writes). It is
 * refused (QMQ_ERR_STALE_REPORT) and the store keeps the newer set, which is what promotion picks from
 * (here: after a restart of the metaserver, from the store alone). Reports without reportSeq (older
 * servers) are still taken in arrival order.
 */

const MASTER = '127.0.0.1:1001'
const A = '127.0.0.1:1002'
const B = '127.0.0.1:1003'

function masterHb(inSync: string[], reportSeq?: number): ServerHeartbeatRequest {
  return {
    group: 'g',
    kind: 'broker',
    role: 'master',
    address: MASTER,
    replication: {
      epoch: 0,
      messageOffset: 500,
      actionOffset: 50,
      inSyncSlaves: inSync,
      replicated: true,
      ...(reportSeq !== undefined ? { reportSeq } : {}),
    },
  }
}

function slaveHb(address: string, offset: number): ServerHeartbeatRequest {
  return {
    group: 'g',
    kind: 'broker',
    role: 'slave',
    address,
    replication: { epoch: 0, messageOffset: offset, actionOffset: 40, lagBytes: 0, lagMs: 0 },
  }
}

for (const kind of STORE_KINDS) {
  t.test(`${kind}: a late retry of an older in-sync report is refused and changes nothing`, async (t) => {
    const clock = new ManualClock()
    const location = await freshLocation(t, kind)
    const first = await startWithClient(t, { location, clock })
    const c = first.client
    // B holds more than A: promotion would pick B if it were in the stored set.
    await c.heartbeat(slaveHb(A, 400))
    await c.heartbeat(slaveHb(B, 450))
    await c.heartbeat(masterHb([A, B], 1_000))
    clock.advance(100)
    await c.heartbeat(masterHb([A], 2_000))
    // The same report again (a retry of the newest one) is fine.
    await c.heartbeat(masterHb([A], 2_000))
    clock.advance(100)
    // The first heartbeat again (a retry that arrives very late).
    const late = await c.heartbeat(masterHb([A, B], 1_000)).then(
      () => undefined,
      (err: unknown) => err,
    )
    t.ok(late instanceof QmqError && late.code === 'QMQ_ERR_STALE_REPORT', 'the older report is refused')
    const shown = (await c.getGroup('g')).servers.find((s) => s.role === 'master')
    t.same(shown?.replication?.inSyncSlaves, [A], 'the group shows the newer in-sync set')

    // The metaserver restarts from its store while the master is gone: it promotes from the stored set.
    await first.client.close()
    await first.server.close()
    clock.advance(HEARTBEAT_TIMEOUT_MS + 1)
    const second = await startWithClient(t, { location, clock })
    await second.client.heartbeat(slaveHb(A, 400))
    await second.client.heartbeat(slaveHb(B, 450))
    t.same(await second.server.service.sweepFailover(), ['g'], 'the group fails over')
    t.match(
      second.server.service.getGroup('g'),
      { epoch: 1, address: A },
      'A, of the stored set, is promoted',
    )
  })
}

t.test('reports without reportSeq (older servers) are taken in arrival order', async (t) => {
  const clock = new ManualClock()
  const { client: c } = await startWithClient(t, { clock })
  await c.heartbeat(masterHb([A, B]))
  clock.advance(100)
  await c.heartbeat(masterHb([A]))
  clock.advance(100)
  await c.heartbeat(masterHb([A, B]))
  const shown = (await c.getGroup('g')).servers.find((s) => s.role === 'master')
  t.same(shown?.replication?.inSyncSlaves, [A, B], 'the last one to arrive')
  // A master that starts sending reportSeq (upgraded) is ordered from then on.
  clock.advance(100)
  await c.heartbeat(masterHb([A], 5_000))
  await t.rejects(c.heartbeat(masterHb([A, B], 4_000)), { code: 'QMQ_ERR_STALE_REPORT' })
})

t.test('postgres, two metaservers: the store refuses a report older than one the other stored', async (t) => {
  const clock = new ManualClock()
  const location = await freshLocation(t, 'postgres')
  const one = await startWithClient(t, { location, clock })
  const two = await startWithClient(t, { location, clock })
  await one.client.heartbeat(masterHb([A, B], 1_000))
  await two.server.service.refresh()
  clock.advance(100)
  await one.client.heartbeat(masterHb([A], 2_000))
  clock.advance(100)
  // The late retry reaches the other metaserver, whose memory has not seen the newer report.
  await t.rejects(two.client.heartbeat(masterHb([A, B], 1_000)), { code: 'QMQ_ERR_STALE_REPORT' })
  const shown = (await one.client.getGroup('g')).servers.find((x) => x.role === 'master')
  t.same(shown?.replication?.inSyncSlaves, [A], 'the newer in-sync set stays')
  // The master goes silent; the slaves heartbeat to the metaserver that got the late retry, which
  // promotes from the stored set (B holds more, but is not in it).
  clock.advance(HEARTBEAT_TIMEOUT_MS + 1)
  await two.client.heartbeat(slaveHb(A, 400))
  await two.client.heartbeat(slaveHb(B, 450))
  await two.server.service.refresh()
  t.same(await two.server.service.sweepFailover(), ['g'], 'the group fails over')
  t.match(two.server.service.getGroup('g'), { epoch: 1, address: A }, 'A, of the stored set, is promoted')
})

t.test('a master whose reportSeq is behind the stored one (its clock went back) catches up', async (t) => {
  const { client: c } = await startWithClient(t)
  // An earlier run of the master reported with a clock an hour ahead.
  await c.heartbeat(masterHb([A], Date.now() + 3_600_000))
  const answers: number[] = []
  const hb = new MetaHeartbeat(
    c,
    {
      group: 'g',
      role: 'master',
      address: MASTER,
      httpAddress: undefined,
      intervalMs: 60_000,
      load: () => ({}),
      onReadOnly: () => {},
      replication: () => ({
        epoch: 0,
        messageOffset: 500,
        actionOffset: 50,
        inSyncSlaves: [],
        replicated: true,
      }),
      onAnswer: (_res, sentAt) => answers.push(sentAt),
    },
    silentLogger,
  )
  t.teardown(() => hb.stop(false))
  await hb.start()
  const deadline = Date.now() + 10_000
  while (answers.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10))
  t.equal(answers.length, 1, 'its report is accepted after it jumped past the stored one')
  const shown = (await c.getGroup('g')).servers.find((s) => s.role === 'master')
  t.same(shown?.replication?.inSyncSlaves, [], 'its current in-sync set is stored')
})
