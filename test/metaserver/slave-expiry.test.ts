import t from 'tap'
import { isQmqError } from '../../src/common/errors'
import { MetaClient } from '../../src/common/meta/meta-client'
import type { GroupInfo, ServerHeartbeatRequest } from '../../src/common/meta/types'
import { CLUSTER_SECRET, HEARTBEAT_TIMEOUT_MS, hb, STORE_KINDS, startWithClient } from './helpers'

/**
 * A slave gone for good leaves its group: not heard from for slaveExpiryMs its row is deleted (in the
 * store, so every metaserver sharing it and every restart agrees), or an admin removes it at once
 * (`qmq remove-slave`), which is refused while it is alive.
 */

const EXPIRY_MS = 60_000

function slave(port: number, state: 'online' | 'offline' = 'online'): ServerHeartbeatRequest {
  return {
    ...hb('g', port),
    role: 'slave',
    state,
    replication: { epoch: 0, messageOffset: 10, actionOffset: 1, lagBytes: 0, lagMs: 0 },
  }
}

function slaves(g: GroupInfo): string[] {
  return g.servers
    .filter((s) => s.role === 'slave')
    .map((s) => s.address)
    .sort()
}

for (const kind of STORE_KINDS) {
  t.test(`slave expiry [${kind}] - slaves not heard from for slaveExpiryMs leave the group`, async (t) => {
    const { server, client, clock, location } = await startWithClient(t, {
      kind,
      extra: { slaveExpiryMs: EXPIRY_MS },
    })
    await client.heartbeat(hb('g', 1000))
    await client.heartbeat(slave(1001))
    await client.heartbeat(slave(1002))
    clock.advance(30_000)
    // 1002 stops cleanly: its last-seen is 0 but it was heard from now.
    await client.heartbeat(slave(1002, 'offline'))
    await client.heartbeat(hb('g', 1000))
    const before = await client.getGroup('g')
    t.same(slaves(before), ['127.0.0.1:1001', '127.0.0.1:1002'])
    t.match(
      before.servers.find((s) => s.address === '127.0.0.1:1002'),
      { alive: false, lastSeenAt: 0, lastHeardAt: clock.now() },
      "an 'offline' slave: when it was last heard from",
    )

    clock.advance(EXPIRY_MS - 29_000)
    await server.sweep()
    t.same(slaves(await client.getGroup('g')), ['127.0.0.1:1002'], '1001 silent for 61 s is gone')
    clock.advance(30_000)
    await client.heartbeat(hb('g', 1000))
    await server.sweep()
    t.same(slaves(await client.getGroup('g')), [], '1002 too, 60 s after its offline heartbeat')
    t.equal((await client.getGroup('g')).address, '127.0.0.1:1000', 'the master stays')

    // Stored: a metaserver started on the same store does not list them either.
    await server.close()
    const again = await startWithClient(t, { location, clock, extra: { slaveExpiryMs: EXPIRY_MS } })
    t.same(slaves(await again.client.getGroup('g')), [])
    // A slave that comes back is listed again.
    await again.client.heartbeat(slave(1001))
    t.same(slaves(await again.client.getGroup('g')), ['127.0.0.1:1001'])
  })

  t.test(
    `slave expiry [${kind}] - qmq remove-slave: an admin forgets a slave that is not alive`,
    async (t) => {
      const { server, client, clock, location } = await startWithClient(t, { kind })
      await client.heartbeat(hb('g', 1000))
      await client.heartbeat(slave(1001))
      // Another metaserver on the same store (it reloads from it).
      const other = await startWithClient(t, { location, clock })
      await other.server.service.refresh()
      t.same(slaves(await other.client.getGroup('g')), ['127.0.0.1:1001'])
      const anonymous = new MetaClient({ url: server.url, clusterSecret: CLUSTER_SECRET })
      t.teardown(() => anonymous.close())
      await t.rejects(
        anonymous.removeSlave('g', '127.0.0.1:1001'),
        { code: 'QMQ_ERR_UNAUTHORIZED' },
        'token needed',
      )
      await t.rejects(
        client.removeSlave('g', '127.0.0.1:1001'),
        { code: 'QMQ_ERR_GROUP_ACTIVE' },
        'an alive slave is not removed (it would come back with its next heartbeat)',
      )
      clock.advance(HEARTBEAT_TIMEOUT_MS + 1)
      await client.heartbeat(hb('g', 1000))
      const g = await client.removeSlave('g', '127.0.0.1:1001')
      t.same(slaves(g), [], 'removed')
      t.same(slaves(await client.getGroup('g')), [])
      await other.server.service.refresh()
      t.same(slaves(await other.client.getGroup('g')), [], 'the other metaserver forgets it on its reload')
      const err = await client.removeSlave('g', '127.0.0.1:1001').catch((e: unknown) => e)
      t.ok(isQmqError(err) && err.code === 'QMQ_ERR_NOT_FOUND', 'a second removal: unknown')
      const none = await client.removeSlave('nope', '127.0.0.1:1').catch((e: unknown) => e)
      t.ok(isQmqError(none) && none.code === 'QMQ_ERR_NOT_FOUND', 'unknown group')
    },
  )
}
