import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { type FsIo, nodeFsIo } from '../../../src/broker/store/fs-io'
import { type AppendItem, MessageLog } from '../../../src/broker/store/message-log'
import { SegmentLog } from '../../../src/broker/store/segment-log'
import { encodeRecord } from '../../../src/common/record'

/** Holds every writev until `release()`: a write in flight for as long as the test likes. */
function heldWrites(): { io: FsIo; started: number; release: () => void; hold: () => void } {
  let open: () => void = () => undefined
  let gate = Promise.resolve()
  const state = {
    started: 0,
    release: () => open(),
    hold: () => {
      gate = new Promise<void>((resolve) => {
        open = resolve
      })
    },
    io: {
      ...nodeFsIo,
      writev: async (fd: number, buffers: Buffer[], position: number) => {
        state.started++
        await gate
        return nodeFsIo.writev(fd, buffers, position)
      },
    } satisfies FsIo,
  }
  return state
}

t.test(
  'segment log - a segment closed while an append to it is in flight keeps its descriptor until the write is over',
  async (t) => {
    const dir = t.testdir()
    const held = heldWrites()
    held.hold()
    const log = SegmentLog.open({ dir, segmentBytes: 1 << 20, io: held.io })
    const payload = Buffer.alloc(512, 0x61)
    const appending = log.appendv([payload], payload.length)
    await new Promise((r) => setImmediate(r))
    t.equal(held.started, 1, 'the write is in flight')
    log.close()
    // A file opened now would get the descriptor number of the closed segment if it had been closed:
    // the held write would then land in this file.
    const other = path.join(t.testdir(), 'other')
    const otherFd = fs.openSync(other, 'w+')
    held.release()
    const outcome = await appending.then(
      () => 'appended',
      (err: { code?: string }) => err.code,
    )
    fs.closeSync(otherFd)
    t.equal(fs.statSync(other).size, 0, 'nothing was written into another file')
    t.equal(outcome, 'QMQ_ERR_STORE_CLOSED', 'the append fails: its segment was closed under it')
  },
)

t.test(
  'segment log - an append whose segment was cut off (truncate) while it was in flight is not reported as appended',
  async (t) => {
    const dir = t.testdir()
    const held = heldWrites()
    const log = SegmentLog.open({ dir, segmentBytes: 512, io: held.io })
    t.teardown(() => log.close())
    const payload = Buffer.alloc(512, 0x62)
    const first = log.appendv([payload], payload.length)
    held.release()
    await first
    held.hold()
    // The second batch rolls to a new segment; the log is cut back into the first one meanwhile.
    const appending = log.appendv([payload], payload.length)
    await new Promise((r) => setImmediate(r))
    t.equal(log.segments().length, 2, 'the append in flight has a segment of its own')
    await log.truncate(0)
    held.release()
    await t.rejects(appending, { code: 'QMQ_ERR_STORE_CLOSED' }, 'the append fails: its file is gone')
    t.equal(log.endOffset, 0, 'the log did not grow')
  },
)

function item(subject: string, body: string): AppendItem {
  const record = encodeRecord({
    id: `id-${body}`,
    subject,
    createdAt: 1_700_000_000_000,
    tags: [],
    properties: new Map(),
    body,
  })
  return { record, subject, tagMask: 0, seq: -1, skip: false, offset: -1, storedAt: 0, end: -1 }
}

t.test('message log - abandon() writes nothing more, not even batches already queued', async (t) => {
  const dir = t.testdir()
  let seq = 0
  const mlog = new MessageLog({
    dir,
    segmentBytes: 1 << 20,
    flush: 'sync',
    hotCacheBytes: 1 << 20,
    now: () => Date.now(),
    hooks: {
      prepare: (items) => {
        for (const it of items) it.seq = seq++
        return 0
      },
      rollback: () => undefined,
      committed: () => undefined,
    },
  })
  // The first batch's write is in flight when the second is queued behind it.
  const first = mlog.append([item('a', 'one')])
  await new Promise((r) => setImmediate(r))
  const second = mlog.append([item('a', 'two')])
  const queued = mlog.append([item('a', 'three')])
  mlog.abandon()
  const settled = await Promise.allSettled([first, second, queued])
  await new Promise((r) => setTimeout(r, 20))
  const files = fs.readdirSync(dir).filter((n) => n.endsWith('.log'))
  const bytes = files.reduce((n, f) => n + fs.statSync(path.join(dir, f)).size, 0)
  const oneRecord = 32 + item('a', 'one').record.length
  t.ok(bytes <= oneRecord, `at most the batch in flight reached the file (${bytes} bytes)`)
  t.equal(settled[1]?.status, 'rejected', 'a batch queued at abandon() is refused')
  t.equal(settled[2]?.status, 'rejected', 'a batch queued at abandon() is refused')
  mlog.log.close()
})
