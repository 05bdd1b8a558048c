import t from 'tap'
import { ManualClock } from '../../../src/common/clock'
import { StartPosition } from '../../../src/common/protocol/commands'
import { type FsIo, nodeFsIo } from '../../../src/broker/store/fs-io'
import { bodyOf, open, pullOpts, rec } from './helpers'

async function fill(store: Awaited<ReturnType<typeof open>>, subject: string, n: number): Promise<void> {
  await store.append(Array.from({ length: n }, (_, i) => rec(subject, { body: `${subject}${i}` })))
}

t.test('store - acks in any order; unacked messages stay in flight', async (t) => {
  const dir = t.testdir()
  const store = await open(dir)
  t.teardown(() => store.close())
  await fill(store, 's', 6)
  const got = await store.pull(pullOpts('s', 'g', 'c1'))
  t.equal(got.length, 6)
  t.equal(await store.ack('s', 'g', 'c1', [5, 1, 3]), 3)
  t.equal(await store.ack('s', 'g', 'c1', [5]), 0, 'a repeated ack is a no-op')
  const [b] = store.backlog('s', 'g')
  t.match(b, { pending: 0, inFlight: 3, cursor: 6, maxSequence: 5 })
  // After a reopen the same three are still in flight, held by c1.
  await store.close()
  const again = await open(dir)
  t.teardown(() => again.close())
  t.match(again.backlog('s', 'g')[0], { inFlight: 3, cursor: 6 })
  const held = await again.pull(pullOpts('s', 'g', 'c1', { resumeHeld: true }))
  t.same(
    held.map((m) => m.sequence),
    [0, 2, 4],
  )
  t.equal(await again.ack('s', 'g', 'c1', [0, 2, 4]), 3)
  t.match(again.backlog('s', 'g')[0], { inFlight: 0 })
})

t.test('store - consumers of one group share the backlog; an expired lease hands messages on', async (t) => {
  const clock = new ManualClock()
  const store = await open(t.testdir(), { clock, leaseMs: 1000 })
  t.teardown(() => store.close())
  await fill(store, 's', 10)
  const a = await store.pull(pullOpts('s', 'g', 'A', { maxMessages: 4 }))
  const b = await store.pull(pullOpts('s', 'g', 'B', { maxMessages: 4 }))
  t.same(
    a.map((m) => m.sequence),
    [0, 1, 2, 3],
  )
  t.same(
    b.map((m) => m.sequence),
    [4, 5, 6, 7],
  )
  await store.ack('s', 'g', 'A', [1])
  const woken: string[] = []
  store.onAvailable((s) => woken.push(s))
  clock.advance(600)
  store.heartbeat('B', [{ subject: 's', group: 'g' }])
  clock.advance(600) // A silent for 1200 ms > leaseMs; B heartbeated 600 ms ago
  store.sweep()
  t.same(woken, ['s'], 'listeners hear about the expired lease')
  const b2 = await store.pull(pullOpts('s', 'g', 'B', { maxMessages: 10 }))
  t.same(
    b2.map((m) => [m.sequence, m.deliveryCount]),
    [
      [0, 2],
      [2, 2],
      [3, 2],
      [8, 1],
      [9, 1],
    ],
  )
  // A comes back: it no longer holds anything.
  const a2 = await store.pull(pullOpts('s', 'g', 'A', { resumeHeld: true }))
  t.same(a2, [])
})

t.test(
  'store - nack redelivers after backoff; delivery counts survive a reopen; dead letter after maxRetries',
  async (t) => {
    const dir = t.testdir()
    const clock = new ManualClock()
    const opts = { clock, retryBaseMs: 1000, retryJitter: 0, maxRetries: 3 }
    let store = await open(dir, opts)
    await fill(store, 's', 2)
    let got = await store.pull(pullOpts('s', 'g', 'c'))
    t.equal(await store.nack('s', 'g', 'c', [0]), 1)
    t.equal(await store.ack('s', 'g', 'c', [1]), 1)
    t.same(await store.pull(pullOpts('s', 'g', 'c')), [], 'not before the backoff')
    clock.advance(1000)
    got = await store.pull(pullOpts('s', 'g', 'c'))
    t.same(
      got.map((m) => [m.sequence, m.deliveryCount, bodyOf(m.record)]),
      [[0, 2, 's0']],
    )
    await store.nack('s', 'g', 'c', [0])
    t.match(store.backlog('s', 'g')[0], { retrying: 1, inFlight: 1 })
    // Crash: the retry state and the count come back from checkpoint + action log.
    await store.abandon()
    store = await open(dir, opts)
    clock.advance(1999)
    t.same(await store.pull(pullOpts('s', 'g', 'c')), [], 'second backoff is 2 s')
    clock.advance(1)
    got = await store.pull(pullOpts('s', 'g', 'c2'))
    t.same(
      got.map((m) => [m.sequence, m.deliveryCount]),
      [[0, 3]],
    )
    // Third delivery ends in nack: maxRetries reached, dead-lettered.
    await store.nack('s', 'g', 'c2', [0])
    t.match(store.backlog('s', 'g')[0], { deadLettered: 1, inFlight: 0 })
    const dead = await store.listDeadLetters('s', 'g')
    t.same(
      dead.map((d) => [d.sequence, d.deliveryCount, bodyOf(d.record)]),
      [[0, 3, 's0']],
    )
    await store.close()
    store = await open(dir, opts)
    t.teardown(() => store.close())
    t.equal((await store.listDeadLetters('s', 'g')).length, 1, 'dead letters survive a reopen')
    t.equal(await store.redriveDeadLetters('s', 'g'), 1)
    got = await store.pull(pullOpts('s', 'g', 'c3'))
    t.same(
      got.map((m) => [m.sequence, m.deliveryCount]),
      [[0, 1]],
      'redriven: delivery count reset',
    )
    t.same(await store.listDeadLetters('s', 'g'), [])
  },
)

t.test('store - nack with deadLetter and with retryAfterMs', async (t) => {
  const clock = new ManualClock()
  const store = await open(t.testdir(), { clock })
  t.teardown(() => store.close())
  await fill(store, 's', 2)
  await store.pull(pullOpts('s', 'g', 'c'))
  t.equal(await store.nack('s', 'g', 'c', [0], { deadLetter: true }), 1)
  t.equal(await store.nack('s', 'g', 'c', [1], { retryAfterMs: 0 }), 1)
  const got = await store.pull(pullOpts('s', 'g', 'c'))
  t.same(
    got.map((m) => m.sequence),
    [1],
  )
  t.equal(await store.nack('s', 'g', 'other', [1]), 0, 'only the holder can nack')
  t.same(
    (await store.listDeadLetters('s', 'g')).map((d) => d.sequence),
    [0],
  )
})

t.test('store - start positions, cursor reset, broadcast, at-most-once and tag filters', async (t) => {
  const clock = new ManualClock()
  const store = await open(t.testdir(), { clock })
  t.teardown(() => store.close())
  await store.append([rec('s', { body: 'old0' }), rec('s', { body: 'old1' })])
  clock.advance(10_000)
  const mid = clock.now()
  await store.append([
    rec('s', { body: 'new0', tags: ['red'] }),
    rec('s', { body: 'new1', tags: ['blue', 'red'] }),
  ])

  const latest = await store.pull(pullOpts('s', 'gl', 'c', { start: StartPosition.LATEST }))
  t.same(latest, [], 'latest starts after what is stored')
  await store.append([rec('s', { body: 'after' })])
  t.same(
    (await store.pull(pullOpts('s', 'gl', 'c', { start: StartPosition.LATEST }))).map((m) =>
      bodyOf(m.record),
    ),
    ['after'],
  )
  const byTime = await store.pull(
    pullOpts('s', 'gt', 'c', { start: StartPosition.TIMESTAMP, startTime: mid }),
  )
  t.same(
    byTime.map((m) => bodyOf(m.record)),
    ['new0', 'new1', 'after'],
  )
  await store.resetCursor('s', 'gt', { kind: 'earliest' })
  t.same(
    (await store.pull(pullOpts('s', 'gt', 'c'))).map((m) => bodyOf(m.record)),
    ['old0', 'old1', 'new0', 'new1', 'after'],
    'reset to earliest re-delivers everything',
  )

  const all = await store.pull(pullOpts('s', 'gtag', 'c', { tags: ['blue', 'red'], tagsAll: true }))
  t.same(
    all.map((m) => bodyOf(m.record)),
    ['new1'],
  )
  t.match(
    store.backlog('s', 'gtag')[0],
    { cursor: 5, inFlight: 1 },
    'non-matching messages advance the cursor',
  )
  const any = await store.pull(pullOpts('s', 'gany', 'c', { tags: ['red', 'green'] }))
  t.same(
    any.map((m) => bodyOf(m.record)),
    ['new0', 'new1'],
  )

  const b1 = await store.pull(pullOpts('s', 'gb', 'i1', { broadcast: true }))
  const b2 = await store.pull(pullOpts('s', 'gb', 'i2', { broadcast: true, maxMessages: 2 }))
  t.equal(b1.length, 5)
  t.equal(b2.length, 2)
  t.same(await store.pull(pullOpts('s', 'gb', 'i1', { broadcast: true })), [])
  t.equal((await store.pull(pullOpts('s', 'gb', 'i2', { broadcast: true }))).length, 3)

  const once = await store.pull(pullOpts('s', 'gonce', 'c', { atMostOnce: true }))
  t.equal(once.length, 5)
  t.match(
    store.backlog('s', 'gonce')[0],
    { inFlight: 0, cursor: 5 },
    'at-most-once pulls are acked at hand-out',
  )
})

t.test('store - maxMessages and maxBytes bound a pull', async (t) => {
  const store = await open(t.testdir())
  t.teardown(() => store.close())
  await fill(store, 's', 10)
  t.equal((await store.pull(pullOpts('s', 'g', 'c', { maxMessages: 3 }))).length, 3)
  t.equal((await store.pull(pullOpts('s', 'g', 'c', { maxBytes: 1 }))).length, 1, 'at least one message')
  t.equal((await store.pull(pullOpts('s', 'g', 'c'))).length, 6)
})

t.test('store - a pull reads from disk no more records than its byte limit takes', async (t) => {
  let readBytes = 0
  const io: FsIo = {
    ...nodeFsIo,
    read: async (fd, buf, off, len, pos) => {
      const n = await nodeFsIo.read(fd, buf, off, len, pos)
      readBytes += n
      return n
    },
  }
  const store = await open(t.testdir(), { io, hotCacheBytes: 0, segmentBytes: 16 * 1024 * 1024 })
  t.teardown(() => store.close())
  const body = Buffer.alloc(64 * 1024, 0x61)
  await store.append(Array.from({ length: 40 }, () => rec('s', { body })))
  readBytes = 0
  const got = await store.pull(pullOpts('s', 'g', 'c', { maxBytes: 2 * body.length + 1 }))
  t.equal(got.length, 2, 'the record that crosses the limit is the last one')
  t.ok(
    readBytes < 3 * body.length,
    `read ${readBytes} bytes for two records of ${body.length} (not the next ones of the 40)`,
  )
})

t.test(
  'store - the retry backoff doubles, caps, and draws its jitter from the given random source',
  async (t) => {
    const draws = [0, 0.5, 0.999]
    let i = 0
    const store = await open(t.testdir(), {
      retryBaseMs: 1000,
      retryMaxMs: 3000,
      retryJitter: 0.5,
      random: () => draws[i++ % draws.length] as number,
    })
    t.teardown(() => store.close())
    // min(1000 x 2^(dc-1), 3000) x (1 + 0.5 x (2r - 1)), r cycling 0, 0.5, 0.999
    t.equal(store.backoffMs(1), 500)
    t.equal(store.backoffMs(2), 2000)
    t.equal(store.backoffMs(3), 4497)
    t.equal(store.backoffMs(9), 1500, 'capped at retryMaxMs before the jitter')
  },
)
