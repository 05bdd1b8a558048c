import { testDir } from '../helpers/testdir'
import fs from 'node:fs'
import path from 'node:path'
import type { Test } from 'tap'
import t from 'tap'
import { startReplicationMetaserver } from '../helpers/replication'
import { ManualClock } from '../../src/common/clock'
import { silentLogger } from '../../src/common/logger'
import type { MetaClient } from '../../src/common/meta/meta-client'
import { type DelayOptions, DelayServer } from '../../src/delay/delay-server'
import type { Metaserver } from '../../src/metaserver/main'
import { RawClient } from '../helpers/raw-client'
import { bucketFileName } from '../../src/delay/store/bucket'
import { cancel, DELAY_TEST_SECRET, delayed, FakeSender, send, T0, waitFor } from './helpers/delay-helpers'
import { FAST_REPLICATION } from './helpers/replication-helpers'
import { delayDir, startDelay } from './helpers/start-delay'

/**
 * The delay server's dedupe window (docs/delay.md "Duplicates"): a SEND of a message id stored within
 * the window (a producer's resend after a timeout or a failover) is acknowledged and not stored again,
 * so it is delivered once; the window survives a restart and a promotion (rebuilt from the message
 * log's tail, which the master and its slave keep past the checkpoint for it).
 */

const count = (s: FakeSender, id: string): number => s.delivered.filter((d) => d.id === id).length

/**
 * Fillers enough to roll 64 KiB message-log segments (so the checkpoint passes whole segments), in
 * several SENDs (one batch is written into one segment).
 */
async function sendFillers(client: RawClient, prefix: string, at: number, n = 1_500): Promise<void> {
  for (let i = 0; i < n; i += 50) {
    const batch: Buffer[] = []
    for (let j = i; j < Math.min(n, i + 50); j++) batch.push(delayed(`${prefix}-${j}`, at))
    await send(client, batch)
  }
}

/** The value of metric `name` on the line that holds `label` (e.g. 'result="duplicate"'). */
async function metric(server: DelayServer, name: string, label = ''): Promise<number | undefined> {
  const text = await server.registry.metrics()
  const m = text.split('\n').find((l) => l.startsWith(`${name}{`) && l.includes(label))
  return m === undefined ? undefined : Number(m.slice(m.lastIndexOf(' ') + 1))
}

t.test('delay dedupe - the same id sent again is stored and delivered once', async (t) => {
  const { dir, closers } = delayDir(t)
  const clock = new ManualClock(T0)
  const sender = new FakeSender()
  const { server, client } = await startDelay(closers, dir, clock, sender)
  const other = await RawClient.connect(server.port)
  t.teardown(() => other.close())
  const ok = (rs: { status: number }[]) => rs.map((r) => r.status)
  t.same(ok(await send(client, [delayed('a', T0 + 1_000)])), [0])
  t.same(
    await send(client, [delayed('a', T0 + 1_000)]),
    [{ status: 0, message: 'duplicate' }],
    'a resend is acknowledged',
  )
  t.same(
    ok(await send(client, [delayed('b', T0 + 1_000), delayed('b', T0 + 1_000)])),
    [0, 0],
    'twice in one SEND',
  )
  const [x, y] = await Promise.all([
    send(client, [delayed('c', T0 + 1_000)]),
    send(other, [delayed('c', T0 + 1_000)]),
  ])
  t.same([...ok(x ?? []), ...ok(y ?? [])], [0, 0], 'twice at once on two connections')
  // Same id, another subject: another message.
  t.same(ok(await send(client, [delayed('a', T0 + 1_000, 'other.subject')])), [0])
  clock.set(T0 + 2_000)
  await waitFor(() => sender.delivered.length >= 4, 5_000, 'deliveries')
  await new Promise((r) => setTimeout(r, 200))
  t.same(
    ['a', 'b', 'c'].map((id) => count(sender, id)),
    [2, 1, 1],
    'each (subject, id) delivered once',
  )
  t.equal(await metric(server, 'qmq_delay_received_total', 'result="duplicate"'), 3)
  t.equal(await metric(server, 'qmq_delay_received_total', 'result="stored"'), 4)
  t.equal(await metric(server, 'qmq_delay_dedupe_window_seconds'), 600)
  // Within the window even after delivery: a late resend is not delivered again.
  t.same(ok(await send(client, [delayed('a', T0 + 1_000)])), [0])
  clock.set(T0 + 3_000)
  await new Promise((r) => setTimeout(r, 200))
  t.equal(count(sender, 'a'), 2, 'not delivered again after delivery')
})

t.test('delay dedupe - an id sent again after the window is a new message', async (t) => {
  const { dir, closers } = delayDir(t)
  const clock = new ManualClock(T0)
  const sender = new FakeSender()
  const { client } = await startDelay(closers, dir, clock, sender, { dedupeWindowMs: 1_000 })
  t.same(
    (await send(client, [delayed('w', T0 + 5_000)])).map((r) => r.status),
    [0],
  )
  clock.set(T0 + 1_001)
  t.same(
    (await send(client, [delayed('w', T0 + 5_000)])).map((r) => r.status),
    [0],
  )
  clock.set(T0 + 6_000)
  await waitFor(() => count(sender, 'w') === 2, 5_000, 'two deliveries')
  const off = new FakeSender()
  const offDir = path.join(dir, 'off')
  const { client: c2 } = await startDelay(closers, offDir, clock, off, { dedupeWindowMs: 0 })
  for (let i = 0; i < 2; i++) await send(c2, [delayed('z', T0 + 7_000)])
  clock.set(T0 + 8_000)
  await waitFor(() => count(off, 'z') === 2, 5_000, 'window off: stored twice')
})

t.test(
  'delay dedupe - a SEND refused because its record could not be filed is stored by the resend',
  async (t) => {
    const { dir, closers } = delayDir(t)
    const clock = new ManualClock(T0)
    const sender = new FakeSender()
    const { client } = await startDelay(closers, dir, clock, sender)
    const due = T0 + 90_000
    // Filing opens the new bucket's schedule log: a directory in its place makes that open fail (EISDIR)
    // after the record is durable in the message log.
    const sched = path.join(dir, 'schedule', bucketFileName(T0 + 60_000, '.sched'))
    fs.mkdirSync(sched)
    const [refused] = await send(client, [delayed('lost', due)])
    t.not(refused?.status, 0, 'the SEND is refused')
    fs.rmdirSync(sched)
    t.same(
      await send(client, [delayed('lost', due)]),
      [{ status: 0, message: '' }],
      'the resend is stored, not a duplicate',
    )
    t.same(
      await send(client, [delayed('lost', due)]),
      [{ status: 0, message: 'duplicate' }],
      'then in the window',
    )
    clock.set(due + 1_000)
    await waitFor(() => count(sender, 'lost') >= 1, 5_000, 'the resend delivered')
    await new Promise((r) => setTimeout(r, 200))
    t.equal(count(sender, 'lost'), 1, 'delivered once')
  },
)

t.test('delay dedupe - the window is rebuilt after a restart; a cancelled id stays cancelled', async (t) => {
  const { dir, closers } = delayDir(t)
  const clock = new ManualClock(T0)
  const sender = new FakeSender()
  const opts: Partial<DelayOptions> = { segmentBytes: 64 * 1024 }
  const first = await startDelay(closers, dir, clock, sender, opts)
  const due = T0 + 30_000
  t.same(
    (await send(first.client, [delayed('r', due), delayed('k', due)])).map((r) => r.status),
    [0, 0],
  )
  t.same(await cancel(first.client, ['k']), [true])
  t.same(
    (await send(first.client, [delayed('k', due)])).map((r) => r.status),
    [0],
    'resend after cancel',
  )
  await sendFillers(first.client, 'f', T0 + 40_000)
  const end = first.server.store.messageSegmentLog?.endOffset ?? 0
  await waitFor(() => (first.server.store.replicaManifest?.checkpoint ?? 0) >= end, 5_000, 'checkpoint')
  await first.server.store.checkpoint()
  const segs = fs.readdirSync(path.join(dir, 'message')).sort()
  t.ok(segs.length > 1, 'several segments')
  t.equal(segs[0], '00000000000000000000.log', 'segments below the checkpoint kept for the window')
  await first.client.close()
  await first.server.close()

  const second = await startDelay(closers, dir, clock, sender, opts)
  t.ok(
    ((await metric(second.server, 'qmq_delay_dedupe_entries')) ?? 0) >= 1_502,
    'window rebuilt from the message log',
  )
  t.same(
    (await send(second.client, [delayed('r', due), delayed('k', due)])).map((r) => r.status),
    [0, 0],
    'resends after the restart',
  )
  clock.set(due + 1_000)
  await waitFor(() => count(sender, 'r') >= 1, 5_000, 'r delivered')
  await new Promise((r) => setTimeout(r, 300))
  t.equal(count(sender, 'r'), 1, 'delivered once across the restart')
  t.equal(count(sender, 'k'), 0, 'a cancelled id sent again is not delivered')
})

t.test('delay dedupe - message-log segments kept for the window go once it passed', async (t) => {
  const { dir, closers } = delayDir(t)
  const clock = new ManualClock(T0)
  const { server, client } = await startDelay(closers, dir, clock, new FakeSender(), {
    segmentBytes: 64 * 1024,
    dedupeWindowMs: 60_000,
  })
  await sendFillers(client, 'f', T0 + 40_000)
  await server.store.checkpoint()
  await server.store.checkpoint()
  const segments = () => fs.readdirSync(path.join(dir, 'message')).length
  t.ok(segments() > 1, 'kept past the checkpoint within the window')
  // Segment mtimes (wall clock) say when they were written: two windows ago.
  const old = Date.now() / 1000 - 120
  for (const f of fs.readdirSync(path.join(dir, 'message')))
    fs.utimesSync(path.join(dir, 'message', f), old, old)
  await server.store.checkpoint()
  t.equal(segments(), 1, 'only the active segment is left')
})

async function startMeta(t: Test): Promise<{ meta: Metaserver; admin: MetaClient }> {
  const { meta, admin } = await startReplicationMetaserver(t, {
    dataDir: testDir(t),
    clusterSecret: DELAY_TEST_SECRET,
    adminToken: 'delay-dedupe-admin',
    heartbeatTimeoutMs: 2_000,
  })
  return { meta, admin }
}

t.test('delay dedupe - a promoted slave knows the ids its master stored', async (t) => {
  const { meta, admin } = await startMeta(t)
  const aDir = testDir(t)
  const bDir = `${aDir}-slave`
  fs.mkdirSync(bDir, { recursive: true })
  t.teardown(() => fs.rmSync(bDir, { recursive: true, force: true }))
  const sa = new FakeSender()
  const sb = new FakeSender()
  const server = (dir: string, sender: FakeSender, extra: Partial<DelayOptions>): DelayServer => {
    const s = new DelayServer(
      {
        ...FAST_REPLICATION,
        dataDir: dir,
        group: 'dd1',
        metaserver: meta.url,
        ...extra,
      },
      { logger: silentLogger, sender, routes: { groups: async () => [] } },
    )
    t.teardown(() => s.close())
    return s
  }
  const a = server(aDir, sa, {})
  await a.start()
  const b = server(bDir, sb, { role: 'slave' })
  await b.start()
  const deadline = Date.now() + 20_000
  for (;;) {
    const g = await admin.getGroup('dd1')
    if (g.servers.find((s) => s.role === 'master')?.replication?.inSyncSlaves?.includes(b.address)) break
    if (Date.now() > deadline) throw new Error('slave not in sync')
    await new Promise((r) => setTimeout(r, 50))
  }
  const ca = await RawClient.connect(a.port)
  t.teardown(() => ca.close())
  const due = Date.now() + 12_000
  t.same(
    (await send(ca, [delayed('p', due)])).map((r) => r.status),
    [0],
    'stored under sync',
  )
  // Past its segment: the checkpoint (and the slave's adopted copy) move beyond it.
  await sendFillers(ca, 'g', due)
  const end = a.store.messageSegmentLog?.endOffset ?? 0
  await waitFor(
    () => {
      const r = a.replicationStatus()
      return 'slaves' in r && r.slaves.some((s) => s.checkpoint >= end)
    },
    15_000,
    'slave adopted a checkpoint past the records',
  )
  await ca.close()
  await a.close({ offline: false })
  await waitFor(() => b.currentRole === 'master', 20_000, 'slave promoted')
  await waitFor(
    () => {
      try {
        return b.store !== undefined
      } catch {
        return false
      }
    },
    10_000,
    'the promoted store open',
  )
  t.ok(
    ((await metric(b, 'qmq_delay_dedupe_entries')) ?? 0) >= 1_501,
    'the promoted window holds the replicated ids',
  )
  // The producer resends its unacknowledged batch to the new master, same id.
  const cb = await RawClient.connect(b.port)
  t.teardown(() => cb.close())
  // Refused (retriable) until the new master holds its lease: the producer retries.
  let resent: number | undefined
  await waitFor(
    () => {
      if (resent === undefined) {
        resent = -1
        send(cb, [delayed('p', due)]).then(
          (r) => {
            resent = r[0]?.status
          },
          () => {
            resent = undefined
          },
        )
      }
      return resent === 0
    },
    10_000,
    'the resend acknowledged',
  )
  await waitFor(() => count(sa, 'p') + count(sb, 'p') >= 1, 20_000, 'p delivered')
  await waitFor(() => sb.delivered.length >= 1_500, 10_000, 'fillers delivered')
  await new Promise((r) => setTimeout(r, 300))
  t.equal(count(sa, 'p') + count(sb, 'p'), 1, 'delivered once across the promotion')
})
