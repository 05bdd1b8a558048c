import fs from 'node:fs'
import t from 'tap'
import type { FsIo } from '../../../src/broker/store'
import { nodeFsIo } from '../../../src/broker/store'
import { isQmqError } from '../../../src/common/errors'
import { bodyOf, open, pullOpts, rec, sd } from './helpers'

/**
 * The pipelined group commit of the message log under flush 'sync': batch N+1 is written while batch
 * N's fdatasync runs (and gets its own fdatasync at once, overlapping N's), and nothing is acknowledged (or visible to pulls) before an fdatasync that
 * started after its write completed. The message log's fdatasyncs are held by the test and released
 * (or failed) one at a time.
 */
function isMessageLog(fd: number): boolean {
  try {
    return fs.readlinkSync(`/proc/self/fd/${fd}`).includes('/messagelog/')
  } catch {
    return false
  }
}

interface Held {
  release: () => void
  fail: (err: Error) => void
}

function gatedIo() {
  const state = { gate: false, writes: 0, held: [] as Held[], failWrites: false }
  const io: FsIo = {
    ...nodeFsIo,
    writev: async (fd, b, p) => {
      if (state.failWrites && isMessageLog(fd))
        throw Object.assign(new Error('EIO: injected write failure'), { code: 'EIO' })
      const n = await nodeFsIo.writev(fd, b, p)
      if (isMessageLog(fd)) state.writes++
      return n
    },
    fdatasync: async (fd) => {
      if (state.gate && isMessageLog(fd)) {
        await new Promise<void>((resolve, reject) => state.held.push({ release: resolve, fail: reject }))
      }
      return nodeFsIo.fdatasync(fd)
    },
  }
  return { state, io }
}

async function until(cond: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 5000
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 2))
  }
}

function track<T>(p: Promise<T>) {
  const s: { done: boolean; value?: T; error?: unknown } = { done: false }
  p.then(
    (v) => {
      s.done = true
      s.value = v
    },
    (e: unknown) => {
      s.done = true
      s.error = e
    },
  )
  return s
}

t.test(
  "store - 'sync': the next batch is written during an fdatasync and acknowledged only after its own",
  async (t) => {
    const dir = t.testdir()
    const { state, io } = gatedIo()
    const store = await open(dir, { io, checkpointIntervalMs: 60_000 })
    t.teardown(() => store.close().catch(() => undefined))
    state.gate = true
    const writes0 = state.writes

    const a = track(store.append([rec('gc', { id: 'a', body: 'A' })]))
    await until(() => state.held.length === 1, 'the first fdatasync')
    t.equal(state.writes, writes0 + 1, 'batch 1 written')

    // Batch 2 (a new message and a duplicate of batch 1's) is formed and written while sync 1 is held.
    const b = track(
      store.append([rec('gc', { id: 'b', body: 'B' }), rec('gc', { id: 'a', body: 'A again' })]),
    )
    await until(() => state.writes === writes0 + 2, 'batch 2 written during the fdatasync')
    await new Promise((r) => setTimeout(r, 20))
    t.equal(a.done, false, 'batch 1 not acknowledged before its fdatasync')
    t.equal(b.done, false, 'batch 2 not acknowledged')
    t.same(await store.pull(pullOpts('gc', 'g', 'c1')), [], 'nothing visible before an fdatasync')

    ;(state.held[0] as Held).release()
    await until(() => a.done, 'batch 1 acknowledged')
    t.same(sd(a.value ?? []), [{ sequence: 0, duplicate: false }])
    // Sync 1 started before batch 2's write completed: batch 2 needs a sync of its own.
    await until(() => state.held.length === 2, 'the second fdatasync')
    await new Promise((r) => setTimeout(r, 20))
    t.equal(b.done, false, 'batch 2 waits for the fdatasync that covers it')
    const first = await store.pull(pullOpts('gc', 'g', 'c1'))
    t.same(
      first.map((m) => bodyOf(m.record)),
      ['A'],
      'only the synced message is visible',
    )

    ;(state.held[1] as Held).release()
    await until(() => b.done, 'batch 2 acknowledged')
    t.same(sd(b.value ?? []), [
      { sequence: 1, duplicate: false },
      { sequence: 0, duplicate: true },
    ])
    state.gate = false
    const second = await store.pull(pullOpts('gc', 'g', 'c1'))
    t.same(
      second.map((m) => bodyOf(m.record)),
      ['B'],
    )
  },
)

t.test(
  "store - 'sync': a failed fdatasync rejects every unsynced batch, cuts them off and gives back sequences and ids",
  async (t) => {
    const dir = t.testdir()
    const { state, io } = gatedIo()
    let store = await open(dir, { io, checkpointIntervalMs: 60_000 })
    t.same(sd(await store.append([rec('gc', { id: 'keep', body: 'kept' })])), [
      { sequence: 0, duplicate: false },
    ])
    state.gate = true
    const writes0 = state.writes

    const a = track(store.append([rec('gc', { id: 'a', body: 'A' })]))
    await until(() => state.held.length === 1, 'the first fdatasync')
    const b = track(store.append([rec('gc', { id: 'b', body: 'B' }), rec('gc', { id: 'a', body: 'dup' })]))
    await until(() => state.writes === writes0 + 2, 'batch 2 written')
    state.gate = false // the truncation that follows syncs too
    ;(state.held[0] as Held).fail(
      Object.assign(new Error('EIO: injected fdatasync failure'), { code: 'EIO' }),
    )
    await until(() => a.done && b.done, 'both batches settled')
    t.ok(isQmqError(a.error) && a.error.code === 'QMQ_ERR_STORE_IO', 'batch 1 rejected')
    t.ok(
      isQmqError(b.error) && b.error.code === 'QMQ_ERR_STORE_IO',
      'batch 2 (written after it) rejected too',
    )

    // Sequences and dedupe entries were given back; the log was cut after 'keep'.
    t.same(sd(await store.append([rec('gc', { id: 'a', body: 'A2' }), rec('gc', { id: 'c', body: 'C' })])), [
      { sequence: 1, duplicate: false },
      { sequence: 2, duplicate: false },
    ])
    const seen = await store.pull(pullOpts('gc', 'g', 'c1'))
    t.same(
      seen.map((m) => [m.sequence, bodyOf(m.record)]),
      [
        [0, 'kept'],
        [1, 'A2'],
        [2, 'C'],
      ],
    )
    await store.close()
    store = await open(dir, { checkpointIntervalMs: 60_000 })
    t.teardown(() => store.close().catch(() => undefined))
    const again = await store.pull(pullOpts('gc', 'g2', 'c1'))
    t.same(
      again.map((m) => bodyOf(m.record)),
      ['kept', 'A2', 'C'],
      'nothing of the rejected batches survives a restart',
    )
  },
)

t.test(
  "store - 'sync': a batch written during an fdatasync gets its own at once; acknowledgements stay in log order",
  async (t) => {
    const dir = t.testdir()
    const { state, io } = gatedIo()
    const store = await open(dir, { io, checkpointIntervalMs: 60_000 })
    t.teardown(() => store.close().catch(() => undefined))
    state.gate = true
    const order: string[] = []
    const a = track(store.append([rec('gc', { id: 'a', body: 'A' })]).finally(() => order.push('a')))
    await until(() => state.held.length === 1, 'the first fdatasync')
    const b = track(store.append([rec('gc', { id: 'b', body: 'B' })]).finally(() => order.push('b')))
    // Batch 2's fdatasync starts while batch 1's is still in flight (it does not wait for it).
    await until(() => state.held.length === 2, "batch 2's fdatasync, overlapping batch 1's")
    // The later fdatasync returns first: batch 2 is durable but waits for batch 1 (log order).
    ;(state.held[1] as Held).release()
    await new Promise((r) => setTimeout(r, 20))
    t.equal(b.done, false, 'batch 2 not acknowledged before batch 1')
    t.same(await store.pull(pullOpts('gc', 'g', 'c1')), [], 'nothing visible before batch 1 is durable')
    ;(state.held[0] as Held).release()
    await until(() => a.done && b.done, 'both acknowledged')
    t.same(order, ['a', 'b'], 'in log order')
    t.same(sd(b.value ?? []), [{ sequence: 1, duplicate: false }])
    state.gate = false
    const seen = await store.pull(pullOpts('gc', 'g', 'c1'))
    t.same(
      seen.map((m) => bodyOf(m.record)),
      ['A', 'B'],
    )
  },
)

t.test(
  "store - 'sync': a failed fdatasync also rejects a later batch whose own fdatasync returned",
  async (t) => {
    const dir = t.testdir()
    const { state, io } = gatedIo()
    const store = await open(dir, { io, checkpointIntervalMs: 60_000 })
    t.teardown(() => store.close().catch(() => undefined))
    t.same(sd(await store.append([rec('gc', { id: 'keep', body: 'kept' })])), [
      { sequence: 0, duplicate: false },
    ])
    state.gate = true
    const a = track(store.append([rec('gc', { id: 'a', body: 'A' })]))
    await until(() => state.held.length === 1, 'the first fdatasync')
    const b = track(store.append([rec('gc', { id: 'b', body: 'B' })]))
    await until(() => state.held.length === 2, 'the second fdatasync')
    ;(state.held[1] as Held).release()
    await new Promise((r) => setTimeout(r, 20))
    t.equal(b.done, false, 'batch 2 waits for batch 1')
    state.gate = false // the truncation that follows syncs too
    ;(state.held[0] as Held).fail(
      Object.assign(new Error('EIO: injected fdatasync failure'), { code: 'EIO' }),
    )
    await until(() => a.done && b.done, 'both batches settled')
    t.ok(isQmqError(a.error) && a.error.code === 'QMQ_ERR_STORE_IO', 'batch 1 rejected')
    // A success after a failure on the same file proves nothing: batch 2 goes too.
    t.ok(isQmqError(b.error) && b.error.code === 'QMQ_ERR_STORE_IO', 'batch 2 rejected')
    t.same(sd(await store.append([rec('gc', { id: 'c', body: 'C' })])), [{ sequence: 1, duplicate: false }])
    const seen = await store.pull(pullOpts('gc', 'g', 'c1'))
    t.same(
      seen.map((m) => bodyOf(m.record)),
      ['kept', 'C'],
    )
  },
)

t.test("store - 'sync': a failed write rejects only its batch; the batch being synced is kept", async (t) => {
  const dir = t.testdir()
  const { state, io } = gatedIo()
  const store = await open(dir, { io, checkpointIntervalMs: 60_000 })
  t.teardown(() => store.close().catch(() => undefined))
  state.gate = true
  const a = track(store.append([rec('gc', { id: 'a', body: 'A' })]))
  await until(() => state.held.length === 1, 'the first fdatasync')
  state.failWrites = true
  const b = track(store.append([rec('gc', { id: 'b', body: 'B' })]))
  await until(() => b.done, 'batch 2 rejected')
  t.ok(isQmqError(b.error) && b.error.code === 'QMQ_ERR_STORE_IO')
  t.equal(a.done, false, 'batch 1 still waits for its fdatasync')
  state.failWrites = false
  ;(state.held[0] as Held).release()
  await until(() => a.done, 'batch 1 acknowledged')
  t.same(sd(a.value ?? []), [{ sequence: 0, duplicate: false }])
  state.gate = false
  t.same(sd(await store.append([rec('gc', { id: 'b', body: 'B2' })])), [{ sequence: 1, duplicate: false }])
  const seen = await store.pull(pullOpts('gc', 'g', 'c1'))
  t.same(
    seen.map((m) => bodyOf(m.record)),
    ['A', 'B2'],
  )
})

t.test(
  'store - reads: recent batches from memory, evicted ones from disk, the same bytes either way',
  async (t) => {
    const dir = t.testdir()
    // Room for about 40 records of ~300 bytes in memory: most of what follows is read from disk.
    const store = await open(dir, { hotCacheBytes: 12_000, checkpointIntervalMs: 60_000 })
    t.teardown(() => store.close().catch(() => undefined))
    const sent: Buffer[] = []
    for (let b = 0; b < 30; b++) {
      const batch = Array.from({ length: 1 + (b % 7) }, (_, i) =>
        rec('hot', { body: `${b}-${i}-${'x'.repeat(200)}` }),
      )
      // Two appends in the same turn: one batch in the log.
      await Promise.all([store.append(batch.slice(0, 1)), store.append(batch.slice(1))])
      for (const r of batch) sent.push(r.bytes)
    }
    const s = store.subjectsIndex.get('hot')
    if (!s) throw new Error('no subject')
    const entries = await s.consume.read(0, sent.length)
    t.equal(entries.length, sent.length)
    const recs = await store.mlog.readMany(entries)
    let same = 0
    for (let i = 0; i < sent.length; i++) if (recs[i]?.equals(sent[i] as Buffer)) same++
    t.equal(same, sent.length, 'every record read back byte for byte')
    // Reversed and shuffled locations (hot and cold mixed) come back in the asked order.
    const order = entries.map((_, i) => i).reverse()
    const mixed = await store.mlog.readMany(order.map((i) => entries[i] as { offset: number; size: number }))
    t.ok(
      order.every((i, k) => mixed[k]?.equals(sent[i] as Buffer)),
      'any order',
    )
  },
)
