import { testDir } from '../helpers/testdir'
import fs from 'node:fs'
import path from 'node:path'
import type { Test } from 'tap'
import t from 'tap'
import { createLogger, silentLogger } from '../../src/common/logger'
import { MetaClient } from '../../src/common/meta/meta-client'
import { decodeRecord } from '../../src/common/record'
import type { QmqError } from '../../src/common/errors'
import { type DelayOptions, DelayServer } from '../../src/delay/delay-server'
import type { Sender } from '../../src/delay/dispatch/sender'
import { Metaserver } from '../../src/metaserver/main'
import { RawClient } from '../helpers/raw-client'
import { encodeCancelRequest, encodeSendRequest } from '../../src/common/protocol/commands'
import { RequestCode } from '../../src/common/protocol/codes'
import { ERROR_CODES } from '../../src/common/error-codes'
import { encodeFileRequest } from '../../src/delay/replication/wire'

const errorStatus = (code: keyof typeof ERROR_CODES): number => ERROR_CODES[code].status
import { cancel, DELAY_TEST_SECRET, delayed, send } from './helpers/delay-helpers'
import { FAST_REPLICATION, slaveDirBeside, until as untilEvery } from './helpers/replication-helpers'

/**
 * Delay-group replication (docs/replication.md), in process: a slave delay server copies its master's
 * message log byte for byte and its derived files (schedule, dispatch, dead-letter logs, cancels);
 * when the master goes silent the metaserver promotes it, and it delivers every pending message the
 * master acknowledged, none early, cancelled ones never, on time.
 */
const TOKEN = 'delay-repl-admin-token'

/** Records every delivery with its time (both servers share one, as brokers would see them). */
class RecordingSender implements Sender {
  readonly delivered: { id: string; scheduleAt: number; at: number; by: string }[] = []
  constructor(private readonly by: string) {}
  async send(_subject: string, records: readonly Buffer[]): Promise<(QmqError | undefined)[]> {
    const at = Date.now()
    for (const r of records) {
      const m = decodeRecord(r)
      this.delivered.push({ id: m.id, scheduleAt: m.scheduleAt ?? 0, at, by: this.by })
    }
    return records.map(() => undefined)
  }
  async close(): Promise<void> {}
}

const until = (what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 20_000) =>
  untilEvery(what, cond, timeoutMs, 25)

async function startMeta(t: Test): Promise<{ meta: Metaserver; admin: MetaClient }> {
  const meta = new Metaserver(
    {
      port: 0,
      dataDir: testDir(t),
      adminToken: TOKEN,
      clusterSecret: DELAY_TEST_SECRET,
      heartbeatIntervalMs: 100,
      heartbeatTimeoutMs: 2_000,
    },
    { logger: silentLogger },
  )
  await meta.start()
  const admin = new MetaClient({ url: meta.url, adminToken: TOKEN, clusterSecret: DELAY_TEST_SECRET })
  t.teardown(async () => {
    await admin.close()
    await meta.close()
  })
  return { meta, admin }
}

function server(t: Test, dir: string, sender: Sender, extra: Partial<DelayOptions>): DelayServer {
  const s = new DelayServer(
    { ...FAST_REPLICATION, dataDir: dir, ...extra },
    {
      logger: process.env.DEBUG_REPL
        ? createLogger({ level: 'info', destination: process.stderr })
        : silentLogger,
      sender,
      routes: { groups: async () => [] },
    },
  )
  t.teardown(() => s.close())
  return s
}

async function inSync(admin: MetaClient, group: string, slave: string): Promise<boolean> {
  const g = await admin.getGroup(group)
  const master = g.servers.find((s) => s.role === 'master')
  return master?.replication?.inSyncSlaves?.includes(slave) === true
}

function files(dir: string): Map<string, Buffer> {
  const out = new Map<string, Buffer>()
  if (!fs.existsSync(dir)) return out
  for (const name of fs.readdirSync(dir).sort()) out.set(name, fs.readFileSync(path.join(dir, name)))
  return out
}

/** `copy` is `master` or a prefix of it (the master may have written more since). */
function prefixOf(master: Buffer | undefined, copy: Buffer | undefined): boolean {
  return (
    master !== undefined &&
    copy !== undefined &&
    copy.length <= master.length &&
    master.subarray(0, copy.length).equals(copy)
  )
}

t.test(
  'delay replication - the slave holds a copy; promoted, it delivers every pending message',
  async (t) => {
    const { meta, admin } = await startMeta(t)
    const aDir = testDir(t)
    fs.mkdirSync(aDir, { recursive: true })
    const bDir = slaveDirBeside(t, aDir)
    const sa = new RecordingSender('a')
    const sb = new RecordingSender('b')
    const a = server(t, aDir, sa, { group: 'd1', metaserver: meta.url })
    await a.start()
    // Messages stored before the slave exists are copied too (from the checkpoint's schedule logs).
    const ca = await RawClient.connect(a.port)
    t.teardown(() => ca.close())
    const now = Date.now()
    const early: Buffer[] = []
    for (let i = 0; i < 50; i++) early.push(delayed(`early-${i}`, now + 9_000 + i * 10))
    t.same(
      (await send(ca, early)).map((r) => r.status),
      early.map(() => 0),
      'stored before the slave',
    )
    await until('a checkpoint past them', () => (a.store.replicaManifest?.checkpoint ?? 0) > 0)

    const b = server(t, bDir, sb, { group: 'd1', role: 'slave', metaserver: meta.url, httpPort: 0 })
    await b.start()
    t.equal(b.currentRole, 'slave')
    await until('slave in sync', () => inSync(admin, 'd1', b.address))
    const health = async () =>
      (await (await fetch(`http://127.0.0.1:${b.httpPort}/health`)).json()) as {
        role: string
        replication: { role: string }
      }
    t.equal((await health()).role, 'slave', '/health role of the slave')
    t.equal((await health()).replication.role, 'slave', '/health replication of the slave')

    // Under sync (the default once the group has a slave): acknowledged once the slave holds them.
    const later: Buffer[] = []
    const t1 = Date.now()
    for (let i = 0; i < 100; i++) later.push(delayed(`later-${i}`, t1 + 8_000 + (i % 20) * 50))
    for (let i = 0; i < 10; i++) later.push(delayed(`soon-${i}`, t1 + 300 + i * 20))
    for (let i = 0; i < 5; i++) later.push(delayed(`far-${i}`, t1 + 70_000 + i)) // another bucket
    t.same(
      (await send(ca, later)).map((r) => r.status),
      later.map(() => 0),
      'stored under sync',
    )
    const cancelled = ['early-3', 'later-7', 'later-8', 'far-1']
    t.same(await cancel(ca, cancelled), [true, true, true, true], 'cancels acknowledged under sync')
    await until(
      'soon ones delivered by the master',
      () => sa.delivered.filter((d) => d.id.startsWith('soon-')).length === 10,
    )

    // The copy: the message log byte for byte, every schedule log a prefix of the master's.
    await until('slave adopted a checkpoint', () => {
      const r = a.replicationStatus()
      return 'slaves' in r && r.slaves.some((s) => s.checkpoint >= (a.store.replicaManifest?.checkpoint ?? 1))
    })
    const mm = files(path.join(aDir, 'message'))
    const mc = files(path.join(bDir, 'message'))
    t.ok(mc.size > 0, 'slave holds message segments')
    for (const [name, bytes] of mc)
      t.ok(prefixOf(mm.get(name), bytes), `message/${name} is the master's`, {
        master: mm.get(name)?.length,
        copy: bytes.length,
        names: [...mm.keys()],
      })
    const sm = files(path.join(aDir, 'schedule'))
    const sc = files(path.join(bDir, 'schedule'))
    t.ok(sc.size >= 1, 'slave holds schedule logs')
    for (const [name, bytes] of sc)
      t.ok(prefixOf(sm.get(name), bytes), `schedule/${name} is a prefix of the master's`)
    const tombstones = fs.readFileSync(path.join(bDir, 'cancel.log'))
    for (const id of cancelled)
      t.ok(tombstones.includes(Buffer.from(id)), `slave holds the tombstone of ${id}`)

    // The master goes silent (as if killed: no offline heartbeat); the slave is promoted.
    await ca.close()
    const killedAt = Date.now()
    await a.close({ offline: false })
    await until('slave promoted', () => b.currentRole === 'master', 20_000)
    const promotedAt = Date.now()
    const g = await admin.getGroup('d1')
    t.equal(g.epoch, 1, 'epoch 1')
    t.equal(g.address, b.address, 'routes point at the promoted slave')
    t.equal((await health()).role, 'master', '/health role of the promoted slave')
    t.ok(promotedAt - killedAt < 10_000, `promoted ${promotedAt - killedAt} ms after the master went silent`)

    const expected = [...early, ...later]
      .map((r) => decodeRecord(r))
      .filter((m) => !cancelled.includes(m.id) && !m.id.startsWith('far-') && !m.id.startsWith('soon-'))
    await until(
      'every pending message delivered',
      () => {
        const got = new Set([...sa.delivered, ...sb.delivered].map((d) => d.id))
        return expected.every((m) => got.has(m.id))
      },
      30_000,
    )
    const all = [...sa.delivered, ...sb.delivered]
    t.equal(all.filter((d) => d.at < d.scheduleAt).length, 0, 'none delivered early')
    t.equal(all.filter((d) => cancelled.includes(d.id)).length, 0, 'cancelled ones never delivered')
    t.equal(all.filter((d) => d.id.startsWith('far-')).length, 0, 'far ones not yet due')
    const late = sb.delivered.map((d) => d.at - Math.max(d.scheduleAt, promotedAt))
    t.ok(
      Math.max(0, ...late) < 3_000,
      `delivered on time after the promotion (max ${Math.max(0, ...late)} ms late)`,
    )
    // The far ones are pending on the promoted master.
    t.ok(b.store.stats().pending >= 4, 'far ones pending on the promoted master')

    // A cancel on the new master, then the former master comes back claiming to be master: it holds
    // messages the new master delivered and one it cancelled, and must send none of them (no lease:
    // it dispatches nothing) before the metaserver tells it to follow the new master.
    const cb = await RawClient.connect(b.port)
    t.teardown(() => cb.close())
    t.same(await cancel(cb, ['far-2']), [true], 'cancelled on the new master')
    const before = sa.delivered.length
    const a2 = server(t, aDir, sa, { group: 'd1', metaserver: meta.url })
    await a2.start()
    await until('the former master rejoined as slave', () => a2.currentRole === 'slave')
    t.equal(sa.delivered.length, before, 'the former master sent nothing before it was demoted')
    await until('the former master in sync with the new one', () => inSync(admin, 'd1', a2.address))
    const tomb = fs.readFileSync(path.join(aDir, 'cancel.log'))
    t.ok(tomb.includes(Buffer.from('far-2')), 'the rejoined slave holds the new cancel')
    const sb2 = files(path.join(bDir, 'schedule'))
    for (const [name, bytes] of files(path.join(aDir, 'schedule')))
      t.ok(prefixOf(sb2.get(name), bytes), `schedule/${name} copied from the new master`)
  },
)

t.test(
  'delay replication - requests need the cluster secret, name only derived files, and a slave serves nobody',
  async (t) => {
    const dir = testDir(t)
    const a = server(t, path.join(dir, 'a'), new RecordingSender('a'), {})
    await a.start()
    const c = await RawClient.connect(a.port)
    t.teardown(() => c.close())
    const file = (token: string, name: string) =>
      c.request(
        RequestCode.DELAY_REPL_FILE,
        encodeFileRequest({ token, slaveId: 'x:1', name, offset: 0, maxBytes: 1024 }),
      )
    const wrong = await file('not-the-secret', 'deadletter.log')
    t.equal(wrong.status, errorStatus('QMQ_ERR_UNAUTHORIZED'), 'a wrong secret is refused')
    for (const name of ['../meta.json', 'checkpoint.json', 'schedule/../../x.sched', '/etc/passwd']) {
      const res = await file(DELAY_TEST_SECRET, name)
      t.equal(res.status, errorStatus('QMQ_ERR_PAYLOAD_MALFORMED'), `${name} is not served`)
    }
    const ok = await file(DELAY_TEST_SECRET, 'deadletter.log')
    t.equal(ok.status, 0, 'a derived file is served')

    // A slave (pointed at the master directly): SEND and CANCEL are refused with the retriable NOT_MASTER.
    const b = server(t, path.join(dir, 'b'), new RecordingSender('b'), {
      role: 'slave',
      masterAddress: a.address,
    })
    await b.start()
    const cb = await RawClient.connect(b.port)
    t.teardown(() => cb.close())
    t.equal((await cb.request(RequestCode.PING)).status, 0, 'a slave answers PING')
    const sendRes = await cb.request(RequestCode.SEND, encodeSendRequest([delayed('x', Date.now() + 5_000)]))
    t.equal(sendRes.status, errorStatus('QMQ_ERR_NOT_MASTER'), 'a slave refuses SEND')
    const cancelRes = await cb.request(RequestCode.CANCEL, encodeCancelRequest(['x'], DELAY_TEST_SECRET))
    t.equal(cancelRes.status, errorStatus('QMQ_ERR_NOT_MASTER'), 'a slave refuses CANCEL')
  },
)

t.test(
  'delay replication - a delay server promoted again writes alone: the slave it knew as master before is not its slave now',
  async (t) => {
    // A (master, slave B) goes silent: B is promoted. A comes back and follows B. B goes silent: A is
    // promoted again while B is away. A remembered B as its slave from its first term; the new term
    // starts with no slave (as a first promotion does), so under `sync` SEND and CANCEL go on alone
    // instead of being refused (QMQ_ERR_NO_IN_SYNC_SLAVE) until B returns.
    const { meta, admin } = await startMeta(t)
    const aDir = testDir(t)
    fs.mkdirSync(aDir, { recursive: true })
    const bDir = slaveDirBeside(t, aDir)
    const sa = new RecordingSender('a')
    const a = server(t, aDir, sa, { group: 'd2', metaserver: meta.url })
    await a.start()
    const b = server(t, bDir, new RecordingSender('b'), { group: 'd2', role: 'slave', metaserver: meta.url })
    await b.start()
    await until('B in sync with A', () => inSync(admin, 'd2', b.address))
    const ca = await RawClient.connect(a.port)
    const far = Date.now() + 60_000
    t.same(
      (await send(ca, [delayed('first-term', far)])).map((r) => r.status),
      [0],
    )
    await ca.close()

    await a.close({ offline: false })
    await until('B promoted', () => b.currentRole === 'master')
    const a2 = server(t, aDir, sa, { group: 'd2', metaserver: meta.url })
    await a2.start()
    await until('A rejoined as the slave of B', () => a2.currentRole === 'slave')
    await until('A in sync with B', () => inSync(admin, 'd2', a2.address))

    await b.close({ offline: false })
    await until('A promoted again', async () => {
      const g = await admin.getGroup('d2')
      return a2.currentRole === 'master' && g.address === a2.address && g.epoch === 2
    })
    const c = await RawClient.connect(a2.port)
    t.teardown(() => c.close())
    // Its lease comes with the answer to its first heartbeat as master: until then NOT_MASTER.
    await until('the promoted master holds its lease', async () => {
      const res = await c.request(RequestCode.SEND, encodeSendRequest([delayed('probe', far)]))
      return res.status !== errorStatus('QMQ_ERR_NOT_MASTER')
    })
    t.same(
      (await send(c, [delayed('second-term', far), delayed('to-cancel', far)])).map((r) => r.status),
      [0, 0],
      'SEND acknowledged by the promoted master with its former slave away',
    )
    t.same(await cancel(c, ['to-cancel', 'first-term']), [true, true], 'CANCEL acknowledged too')
    const r = a2.replicationStatus()
    t.same('slaves' in r ? r.slaves.map((s) => s.id) : undefined, [], 'no slave known in the new term')
    // Closed here, before its data dir goes (it checkpoints as it closes).
    await c.close()
    await a2.close()
  },
)

t.test('delay replication - a role change that fails keeps the heartbeat going and is retried', async (t) => {
  // A (master, slave B) goes silent; B is promoted. A comes back claiming to be master and is told to
  // follow B, but its copy cannot start (its meta.json names other buckets). It must keep
  // heartbeating (not go silent) and try again with the metaserver's next answers: once the cause
  // is gone it follows B.
  const { meta, admin } = await startMeta(t)
  const aDir = testDir(t)
  fs.mkdirSync(aDir, { recursive: true })
  const bDir = path.join(path.dirname(aDir), `${path.basename(aDir)}-slave`)
  fs.rmSync(bDir, { recursive: true, force: true }) // an interrupted run's
  fs.mkdirSync(bDir, { recursive: true })
  t.teardown(() => fs.rmSync(bDir, { recursive: true, force: true }))
  const a = server(t, aDir, new RecordingSender('a'), { group: 'd3', metaserver: meta.url })
  await a.start()
  const b = server(t, bDir, new RecordingSender('b'), { group: 'd3', role: 'slave', metaserver: meta.url })
  await b.start()
  await until('B in sync with A', () => inSync(admin, 'd3', b.address))
  await a.close({ offline: false })
  await until('B promoted', () => b.currentRole === 'master')

  const a2 = server(t, aDir, new RecordingSender('a'), { group: 'd3', metaserver: meta.url })
  await a2.start() // the first heartbeat's answer (follow B) is being acted on
  const metaFile = path.join(aDir, 'meta.json')
  const good = fs.readFileSync(metaFile)
  fs.writeFileSync(metaFile, JSON.stringify({ version: 1, bucketMinutes: 7 }))
  await new Promise((r) => setTimeout(r, 1_500)) // several heartbeats: each retry fails
  const seen = async () => {
    const g = await admin.getGroup('d3')
    return g.servers.find((s) => s.address === a2.address)?.lastSeenAt ?? 0
  }
  const before = await seen()
  await until('A still heartbeats', async () => (await seen()) > before, 5_000)
  fs.writeFileSync(metaFile, good)
  await until('A follows B once it can', () => a2.currentRole === 'slave' && inSync(admin, 'd3', a2.address))
  t.pass('A rejoined as the slave of B')
  await a2.close()
})
