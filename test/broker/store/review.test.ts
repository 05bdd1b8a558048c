import t from 'tap'
import { ManualClock } from '../../../src/common/clock'
import { createRegistry } from '../../../src/common/metrics'
import { type FsIo, nodeFsIo } from '../../../src/broker/store/fs-io'
import { bodyOf, open, pullOpts, rec } from './helpers'

// Correctness review of consumer semantics: each test shows a bug that was found (and fixed).

const big = (i: number): string => `${'p'.repeat(400)}${i}`

t.test('store review - resetCursor moves the cursors of broadcast consumers too', async (t) => {
  const store = await open(t.testdir())
  t.teardown(() => store.close())
  await store.append([rec('s', { body: 'a' }), rec('s', { body: 'b' })])
  const first = await store.pull(pullOpts('s', 'gb', 'i1', { broadcast: true }))
  t.equal(first.length, 2)
  t.same(await store.pull(pullOpts('s', 'gb', 'i1', { broadcast: true })), [])
  await store.resetCursor('s', 'gb', { kind: 'earliest' })
  t.same(
    (await store.pull(pullOpts('s', 'gb', 'i1', { broadcast: true }))).map((m) => bodyOf(m.record)),
    ['a', 'b'],
    'a broadcast consumer re-reads after a reset to earliest',
  )
  t.match(store.backlog('s', 'gb')[0], { cursor: 2, pending: 0 }, 'backlog follows the broadcast cursor')
})

t.test(
  'store review - dead letters whose messages retention removed are pruned and do not hide others',
  async (t) => {
    const dir = t.testdir()
    const opts = { segmentBytes: 4096, retentionBytes: 2 * 4096 }
    let store = await open(dir, opts)
    for (let i = 0; i < 30; i++) await store.append([rec('r', { body: big(i) })])
    const got = await store.pull(pullOpts('r', 'g', 'c', { maxMessages: 30 }))
    t.equal(got.length, 30)
    // Dead-letter an early one and the newest; ack the rest.
    await store.nack('r', 'g', 'c', [0, 29], { deadLetter: true })
    await store.ack(
      'r',
      'g',
      'c',
      got.map((m) => m.sequence).filter((s) => s !== 0 && s !== 29),
    )
    t.ok((await store.runRetention()) > 0, 'retention deleted segments')
    const listed = await store.listDeadLetters('r', 'g', { limit: 1 })
    t.same(
      listed.map((d) => d.sequence),
      [29],
      'the first page is not empty because of a removed message',
    )
    t.match(store.backlog('r', 'g')[0], { deadLettered: 1 })
    await store.close()
    store = await open(dir, opts)
    t.teardown(() => store.close())
    t.match(store.backlog('r', 'g')[0], { deadLettered: 1 }, 'also after a reopen')
  },
)

t.test('store review - a held message removed by retention does not stay in flight forever', async (t) => {
  const dir = t.testdir()
  const opts = { segmentBytes: 4096, retentionBytes: 2 * 4096 }
  let store = await open(dir, opts)
  for (let i = 0; i < 30; i++) await store.append([rec('r', { body: big(i) })])
  const got = await store.pull(pullOpts('r', 'g', 'c', { maxMessages: 30 }))
  await store.ack(
    'r',
    'g',
    'c',
    got.map((m) => m.sequence).filter((s) => s !== 0 && s !== 29),
  )
  await store.close()
  store = await open(dir, opts)
  t.teardown(() => store.close())
  t.ok((await store.runRetention()) > 0, 'retention deleted segments')
  // The consumer reconnects: it gets back what still exists; the removed one is dropped.
  const held = await store.pull(pullOpts('r', 'g', 'c', { resumeHeld: true }))
  t.same(
    held.map((m) => m.sequence),
    [29],
  )
  t.match(store.backlog('r', 'g')[0], { inFlight: 1 }, 'seq 0 is no longer in flight')
})

t.test(
  'store review - retention counts nothing unconsumed when every broadcast consumer has read it',
  async (t) => {
    const registry = createRegistry()
    const store = await open(t.testdir(), { segmentBytes: 4096, retentionBytes: 2 * 4096, registry })
    t.teardown(() => store.close())
    for (let i = 0; i < 30; i++) await store.append([rec('r', { body: big(i) })])
    t.equal((await store.pull(pullOpts('r', 'gb', 'i1', { broadcast: true }))).length, 30)
    t.ok((await store.runRetention()) > 0)
    const metric = await registry.getSingleMetricAsString('qmq_store_retention_unconsumed_messages_total')
    t.match(metric, /qmq_store_retention_unconsumed_messages_total 0\n?$/m)
    t.match(store.backlog('r', 'gb')[0], { pending: 0, cursor: 30 }, 'backlog follows the broadcast cursors')
  },
)

t.test('store review - a late ack during a pull never resets a redelivery count', async (t) => {
  const clock = new ManualClock()
  const store = await open(t.testdir(), { clock })
  t.teardown(() => store.close())
  // For each k, the old holder's late ack lands k microtask turns into another consumer's pull.
  for (let k = 0; k < 40; k++) {
    const subject = `s${k}`
    await store.append([rec(subject), rec(subject)])
    await store.pull(pullOpts(subject, 'g', 'A', { maxMessages: 1 }))
    await store.nack(subject, 'g', 'A', [0], { retryAfterMs: 0 })
    const p = store.pull(pullOpts(subject, 'g', 'B'))
    for (let i = 0; i < k; i++) await Promise.resolve()
    const acked = store.ack(subject, 'g', 'A', [0])
    const got = await p
    await acked
    const zero = got.find((m) => m.sequence === 0)
    if (zero) t.equal(zero.deliveryCount, 2, `k=${k}: a redelivery counts as the second delivery`)
  }
})

t.test('store review - a pull after a cursor reset never returns one message twice', async (t) => {
  const clock = new ManualClock()
  const store = await open(t.testdir(), { clock, leaseMs: 1000 })
  t.teardown(() => store.close())
  await store.append([rec('s'), rec('s'), rec('s'), rec('s')])
  t.equal((await store.pull(pullOpts('s', 'g', 'A', { maxMessages: 2 }))).length, 2)
  t.equal((await store.pull(pullOpts('s', 'g', 'C', { maxMessages: 2 }))).length, 2)
  clock.advance(600)
  store.heartbeat('C', [{ subject: 's', group: 'g' }])
  clock.advance(600)
  store.sweep() // A's 0 and 1 wait for redelivery; C still holds 2 and 3
  await store.resetCursor('s', 'g', { kind: 'earliest' })
  const got = await store.pull(pullOpts('s', 'g', 'B'))
  const seqs = got.map((m) => m.sequence)
  t.same([...new Set(seqs)].sort(), [...seqs].sort(), 'no sequence twice in one pull')
  t.same([...seqs].sort(), [0, 1, 2, 3], 'a reset to earliest re-delivers everything')
  const resumed = await store.pull(pullOpts('s', 'g', 'C', { resumeHeld: true }))
  t.same(resumed, [], 'what B now holds is no longer handed back to C')
  await store.resetCursor('s', 'g', { kind: 'earliest' })
  const again = await store.pull(pullOpts('s', 'g', 'B', { resumeHeld: true }))
  const seqs2 = again.map((m) => m.sequence)
  t.same([...new Set(seqs2)].sort(), [...seqs2].sort(), 'held and re-read: still once each')
})

t.test('store review - a dead letter handed out again by a cursor reset is no longer dead', async (t) => {
  const dir = t.testdir()
  let store = await open(dir)
  await store.append([rec('s'), rec('s')])
  await store.pull(pullOpts('s', 'g', 'c'))
  await store.nack('s', 'g', 'c', [0], { deadLetter: true })
  await store.ack('s', 'g', 'c', [1])
  await store.resetCursor('s', 'g', { kind: 'earliest' })
  const got = await store.pull(pullOpts('s', 'g', 'c'))
  t.same(
    got.map((m) => m.sequence),
    [0, 1],
  )
  t.equal(await store.ack('s', 'g', 'c', [0, 1]), 2)
  t.same(await store.listDeadLetters('s', 'g'), [], 'consumed: not listed as dead')
  t.equal(await store.redriveDeadLetters('s', 'g'), 0, 'nothing to redrive')
  t.match(store.backlog('s', 'g')[0], { deadLettered: 0, inFlight: 0 })
  await store.abandon()
  store = await open(dir)
  t.teardown(() => store.close())
  t.match(store.backlog('s', 'g')[0], { deadLettered: 0, inFlight: 0 }, 'the same after a crash')
})

t.test(
  'store review - a crash after mixed progress (checkpoint in the middle) restores the same state',
  async (t) => {
    const dir = t.testdir()
    const clock = new ManualClock()
    const opts = { clock, leaseMs: 1000, retryBaseMs: 1000, retryJitter: 0, maxRetries: 2 }
    let store = await open(dir, opts)
    for (let i = 0; i < 12; i++) await store.append([rec('s', { body: `m${i}` })])
    await store.pull(pullOpts('s', 'g', 'A', { maxMessages: 4 })) // 0..3
    await store.pull(pullOpts('s', 'g', 'B', { maxMessages: 4 })) // 4..7
    await store.ack('s', 'g', 'A', [2])
    await store.nack('s', 'g', 'A', [1]) // retry at +1000
    await store.nack('s', 'g', 'B', [5], { deadLetter: true })
    await store.checkpoint()
    await store.ack('s', 'g', 'B', [7, 4])
    await store.nack('s', 'g', 'A', [3], { retryAfterMs: 5000 })
    clock.advance(600)
    store.heartbeat('A', [{ subject: 's', group: 'g' }])
    clock.advance(600)
    store.sweep() // B expires: 6 is ready again; 1 is due (1000 passed)
    const b = await store.pull(pullOpts('s', 'g', 'C', { maxMessages: 3 }))
    t.same(
      b.map((m) => [m.sequence, m.deliveryCount]),
      [
        [1, 2],
        [6, 2],
        [8, 1],
      ],
    )
    await store.nack('s', 'g', 'C', [1]) // second delivery nacked: maxRetries 2 -> dead
    await store.pull(pullOpts('s', 'gb', 'i1', { broadcast: true, maxMessages: 5 }))
    const before = {
      backlog: store.backlog('s'),
      dead: (await store.listDeadLetters('s', 'g')).map((d) => [d.sequence, d.deliveryCount, d.deadAt]),
    }
    // The broadcast pull answered before its hand-out was written (at-least-once pulls do not wait):
    // the crash comes once everything applied is in the action log.
    await store.alog.drain()
    await store.abandon()
    store = await open(dir, opts)
    t.teardown(() => store.close())
    t.same(store.backlog('s'), before.backlog, 'same backlog (group and broadcast)')
    t.same(
      (await store.listDeadLetters('s', 'g')).map((d) => [d.sequence, d.deliveryCount, d.deadAt]),
      before.dead,
      'same dead letters, counts and times',
    )
    t.same(
      (await store.pull(pullOpts('s', 'g', 'A', { resumeHeld: true, maxMessages: 1 }))).map(
        (m) => m.sequence,
      ),
      [0],
      'A still holds 0 (and gets nothing new: maxMessages 1)',
    )
    t.same(
      (await store.pull(pullOpts('s', 'g', 'C', { resumeHeld: true, maxMessages: 2 }))).map((m) => [
        m.sequence,
        m.deliveryCount,
      ]),
      [
        [6, 2],
        [8, 1],
      ],
      'C still holds 6 and 8',
    )
    t.equal(await store.ack('s', 'g', 'A', [0]), 1)
    t.equal(await store.ack('s', 'g', 'C', [6, 8]), 2)
    clock.advance(5000 - 1200 - 1)
    t.same(
      await store
        .pull(pullOpts('s', 'g', 'D', { maxMessages: 1, start: 0 }))
        .then((r) => r.map((m) => m.sequence)),
      [9],
    )
    clock.advance(1)
    t.same(
      (await store.pull(pullOpts('s', 'g', 'D', { maxMessages: 1 }))).map((m) => [
        m.sequence,
        m.deliveryCount,
      ]),
      [[3, 2]],
      'the retry time of 3 survived',
    )
  },
)

t.test('store review - a pull that fails on a read error does not strand due redeliveries', async (t) => {
  let failReads = false
  const io: FsIo = {
    ...nodeFsIo,
    read: (fd, buffer, offset, length, position) =>
      failReads
        ? Promise.reject(Object.assign(new Error('EIO: injected'), { code: 'EIO' }))
        : nodeFsIo.read(fd, buffer, offset, length, position),
  }
  const store = await open(t.testdir(), { io, hotCacheBytes: 0 })
  t.teardown(() => store.close())
  await store.append([rec('s'), rec('s')])
  await store.pull(pullOpts('s', 'g', 'A', { maxMessages: 1 }))
  await store.nack('s', 'g', 'A', [0], { retryAfterMs: 0 })
  failReads = true
  await t.rejects(store.pull(pullOpts('s', 'g', 'B')), 'the pull fails')
  failReads = false
  const got = await store.pull(pullOpts('s', 'g', 'B'))
  t.same(
    got.map((m) => [m.sequence, m.deliveryCount]),
    [
      [0, 2],
      [1, 1],
    ],
    'the due redelivery is still handed out',
  )
})

t.test(
  'store review - a resumeHeld pull keeps to maxBytes; the rest comes with the next pulls',
  async (t) => {
    const store = await open(t.testdir())
    t.teardown(() => store.close())
    for (let i = 0; i < 6; i++) await store.append([rec('rb', { body: big(i) })])
    t.equal((await store.pull(pullOpts('rb', 'g', 'c', { maxMessages: 6 }))).length, 6)
    const size = (await store.pull(pullOpts('rb', 'g', 'c', { resumeHeld: true, maxMessages: 1 })))[0]?.record
      .length as number
    const seen: number[] = []
    for (let round = 0; round < 6 && seen.length < 6; round++) {
      const got = await store.pull(pullOpts('rb', 'g', 'c', { resumeHeld: true, maxBytes: 2 * size }))
      t.ok(
        got.length >= 1 && got.length <= 2,
        `round ${round}: ${got.length} messages within 2 records' bytes`,
      )
      const seqs = got.map((m) => m.sequence)
      seen.push(...seqs)
      await store.ack('rb', 'g', 'c', seqs)
    }
    t.same(seen, [0, 1, 2, 3, 4, 5], 'every held message comes back, in order, once')
  },
)
