import { testDir } from '../helpers/testdir'
import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { startReplicationMetaserver } from '../helpers/replication'
import { ManualClock } from '../../src/common/clock'
import { silentLogger } from '../../src/common/logger'
import { type DelayOptions, DelayServer } from '../../src/delay/delay-server'
import { bucketFileName } from '../../src/delay/store/bucket'
import { RawClient } from '../helpers/raw-client'
import { DELAY_TEST_SECRET, delayed, FakeSender, send, sleep, T0, waitFor } from './helpers/delay-helpers'
import { FAST_REPLICATION, freshDir, slaveDirBeside, until } from './helpers/replication-helpers'
import { crashBeforeSchedules, delayDir, startDelay } from './helpers/start-delay'

/**
 * A SEND refused after its record reached the message log (filing it into its schedule log failed)
 * stays refused across a restart: the replay of the message log does not schedule it (its refusal
 * marker names it), and the rebuilt dedupe window does not hold its id (so a resend is stored).
 */

const count = (s: FakeSender, id: string): number => s.delivered.filter((d) => d.id === id).length

/** A directory where bucket `start`'s schedule log goes: opening it fails (EISDIR) until removed. */
function breakBucket(dir: string, start: number): () => void {
  const sched = path.join(dir, 'schedule', bucketFileName(start, '.sched'))
  fs.mkdirSync(sched)
  return () => fs.rmdirSync(sched)
}

t.test('delay refusal - a refused record is not scheduled by the replay after a crash', async (t) => {
  const { dir, closers } = delayDir(t)
  const clock = new ManualClock(T0)
  const { client } = await startDelay(closers, dir, clock, new FakeSender())
  const due = T0 + 90_000
  t.same(
    (await send(client, [delayed('kept', T0 + 30_000)])).map((r) => r.status),
    [0],
  )
  const repair = breakBucket(dir, T0 + 60_000)
  const refused = await send(client, [delayed('lost', due), delayed('gone', due)])
  t.ok(
    refused.every((r) => r.status !== 0),
    'both refused',
  )
  repair()
  t.same(await send(client, [delayed('lost', due), delayed('kept2', due)]), [
    { status: 0, message: '' },
    { status: 0, message: '' },
  ])
  // The crash: the message log as it is, nothing filed, the replay starts at 0.
  await crashBeforeSchedules(dir, closers)
  const sender = new FakeSender()
  const { client: c2 } = await startDelay(closers, dir, clock, sender)
  clock.set(due + 1_000)
  await waitFor(() => ['kept', 'kept2', 'lost'].every((id) => count(sender, id) >= 1), 5_000, 'deliveries')
  await sleep(200)
  t.same(
    ['kept', 'kept2', 'lost', 'gone'].map((id) => count(sender, id)),
    [1, 1, 1, 0],
    'the refused copies are never delivered; the resend and the others once',
  )
  t.same(
    await send(c2, [delayed('gone', due)]),
    [{ status: 0, message: '' }],
    'a resend of the refused id is stored, not a duplicate',
  )
  clock.set(due + 2_000)
  await waitFor(() => count(sender, 'gone') === 1, 5_000, 'the resend delivered')
})

t.test('delay refusal - the window rebuilt after a clean restart does not hold a refused id', async (t) => {
  const { dir, closers } = delayDir(t)
  const clock = new ManualClock(T0)
  const { client } = await startDelay(closers, dir, clock, new FakeSender())
  const due = T0 + 90_000
  const repair = breakBucket(dir, T0 + 60_000)
  const [refused] = await send(client, [delayed('gone', due)])
  t.not(refused?.status, 0, 'refused')
  repair()
  t.same(
    (await send(client, [delayed('other', due)])).map((r) => r.status),
    [0],
  )
  await (closers.pop() as () => Promise<void>)()
  const sender = new FakeSender()
  const { client: c2 } = await startDelay(closers, dir, clock, sender)
  t.same(
    await send(c2, [delayed('gone', due)]),
    [{ status: 0, message: '' }],
    'the resend after the restart is stored',
  )
  t.same(
    await send(c2, [delayed('other', due)]),
    [{ status: 0, message: 'duplicate' }],
    'the window holds the rest',
  )
  clock.set(due + 1_000)
  await waitFor(() => count(sender, 'gone') === 1 && count(sender, 'other') === 1, 5_000, 'deliveries')
  await sleep(200)
  t.same([count(sender, 'gone'), count(sender, 'other')], [1, 1])
})

t.test('delay refusal - a promoted slave does not schedule a record its master refused', async (t) => {
  const { meta, admin } = await startReplicationMetaserver(t, {
    dataDir: testDir(t),
    clusterSecret: DELAY_TEST_SECRET,
    adminToken: 'delay-refusal-admin',
    heartbeatTimeoutMs: 2_000,
  })
  const aDir = freshDir(t, 'delay-refusal')
  const bDir = slaveDirBeside(t, aDir)
  const sa = new FakeSender()
  const sb = new FakeSender()
  const server = (dir: string, sender: FakeSender, extra: Partial<DelayOptions>): DelayServer => {
    const s = new DelayServer(
      { ...FAST_REPLICATION, dataDir: dir, group: 'rf1', metaserver: meta.url, ...extra },
      { logger: silentLogger, sender, routes: { groups: async () => [] } },
    )
    t.teardown(() => s.close())
    return s
  }
  // No checkpoint after the start: the slave adopts none past the refused records, and its replay on
  // promotion reads them.
  const a = server(aDir, sa, { checkpointIntervalMs: 600_000 })
  await a.start()
  const b = server(bDir, sb, { role: 'slave' })
  await b.start()
  await until('slave in sync', async () => {
    const g = await admin.getGroup('rf1')
    return g.servers.find((s) => s.role === 'master')?.replication?.inSyncSlaves?.includes(b.address) === true
  })
  const ca = await RawClient.connect(a.port)
  t.teardown(() => ca.close())
  const due = Date.now() + 3_000
  const repair = breakBucket(aDir, Math.floor(due / 60_000) * 60_000)
  const refused = await send(ca, [delayed('lost', due), delayed('gone', due)])
  t.ok(
    refused.every((r) => r.status !== 0),
    'both refused',
  )
  repair()
  t.same(
    (await send(ca, [delayed('lost', due), delayed('kept', due)])).map((r) => r.status),
    [0, 0],
    'the resend and another stored (under sync: the slave holds them)',
  )
  await ca.close()
  await a.close({ offline: false })
  await waitFor(() => b.currentRole === 'master', 20_000, 'slave promoted')
  const total = (id: string) => count(sa, id) + count(sb, id)
  await waitFor(() => total('lost') >= 1 && total('kept') >= 1, 20_000, 'deliveries')
  await sleep(300)
  t.same(
    ['lost', 'kept', 'gone'].map(total),
    [1, 1, 0],
    'the refused copies are not delivered by the promoted slave',
  )
})
