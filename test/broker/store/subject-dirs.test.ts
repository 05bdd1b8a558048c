import { createHash } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import type { FileMessageStore } from '../../../src/broker/store/file-message-store'
import { isQmqError } from '../../../src/common/errors'
import { bodyOf, open, pullOpts, rec, sd } from './helpers'

/**
 * Defect 5 of issue 12: a subject whose encoded name is too long for a file name was stored under
 * `h-<sha256>`, the very name the literal subject `h-<sha256>` used: both shared one consume log.
 */
const LONG = `orders.${'x'.repeat(190)}`
const HASH = createHash('sha256').update(LONG).digest('hex')
const LITERAL = `h-${HASH}`

async function fillBoth(store: FileMessageStore, from: number, n: number, literal = true): Promise<void> {
  for (let i = from; i < from + n; i++) {
    // Interleaved, one append each: both subjects advance their sequences side by side.
    await store.append([rec(LONG, { body: `long-${i}` })])
    if (literal) await store.append([rec(LITERAL, { body: `literal-${i}` })])
  }
}

async function bodies(store: FileMessageStore, subject: string, group: string): Promise<string[]> {
  const got = await store.pull(pullOpts(subject, group, 'c', { maxMessages: 1000 }))
  return got.map((m) => bodyOf(m.record))
}

const range = (prefix: string, from: number, n: number) =>
  Array.from({ length: n }, (_, i) => `${prefix}-${from + i}`)

t.test('store - a long subject and the literal subject named after its hash keep apart', async (t) => {
  const dir = t.testdir()
  let store = await open(dir, { checkpointIntervalMs: 60_000 })
  await fillBoth(store, 0, 5)
  t.same(await bodies(store, LONG, 'g'), range('long', 0, 5), 'the long subject: its own messages')
  t.same(await bodies(store, LITERAL, 'g'), range('literal', 0, 5), 'the literal subject: its own')
  await store.close()

  store = await open(dir, { checkpointIntervalMs: 60_000 })
  t.same(store.recoveryReport?.rebuiltConsumeLogs, [], 'layout 2 opens as it is: nothing rebuilt')
  await fillBoth(store, 5, 3)
  t.same(await bodies(store, LONG, 'g'), range('long', 5, 3), 'after a reopen: only new long ones')
  t.same(await bodies(store, LITERAL, 'g'), range('literal', 5, 3), 'only new literal ones')
  await store.close()

  store = await open(dir, { checkpointIntervalMs: 60_000 })
  t.teardown(() => store.close())
  t.same(await bodies(store, LONG, 'fresh'), range('long', 0, 8), 'every long message, readable')
  t.same(await bodies(store, LITERAL, 'fresh'), range('literal', 0, 8), 'every literal message')
  const dirs = fs.readdirSync(path.join(dir, 'consumelog')).filter((n) => n !== 'LAYOUT')
  t.equal(new Set(dirs).size, 2, 'two consume-log directories')
})

/** Turns a layout-2 data dir back into what layout 1 wrote for the long subject (`h-<hex>`). */
function toLayout1(dir: string, opts: { collided: boolean }): void {
  const root = path.join(dir, 'consumelog')
  fs.rmSync(path.join(root, 'LAYOUT'))
  if (opts.collided) {
    // Both subjects wrote one consume log: its entries are the literal subject's (written last),
    // its marker the long one's (created first); the long subject has no directory of its own.
    fs.rmSync(path.join(root, `+h-${HASH}`), { recursive: true })
    fs.writeFileSync(path.join(root, LITERAL, 'SUBJECT'), LONG)
  } else fs.renameSync(path.join(root, `+h-${HASH}`), path.join(root, LITERAL))
}

for (const collided of [false, true]) {
  t.test(
    `store - a layout-1 data dir (${collided ? 'two subjects in one directory' : 'a hashed long subject'}) opens with every message and all progress`,
    async (t) => {
      const dir = t.testdir()
      let store = await open(dir, { checkpointIntervalMs: 60_000 })
      // Layout 1 without a collision has the long subject only.
      const subjects = collided ? [LONG, LITERAL] : [LONG]
      await fillBoth(store, 0, 6, collided)
      // Progress: 'g' consumed and acked the first 4 of each subject.
      for (const s of subjects) {
        const got = await store.pull(pullOpts(s, 'g', 'c', { maxMessages: 4 }))
        await store.ack(
          s,
          'g',
          'c',
          got.map((m) => m.sequence),
        )
      }
      await store.close()
      toLayout1(dir, { collided })

      store = await open(dir, { checkpointIntervalMs: 60_000 })
      const rebuilt = [...(store.recoveryReport?.rebuiltConsumeLogs ?? [])].sort()
      t.same(rebuilt, subjects.sort(), 'the subjects of the ambiguous directory rebuilt')
      t.same(await bodies(store, LONG, 'g'), range('long', 4, 2), 'long: progress kept')
      t.same(await bodies(store, LONG, 'fresh'), range('long', 0, 6), 'long: every message')
      if (collided) {
        t.same(await bodies(store, LITERAL, 'g'), range('literal', 4, 2), 'literal: progress kept')
        t.same(await bodies(store, LITERAL, 'fresh'), range('literal', 0, 6), 'literal: every message')
      }
      await store.close()
      t.equal(fs.readFileSync(path.join(dir, 'consumelog', 'LAYOUT'), 'utf8'), '2\n', 'layout 2 recorded')

      store = await open(dir, { checkpointIntervalMs: 60_000 })
      t.teardown(() => store.close())
      t.same(store.recoveryReport?.rebuiltConsumeLogs, [], 'migrated once: the next open rebuilds nothing')
      t.same(await bodies(store, LONG, 'fresh2'), range('long', 0, 6))
      if (collided) t.same(await bodies(store, LITERAL, 'fresh2'), range('literal', 0, 6))
    },
  )
}

t.test('store - a consume-log directory whose marker names another subject is refused', async (t) => {
  const dir = t.testdir()
  let store = await open(dir, { checkpointIntervalMs: 60_000 })
  await store.append([rec('a', { body: 'a0' })])
  await store.close()
  // What a case-insensitive file system, or a copy gone wrong, could leave behind.
  fs.writeFileSync(path.join(dir, 'consumelog', 'a', 'SUBJECT'), 'b')
  let error: unknown
  try {
    store = await open(dir, { checkpointIntervalMs: 60_000 })
    await store.close()
  } catch (err) {
    error = err
  }
  t.ok(isQmqError(error, 'QMQ_ERR_STORE_CORRUPT'), 'refused with QMQ_ERR_STORE_CORRUPT')
})

t.test('store - an append whose subject directory belongs to another subject fails alone', async (t) => {
  const dir = t.testdir()
  const store = await open(dir, { checkpointIntervalMs: 60_000 })
  t.teardown(() => store.close())
  // What a case-insensitive file system does with 'Orders' next to 'orders'.
  fs.mkdirSync(path.join(dir, 'consumelog', 'b'))
  fs.writeFileSync(path.join(dir, 'consumelog', 'b', 'SUBJECT'), 'B')
  let error: unknown
  try {
    await store.append([rec('b', { body: 'b0' })])
  } catch (err) {
    error = err
  }
  t.ok(isQmqError(error, 'QMQ_ERR_STORE_CORRUPT'), 'that append is refused with QMQ_ERR_STORE_CORRUPT')
  t.same(
    sd(await store.append([rec('a', { body: 'a0' })])),
    [{ sequence: 0, duplicate: false }],
    'others go on',
  )
})
