import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { ManualClock } from '../../src/common/clock'
import { RequestCode } from '../../src/common/protocol/codes'
import { cancel, delayed, FakeSender, send, T0, waitFor } from './helpers/delay-helpers'
import { delayDir, FaultyIo, startDelay } from './helpers/start-delay'

function checkpointOffset(dir: string): number {
  if (!fs.existsSync(path.join(dir, 'checkpoint.json'))) return 0
  return (
    JSON.parse(fs.readFileSync(path.join(dir, 'checkpoint.json'), 'utf8')) as { messageLogOffset: number }
  ).messageLogOffset
}

t.test(
  'delay - a failed fdatasync of a schedule log keeps it unsynced: the retry syncs it before the checkpoint moves',
  async (t) => {
    const { dir, closers } = delayDir(t)
    const clock = new ManualClock(T0)
    const faults = new FaultyIo()
    const sender = new FakeSender()
    const { server, client } = await startDelay(
      closers,
      dir,
      clock,
      sender,
      // No dedupe window: it would keep the segments below the checkpoint (docs/delay.md "Duplicates").
      { checkpointIntervalMs: 600_000, segmentBytes: 64 * 1024, dedupeWindowMs: 0 },
      faults.io,
    )
    const before = checkpointOffset(dir)
    // Enough records (~100 bytes each) to fill several message-log segments, all due in one bucket.
    for (let k = 0; k < 30; k++) {
      const res = await send(
        client,
        Array.from({ length: 40 }, (_, i) => delayed(`f${k}-${i}`, T0 + 10 * 60_000 + i)),
      )
      t.ok(
        res.every((r) => r.status === 0),
        `batch ${k} stored`,
      )
    }
    const segmentsBefore = fs.readdirSync(path.join(dir, 'message')).length
    t.ok(segmentsBefore > 1, `${segmentsBefore} message-log segments`)

    faults.failing = /\.sched$/
    await t.rejects(server.store.checkpoint(), 'the checkpoint fails with the fdatasync')
    t.ok(faults.failed.length > 0, 'the schedule log fdatasync failed')
    t.equal(checkpointOffset(dir), before, 'the checkpoint did not move')
    t.equal(
      fs.readdirSync(path.join(dir, 'message')).length,
      segmentsBefore,
      'no message-log segment deleted',
    )

    faults.failing = undefined
    faults.synced.length = 0
    faults.written.length = 0
    await server.store.checkpoint()
    t.ok(
      faults.written.some((f) => f.endsWith('.sched')),
      'the retry first writes the unsynced schedule-log bytes again (the failed fdatasync may have dropped them)',
    )
    t.ok(
      faults.synced.some((f) => f.endsWith('.sched')),
      'the retry fdatasyncs the schedule log that failed',
    )
    t.ok(checkpointOffset(dir) > before, 'then the checkpoint moves')
    t.ok(fs.readdirSync(path.join(dir, 'message')).length < segmentsBefore, 'and old segments go')
    clock.set(T0 + 11 * 60_000)
    await waitFor(() => sender.delivered.length === 1200, 10_000, 'every message delivered')
  },
)

t.test('delay - an I/O error in the dispatch tick is counted and retried, not fatal', async (t) => {
  const { dir, closers } = delayDir(t)
  const clock = new ManualClock(T0)
  const sender = new FakeSender()
  const { server, client } = await startDelay(closers, dir, clock, sender)
  await send(client, [delayed('e1', T0 + 1_000), delayed('e2', T0 + 1_000)])
  const file = path.join(dir, 'schedule', `${String(T0).padStart(13, '0')}.sched`)
  await waitFor(() => fs.existsSync(file) && fs.statSync(file).size > 0, 5_000, 'the schedule log written')
  // The frames vanish from under the store: reading them fails (a real read error of a real file).
  const saved = fs.readFileSync(file)
  fs.truncateSync(file, 0)
  clock.set(T0 + 1_000)
  await waitFor(() => server.dispatcher.tickErrors >= 3, 5_000, 'failing ticks')
  t.equal(sender.delivered.length, 0, 'nothing sent while the frames cannot be read')
  fs.writeFileSync(file, saved)
  await waitFor(() => sender.delivered.length === 2, 5_000, 'delivery once reads work again')
  t.same(sender.ids(), ['e1', 'e2'])
  const metrics = await server.registry.metrics()
  t.match(metrics, /qmq_delay_tick_errors_total\S* [1-9]/, 'counted in the metric')
  await waitFor(() => server.store.stats().pending === 0, 5_000, 'deliveries recorded')
})

t.test(
  'delay - CANCEL is group-committed off the event loop, and tombstones go once their bucket is done',
  async (t) => {
    const { dir, closers } = delayDir(t)
    const clock = new ManualClock(T0)
    const faults = new FaultyIo()
    const sender = new FakeSender()
    const { server, client } = await startDelay(
      closers,
      dir,
      clock,
      sender,
      { checkpointIntervalMs: 600_000 },
      faults.io,
    )
    const ids = Array.from({ length: 50 }, (_, i) => `c${i}`)
    await send(client, [...ids.map((id) => delayed(id, T0 + 5_000)), delayed('keep', T0 + 5_000)])
    // Hold every fdatasync: a CANCEL must not be answered before its tombstone is durable, and the
    // event loop must keep serving meanwhile.
    let open = () => {}
    faults.gate = new Promise<void>((r) => {
      open = r
    })
    let answered = 0
    const cancels = ids.map((id) =>
      cancel(client, [id]).then((r) => {
        answered++
        return r
      }),
    )
    const ping = await client.request(RequestCode.PING, Buffer.alloc(0))
    t.equal(ping.status, 0, 'PING answered while the cancels wait for their fdatasync')
    await new Promise((r) => setTimeout(r, 50))
    t.equal(answered, 0, 'no CANCEL answered before its fdatasync completed')
    faults.gate = undefined
    open()
    t.same(
      await Promise.all(cancels),
      ids.map(() => [true]),
      'every cancel found its message',
    )
    const syncs = faults.synced.filter((f) => f.endsWith('cancel.log')).length
    t.ok(syncs >= 1 && syncs < ids.length, `group commit: ${syncs} fdatasyncs for ${ids.length} cancels`)
    t.equal(server.store.cancelStats().tombstones, 50)
    t.ok(server.store.cancelStats().fileBytes > 0)

    clock.set(T0 + 61_000) // the bucket [T0, T0 + 60 s) is due and over
    await waitFor(() => sender.delivered.length === 1, 5_000, 'the kept message')
    await waitFor(() => server.store.stats().pending === 0, 5_000, 'cancelled frames skipped')
    await server.store.checkpoint() // drops the finished bucket
    await server.store.cancelsSettled()
    t.same(server.store.cancelStats(), { tombstones: 0, fileBytes: 0 }, 'tombstones compacted away')
    t.same(sender.ids(), ['keep'], 'no cancelled message delivered')
    await (closers.pop() as () => Promise<void>)()
    t.equal(fs.statSync(path.join(dir, 'cancel.log')).size, 0)
    const again = new FakeSender()
    const b = await startDelay(closers, dir, clock, again)
    t.same(b.server.store.cancelStats().tombstones, 0, 'none after a restart')
    clock.advance(60_000)
    await new Promise((r) => setTimeout(r, 100))
    t.same(again.ids(), [])
  },
)
