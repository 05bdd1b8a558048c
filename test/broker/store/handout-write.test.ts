import t from 'tap'
import { type FsIo, nodeFsIo } from '../../../src/broker/store/fs-io'
import { open, pullOpts, rec } from './helpers'

// A pull's hand-out is recorded in the action log. An at-least-once answer does not wait for that
// write (a lost hand-out only makes the messages deliverable again); an at-most-once answer must.

/** An FsIo whose writes can be held back until released (writes already started are not affected). */
function stallableIo(): { io: FsIo; stall: () => void; release: () => void; held: () => number } {
  let stalled = false
  let waiting: (() => void)[] = []
  const gate = (): Promise<void> => (stalled ? new Promise((r) => waiting.push(r)) : Promise.resolve())
  return {
    io: {
      ...nodeFsIo,
      writev: (fd, buffers, position) => gate().then(() => nodeFsIo.writev(fd, buffers, position)),
      write: (fd, buffer, position) => gate().then(() => nodeFsIo.write(fd, buffer, position)),
    },
    stall: () => {
      stalled = true
    },
    release: () => {
      stalled = false
      const w = waiting
      waiting = []
      for (const f of w) f()
    },
    held: () => waiting.length,
  }
}

/** Whether `p` settles within `ms` (the timer does not outlive the answer). */
async function settledWithin<T>(p: Promise<T>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<boolean>((r) => {
    timer = setTimeout(() => r(false), ms)
  })
  try {
    return await Promise.race([p.then(() => true), late])
  } finally {
    clearTimeout(timer)
  }
}

t.test('store - an at-least-once pull answers before its hand-out is written', async (t) => {
  const s = stallableIo()
  const store = await open(t.testdir(), { io: s.io })
  t.teardown(async () => {
    s.release()
    await store.close()
  })
  await store.append([rec('s'), rec('s')])
  await new Promise((r) => setTimeout(r, 20)) // let the consume-log write after the append finish
  s.stall()
  const pulled = store.pull(pullOpts('s', 'g', 'c'))
  t.ok(await settledWithin(pulled, 5_000), 'the pull answers while the action-log write is held')
  t.equal((await pulled).length, 2, 'with both messages')
  await new Promise((r) => setTimeout(r, 20)) // the action log starts its write on the next turn
  t.ok(s.held() > 0, 'the hand-out write is being held (it was not written before the answer)')
  t.same(
    await store.pull(pullOpts('s', 'g', 'c2')),
    [],
    'the hand-out is applied in memory: another consumer does not get the same messages',
  )
  s.release()
  t.equal(await store.ack('s', 'g', 'c', [0, 1]), 2, 'acks apply once the log moves again')
})

t.test('store - an at-most-once pull answers only once its hand-out is written', async (t) => {
  const s = stallableIo()
  const store = await open(t.testdir(), { io: s.io })
  t.teardown(async () => {
    s.release()
    await store.close()
  })
  await store.append([rec('s')])
  await new Promise((r) => setTimeout(r, 20))
  s.stall()
  const pulled = store.pull(pullOpts('s', 'once', 'c', { atMostOnce: true }))
  t.notOk(await settledWithin(pulled, 100), 'no answer while the hand-out write is held')
  s.release()
  t.equal((await pulled).length, 1, 'answered after the write')
})
