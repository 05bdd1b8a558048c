import t from 'tap'
import { ManualClock } from '../../../src/common/clock'
import { bodyOf, open, pullOpts, rec } from './helpers'

// Forgetting a consumer group: its whole state goes (cursor, holds, retries, dead letters, broadcast
// cursors), through the action log, so a restart does not bring it back; refused while in use.

t.test('store - forgetGroup removes a group once its consumers are gone, and stays removed', async (t) => {
  const dir = t.testdir()
  const clock = new ManualClock()
  const opts = { clock, leaseMs: 1000 }
  let store = await open(dir, opts)
  for (let i = 0; i < 6; i++) await store.append([rec('s', { body: `m${i}` })])
  const got = await store.pull(pullOpts('s', 'typo', 'c', { maxMessages: 4 }))
  await store.ack('s', 'typo', 'c', [got[0]?.sequence as number])
  await store.nack('s', 'typo', 'c', [got[1]?.sequence as number], { deadLetter: true })
  await store.pull(pullOpts('s', 'keep', 'k', { maxMessages: 2 }))
  t.same(
    store.backlog('s').map((b) => b.group),
    ['typo', 'keep'],
  )

  await t.rejects(
    store.forgetGroup('s', 'typo'),
    { code: 'QMQ_ERR_GROUP_ACTIVE' },
    'refused while c holds a lease',
  )
  t.same(
    store.backlog('s').map((b) => b.group),
    ['typo', 'keep'],
    'nothing changed',
  )
  clock.advance(1001)
  store.sweep() // c's lease ends: what it held goes back to the group
  t.equal(await store.forgetGroup('s', 'typo'), true)
  t.equal(await store.forgetGroup('s', 'typo'), false, 'a second time: nothing to forget')
  t.equal(await store.forgetGroup('nope', 'typo'), false, 'an unknown subject: nothing to forget')
  t.same(
    store.backlog('s').map((b) => b.group),
    ['keep'],
    'only the other group is left',
  )
  t.same(await store.listDeadLetters('s', 'typo'), [], 'its dead letters went with it')

  // Replayed from the action log after a crash (no checkpoint since), and after a checkpoint.
  await store.alog.drain()
  await store.abandon()
  store = await open(dir, opts)
  t.same(
    store.backlog('s').map((b) => b.group),
    ['keep'],
    'still gone after a crash',
  )
  await store.close()
  store = await open(dir, opts)
  t.teardown(() => store.close())
  t.same(
    store.backlog('s').map((b) => b.group),
    ['keep'],
    'and after a checkpoint',
  )

  // The name can be used again: a new group, from its start position.
  const again = await store.pull(pullOpts('s', 'typo', 'c2', { maxMessages: 10 }))
  t.same(
    again.map((m) => [m.sequence, m.deliveryCount, bodyOf(m.record)]),
    [0, 1, 2, 3, 4, 5].map((i) => [i, 1, `m${i}`]),
    'a pull under the same name starts a fresh group',
  )
})
