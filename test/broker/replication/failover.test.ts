import fs from 'node:fs'
import path from 'node:path'
import type { Test } from 'tap'
import t from 'tap'
import { Broker, type BrokerOptions } from '../../../src/broker/broker'
import { silentLogger } from '../../../src/common/logger'
import { RawClient } from '../../helpers/raw-client'
import { startReplicationMetaserver, tempDir, waitUntil, writeEpochOneAtEnd } from '../../helpers/replication'
import { ack, message, pull, sendOk } from '../server/ops'

const SECRET = 'failover-test-cluster-secret-0123'
const TOKEN = 'failover-admin-token'

const FAST: Partial<BrokerOptions> = {
  port: 0,
  httpPort: -1,
  clusterSecret: SECRET,
  heartbeatIntervalMs: 100,
  replicationInSyncLagMs: 1_500,
  replicationAckTimeoutMs: 3_000,
  replicationFetchWaitMs: 100,
  checkpointIntervalMs: 200,
  segmentBytes: 16 * 1024,
}

function freshDir(t: Test): string {
  return tempDir(t, 'qmq-failover-')
}

function until(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  return waitUntil(what, cond, timeoutMs, 25)
}

function broker(t: Test, extra: Partial<BrokerOptions>): Broker {
  const b = new Broker({ ...FAST, dataDir: freshDir(t), ...extra }, { logger: silentLogger })
  t.teardown(() => b.close())
  return b
}

function ends(b: Broker): { m: number; a: number } {
  const s = b.messageStore as unknown as {
    mlog: { log: { endOffset: number } }
    alog: { log: { endOffset: number } }
  }
  return { m: s.mlog.log.endOffset, a: s.alog.log.endOffset }
}

function caughtUp(master: Broker, slave: Broker): boolean {
  const s = slave.replicationStatus()
  if (!('slave' in s) || !master.isRunning || master.currentRole !== 'master') return false
  const e = ends(master)
  return s.slave.messageOffset === e.m && s.slave.actionOffset === e.a
}

/**
 * The copy holds the master's bytes: equal, or (the master's active segment, which a checkpoint timer
 * may have grown since the copy caught up) a prefix of them.
 */
function samePrefix(master: Buffer, copy: Buffer | undefined): boolean {
  return copy !== undefined && copy.length <= master.length && master.subarray(0, copy.length).equals(copy)
}

function segmentFiles(dir: string): Map<string, Buffer> {
  const out = new Map<string, Buffer>()
  for (const name of fs.readdirSync(dir).sort()) out.set(name, fs.readFileSync(path.join(dir, name)))
  return out
}

t.test(
  'failover - a silent master is replaced by its in-sync slave, then rejoins as its slave',
  async (t) => {
    const { meta, admin } = await startReplicationMetaserver(t, {
      dataDir: freshDir(t),
      clusterSecret: SECRET,
      adminToken: TOKEN,
      heartbeatTimeoutMs: 3_000,
    })

    const a = broker(t, { group: 'g1', metaserver: meta.url })
    const b = broker(t, { group: 'g1', role: 'slave', metaserver: meta.url })
    await a.start()
    await b.start()
    await until('slave caught up', () => caughtUp(a, b))

    const ca = await RawClient.connect(a.addresses.port)
    for (let i = 0; i < 20; i++) await sendOk(ca, [message('orders', `m-${i}`, Buffer.alloc(500, i))])
    const got = await pull(ca, { subject: 'orders', group: 'cg', consumerId: 'c1', maxMessages: 8 })
    await ack(ca, { subject: 'orders', group: 'cg', consumerId: 'c1', sequences: got.map((x) => x.sequence) })
    await ca.close()
    await until('slave caught up', () => caughtUp(a, b))
    await until('metaserver knows the slave is in sync', async () => {
      const g = await admin.getGroup('g1')
      const master = g.servers.find((s) => s.role === 'master')
      return master?.replication?.inSyncSlaves?.includes(b.addresses.address) === true
    })

    // The master goes silent (no 'offline'): after the heartbeat timeout the slave is promoted.
    const oldAddress = a.addresses.address
    await a.close({ offline: false })
    await until('slave promoted', () => b.isRunning && b.currentRole === 'master')
    const g = await admin.getGroup('g1')
    t.equal(g.epoch, 1, 'epoch 1')
    t.equal(g.failovers, 1)
    t.equal(g.address, b.addresses.address, 'routes point at the promoted slave')

    const cb = await RawClient.connect(b.addresses.port)
    t.teardown(() => cb.close())
    const rest = await pull(cb, { subject: 'orders', group: 'cg', consumerId: 'c2', maxMessages: 100 })
    t.same(
      rest.map((x) => x.record.id),
      Array.from({ length: 12 }, (_, i) => `m-${i + 8}`),
      'consumers continue from the replicated position',
    )
    // The promoted master acknowledges writes once its first heartbeat answer gave it a lease; a
    // refusal before that is retriable (producers resend).
    await until('a write acknowledged after the failover', () =>
      sendOk(cb, [message('orders', 'after-failover')]).then(
        () => true,
        () => false,
      ),
    )

    // The former master comes back: it is told it is a slave and follows the new master.
    await a.start()
    await until('former master rejoined as slave', () => a.isRunning && a.currentRole === 'slave')
    t.not(a.addresses.address, '', 'listening again')
    t.equal(a.addresses.address, oldAddress, 'same address')
    await until('former master caught up', () => caughtUp(b, a))
    for (const dir of ['messagelog', 'actionlog']) {
      const x = segmentFiles(path.join(b.options.dataDir, dir))
      const y = segmentFiles(path.join(a.options.dataDir, dir))
      t.same([...y.keys()], [...x.keys()], `${dir}: same segments`)
      for (const [name, bytes] of x) t.ok(samePrefix(bytes, y.get(name)), `${dir}/${name}: same bytes`)
    }

    // Manual switch-over back: the master steps down, the in-sync slave is promoted after the lease.
    await until('metaserver knows the new slave is in sync', async () => {
      const g2 = await admin.getGroup('g1')
      const master = g2.servers.find((s) => s.role === 'master')
      return master?.replication?.inSyncSlaves?.includes(a.addresses.address) === true
    })
    await admin.failover('g1')
    await until('switched over', () => a.currentRole === 'master' && a.isRunning && b.currentRole === 'slave')
    const g3 = await admin.getGroup('g1')
    t.equal(g3.epoch, 2)
    t.equal(g3.address, a.addresses.address)
    const ca2 = await RawClient.connect(a.addresses.port)
    t.teardown(() => ca2.close())
    await until('slave back in sync', () => caughtUp(a, b))
    // Retriable refusals (a slave briefly out of sync on a loaded machine) are retried, as producers do.
    await until('a write acknowledged after the switch-over', () =>
      sendOk(ca2, [message('orders', 'after-switch-over')]).then(
        () => true,
        () => false,
      ),
    )
  },
)

t.test(
  'failover - a broker promoted again writes alone: the slave it knew as master before is not its slave now',
  async (t) => {
    // A (master, slave B) goes silent: B is promoted. A rejoins as B's slave. B goes silent: A is
    // promoted again, while B is still away. A remembered B as its slave from its first term; the
    // new term starts with no slave (as a first promotion does), so 'sync' writes go on alone
    // instead of being refused (QMQ_ERR_NO_IN_SYNC_SLAVE) until B returns.
    const { meta, admin } = await startReplicationMetaserver(t, {
      dataDir: freshDir(t),
      clusterSecret: SECRET,
      adminToken: TOKEN,
      heartbeatTimeoutMs: 3_000,
    })
    const inSync = async (master: Broker, slave: Broker) => {
      const g = await admin.getGroup('g1')
      const m = g.servers.find((s) => s.role === 'master')
      return (
        m?.address === master.addresses.address &&
        m.replication?.inSyncSlaves?.includes(slave.addresses.address) === true
      )
    }
    const a = broker(t, { group: 'g1', metaserver: meta.url })
    const b = broker(t, { group: 'g1', role: 'slave', metaserver: meta.url })
    await a.start()
    await b.start()
    await until('B in sync with A', () => caughtUp(a, b) && inSync(a, b))
    const ca = await RawClient.connect(a.addresses.port)
    await sendOk(ca, [message('orders', 'first-term')])
    await ca.close()

    await a.close({ offline: false })
    await until('B promoted', () => b.isRunning && b.currentRole === 'master')
    await a.start()
    await until('A rejoined as the slave of B, in sync', async () => {
      return a.currentRole === 'slave' && caughtUp(b, a) && (await inSync(b, a))
    })

    await b.close({ offline: false })
    await until('A promoted again', () => a.isRunning && a.currentRole === 'master')
    t.equal((await admin.getGroup('g1')).epoch, 2, 'epoch 2')
    const ca2 = await RawClient.connect(a.addresses.port)
    t.teardown(() => ca2.close())
    await sendOk(ca2, [message('orders', 'second-term')])
    t.pass('acknowledged by the promoted broker with its former slave away')
    const got = await pull(ca2, { subject: 'orders', group: 'cg', consumerId: 'c', maxMessages: 10 })
    t.same(
      got.map((m) => m.record.id),
      ['first-term', 'second-term'],
    )
  },
)

t.test(
  'failover - a former master cuts what it holds past the new epoch, then copies the new master',
  async (t) => {
    // X writes alone; Y starts from a copy of X's data dir, is promoted (epoch 1) and writes other
    // records; X had written records Y never got. X then follows Y: it must cut them.
    const x = broker(t, {})
    await x.start()
    const cx = await RawClient.connect(x.addresses.port)
    for (let i = 0; i < 10; i++) await sendOk(cx, [message('s', `common-${i}`, Buffer.alloc(300, i))])
    await cx.close()
    await x.close()
    const yDir = freshDir(t)
    fs.cpSync(x.options.dataDir, yDir, { recursive: true })
    await x.start()
    const cx2 = await RawClient.connect(x.addresses.port)
    for (let i = 0; i < 5; i++) await sendOk(cx2, [message('s', `lost-${i}`, Buffer.alloc(700, i))])
    await cx2.close()
    await x.close()

    writeEpochOneAtEnd(yDir)
    const y = broker(t, { dataDir: yDir })
    await y.start()
    const cy = await RawClient.connect(y.addresses.port)
    t.teardown(() => cy.close())
    for (let i = 0; i < 3; i++) await sendOk(cy, [message('s', `new-${i}`)])

    const xs = broker(t, { dataDir: x.options.dataDir, role: 'slave', masterAddress: y.addresses.address })
    await xs.start()
    await until('former master caught up', () => caughtUp(y, xs))
    for (const dir of ['messagelog', 'actionlog']) {
      const a = segmentFiles(path.join(yDir, dir))
      const b = segmentFiles(path.join(x.options.dataDir, dir))
      t.same([...b.keys()], [...a.keys()], `${dir}: same segments`)
      for (const [name, bytes] of a) t.ok(samePrefix(bytes, b.get(name)), `${dir}/${name}: same bytes`)
    }
    await xs.close()
    // Opened as a master, the former master has the common and the new records, not its lost tail.
    const xm = broker(t, { dataDir: x.options.dataDir })
    await xm.start()
    const cm = await RawClient.connect(xm.addresses.port)
    t.teardown(() => cm.close())
    const all = await pull(cm, { subject: 's', group: 'g', consumerId: 'c', maxMessages: 100 })
    t.same(
      all.map((m) => m.record.id),
      [...Array.from({ length: 10 }, (_, i) => `common-${i}`), 'new-0', 'new-1', 'new-2'],
    )
  },
)

t.test('failover - with two slaves, one is promoted and the other follows it', async (t) => {
  const { meta, admin } = await startReplicationMetaserver(t, {
    dataDir: freshDir(t),
    clusterSecret: SECRET,
    adminToken: TOKEN,
    heartbeatTimeoutMs: 3_000,
  })

  const a = broker(t, { group: 'g2', metaserver: meta.url })
  const b = broker(t, { group: 'g2', role: 'slave', metaserver: meta.url })
  const c = broker(t, { group: 'g2', role: 'slave', metaserver: meta.url })
  await a.start()
  await b.start()
  await c.start()
  await until('both slaves caught up', () => caughtUp(a, b) && caughtUp(a, c))
  const ca = await RawClient.connect(a.addresses.port)
  for (let i = 0; i < 10; i++) await sendOk(ca, [message('orders', `m-${i}`, Buffer.alloc(400, i))])
  await ca.close()
  await until('both slaves caught up', () => caughtUp(a, b) && caughtUp(a, c))
  await until('the metaserver knows both slaves are in sync', async () => {
    const g = await admin.getGroup('g2')
    const master = g.servers.find((s) => s.role === 'master')
    const inSync = master?.replication?.inSyncSlaves ?? []
    return (
      g.servers.filter((s) => s.role === 'slave').length === 2 &&
      inSync.includes(b.addresses.address) &&
      inSync.includes(c.addresses.address)
    )
  })

  const former = a.addresses.address
  await a.close({ offline: false })
  await until(
    'one slave promoted',
    () => (b.isRunning && b.currentRole === 'master') || (c.isRunning && c.currentRole === 'master'),
  )
  const [next, other] = b.currentRole === 'master' ? [b, c] : [c, b]
  const g = await admin.getGroup('g2')
  t.equal(g.epoch, 1)
  t.equal(g.address, next.addresses.address, 'routes point at the promoted slave')
  t.not(g.address, former)
  t.same(
    g.servers
      .filter((s) => s.role === 'slave')
      .map((s) => s.address)
      .sort(),
    [other.addresses.address],
    'the other slave stays listed (the former master is gone from the group until it returns)',
  )
  t.equal(other.currentRole, 'slave', 'the other slave stays a slave')

  const cn = await RawClient.connect(next.addresses.port)
  t.teardown(() => cn.close())
  await until('a write acknowledged by the new master', () =>
    sendOk(cn, [message('orders', 'after-failover')]).then(
      () => true,
      () => false,
    ),
  )
  await until('the other slave follows the new master', () => caughtUp(next, other))
  const all = await pull(cn, { subject: 'orders', group: 'cg', consumerId: 'c1', maxMessages: 100 })
  t.same(
    all.map((m) => m.record.id),
    [...Array.from({ length: 10 }, (_, i) => `m-${i}`), 'after-failover'],
  )
})
