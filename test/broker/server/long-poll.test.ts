import t from 'tap'
import { LongPollRegistry } from '../../../src/broker/server/long-poll'
import type { StoredMessage } from '../../../src/broker/store/types'

const msg = (sequence: number): StoredMessage => ({
  subject: 's',
  sequence,
  deliveryCount: 1,
  record: Buffer.alloc(0),
})

t.test('long poll - a waiter times out with an empty list', async (t) => {
  const polls = new LongPollRegistry()
  const got = await polls.wait({
    subject: 's',
    viewKey: 'g',
    timeoutMs: 30,
    epochBefore: polls.epoch('s'),
    attempt: async () => [],
    isAlive: () => true,
  })
  t.same(got, [])
  t.equal(polls.waiters, 0)
})

t.test('long poll - a notification wakes waiters round-robin, one batch each', async (t) => {
  const polls = new LongPollRegistry()
  let available = [msg(1), msg(2), msg(3)]
  const take = async () => {
    const m = available.slice(0, 1)
    available = available.slice(1)
    return m
  }
  const waits = ['a', 'b', 'c', 'd'].map((name) =>
    polls
      .wait({
        subject: 's',
        viewKey: 'g',
        timeoutMs: 500,
        epochBefore: 0,
        attempt: take,
        isAlive: () => true,
      })
      .then((m) => ({ name, m })),
  )
  t.equal(polls.waiters, 4)
  polls.notify('s')
  const first3 = await Promise.all(waits.slice(0, 3))
  t.same(
    first3.map((x) => [x.name, x.m.map((m) => m.sequence)]),
    [
      ['a', [1]],
      ['b', [2]],
      ['c', [3]],
    ],
  )
  t.equal(polls.waiters, 1, 'd still waits: the view was exhausted')
  polls.close()
  t.same((await waits[3])?.m, [])
})

t.test(
  'long poll - another group of the same subject is still tried after one view is exhausted',
  async (t) => {
    const polls = new LongPollRegistry()
    const g1 = polls.wait({
      subject: 's',
      viewKey: 'g1',
      timeoutMs: 200,
      epochBefore: 0,
      attempt: async () => [],
      isAlive: () => true,
    })
    const g2 = polls.wait({
      subject: 's',
      viewKey: 'g2',
      timeoutMs: 200,
      epochBefore: 0,
      attempt: async () => [msg(7)],
      isAlive: () => true,
    })
    polls.notify('s')
    t.same(
      (await g2).map((m) => m.sequence),
      [7],
    )
    t.same(await g1, [])
  },
)

t.test('long poll - a notification between the first pull and the wait is not lost', async (t) => {
  const polls = new LongPollRegistry()
  const before = polls.epoch('s')
  polls.notify('s') // arrives while the caller's first pull was running
  const got = await polls.wait({
    subject: 's',
    viewKey: 'g',
    timeoutMs: 1_000,
    epochBefore: before,
    attempt: async () => [msg(1)],
    isAlive: () => true,
  })
  t.same(
    got.map((m) => m.sequence),
    [1],
  )
})

t.test('long poll - a waiter whose connection is gone is dropped without pulling', async (t) => {
  const polls = new LongPollRegistry()
  let pulled = 0
  const w = polls.wait({
    subject: 's',
    viewKey: 'g',
    timeoutMs: 1_000,
    epochBefore: 0,
    attempt: async () => {
      pulled++
      return [msg(1)]
    },
    isAlive: () => false,
  })
  polls.notify('s')
  t.same(await w, [])
  t.equal(pulled, 0)
})
