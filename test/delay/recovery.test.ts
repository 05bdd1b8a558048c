import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { ManualClock } from '../../src/common/clock'
import { encodeRecord } from '../../src/common/record'
import { delayed, FakeSender, send, T0, waitFor } from './helpers/delay-helpers'
import { crashBeforeSchedules, delayDir, startDelay } from './helpers/start-delay'

/**
 * Damage in any of the delay server's logs costs exactly the damaged records, reported, and nothing
 * comes back at a later start. One flipped byte per log kind; each data dir is opened twice after it.
 */

function big(id: string, scheduleAt: number): Buffer {
  return encodeRecord({
    id,
    subject: 'order.created',
    createdAt: T0,
    scheduleAt,
    tags: [],
    properties: new Map(),
    body: `${id}:${'x'.repeat(4000)}`,
  })
}

function flip(file: string, at: number): void {
  const fd = fs.openSync(file, 'r+')
  const b = Buffer.alloc(1)
  fs.readSync(fd, b, 0, 1, at)
  b[0] = (b[0] as number) ^ 0x5a
  fs.writeSync(fd, b, 0, 1, at)
  fs.closeSync(fd)
}

const settle = () => new Promise((r) => setTimeout(r, 150))

t.test(
  'delay - a flipped byte in the message log costs that record only, and nothing reappears later',
  async (t) => {
    const { dir, closers } = delayDir(t)
    const clock = new ManualClock(T0)
    const opts = { checkpointIntervalMs: 600_000, segmentBytes: 64 * 1024 }
    const a = await startDelay(closers, dir, clock, new FakeSender(), opts)
    const ids = Array.from({ length: 60 }, (_, i) => `m${i}`)
    for (let i = 0; i < ids.length; i += 10) {
      const res = await send(
        a.client,
        ids.slice(i, i + 10).map((id, k) => big(id, T0 + 5_000 + i + k)),
      )
      t.ok(res.every((r) => r.status === 0))
    }
    // A crash before the schedule logs were synced: only the message log has the records.
    await crashBeforeSchedules(dir, closers)
    const segments = fs.readdirSync(path.join(dir, 'message')).sort()
    t.ok(segments.length >= 4, `${segments.length} segments`)
    // Damage the first record of the second segment (a byte of its body).
    const seg = path.join(dir, 'message', segments[1] as string)
    const head = fs.readFileSync(seg).subarray(0, 64)
    const length = head.readUInt32BE(0)
    const lostId = head.toString('utf8', 32, 32 + head.readUInt16BE(28))
    flip(seg, 200)

    const sender = new FakeSender()
    const b = await startDelay(closers, dir, clock, sender, opts)
    t.same(
      b.server.store.recoveryReports.map((r) => ({ file: r.file, droppedBytes: r.droppedBytes })),
      [{ file: 'message', droppedBytes: length }],
      'one report: exactly the damaged record',
    )
    t.equal(b.server.store.stats().pending, 59, 'every other record replayed')
    // New records after the reopen (they roll new segments past the damaged one).
    const fresh = Array.from({ length: 40 }, (_, i) => `n${i}`)
    for (let i = 0; i < fresh.length; i += 10) {
      await send(
        b.client,
        fresh.slice(i, i + 10).map((id, k) => big(id, T0 + 6_000 + i + k)),
      )
    }
    clock.set(T0 + 10_000)
    await waitFor(() => sender.delivered.length >= 99, 10_000, '99 deliveries')
    await settle()
    const expected = [...ids.filter((id) => id !== lostId), ...fresh].sort()
    t.same(sender.ids().sort(), expected, 'each good record delivered once, the damaged one not')
    await (closers.pop() as () => Promise<void>)()

    for (let round = 0; round < 2; round++) {
      const again = new FakeSender()
      const c = await startDelay(closers, dir, clock, again, opts)
      t.equal(c.server.store.stats().pending, 0, `reopen ${round + 2}: nothing pending`)
      clock.advance(60_000)
      await settle()
      t.same(again.ids(), [], `reopen ${round + 2}: nothing delivered again`)
      await (closers.pop() as () => Promise<void>)()
    }
  },
)

t.test('delay - a flipped byte in a schedule log costs that frame only', async (t) => {
  const { dir, closers } = delayDir(t)
  const clock = new ManualClock(T0)
  const opts = { loadAheadMs: 0 }
  const a = await startDelay(closers, dir, clock, new FakeSender(), opts)
  const ids = Array.from({ length: 30 }, (_, i) => `s${i}`)
  await send(
    a.client,
    ids.map((id, i) => delayed(id, T0 + 10 * 60_000 + i)),
  )
  await (closers.pop() as () => Promise<void>)()
  const file = path.join(dir, 'schedule', `${String(T0 + 10 * 60_000).padStart(13, '0')}.sched`)
  const buf = fs.readFileSync(file)
  let pos = 0
  for (let k = 0; k < 10; k++) pos += buf.readUInt32BE(pos)
  const length = buf.readUInt32BE(pos)
  flip(file, pos + length - 3) // in frame 10's record body

  const sender = new FakeSender()
  const b = await startDelay(closers, dir, clock, sender, opts)
  t.same(
    b.server.store.recoveryReports.map((r) => ({
      file: r.file,
      offset: r.offset,
      droppedBytes: r.droppedBytes,
    })),
    [{ file, offset: pos, droppedBytes: length }],
    'one report: exactly the damaged frame',
  )
  t.equal(b.server.store.stats().pending, 29)
  clock.set(T0 + 11 * 60_000)
  await waitFor(() => sender.delivered.length >= 29, 10_000, '29 deliveries')
  await settle()
  t.same(
    sender.ids(),
    ids.filter((id) => id !== 's10'),
    'every frame but the damaged one, in order',
  )
  await (closers.pop() as () => Promise<void>)()

  for (let round = 0; round < 2; round++) {
    const again = new FakeSender()
    const c = await startDelay(closers, dir, clock, again, opts)
    t.equal(c.server.store.stats().pending, 0, `reopen ${round + 2}: nothing pending`)
    clock.advance(60_000)
    await settle()
    t.same(again.ids(), [], `reopen ${round + 2}: nothing delivered again`)
    await (closers.pop() as () => Promise<void>)()
  }
})

t.test('delay - a flipped byte in a dispatch log costs one resend only', async (t) => {
  const { dir, closers } = delayDir(t)
  const clock = new ManualClock(T0)
  const first = new FakeSender()
  const a = await startDelay(closers, dir, clock, first)
  const ids = Array.from({ length: 30 }, (_, i) => `d${i}`)
  await send(
    a.client,
    ids.map((id, i) => delayed(id, T0 + 1_000 + i)),
  )
  // One message stays pending, so the bucket is kept.
  await send(a.client, [delayed('later', T0 + 50_000)])
  clock.set(T0 + 2_000)
  await waitFor(() => first.delivered.length === 30, 10_000, '30 deliveries')
  await waitFor(() => a.server.store.stats().pending === 1, 5_000, 'deliveries recorded')
  await (closers.pop() as () => Promise<void>)()
  const file = path.join(dir, 'dispatch', `${String(T0).padStart(13, '0')}.disp`)
  t.equal(fs.statSync(file).size, 30 * 12)
  flip(file, 10 * 12 + 5)

  const sender = new FakeSender()
  const b = await startDelay(closers, dir, clock, sender)
  t.same(
    b.server.store.recoveryReports.map((r) => ({
      file: r.file,
      offset: r.offset,
      droppedBytes: r.droppedBytes,
    })),
    [{ file, offset: 120, droppedBytes: 12 }],
    'one report: exactly the damaged entry',
  )
  await waitFor(() => sender.delivered.length >= 1, 10_000, 'the resend')
  await settle()
  t.same(sender.ids(), ['d10'], 'only the message of the damaged entry is sent again')
  await waitFor(() => b.server.store.stats().pending === 1, 5_000, 'resend recorded')
  await (closers.pop() as () => Promise<void>)()

  for (let round = 0; round < 2; round++) {
    const again = new FakeSender()
    const c = await startDelay(closers, dir, clock, again)
    t.equal(c.server.store.stats().pending, 1, `reopen ${round + 2}: only 'later' pending`)
    await settle()
    t.same(again.ids(), [], `reopen ${round + 2}: nothing delivered again`)
    await (closers.pop() as () => Promise<void>)()
  }
})
