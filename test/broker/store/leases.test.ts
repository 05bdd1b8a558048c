import t from 'tap'
import { ManualClock } from '../../../src/common/clock'
import { open, pullOpts, rec } from './helpers'

/**
 * Per-message leases (issue 12, defect 2): each handed-out message has its own deadline (hand-out +
 * leaseMs), moved only by a heartbeat that names it. Pulls, acks and heartbeats that do not name it
 * no longer keep it: a PULL answer lost on its way to the client is redelivered after leaseMs.
 */
async function fill(store: Awaited<ReturnType<typeof open>>, subject: string, n: number): Promise<void> {
  await store.append(Array.from({ length: n }, (_, i) => rec(subject, { body: `${subject}${i}` })))
}

t.test(
  'leases - pulls and acks do not renew held messages; a heartbeat extends exactly those it names',
  async (t) => {
    const clock = new ManualClock()
    const store = await open(t.testdir(), { clock, leaseMs: 1000 })
    t.teardown(() => store.close())
    await fill(store, 's', 4)
    const a = await store.pull(pullOpts('s', 'g', 'A', { maxMessages: 4 }))
    t.same(
      a.map((m) => m.sequence),
      [0, 1, 2, 3],
    )
    // A keeps polling, acks one, and heartbeats naming only 2 (its handler still works on it); the
    // answer carrying 0 and 3 never reached it.
    for (let i = 0; i < 3; i++) {
      clock.advance(300)
      t.same(await store.pull(pullOpts('s', 'g', 'A')), [])
      if (i === 0) t.equal(await store.ack('s', 'g', 'A', [1]), 1)
      t.same(store.heartbeat('A', [{ subject: 's', group: 'g', sequences: [2] }]), {
        extended: 1,
        leaseMs: 1000,
      })
    }
    clock.advance(300) // 1200 ms after the hand-out
    store.sweep()
    const b = await store.pull(pullOpts('s', 'g', 'B'))
    t.same(
      b.map((m) => [m.sequence, m.deliveryCount]),
      [
        [0, 2],
        [3, 2],
      ],
      'the unnamed ones came back after leaseMs, the named one stays with A',
    )
    t.equal(await store.ack('s', 'g', 'A', [2]), 1, 'A still holds 2')
    t.same(
      store.heartbeat('A', [{ subject: 's', group: 'g', sequences: [0, 3] }]).extended,
      0,
      'B holds them now',
    )
  },
)

t.test(
  'leases - a heartbeat without sequences (older clients) extends everything the consumer holds',
  async (t) => {
    const clock = new ManualClock()
    const store = await open(t.testdir(), { clock, leaseMs: 1000 })
    t.teardown(() => store.close())
    await fill(store, 's', 2)
    await store.pull(pullOpts('s', 'g', 'A'))
    clock.advance(800)
    t.equal(store.heartbeat('A', [{ subject: 's', group: 'g' }]).extended, 2)
    clock.advance(800)
    store.sweep()
    t.same(await store.pull(pullOpts('s', 'g', 'B')), [])
    clock.advance(300)
    store.sweep()
    t.equal((await store.pull(pullOpts('s', 'g', 'B'))).length, 2)
  },
)

t.test('leases - expiries survive a crash; held messages get a fresh lease on open', async (t) => {
  const dir = t.testdir()
  const clock = new ManualClock()
  const store = await open(dir, { clock, leaseMs: 1000 })
  await fill(store, 's', 3)
  await store.pull(pullOpts('s', 'g', 'A', { maxMessages: 2 })) // 0, 1
  clock.advance(600)
  await store.pull(pullOpts('s', 'g', 'A', { maxMessages: 1 })) // 2, lease until 1600
  clock.advance(600)
  store.sweep() // 0 and 1 expire (EXPIRE action); 2 is still held
  await store.alog.drain()
  await store.abandon()

  clock.advance(5_000) // longer than the lease: 2 keeps its hand-out only through the fresh lease
  const again = await open(dir, { clock, leaseMs: 1000 })
  t.teardown(() => again.close())
  again.sweep()
  const b = await again.pull(pullOpts('s', 'g', 'B'))
  t.same(
    b.map((m) => [m.sequence, m.deliveryCount]),
    [
      [0, 2],
      [1, 2],
    ],
    'the expiry was replayed from the action log',
  )
  t.equal(await again.ack('s', 'g', 'B', [0, 1]), 2)
  const resumed = await again.pull(pullOpts('s', 'g', 'A', { resumeHeld: true }))
  t.same(
    resumed.map((m) => m.sequence),
    [2],
    'still held by A after the restart',
  )
  clock.advance(1_001)
  again.sweep()
  t.same(
    (await again.pull(pullOpts('s', 'g', 'B'))).map((m) => m.sequence),
    [2],
    'then its (fresh) lease ends like any other',
  )
})

t.test('leases - the deadline heap stays bounded under hand-outs that are acked at once', async (t) => {
  const clock = new ManualClock()
  const store = await open(t.testdir(), { clock, leaseMs: 60_000 })
  t.teardown(() => store.close())
  for (let round = 0; round < 30; round++) {
    await fill(store, 's', 500)
    const got = await store.pull(pullOpts('s', 'g', 'A', { maxMessages: 500 }))
    t.equal(
      await store.ack(
        's',
        'g',
        'A',
        got.slice(1).map((m) => m.sequence),
      ),
      got.length - 1,
    )
  }
  const g = store.state.get('s', 'g')
  const heap = (g as unknown as { leases: { size: number } }).leases
  // 15,000 hand-outs; at most 530 in flight at a time (500 + the 30 kept): without compaction the heap
  // would hold an entry per hand-out until its deadline.
  t.ok(heap.size <= 2 * 530 + 4097, `heap of ${heap.size} entries after 15000 hand-outs`)
  clock.advance(60_001)
  store.sweep()
  t.equal(
    (await store.pull(pullOpts('s', 'g', 'B', { maxMessages: 100 }))).length,
    30,
    'the unacked ones expire',
  )
})
