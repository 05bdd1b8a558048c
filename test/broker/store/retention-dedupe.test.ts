import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { ManualClock } from '../../../src/common/clock'
import { createRegistry } from '../../../src/common/metrics'
import { bodyOf, open, pullOpts, rec, sd } from './helpers'

t.test('store - a message id seen within the window is stored once, also after a reopen', async (t) => {
  const dir = t.testdir()
  const clock = new ManualClock()
  let store = await open(dir, { clock, dedupeWindowMs: 60_000 })
  const first = await store.append([rec('d', { id: 'x1', body: 'one' }), rec('d', { id: 'x2' })])
  const again = await store.append([
    rec('d', { id: 'x1', body: 'copy' }),
    rec('d', { id: 'x3' }),
    rec('d', { id: 'x3' }),
  ])
  t.same(sd(first), [
    { sequence: 0, duplicate: false },
    { sequence: 1, duplicate: false },
  ])
  t.same(sd(again), [
    { sequence: 0, duplicate: true },
    { sequence: 2, duplicate: false },
    { sequence: 2, duplicate: true },
  ])
  t.same(
    sd(await store.append([rec('other', { id: 'x1' })])),
    [{ sequence: 0, duplicate: false }],
    'per subject',
  )
  await store.abandon()
  store = await open(dir, { clock, dedupeWindowMs: 60_000 })
  t.same(
    sd(await store.append([rec('d', { id: 'x2' })])),
    [{ sequence: 1, duplicate: true }],
    'rebuilt on open',
  )
  clock.advance(60_001)
  store.sweep()
  t.same(
    sd(await store.append([rec('d', { id: 'x2' })])),
    [{ sequence: 3, duplicate: false }],
    'window passed',
  )
  const got = await store.pull(pullOpts('d', 'g', 'c'))
  t.same(
    got.map((m) => m.sequence),
    [0, 1, 2, 3],
  )
  t.equal(bodyOf(got[0]?.record as Buffer), 'one')
  await store.close()
})

t.test(
  'store - retention deletes old segments (never the active one) and counts unconsumed messages',
  async (t) => {
    const dir = t.testdir()
    const registry = createRegistry()
    const store = await open(dir, { segmentBytes: 4096, retentionBytes: 3 * 4096, registry })
    t.teardown(() => store.close())
    for (let i = 0; i < 40; i++) await store.append([rec('r', { body: `${'p'.repeat(400)}${i}` })])
    const consumed = await store.pull(pullOpts('r', 'fast', 'c', { maxMessages: 30 }))
    await store.ack(
      'r',
      'fast',
      'c',
      consumed.map((m) => m.sequence),
    )
    await store.pull(pullOpts('r', 'slow', 'c', { maxMessages: 1 })) // holds seq 0, unacked
    const before = fs.readdirSync(path.join(dir, 'messagelog')).length
    const deleted = await store.runRetention()
    t.ok(deleted > 0, `deleted ${deleted} of ${before} segments`)
    const after = fs.readdirSync(path.join(dir, 'messagelog')).length
    t.ok(after >= 1 && after <= 4)
    const metric = await registry.getSingleMetric('qmq_store_retention_unconsumed_messages_total')?.get()
    const unconsumed = metric?.values[0]?.value ?? 0
    const rest = await store.pull(pullOpts('r', 'slow', 'c', { maxMessages: 100 }))
    t.ok(rest.length > 0 && rest.length < 40)
    t.equal(unconsumed, 40 - rest.length, 'every deleted message was unconsumed by slow (seq 0 held unacked)')
    t.equal(rest[rest.length - 1]?.sequence, 39)
    // Age: make every segment old; only the active one stays.
    for (const f of fs.readdirSync(path.join(dir, 'messagelog'))) {
      fs.utimesSync(path.join(dir, 'messagelog', f), new Date(0), new Date(0))
    }
    await store.close()
    const aged = await open(dir, { segmentBytes: 4096, retentionMs: 1000 })
    t.teardown(() => aged.close())
    await aged.runRetention()
    t.equal(fs.readdirSync(path.join(dir, 'messagelog')).length, 1, 'the active segment is never deleted')
    const [r] = await aged.append([rec('r', { body: 'later' })])
    t.equal(r?.sequence, 40)
  },
)

t.test('store - options are validated with precise messages', async (t) => {
  await t.rejects(open(t.testdir(), { flush: 'sometimes' as 'sync' }), {
    code: 'QMQ_ERR_CONFIG_INVALID',
    message: /flush/,
  })
  await t.rejects(open(t.testdir(), { leaseMS: 5 } as object), { message: /did you mean leaseMs/ })
})
