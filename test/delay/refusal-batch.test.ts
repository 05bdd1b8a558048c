import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { ManualClock } from '../../src/common/clock'
import { bucketFileName } from '../../src/delay/store/bucket'
import { RawClient } from '../helpers/raw-client'
import { delayed, FakeSender, send, T0 } from './helpers/delay-helpers'
import { delayDir, startDelay } from './helpers/start-delay'

/**
 * A SEND whose batch holds a record refused after its write (its schedule bucket cannot be opened)
 * and a copy of that record waiting on the first one's pending dedupe entry: the copy waits until the
 * refusal (marker included) has settled, and is then written and judged on its own. Before the fix
 * the waiter re-checked in a microtask loop that never let the marker's write finish: the delay
 * server froze at 100% CPU and the request never returned (this file then hits tap's timeout).
 */

/** A directory where bucket `start`'s schedule log goes: opening it fails (EISDIR) until removed. */
function breakBucket(dir: string, start: number): () => void {
  const sched = path.join(dir, 'schedule', bucketFileName(start, '.sched'))
  fs.mkdirSync(sched)
  return () => fs.rmdirSync(sched)
}

/** Rejects when `p` has not settled within `ms` (a generous bound: no performance claim). */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms)
  })
  return Promise.race([p, limit]).finally(() => clearTimeout(timer))
}

const dueA = T0 + 90_000 // bucket T0 + 60 s: broken
const dueB = T0 + 150_000 // bucket T0 + 120 s: fine

t.test('delay refusal - one SEND [A, B, A] with A refused after its write answers', async (t) => {
  const { dir, closers } = delayDir(t)
  const clock = new ManualClock(T0)
  const { client } = await startDelay(closers, dir, clock, new FakeSender())
  const repair = breakBucket(dir, T0 + 60_000)
  const res = await within(
    send(client, [delayed('a', dueA), delayed('b', dueB), delayed('a', dueA)]),
    10_000,
    'SEND [A, B, A]',
  )
  t.not(res[0]?.status, 0, 'A refused')
  t.same(res[1], { status: 0, message: '' }, 'B stored')
  t.not(res[2]?.status, 0, 'the copy of A, written after the first was refused, refused too')
  repair()
  t.same(
    await within(send(client, [delayed('a', dueA), delayed('b', dueB)]), 10_000, 'resend'),
    [
      { status: 0, message: '' },
      { status: 0, message: 'duplicate' },
    ],
    'a resend of A is stored; B is a duplicate',
  )
})

t.test('delay refusal - two clients sending A at once, one with B after it, both answer', async (t) => {
  const { dir, closers } = delayDir(t)
  const clock = new ManualClock(T0)
  const { server, client } = await startDelay(closers, dir, clock, new FakeSender())
  const other = await RawClient.connect(server.port)
  t.teardown(() => other.close())
  const repair = breakBucket(dir, T0 + 60_000)
  for (let round = 0; round < 5; round++) {
    const [r1, r2] = await within(
      Promise.all([
        send(client, [delayed(`a${round}`, dueA), delayed(`b${round}`, dueB)]),
        send(other, [delayed(`a${round}`, dueA)]),
      ]),
      10_000,
      `round ${round}`,
    )
    t.not(r1?.[0]?.status, 0, 'A refused to the first client')
    t.same(r1?.[1], { status: 0, message: '' }, 'B stored')
    t.not(r2?.[0]?.status, 0, 'A refused to the second client')
  }
  repair()
})
