import t from 'tap'
import { ManualClock } from '../../../src/common/clock'
import { StartPosition } from '../../../src/common/protocol/commands'
import { bodyOf, open, pullOpts, rec } from './helpers'

const HOUR = 3_600_000

async function fill(store: Awaited<ReturnType<typeof open>>, n: number, prefix = 'm'): Promise<void> {
  await store.append(Array.from({ length: n }, (_, i) => rec('s', { body: `${prefix}${i}` })))
}

const bc = (id: string) => pullOpts('s', 'gb', id, { broadcast: true, start: StartPosition.EARLIEST })

t.test('store - an idle broadcast cursor is forgotten; backlog then follows the live ones', async (t) => {
  const clock = new ManualClock()
  const dir = t.testdir()
  const store = await open(dir, { clock, broadcastIdleMs: 24 * HOUR })
  await fill(store, 4)
  t.equal((await store.pull(bc('gone'))).length, 4)
  await fill(store, 6, 'n')
  t.equal((await store.pull(bc('live'))).length, 10)
  t.match(store.backlog('s', 'gb')[0], { cursor: 4, pending: 6 }, 'the slowest instance sets the backlog')

  clock.advance(20 * HOUR)
  await store.pull(bc('live')) // keeps pulling, even with nothing new
  clock.advance(5 * HOUR) // 'gone' silent for 25 h, 'live' for 5 h
  store.sweep()
  t.match(store.backlog('s', 'gb')[0], { cursor: 10, pending: 0 }, 'the idle cursor no longer holds it back')
  t.same(
    (await store.pull(bc('live'))).map((m) => bodyOf(m.record)),
    [],
    'the live instance keeps its place',
  )

  // Forgotten for good: the FORGET is in the action log (and the next checkpoint).
  await store.close()
  const again = await open(dir, { clock, broadcastIdleMs: 24 * HOUR })
  t.teardown(() => again.close())
  t.match(again.backlog('s', 'gb')[0], { cursor: 10, pending: 0 }, 'still forgotten after a reopen')
  t.same(
    (await again.pull(bc('gone'))).map((m) => bodyOf(m.record))[0],
    'm0',
    'an instance that comes back starts at the start position',
  )
})

t.test('store - downtime does not count as idleness; 0 never forgets', async (t) => {
  const clock = new ManualClock()
  const dir = t.testdir()
  const first = await open(dir, { clock, broadcastIdleMs: HOUR })
  await fill(first, 2)
  await first.pull(bc('a'))
  await first.close()
  clock.advance(3 * HOUR) // the broker was down
  const store = await open(dir, { clock, broadcastIdleMs: HOUR })
  store.sweep()
  t.match(store.backlog('s', 'gb')[0], { cursor: 2 }, 'kept: every cursor starts a fresh idle period on open')
  await store.close()

  const never = await open(dir, { clock, broadcastIdleMs: 0 })
  t.teardown(() => never.close())
  clock.advance(1_000 * HOUR)
  never.sweep()
  t.equal(never.backlog('s', 'gb').length, 1, 'broadcastIdleMs 0 keeps every cursor')
})

t.test('store - a broadcast-only group whose last cursor is forgotten goes with it', async (t) => {
  const clock = new ManualClock()
  const store = await open(t.testdir(), { clock, broadcastIdleMs: HOUR })
  t.teardown(() => store.close())
  await fill(store, 3)
  await store.pull(bc('only'))
  await store.pull(pullOpts('s', 'shared', 'c1'))
  clock.advance(2 * HOUR)
  store.sweep()
  t.same(
    store.backlog('s').map((b) => b.group),
    ['shared'],
    'no cursorless group left to count the subject from sequence 0',
  )
})
