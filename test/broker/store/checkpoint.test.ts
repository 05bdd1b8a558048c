import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { ManualClock } from '../../../src/common/clock'
import type { FileMessageStore } from '../../../src/broker/store/file-message-store'
import { open, pullOpts, rec } from './helpers'

// A checkpoint that cannot be read must not lose consumer progress: recovery falls back to the
// previous checkpoint, whose actions the store keeps (small action-log segments so that deletions
// really happen).

const opts = (clock: ManualClock) => ({
  clock,
  leaseMs: 60_000,
  retryBaseMs: 10_000,
  retryJitter: 0,
  actionLogSegmentBytes: 4096,
  checkpointIntervalMs: 3_600_000,
})

/** Progress spread over many action-log segments and three checkpoints. */
async function buildState(store: FileMessageStore): Promise<void> {
  for (let round = 0; round < 3; round++) {
    for (let i = 0; i < 120; i++) await store.append([rec('s', { body: `r${round}m${i}` })])
    for (let i = 0; i < 24; i++) {
      const got = await store.pull(pullOpts('s', 'g', `c${i}`, { maxMessages: 5 }))
      const seqs = got.map((m) => m.sequence)
      await store.ack('s', 'g', `c${i}`, seqs.slice(0, 3)) // two of every five stay held
      if (i % 2 === 0) await store.nack('s', 'g', `c${i}`, seqs.slice(3, 4)) // one waits for a retry
    }
    await store.checkpoint()
  }
  // Progress after the last checkpoint, in the action log only.
  const last = await store.pull(pullOpts('s', 'g', 'late', { maxMessages: 4 }))
  await store.ack(
    's',
    'g',
    'late',
    last.map((m) => m.sequence),
  )
  await store.alog.drain()
}

async function stateOf(store: FileMessageStore) {
  return {
    backlog: store.backlog('s'),
    // What the group hands out next (with resumeHeld: false, only what nobody holds).
    next: (await store.pull(pullOpts('s', 'g', 'probe', { maxMessages: 1000 }))).map((m) => [
      m.sequence,
      m.deliveryCount,
    ]),
  }
}

for (const damage of ['corrupt', 'missing'] as const) {
  t.test(`store - a ${damage} checkpoint: recovery uses the previous one and loses nothing`, async (t) => {
    const dir = t.testdir()
    const clock = new ManualClock(1_700_000_000_000)
    let store = await open(dir, opts(clock))
    await buildState(store)
    t.ok(store.alog.log.startOffset > 0, 'checkpoints deleted old action-log segments')
    await store.abandon()
    // Reference: a clean reopen of a copy of the same files.
    const copy = `${dir}-copy`
    fs.cpSync(dir, copy, { recursive: true })
    t.teardown(() => fs.rmSync(copy, { recursive: true, force: true }))
    const clean = await open(copy, opts(clock))
    t.equal(clean.recoveryReport?.checkpoint, 'current')
    const expected = await stateOf(clean)
    await clean.abandon()

    const file = path.join(dir, 'checkpoint', 'checkpoint.json')
    if (damage === 'corrupt') fs.writeFileSync(file, '{"version":1,"messageLogOff')
    // A crash between moving the current checkpoint aside and renaming the new one in leaves none.
    else fs.rmSync(file)
    store = await open(dir, opts(clock))
    t.teardown(() => store.close())
    t.equal(store.recoveryReport?.checkpoint, 'previous', 'recovered from the previous checkpoint')
    t.equal(store.recoveryReport?.checkpointProblems.length, 1)
    t.same(await stateOf(store), expected, 'same backlog, holds, retries and counts as a clean recovery')
  })
}

t.test('store - a new store reports no checkpoint; an existing one the current', async (t) => {
  const dir = t.testdir()
  const store = await open(dir)
  t.equal(store.recoveryReport?.checkpoint, 'none')
  await store.close()
  const again = await open(dir)
  t.teardown(() => again.close())
  t.equal(again.recoveryReport?.checkpoint, 'current')
  t.same(again.recoveryReport?.checkpointProblems, [])
})
