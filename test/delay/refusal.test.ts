import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { ManualClock } from '../../src/common/clock'
import { bucketFileName } from '../../src/delay/store/bucket'
import { delayed, FakeSender, send, sleep, T0, waitFor } from './helpers/delay-helpers'
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
