import t from 'tap'
import type { FileMessageStore } from '../../../src/broker/store/file-message-store'
import type { AppendResult } from '../../../src/broker/store/types'
import { ManualClock } from '../../../src/common/clock'
import { bodyOf, open, pullOpts, rec, sd } from './helpers'

/**
 * The store's contract under every flush policy: the real FileMessageStore on temp dirs, for each of
 * `flush` {sync, async} x `actionFlush` {sync, async}. Each case opens, closes and reopens the store
 * (and simulates a crash with abandon() where the policy promises to survive one).
 */
const POLICIES = [
  { flush: 'sync', actionFlush: 'sync' },
  { flush: 'sync', actionFlush: 'async' },
  { flush: 'async', actionFlush: 'sync' },
  { flush: 'async', actionFlush: 'async' },
] as const

function seqs(msgs: { sequence: number }[]): number[] {
  return msgs.map((m) => m.sequence)
}

function bodies(msgs: { record: Buffer }[]): string[] {
  return msgs.map((m) => bodyOf(m.record))
}

for (const policy of POLICIES) {
  const name = `flush ${policy.flush}, actionFlush ${policy.actionFlush}`
  const base = (clock: ManualClock) => ({
    ...policy,
    clock,
    flushIntervalMs: 20,
    leaseMs: 10_000,
    retryBaseMs: 1_000,
    retryJitter: 0,
    maxRetries: 3,
    checkpointIntervalMs: 3_600_000,
  })

  t.test(`conformance (${name})`, async (t) => {
    t.test('send and pull: sequences per subject, in order, duplicates answered', async (t) => {
      const clock = new ManualClock()
      const store = await open(t.testdir(), base(clock))
      t.teardown(() => store.close())
      const r1 = await store.append([rec('a', { id: 'x', body: 'a0' }), rec('b', { body: 'b0' })])
      const r2 = await store.append([rec('a', { body: 'a1' }), rec('a', { id: 'x', body: 'a0 again' })])
      t.same(sd(r1), [
        { sequence: 0, duplicate: false },
        { sequence: 0, duplicate: false },
      ])
      t.same(sd(r2), [
        { sequence: 1, duplicate: false },
        { sequence: 0, duplicate: true },
      ])
      // Each record's end in the message log; a duplicate's covers its first copy.
      const [a0, b0] = r1 as [AppendResult, AppendResult]
      const [a1, dup] = r2 as [AppendResult, AppendResult]
      t.ok(a0.end > 0 && b0.end > a0.end && a1.end > b0.end, 'ends grow in log order')
      t.equal(a1.end, store.mlog.log.endOffset, 'the last record ends the log')
      t.ok(dup.end >= a0.end, "a duplicate's end covers its first copy")
      const got = await store.pull(pullOpts('a', 'g', 'c'))
      t.same(seqs(got), [0, 1])
      t.same(bodies(got), ['a0', 'a1'])
      t.same(
        got.map((m) => m.deliveryCount),
        [1, 1],
      )
      t.same(bodies(await store.pull(pullOpts('b', 'g', 'c'))), ['b0'], 'subjects are independent')
      t.same(await store.pull(pullOpts('a', 'g', 'c')), [], 'nothing twice')
    })

    t.test('ack and reopen: acked gone, the rest still held by its consumer', async (t) => {
      const dir = t.testdir()
      const clock = new ManualClock()
      let store: FileMessageStore = await open(dir, base(clock))
      await store.append(Array.from({ length: 5 }, (_, i) => rec('s', { body: `m${i}` })))
      t.same(seqs(await store.pull(pullOpts('s', 'g', 'c'))), [0, 1, 2, 3, 4])
      t.equal(await store.ack('s', 'g', 'c', [0, 2, 4]), 3)
      await store.close()
      store = await open(dir, base(clock))
      t.teardown(() => store.close())
      t.match(store.backlog('s', 'g'), [{ pending: 0, inFlight: 2, cursor: 5 }])
      const held = await store.pull(pullOpts('s', 'g', 'c', { resumeHeld: true }))
      t.same(seqs(held), [1, 3], 'the unacked ones, handed back')
      t.same(
        held.map((m) => m.deliveryCount),
        [1, 1],
        'resuming is not a new delivery',
      )
    })

    t.test('nack: redelivered after its backoff with the delivery count kept', async (t) => {
      const clock = new ManualClock()
      const store = await open(t.testdir(), base(clock))
      t.teardown(() => store.close())
      await store.append([rec('s', { body: 'm0' }), rec('s', { body: 'm1' })])
      await store.pull(pullOpts('s', 'g', 'c'))
      t.equal(await store.nack('s', 'g', 'c', [0]), 1)
      t.equal(await store.nack('s', 'g', 'c', [1], { retryAfterMs: 0 }), 1)
      t.same(seqs(await store.pull(pullOpts('s', 'g', 'c'))), [1], 'retryAfterMs 0: at once')
      clock.advance(999)
      store.sweep()
      t.same(await store.pull(pullOpts('s', 'g', 'c')), [], 'not before retryBaseMs')
      clock.advance(1)
      store.sweep()
      const again = await store.pull(pullOpts('s', 'g', 'c'))
      t.same(
        again.map((m) => [m.sequence, m.deliveryCount]),
        [[0, 2]],
      )
    })

    t.test('dead letter after maxRetries deliveries that ended in nack; survives a reopen', async (t) => {
      const dir = t.testdir()
      const clock = new ManualClock()
      let store: FileMessageStore = await open(dir, base(clock))
      await store.append([rec('s', { body: 'poison' })])
      const deliveries: number[] = []
      for (let i = 0; i < 5; i++) {
        const got = await store.pull(pullOpts('s', 'g', 'c'))
        if (got.length === 0) break
        deliveries.push(...got.map((m) => m.deliveryCount))
        await store.nack('s', 'g', 'c', seqs(got), { retryAfterMs: 0 })
      }
      t.same(deliveries, [1, 2, 3], 'maxRetries 3: three deliveries')
      const dead = await store.listDeadLetters('s', 'g')
      t.same(
        dead.map((d) => [d.sequence, d.deliveryCount, bodyOf(d.record)]),
        [[0, 3, 'poison']],
      )
      await store.close()
      store = await open(dir, base(clock))
      t.teardown(() => store.close())
      t.same(
        (await store.listDeadLetters('s', 'g')).map((d) => [d.sequence, d.deliveryCount]),
        [[0, 3]],
        'after a reopen',
      )
      t.equal(await store.redriveDeadLetters('s', 'g'), 1)
      const redriven = await store.pull(pullOpts('s', 'g', 'c'))
      t.same(
        redriven.map((m) => [m.sequence, m.deliveryCount]),
        [[0, 1]],
        'redriven: delivery count reset',
      )
    })

    t.test('a crash (no close) keeps every acknowledged append and recorded progress', async (t) => {
      const dir = t.testdir()
      const clock = new ManualClock()
      let store: FileMessageStore = await open(dir, base(clock))
      await store.append(Array.from({ length: 4 }, (_, i) => rec('s', { id: `k${i}`, body: `m${i}` })))
      await store.pull(pullOpts('s', 'g', 'c', { maxMessages: 3 }))
      await store.ack('s', 'g', 'c', [0])
      await store.nack('s', 'g', 'c', [1], { deadLetter: true })
      // An at-least-once pull answers before its hand-out is written: wait for the writes.
      await store.alog.drain()
      await store.mlog.idle()
      await store.abandon()
      store = await open(dir, base(clock))
      t.teardown(() => store.close())
      t.same(store.recoveryReport?.truncated, [], 'nothing torn')
      t.match(store.backlog('s', 'g'), [{ inFlight: 1, deadLettered: 1, cursor: 3, pending: 1 }])
      t.same(seqs(await store.pull(pullOpts('s', 'g', 'c', { resumeHeld: true }))), [2, 3])
      // The dedupe index was refilled from the message log.
      t.same(sd(await store.append([rec('s', { id: 'k3', body: 'resent' })])), [
        { sequence: 3, duplicate: true },
      ])
      t.same(sd(await store.append([rec('s', { id: 'k4', body: 'm4' })])), [
        { sequence: 4, duplicate: false },
      ])
    })

    t.test('dedupe across a clean reopen; a new id after it continues the sequence', async (t) => {
      const dir = t.testdir()
      const clock = new ManualClock()
      let store: FileMessageStore = await open(dir, base(clock))
      await store.append([rec('s', { id: 'one', body: '1' })])
      await store.close()
      store = await open(dir, base(clock))
      t.teardown(() => store.close())
      t.same(sd(await store.append([rec('s', { id: 'one', body: '1 again' })])), [
        { sequence: 0, duplicate: true },
      ])
      t.same(sd(await store.append([rec('s', { id: 'two', body: '2' })])), [
        { sequence: 1, duplicate: false },
      ])
      t.same(bodies(await store.pull(pullOpts('s', 'g', 'c'))), ['1', '2'])
    })
  })
}
