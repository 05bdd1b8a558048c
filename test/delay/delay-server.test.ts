import fs from 'node:fs'
import path from 'node:path'
import t, { type Test } from 'tap'
import { ManualClock } from '../../src/common/clock'
import { ERROR_CODES } from '../../src/common/error-codes'
import { silentLogger } from '../../src/common/logger'
import { RequestCode } from '../../src/common/protocol/codes'
import { DelayServer, type DelayOptions } from '../../src/delay/delay-server'
import { RawClient } from '../helpers/raw-client'
import { cancel, DELAY_TEST_SECRET, delayed, FakeSender, send, T0, waitFor } from './helpers/delay-helpers'

/** Registers the closing teardown before t.testdir() so servers close before their dir is removed. */
const closers = new WeakMap<Test, (() => Promise<void>)[]>()
function dirFor(t: Test): string {
  const list: (() => Promise<void>)[] = []
  closers.set(t, list)
  t.teardown(async () => {
    for (const c of list.reverse()) await c()
  })
  return t.testdir()
}

async function startServer(
  t: Test,
  dataDir: string,
  clock: ManualClock,
  sender: FakeSender,
  options: Partial<DelayOptions> = {},
): Promise<{ server: DelayServer; client: RawClient }> {
  const server = new DelayServer(
    {
      port: 0,
      dataDir,
      bucketMinutes: 1,
      loadAheadMs: 10_000,
      tickMs: 5,
      checkpointIntervalMs: 50,
      clusterSecret: DELAY_TEST_SECRET,
      ...options,
    },
    { clock, logger: silentLogger, sender, routes: { groups: async () => [] } },
  )
  await server.start()
  const client = await RawClient.connect(server.port)
  closers.get(t)?.push(async () => {
    await client.close()
    await server.close()
  })
  return { server, client }
}

t.test('delay - messages due across several buckets arrive in due order', async (t) => {
  const clock = new ManualClock(T0)
  const sender = new FakeSender()
  const { client } = await startServer(t, dirFor(t), clock, sender)
  // 40 messages over 5 one-minute buckets, sent out of order, some with equal due times.
  const msgs: { id: string; at: number }[] = []
  for (let i = 0; i < 40; i++)
    msgs.push({ id: `m${i}`, at: T0 + 1_000 + ((i * 7_919) % 5) * 60_000 + (i % 4) * 3_000 })
  const res = await send(
    client,
    msgs.map((m) => delayed(m.id, m.at)),
  )
  t.same(
    res.map((r) => r.status),
    msgs.map(() => 0),
  )
  const expected = [...msgs].sort((a, b) => a.at - b.at) // stable: equal due times keep send order
  for (let now = T0; now <= T0 + 6 * 60_000; now += 1_500) {
    clock.set(now)
    const due = expected.filter((m) => m.at <= now).length
    await waitFor(() => sender.delivered.length >= due, 5_000, `${due} deliveries at +${now - T0}`)
    t.equal(sender.delivered.length, due, `nothing early at +${now - T0}`)
  }
  t.same(
    sender.ids(),
    expected.map((m) => m.id),
  )
  t.equal(
    sender.delivered[0]?.scheduleAt,
    expected[0]?.at,
    'the schedule time is kept on the delivered record',
  )
})

t.test('delay - schedule time checks: horizon, not delayed, negative, past', async (t) => {
  const clock = new ManualClock(T0)
  const sender = new FakeSender()
  const { client } = await startServer(t, dirFor(t), clock, sender, { horizonMs: 3_600_000 })
  const res = await send(client, [
    delayed('too-far', T0 + 3_600_001),
    delayed('edge', T0 + 3_600_000),
    delayed('realtime', undefined),
    delayed('negative', -5),
    delayed('past', T0 - 86_400_000),
    delayed('now', T0),
  ])
  t.same(
    res.map((r) => r.status),
    [
      ERROR_CODES.QMQ_ERR_DELAY_TOO_FAR.status,
      0,
      ERROR_CODES.QMQ_ERR_NOT_DELAYED.status,
      ERROR_CODES.QMQ_ERR_SCHEDULE_INVALID.status,
      0,
      0,
    ],
  )
  t.match(res[0]?.message, /beyond the horizon/)
  // Past and present times go out at once, without moving the clock.
  await waitFor(() => sender.delivered.length === 2, 5_000, 'immediate dispatch')
  t.same(sender.ids().sort(), ['now', 'past'])
  clock.set(T0 + 3_600_000)
  await waitFor(() => sender.delivered.length === 3, 5_000, 'edge of the horizon')
  t.equal(sender.delivered[2]?.id, 'edge')
})

t.test('delay - cancel a pending message by id', async (t) => {
  const clock = new ManualClock(T0)
  const sender = new FakeSender()
  const { client } = await startServer(t, dirFor(t), clock, sender)
  await send(client, [
    delayed('keep', T0 + 5_000),
    delayed('drop', T0 + 5_000),
    delayed('later', T0 + 600_000),
  ])
  t.same(await cancel(client, ['drop', 'unknown']), [true, false])
  t.same(await cancel(client, ['drop']), [false], 'a second cancel finds nothing pending')
  t.same(await cancel(client, ['later']), [true], 'a message in an unloaded bucket can be cancelled too')
  clock.set(T0 + 700_000)
  await waitFor(() => sender.delivered.length >= 1)
  await new Promise((r) => setTimeout(r, 100))
  t.same(sender.ids(), ['keep'])
  t.same(await cancel(client, ['keep']), [false], 'delivered messages are not pending')
})

t.test('delay - restart in the middle of a bucket resends only what was not dispatched', async (t) => {
  const dir = dirFor(t)
  const clock = new ManualClock(T0)
  const first = new FakeSender()
  const a = new DelayServer(
    { port: 0, dataDir: dir, bucketMinutes: 1, loadAheadMs: 10_000, tickMs: 5, checkpointIntervalMs: 50 },
    { clock, logger: silentLogger, sender: first },
  )
  await a.start()
  const c = await RawClient.connect(a.port)
  await send(
    c,
    Array.from({ length: 10 }, (_, i) => delayed(`r${i}`, T0 + (i + 1) * 1_000)),
  )
  clock.set(T0 + 5_500)
  await waitFor(() => first.delivered.length === 5)
  await c.close()
  await a.close()
  t.same(first.ids(), ['r0', 'r1', 'r2', 'r3', 'r4'])

  const second = new FakeSender()
  const { server: b } = await startServer(t, dir, clock, second)
  t.equal(b.store.stats().pending, 5, 'five still pending after the restart')
  clock.set(T0 + 20_000)
  await waitFor(() => second.delivered.length === 5)
  await new Promise((r) => setTimeout(r, 100))
  t.same(second.ids(), ['r5', 'r6', 'r7', 'r8', 'r9'])
  await waitFor(() => b.store.stats().pending === 0)
})

t.test(
  'delay - a message due while every broker group is down is delivered when one comes back',
  async (t) => {
    const clock = new ManualClock(T0)
    const sender = new FakeSender()
    sender.down = true
    const { server, client } = await startServer(t, dirFor(t), clock, sender, {
      retryInitialMs: 10,
      retryMaxMs: 40,
    })
    await send(client, [delayed('d1', T0 + 1_000), delayed('d2', T0 + 1_000)])
    // ManualClock drives due times, backoff uses it too: move it on so retries happen.
    clock.set(T0 + 1_000)
    await waitFor(() => sender.attempts >= 1)
    for (let i = 0; i < 5; i++) {
      clock.advance(100)
      const before = sender.attempts
      await waitFor(() => sender.attempts > before, 5_000, 'another retry')
    }
    t.equal(sender.delivered.length, 0)
    t.equal(server.dispatcher.backlog, 2, 'both kept for retry')
    sender.down = false
    clock.advance(100)
    await waitFor(() => sender.delivered.length === 2)
    t.same(sender.ids(), ['d1', 'd2'])
    await waitFor(() => server.store.stats().pending === 0)
  },
)

t.test('delay - bad requests get errors and the connection keeps working', async (t) => {
  const clock = new ManualClock(T0)
  const { client } = await startServer(t, dirFor(t), clock, new FakeSender())
  const unknown = await client.request(RequestCode.PULL, Buffer.alloc(0))
  t.equal(unknown.status, ERROR_CODES.QMQ_ERR_UNKNOWN_REQUEST.status)
  const malformed = await client.request(RequestCode.SEND, Buffer.from([0, 0, 0, 5]))
  t.equal(malformed.status, ERROR_CODES.QMQ_ERR_PAYLOAD_MALFORMED.status)
  const version = await client.request(RequestCode.PING, Buffer.alloc(0), { version: 9 })
  t.equal(version.status, ERROR_CODES.QMQ_ERR_UNSUPPORTED_VERSION.status)
  const corrupt = delayed('c', T0 + 1_000)
  corrupt.writeUInt8(corrupt.readUInt8(corrupt.length - 1) ^ 0xff, corrupt.length - 1)
  const res = await send(client, [corrupt, delayed('ok', T0 + 1_000)])
  t.same(
    res.map((r) => r.status),
    [ERROR_CODES.QMQ_ERR_CRC_MISMATCH.status, 0],
  )
  const ping = await client.request(RequestCode.PING, Buffer.alloc(0))
  t.equal(ping.status, 0)
})

t.test('delay - a torn schedule log tail is cut at the last good frame with a report', async (t) => {
  const dir = dirFor(t)
  const clock = new ManualClock(T0)
  const a = new DelayServer(
    { port: 0, dataDir: dir, bucketMinutes: 1, loadAheadMs: 0 },
    { clock, logger: silentLogger, sender: new FakeSender() },
  )
  await a.start()
  const c = await RawClient.connect(a.port)
  await send(
    c,
    ['x1', 'x2', 'x3'].map((id) => delayed(id, T0 + 10 * 60_000)),
  )
  await c.close()
  await a.close()
  const file = path.join(dir, 'schedule', `${String(T0 + 10 * 60_000).padStart(13, '0')}.sched`)
  const size = fs.statSync(file).size
  // Tear the last frame (half written) and add garbage after it.
  fs.truncateSync(file, size - 20)
  fs.appendFileSync(file, Buffer.from('garbage garbage garbage'))
  // Also drop the message log so nothing can replay the torn frame back.
  fs.rmSync(path.join(dir, 'message'), { recursive: true })
  const sender = new FakeSender()
  const { server } = await startServer(t, dir, clock, sender, { loadAheadMs: 0 })
  t.equal(server.store.recoveryReports.length, 1)
  t.match(server.store.recoveryReports[0], { file, droppedBytes: Number })
  t.equal(server.store.stats().pending, 2)
  clock.set(T0 + 11 * 60_000)
  await waitFor(() => sender.delivered.length === 2)
  t.same(sender.ids(), ['x1', 'x2'])
})

t.test('delay - a torn message log tail is replayed up to the last good record', async (t) => {
  const dir = dirFor(t)
  const clock = new ManualClock(T0)
  const a = new DelayServer(
    { port: 0, dataDir: dir, bucketMinutes: 1, checkpointIntervalMs: 600_000 },
    { clock, logger: silentLogger, sender: new FakeSender() },
  )
  await a.start()
  const c = await RawClient.connect(a.port)
  await send(c, [delayed('y1', T0 + 5_000), delayed('y2', T0 + 5_000)])
  await c.close()
  await a.close()
  // Simulate a crash before the schedule logs were synced: no schedule data, old checkpoint.
  fs.rmSync(path.join(dir, 'schedule'), { recursive: true })
  fs.mkdirSync(path.join(dir, 'schedule'))
  fs.writeFileSync(path.join(dir, 'checkpoint.json'), JSON.stringify({ messageLogOffset: 0 }))
  const seg = path.join(dir, 'message', fs.readdirSync(path.join(dir, 'message'))[0] as string)
  fs.appendFileSync(seg, delayed('torn', T0 + 5_000).subarray(0, 30))
  const sender = new FakeSender()
  const { server } = await startServer(t, dir, clock, sender)
  t.equal(server.store.recoveryReports.length, 1, 'the torn record is reported')
  clock.set(T0 + 6_000)
  await waitFor(() => sender.delivered.length === 2)
  t.same(sender.ids(), ['y1', 'y2'])
})

t.test('delay - bucket width cannot change on a used data dir; options are checked', async (t) => {
  const dir = dirFor(t)
  const clock = new ManualClock(T0)
  const a = new DelayServer(
    { port: 0, dataDir: dir, bucketMinutes: 5 },
    { clock, logger: silentLogger, sender: new FakeSender() },
  )
  await a.start()
  await a.close()
  const b = new DelayServer(
    { port: 0, dataDir: dir, bucketMinutes: 10 },
    { clock, logger: silentLogger, sender: new FakeSender() },
  )
  await t.rejects(b.start(), { code: 'QMQ_ERR_CONFIG_INVALID' })
  await b.close()
  t.throws(() => new DelayServer({ bucketMinutes: 61 }), { code: 'QMQ_ERR_CONFIG_INVALID' })
  t.throws(() => new DelayServer({ horizonMs: 'x' as unknown as number }), { code: 'QMQ_ERR_CONFIG_INVALID' })
})
