import { ManualClock } from '../../../src/common/clock'
import t from 'tap'
import { MinHeap } from '../../../src/broker/store/min-heap'
import { bodyOf, open, pullOpts, rec } from './helpers'

t.test('min-heap - pops in key order, ties included', async (t) => {
  const h = new MinHeap<string>()
  t.equal(h.peekKey(), Number.POSITIVE_INFINITY)
  t.equal(h.pop(), undefined)
  const keys = Array.from({ length: 500 }, (_, i) => (i * 7919) % 97)
  for (const [i, k] of keys.entries()) h.push(k, `v${i}`)
  const out: [number, string][] = []
  while (h.size > 0) out.push(h.pop() as [number, string])
  t.same(
    out.map(([k]) => k),
    [...keys].sort((a, b) => a - b),
    'keys in order',
  )
  t.ok(
    out.every(([k, v]) => keys[Number(v.slice(1))] === k),
    'each value travels with its key',
  )
})

t.test(
  'store - a nacked message is announced when its retry delay ends, not at the next sweep',
  async (t) => {
    // Sweeps an hour apart: only the retry alarm can make the message pullable within the test.
    const store = await open(t.testdir(), { sweepIntervalMs: 3_600_000 })
    t.teardown(() => store.close())
    await store.append([rec('s', { body: 'again' }), rec('other')])
    await store.pull(pullOpts('s', 'g', 'c'))
    await store.pull(pullOpts('other', 'g', 'c'))
    const woken: number[] = []
    store.onAvailable((s) => {
      if (s === 's') woken.push(Date.now())
    })
    const nackedAt = Date.now()
    await store.nack('s', 'g', 'c', [0], { retryAfterMs: 300 })
    await store.nack('other', 'g', 'c', [0], { retryAfterMs: 3_600_000 }) // a later alarm must not hide it
    t.same(await store.pull(pullOpts('s', 'g', 'c')), [], 'not before its time')
    const end = Date.now() + 10_000
    while (woken.length === 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 20))
    t.equal(woken.length, 1, 'listeners hear about the due retry')
    t.ok((woken[0] as number) - nackedAt >= 290, 'not announced early')
    const got = await store.pull(pullOpts('s', 'g', 'c'))
    t.same(
      got.map((m) => [bodyOf(m.record), m.deliveryCount]),
      [['again', 2]],
    )
  },
)

t.test('store - retries waiting when the store closed are announced on time after it reopens', async (t) => {
  const dir = t.testdir()
  // The store's clock stands still until the listener is in place: on a loaded machine reopening can
  // take longer than the retry delay, and the alarm would then announce it before anyone listened.
  const clock = new ManualClock()
  const first = await open(dir, { clock, sweepIntervalMs: 3_600_000 })
  await first.append([rec('s', { body: 'later' })])
  await first.pull(pullOpts('s', 'g', 'c'))
  await first.nack('s', 'g', 'c', [0], { retryAfterMs: 400 })
  await first.close()
  const store = await open(dir, { clock, sweepIntervalMs: 3_600_000 })
  t.teardown(() => store.close())
  let woken = false
  store.onAvailable(() => {
    woken = true
  })
  t.equal((await store.pull(pullOpts('s', 'g', 'c'))).length, 0, 'not due yet')
  clock.advance(400)
  const end = Date.now() + 10_000
  while (!woken && Date.now() < end) await new Promise((r) => setTimeout(r, 20))
  t.ok(woken, 'listeners hear about the due retry')
  t.same(
    (await store.pull(pullOpts('s', 'g', 'c'))).map((m) => bodyOf(m.record)),
    ['later'],
  )
})
