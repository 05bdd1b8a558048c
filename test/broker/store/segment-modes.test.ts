import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { type FsIo, nodeFsIo } from '../../../src/broker/store/fs-io'
import { type ScanResult, SegmentLog } from '../../../src/broker/store/segment-log'
import { crc32cRange } from '../../../src/common/crc32c'

/** A test entry: u32 length | u32 CRC32C of [8, length) | payload. */
function entry(payload: string): Buffer {
  const p = Buffer.from(payload)
  const b = Buffer.alloc(8 + p.length)
  b.writeUInt32BE(b.length, 0)
  p.copy(b, 8)
  b.writeUInt32BE(crc32cRange(b, 8, b.length), 4)
  return b
}

function check(buf: Buffer, pos: number, end: number): ScanResult {
  if (end - pos < 8) return { kind: 'short' }
  const len = buf.readUInt32BE(pos)
  if (len < 9 || len > 1000) return { kind: 'corrupt', reason: 'length' }
  if (end - pos < len) return { kind: 'short' }
  if (buf.readUInt32BE(pos + 4) !== crc32cRange(buf, pos + 8, pos + len))
    return { kind: 'corrupt', reason: 'crc' }
  return { kind: 'record', length: len }
}

async function payloads(log: SegmentLog): Promise<string[]> {
  const out: string[] = []
  await log.scan(0, log.nextOffset, check, (buf, pos, length) =>
    out.push(buf.toString('utf8', pos + 8, pos + length)),
  )
  return out
}

/** fdatasync fails while `failing`; every write (position, bytes) and fdatasync is recorded. */
class SpyIo {
  failing = false
  readonly writes: { position: number; bytes: number }[] = []
  syncs = 0
  readonly io: FsIo = {
    ...nodeFsIo,
    write: (fd, buffer, position) => {
      this.writes.push({ position, bytes: buffer.length })
      return nodeFsIo.write(fd, buffer, position)
    },
    fdatasync: async (fd) => {
      this.syncs++
      if (this.failing) throw Object.assign(new Error('EIO: injected fdatasync failure'), { code: 'EIO' })
      await nodeFsIo.fdatasync(fd)
    },
  }
}

t.test(
  'segment log (single file) - one file at the named path, created by the first append, never rolled',
  async (t) => {
    const file = path.join(t.testdir(), 'bucket', '0000000000123.sched')
    fs.mkdirSync(path.dirname(file))
    const log = SegmentLog.openFile({ file })
    t.teardown(() => log.close())
    t.notOk(fs.existsSync(file), 'opening a missing file creates nothing')
    t.equal(log.nextOffset, 0)
    t.notOk(log.unsynced)
    const offsets: number[] = []
    const want: string[] = []
    for (let i = 0; i < 2000; i++) {
      const p = `m${i}-${'x'.repeat(i % 50)}`
      want.push(p)
      offsets.push(log.appendBuffered(entry(p)))
    }
    t.ok(log.unsynced, 'buffered bytes are unsynced')
    t.notOk(fs.existsSync(file), 'buffered appends are not written yet')
    // A read of buffered bytes writes them first.
    const e = entry(want[1999] as string)
    t.same(log.readSync(offsets[1999] as number, e.length), e, 'a buffered entry reads back')
    t.ok(fs.existsSync(file), 'the file is created by the write')
    t.same(
      log.segments().map((s) => path.basename(s.file)),
      ['0000000000123.sched'],
      'one segment, the named file',
    )
    t.equal(fs.statSync(file).size, log.endOffset, 'offsets are positions in the file')
    t.same(await payloads(log), want)
    await log.sync()
    t.notOk(log.unsynced, 'synced')
    log.close()

    // A torn tail is cut by recovery; appends then follow the last good entry.
    fs.appendFileSync(file, entry('torn').subarray(0, 7))
    const again = SegmentLog.openFile({ file })
    t.teardown(() => again.close())
    const seen: string[] = []
    const cuts = await again.recover(0, check, (buf, pos, length) =>
      seen.push(buf.toString('utf8', pos + 8, pos + length)),
    )
    t.same(seen, want, 'every entry recovered')
    t.equal(cuts.length, 1, 'the torn tail reported')
    t.equal(cuts[0]?.droppedBytes, 7)
    const next = again.appendBuffered(entry('after'))
    t.equal(next, (offsets[1999] as number) + e.length, 'the next append follows the last good entry')
    await again.sync()
    t.same((await payloads(again)).slice(-2), [want[1999], 'after'])
    await t.rejects(
      again.truncate(again.endOffset + 1),
      { code: 'QMQ_ERR_INTERNAL' },
      'it cannot grow by a truncate',
    )
    await again.truncate(next)
    t.equal(fs.statSync(file).size, next, 'truncate cuts the file')
    again.remove()
    t.notOk(fs.existsSync(file), 'remove deletes the file')
  },
)

t.test('segment log - buffered appends roll between entries and keep their offsets', async (t) => {
  const dir = path.join(t.testdir(), 'log')
  const log = SegmentLog.open({ dir, segmentBytes: 256 })
  t.teardown(() => log.close())
  const want: string[] = []
  const offsets: number[] = []
  for (let i = 0; i < 100; i++) {
    const p = `entry-${i}-${'y'.repeat(i % 30)}`
    want.push(p)
    offsets.push(log.appendBuffered(entry(p)))
  }
  log.flushSync()
  t.equal(log.bufferedBytes, 0)
  t.ok(log.segments().length > 5, `${log.segments().length} segments`)
  for (const s of log.segments()) t.ok(s.size <= 256, `segment ${s.base} holds ${s.size} bytes`)
  for (let i = 0; i < want.length; i++) {
    const e = entry(want[i] as string)
    t.equal(
      log.segmentEnd(offsets[i] as number) >= (offsets[i] as number) + e.length,
      true,
      `entry ${i} in one segment`,
    )
    if (i % 17 === 0)
      t.same(log.readSync(offsets[i] as number, e.length), e, `entry ${i} reads back at its offset`)
  }
  t.same(await payloads(log), want)
  // appendv after buffered appends: the buffered ones are written first, in order.
  log.appendBuffered(entry('buffered'))
  const last = entry('batch')
  await log.appendv([last], last.length)
  t.same((await payloads(log)).slice(-2), ['buffered', 'batch'])
})

for (const mode of ['appendv', 'buffered'] as const) {
  t.test(
    `segment log - after a failed fdatasync the retry writes the unsynced bytes again (${mode})`,
    async (t) => {
      const spy = new SpyIo()
      const file = path.join(t.testdir(), 'one.log')
      const log =
        mode === 'appendv'
          ? SegmentLog.open({ dir: path.dirname(file), segmentBytes: 1 << 20, io: spy.io })
          : SegmentLog.openFile({ file, io: spy.io })
      t.teardown(() => log.close())
      const add = async (p: string) => {
        const e = entry(p)
        if (mode === 'appendv') await log.appendv([e], e.length)
        else log.appendBuffered(e)
      }
      await add('first')
      await log.sync()
      const durable = log.nextOffset
      await add('second')
      await add('third')
      const end = log.nextOffset
      spy.failing = true
      await t.rejects(log.sync(), { code: 'QMQ_ERR_STORE_IO' }, 'the sync fails')
      t.ok(log.unsynced, 'still unsynced after the failure')
      await t.rejects(log.sync(), { code: 'QMQ_ERR_STORE_IO' }, 'a retry still failing fails again')
      spy.failing = false
      spy.writes.length = 0
      const syncsBefore = spy.syncs
      await log.sync()
      t.ok(spy.syncs > syncsBefore, 'the retry fdatasyncs')
      t.same(
        spy.writes,
        [{ position: durable, bytes: end - durable }],
        'and first writes exactly the unsynced bytes again',
      )
      t.notOk(log.unsynced, 'synced')
      t.same(await payloads(log), ['first', 'second', 'third'], 'the bytes are intact')
      spy.writes.length = 0
      await add('fourth')
      await log.sync()
      t.same(spy.writes, [], 'a sync after a good one rewrites nothing')
    },
  )
}

t.test('segment log - an overlapping sync that succeeds does not hide one that failed', async (t) => {
  let calls = 0
  let failFirst: (() => void) | undefined
  const writes: { position: number; bytes: number }[] = []
  const io: FsIo = {
    ...nodeFsIo,
    write: (fd, buffer, position) => {
      writes.push({ position, bytes: buffer.length })
      return nodeFsIo.write(fd, buffer, position)
    },
    fdatasync: async (fd) => {
      calls++
      if (calls === 2) {
        // The first overlapping sync: held, then failed after the second one succeeded.
        await new Promise<void>((resolve) => {
          failFirst = resolve
        })
        throw Object.assign(new Error('EIO: injected fdatasync failure'), { code: 'EIO' })
      }
      await nodeFsIo.fdatasync(fd)
    },
  }
  const log = SegmentLog.open({ dir: path.join(t.testdir(), 'log'), segmentBytes: 1 << 20, io })
  t.teardown(() => log.close())
  const add = async (p: string) => {
    const e = entry(p)
    await log.appendv([e], e.length)
  }
  await add('first')
  await log.sync()
  const durable = log.nextOffset
  await add('second')
  const a = log.syncOverlapping()
  await add('third')
  await log.syncOverlapping()
  const end = log.nextOffset
  failFirst?.()
  await t.rejects(a, { code: 'QMQ_ERR_STORE_IO' }, 'the first sync fails after the second succeeded')
  t.ok(log.unsynced, 'still unsynced')
  writes.length = 0
  await log.sync()
  t.same(
    writes,
    [{ position: durable, bytes: end - durable }],
    'the next sync rewrites from the last good one',
  )
  t.same(await payloads(log), ['first', 'second', 'third'])
})

t.test('segment log - a failed buffered write keeps its entries buffered, with their offsets', async (t) => {
  // /dev/full: every write fails with ENOSPC (a real device, no mock).
  const log = SegmentLog.openFile({ file: '/dev/full' })
  t.teardown(() => log.close())
  const a = log.appendBuffered(entry('one'))
  const b = log.appendBuffered(entry('two'))
  const buffered = log.bufferedBytes
  t.throws(() => log.flushSync(), { code: 'QMQ_ERR_DISK_FULL' }, 'the write error, as a store error')
  t.equal(log.bufferedBytes, buffered, 'nothing dropped')
  t.equal(log.endOffset, 0, 'nothing counted as written')
  t.equal(
    log.appendBuffered(entry('three')),
    b + entry('two').length,
    'offsets unchanged: the next entry follows',
  )
  t.equal(a, 0)
  await t.rejects(log.sync(), { code: 'QMQ_ERR_DISK_FULL' }, 'a sync reports it too')
  t.ok(log.unsynced, 'still unsynced')
})

t.test('segment log - a sync that ends after a truncation does not count past the cut', async (t) => {
  let hold: Promise<void> | undefined
  let release: (() => void) | undefined
  let failNext = false
  const writes: { position: number; bytes: number }[] = []
  const io: FsIo = {
    ...nodeFsIo,
    write: (fd, buffer, position) => {
      writes.push({ position, bytes: buffer.length })
      return nodeFsIo.write(fd, buffer, position)
    },
    fdatasync: async (fd) => {
      if (hold !== undefined) {
        const h = hold
        hold = undefined
        await h
      }
      if (failNext) {
        failNext = false
        throw Object.assign(new Error('EIO: injected fdatasync failure'), { code: 'EIO' })
      }
      await nodeFsIo.fdatasync(fd)
    },
  }
  const log = SegmentLog.open({ dir: path.join(t.testdir(), 'log'), segmentBytes: 1 << 20, io })
  t.teardown(() => log.close())
  const add = async (p: string) => {
    const e = entry(p)
    await log.appendv([e], e.length)
  }
  await add('first')
  await log.sync()
  const cut = log.nextOffset
  await add('second, a long one')
  await add('third, a long one too')
  hold = new Promise<void>((resolve) => {
    release = resolve
  })
  const a = log.syncOverlapping()
  await log.truncate(cut)
  release?.()
  await a
  await add('4th')
  const end = log.nextOffset
  failNext = true
  await t.rejects(log.sync(), { code: 'QMQ_ERR_STORE_IO' }, 'a sync after the cut fails')
  writes.length = 0
  await log.sync()
  t.same(writes, [{ position: cut, bytes: end - cut }], 'the next sync rewrites from the cut')
  t.same(await payloads(log), ['first', '4th'])
})
