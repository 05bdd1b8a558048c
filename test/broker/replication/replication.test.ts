import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import type { Test } from 'tap'
import { Broker, type BrokerOptions } from '../../../src/broker/broker'
import { Connection } from '../../../src/client/transport/connection'
import { CLUSTER_APP } from '../../../src/common/auth/credentials'
import { ERROR_CODES } from '../../../src/common/error-codes'
import { silentLogger } from '../../../src/common/logger'
import { RequestCode } from '../../../src/common/protocol/codes'
import { decodeSendResponse, encodeSendRequest } from '../../../src/common/protocol/commands'
import { encodeFetchRequest } from '../../../src/common/protocol/replication'
import { encodeRecord } from '../../../src/common/record'
import { makeCa } from '../../helpers/certs'
import { RawClient } from '../../helpers/raw-client'
import { tempDir, waitUntil } from '../../helpers/replication'
import { ack, message, pull, send, sendOk } from '../server/ops'

const SECRET = 'replication-test-secret'

/** Small segments (rolls are copied too), fast in-sync detection. */
const BASE: Partial<BrokerOptions> = {
  port: 0,
  httpPort: -1,
  clusterSecret: SECRET,
  segmentBytes: 16 * 1024,
  actionLogSegmentBytes: 8 * 1024,
  replicationInSyncLagMs: 400,
  replicationAckTimeoutMs: 2_000,
  replicationFetchWaitMs: 100,
  checkpointIntervalMs: 200,
}

async function startMaster(t: Test, extra: Partial<BrokerOptions> = {}) {
  const dataDir = extra.dataDir ?? freshDir(t)
  const broker = new Broker({ ...BASE, ...extra, dataDir }, { logger: silentLogger })
  const { port, address } = await broker.start()
  t.teardown(() => broker.close())
  return { broker, port, address, dataDir }
}

async function startSlave(t: Test, masterAddress: string, extra: Partial<BrokerOptions> = {}) {
  const dataDir = extra.dataDir ?? freshDir(t)
  const broker = new Broker(
    { ...BASE, ...extra, role: 'slave', masterAddress, dataDir },
    { logger: silentLogger },
  )
  const { port } = await broker.start()
  t.teardown(() => broker.close())
  return { broker, port, dataDir }
}

/** One data dir per broker (t.testdir() is one per test). */
function freshDir(t: Test): string {
  return tempDir(t, 'qmq-repl-')
}

function inSync(b: Broker): boolean {
  const s = b.replicationStatus()
  return 'inSync' in s && s.inSync
}

function until(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  return waitUntil(what, cond, timeoutMs, 20)
}

function slaveCaughtUp(master: Broker, slave: Broker): boolean {
  const s = slave.replicationStatus()
  if (!('slave' in s)) return false
  const store = master.messageStore as unknown as {
    mlog: { log: { endOffset: number } }
    alog: { log: { endOffset: number } }
  }
  return (
    s.slave.messageOffset === store.mlog.log.endOffset && s.slave.actionOffset === store.alog.log.endOffset
  )
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

t.test('replication - a fresh slave copies both logs byte for byte, segment for segment', async (t) => {
  const m = await startMaster(t)
  const c = await RawClient.connect(m.port)
  t.teardown(() => c.close())
  // Before any slave: plain writes (the group has no slave yet), with hand-outs and acks.
  for (let i = 0; i < 40; i++) {
    await sendOk(c, [message('orders', `before-${i}`, Buffer.alloc(900, i))])
  }
  const got = await pull(c, { subject: 'orders', group: 'g', consumerId: 'c1', maxMessages: 25 })
  t.equal(got.length, 25)
  await ack(c, { subject: 'orders', group: 'g', consumerId: 'c1', sequences: got.map((x) => x.sequence) })

  const s = await startSlave(t, m.address)
  await until('slave caught up', () => slaveCaughtUp(m.broker, s.broker))
  t.ok(inSync(m.broker), 'the master sees an in-sync slave')

  // With a slave, 'sync': a SEND is answered once the slave holds it.
  await sendOk(c, [message('orders', 'after-1', 'x')])
  const ss = s.broker.replicationStatus()
  const ms = m.broker.messageStore as unknown as { mlog: { log: { endOffset: number } } }
  t.ok('slave' in ss && ss.slave.messageOffset >= ms.mlog.log.endOffset, 'acknowledged SEND is on the slave')

  // The slave serves no producer or consumer.
  const sc = await RawClient.connect(s.port)
  t.teardown(() => sc.close())
  const refused = await send(sc, [message('orders', 'to-slave')]).catch((e: { status: number }) => e)
  t.equal((refused as { status: number }).status, ERROR_CODES.QMQ_ERR_NOT_MASTER.status)
  t.equal((await sc.request(RequestCode.PING)).status, 0, 'the slave answers PING')

  await until('slave caught up again', () => slaveCaughtUp(m.broker, s.broker))
  for (const dir of ['messagelog', 'actionlog']) {
    const a = segmentFiles(path.join(m.dataDir, dir))
    const b = segmentFiles(path.join(s.dataDir, dir))
    t.same([...b.keys()], [...a.keys()], `${dir}: same segment files`)
    t.ok([...a.keys()].length > 1 || dir === 'actionlog', `${dir}: the master rolled segments`)
    for (const [name, bytes] of a) t.ok(samePrefix(bytes, b.get(name)), `${dir}/${name}: same bytes`)
  }
})

t.test(
  'replication - sync refuses writes without an in-sync slave; degradedWrites keeps writing',
  async (t) => {
    const m = await startMaster(t)
    const c = await RawClient.connect(m.port)
    t.teardown(() => c.close())
    const s = await startSlave(t, m.address)
    await until('slave caught up', () => slaveCaughtUp(m.broker, s.broker))
    await sendOk(c, [message('s', 'one')])
    await s.broker.close()
    await until('slave out of sync', () => !inSync(m.broker))
    const [r] = await send(c, [message('s', 'two')])
    t.equal(r?.status, ERROR_CODES.QMQ_ERR_NO_IN_SYNC_SLAVE.status, 'refused with a retriable code')
    t.ok(ERROR_CODES.QMQ_ERR_NO_IN_SYNC_SLAVE.retriable)

    // The master remembers it has a slave across restarts.
    await m.broker.restart()
    const c2 = await RawClient.connect(m.broker.addresses.port)
    t.teardown(() => c2.close())
    const [r2] = await send(c2, [message('s', 'three')])
    t.equal(r2?.status, ERROR_CODES.QMQ_ERR_NO_IN_SYNC_SLAVE.status, 'still refused after a master restart')

    // The slave comes back: writes resume.
    await s.broker.start()
    await until('slave back in sync', () => inSync(m.broker))
    await sendOk(c2, [message('s', 'four')])

    const d = await startMaster(t, { degradedWrites: true })
    const dc = await RawClient.connect(d.port)
    t.teardown(() => dc.close())
    const ds = await startSlave(t, d.address)
    await until('slave caught up', () => slaveCaughtUp(d.broker, ds.broker))
    await ds.broker.close()
    await until('slave out of sync', () => !inSync(d.broker))
    await sendOk(dc, [message('s', 'alone')])
    const st = d.broker.replicationStatus()
    t.ok('degraded' in st && st.degraded, 'shown as degraded')

    const a = await startMaster(t, { replication: 'async' })
    const ac = await RawClient.connect(a.port)
    t.teardown(() => ac.close())
    const as = await startSlave(t, a.address)
    await until('slave caught up', () => slaveCaughtUp(a.broker, as.broker))
    await as.broker.close()
    await sendOk(ac, [message('s', 'async-alone')])
    t.pass('async writes without a slave')
  },
)

t.test('replication - a promoted copy serves the replicated messages and consumer progress', async (t) => {
  const m = await startMaster(t)
  const c = await RawClient.connect(m.port)
  t.teardown(() => c.close())
  const s = await startSlave(t, m.address)
  await until('slave caught up', () => slaveCaughtUp(m.broker, s.broker))
  for (let i = 0; i < 30; i++) await sendOk(c, [message('pay', `id-${i}`, Buffer.alloc(700, i))])
  const first = await pull(c, { subject: 'pay', group: 'g', consumerId: 'c1', maxMessages: 10 })
  await ack(c, { subject: 'pay', group: 'g', consumerId: 'c1', sequences: first.map((x) => x.sequence) })
  await until('slave caught up', () => slaveCaughtUp(m.broker, s.broker))
  // Let the slave install a checkpoint and the master delete early action segments.
  await new Promise((r) => setTimeout(r, 700))
  await until('slave caught up', () => slaveCaughtUp(m.broker, s.broker))
  await c.close()
  await m.broker.close()
  await s.broker.close()

  // Promotion by hand: the slave's data dir opened as a master.
  const p = await startMaster(t, { dataDir: s.dataDir })
  const pc = await RawClient.connect(p.port)
  t.teardown(() => pc.close())
  const rest = await pull(pc, { subject: 'pay', group: 'g', consumerId: 'c2', maxMessages: 100 })
  t.same(
    rest.map((x) => x.record.id),
    Array.from({ length: 20 }, (_, i) => `id-${i + 10}`),
    'acked messages are not delivered again; the rest are',
  )
  const [dup] = await send(pc, [message('pay', 'id-3')])
  t.equal(dup?.message, 'duplicate', 'the dedupe window includes what was replicated')
})

t.test('replication - fetches need the cluster secret', async (t) => {
  const m = await startMaster(t)
  const c = await RawClient.connect(m.port)
  t.teardown(() => c.close())
  const res = await c.request(
    RequestCode.REPL_FETCH,
    encodeFetchRequest({
      token: 'wrong',
      slaveId: 'x:1',
      log: 0,
      offset: 0,
      maxBytes: 1024,
      waitMs: 0,
      epoch: 0,
    }),
  )
  t.equal(res.status, ERROR_CODES.QMQ_ERR_UNAUTHORIZED.status)
  t.notOk(fs.existsSync(path.join(m.dataDir, 'replication', 'slaves.json')), 'no slave recorded')
})

t.test('replication - a slave follows a master with TLS and auth on (cluster app over TLS)', async (t) => {
  const dir = freshDir(t)
  const ca = makeCa(dir)
  const leaf = ca.issue('broker')
  const tls = { tlsCertFile: leaf.cert, tlsKeyFile: leaf.key, tlsCaFile: ca.cert }
  // Only the cluster app (checked against the cluster secret) is known: no metaserver.
  const credentials = { credentials: async () => ({ apps: [] }) }
  const mDir = freshDir(t)
  const master = new Broker(
    { ...BASE, ...tls, auth: true, dataDir: mDir },
    { logger: silentLogger, credentials },
  )
  const { port, address } = await master.start()
  t.teardown(() => master.close())
  const c = new Connection({
    address: `127.0.0.1:${port}`,
    requestTimeoutMs: 5_000,
    tls: { ca: fs.readFileSync(ca.cert) },
    auth: { appCode: CLUSTER_APP, token: SECRET },
  })
  t.teardown(() => c.close())
  // Written before the slave exists (no slave yet: plain writes).
  for (let i = 0; i < 20; i++) {
    const f = await c.request(
      RequestCode.SEND,
      encodeSendRequest([encodeRecord(message('orders', `tls-${i}`, Buffer.alloc(900, i)))]),
    )
    t.same(decodeSendResponse(f.body), [{ status: 0, message: '' }])
  }
  const slave = new Broker(
    { ...BASE, ...tls, auth: true, role: 'slave', masterAddress: address, dataDir: freshDir(t) },
    { logger: silentLogger, credentials },
  )
  await slave.start()
  t.teardown(() => slave.close())
  await until('slave caught up over TLS with auth', () => {
    const s = slave.replicationStatus()
    return 'slave' in s && s.slave.messageOffset > 0 && slaveCaughtUp(master, slave)
  })
  t.ok(inSync(master), 'the master sees an in-sync slave')
  const s = slave.replicationStatus()
  t.ok('slave' in s && s.slave.lastError === undefined, 'no fetch failed')
})
