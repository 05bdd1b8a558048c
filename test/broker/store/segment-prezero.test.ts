import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { type FsIo, nodeFsIo } from '../../../src/broker/store/fs-io'
import { type ScanResult, SegmentLog, type SegmentLogOptions } from '../../../src/broker/store/segment-log'
import { crc32cRange } from '../../../src/common/crc32c'
import { bodyOf, open, pullOpts, rec } from './helpers'

/** A test entry: u32 length | u32 CRC32C of [8, length) | payload (never all zeros). */
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
  if (len < 9 || len > 100_000) return { kind: 'corrupt', reason: 'length' }
  if (end - pos < len) return { kind: 'short' }
  if (buf.readUInt32BE(pos + 4) !== crc32cRange(buf, pos + 8, pos + len))
    return { kind: 'corrupt', reason: 'crc' }
  return { kind: 'record', length: len }
}

async function payloads(log: SegmentLog): Promise<string[]> {
  const out: string[] = []
  await log.scan(log.startOffset, log.endOffset, check, (buf, pos, length) =>
    out.push(buf.toString('utf8', pos + 8, pos + length)),
  )
  return out
}

const SEGMENT = 256 * 1024
const PREZERO = 64 * 1024
const CHUNK = 16 * 1024

function openLog(dir: string, extra: Partial<SegmentLogOptions> = {}): SegmentLog {
  return SegmentLog.open({
    dir,
    segmentBytes: SEGMENT,
    prezeroBytes: PREZERO,
    prezeroChunkBytes: CHUNK,
    ...extra,
  })
}

/** Opens and recovers (as the message log does: resynchronising, skipped ranges collected). */
async function recovered(dir: string, extra: Partial<SegmentLogOptions> = {}) {
  const log = openLog(dir, extra)
  const skipped: unknown[] = []
  const truncations = await log.recover(log.startOffset, check, () => undefined, {
    onSkip: (r) => skipped.push(r),
  })
  return { log, truncations, skipped }
}

function files(dir: string): { name: string; bytes: Buffer }[] {
  return fs
    .readdirSync(dir)
    .sort()
    .map((name) => ({ name, bytes: fs.readFileSync(path.join(dir, name)) }))
}

const allZero = (b: Buffer) => b.every((x) => x === 0)

t.test('prezero - appends overwrite a zeroed tail; every reader sees the logical size only', async (t) => {
  const dir = t.testdir()
  const { log } = await recovered(dir)
  t.teardown(() => log.close())
  const want: string[] = []
  for (let i = 0; i < 100; i++) {
    const p = `m${i}-${'x'.repeat(i % 37)}`
    want.push(p)
    await log.appendv([entry(p)], entry(p).length)
  }
  await log.zeroingIdle()
  const end = log.endOffset
  const bytes = files(dir)[0]?.bytes ?? Buffer.alloc(0)
  t.equal(bytes.length, log.activeFileBytes, 'the file holds the zeroed tail')
  t.ok(
    bytes.length >= end + PREZERO / 2 && bytes.length <= end + PREZERO,
    `the zeroed tail is between half and all of prezeroBytes (${bytes.length - end} bytes)`,
  )
  t.ok(allZero(bytes.subarray(end)), 'only zeros past the logical end')
  t.same(await payloads(log), want)
  t.equal(log.totalBytes, end)
  t.same(
    log.segments().map((s) => s.size),
    [end],
  )
  t.same(log.segmentAt(0), { base: 0, end })
  const tail = await log.read(end - 10, 1000)
  t.equal(tail.length, 10, 'a read stops at the logical end')
  t.equal(log.readSync(end - 10, 10).length, 10)
  t.throws(() => log.readSync(end - 10, 11), 'a synchronous read past the logical end fails')
})

t.test('prezero - a roll cuts the old segment back to its logical size', async (t) => {
  const dir = t.testdir()
  const { log } = await recovered(dir)
  t.teardown(() => log.close())
  const e = entry('r'.repeat(3000))
  let last = 0
  while (log.segments().length < 3) {
    last = await log.appendv([e], e.length)
    if (last % (e.length * 20) === 0) await log.zeroingIdle() // zeroed tails near the rolls too
  }
  await log.zeroingIdle()
  const segs = log.segments()
  const fs0 = files(dir)
  t.equal(fs0.length, 3)
  for (let i = 0; i < 2; i++) {
    t.equal(fs0[i]?.bytes.length, segs[i]?.size, `sealed segment ${i}: file length == logical size`)
  }
  t.ok((fs0[2]?.bytes.length as number) > (segs[2]?.size as number), 'the active one has a zeroed tail')
  t.ok((fs0[2]?.bytes.length as number) <= SEGMENT, 'never past segmentBytes')
  t.equal(log.endOffset, last + e.length)
})

t.test('prezero - recovery: zeros after an entry boundary are the clean end, not a truncation', async (t) => {
  const dir = t.testdir()
  const first = await recovered(dir)
  const want: string[] = []
  for (let i = 0; i < 50; i++) {
    want.push(`a${i}`)
    await first.log.appendv([entry(`a${i}`)], entry(`a${i}`).length)
  }
  await first.log.sync()
  await first.log.zeroingIdle()
  const end = first.log.endOffset
  first.log.close() // a crash: nothing more is written
  t.ok(fs.statSync(path.join(dir, files(dir)[0]?.name as string)).size > end)

  const { log, truncations, skipped } = await recovered(dir)
  t.teardown(() => log.close())
  t.same(truncations, [], 'no truncation reported')
  t.same(skipped, [], 'nothing skipped')
  t.equal(log.endOffset, end, 'the logical end is where the entries end')
  t.ok(log.activeFileBytes > end, 'the zeros are kept as the zeroed tail')
  const off = await log.appendv([entry('after')], entry('after').length)
  t.equal(off, end, 'appends continue at the logical end')
  t.same(await payloads(log), [...want, 'after'])
})

t.test(
  'prezero - recovery of an empty segment of zeros, and of a log that does not zero ahead',
  async (t) => {
    const dir = t.testdir()
    fs.writeFileSync(
      path.join(dir, '00000000000000000000.log'),
      Buffer.concat([entry('x'), Buffer.alloc(5000)]),
    )
    fs.writeFileSync(path.join(dir, '00000000000000000009.log'), Buffer.alloc(9000))
    // Without prezeroBytes but reading zeros as the end (a slave's copy): every zero tail is cut.
    const { log, truncations } = await recovered(dir, { prezeroBytes: 0, zeroTailIsEnd: true })
    t.same(truncations, [])
    t.same(
      log.segments().map((s) => [s.base, s.size]),
      [
        [0, 9],
        [9, 0],
      ],
    )
    t.same(
      files(dir).map((f) => f.bytes.length),
      [9, 0],
      'file lengths cut to the logical sizes',
    )
    log.close()
    // The same files read by a log that does not know zero tails: damage (as before the option).
    fs.writeFileSync(path.join(dir, '00000000000000000009.log'), Buffer.alloc(9000))
    const plain = await recovered(dir, { prezeroBytes: 0 })
    t.teardown(() => plain.log.close())
    t.match(plain.truncations, [{ offset: 0, droppedBytes: 9000 }])
  },
)

t.test(
  'prezero - a torn batch (a lost page, then stale bytes) is cut with what follows: a later crash never reads the stale bytes as data',
  async (t) => {
    const dir = t.testdir()
    const first = await recovered(dir)
    for (let i = 0; i < 10; i++) await first.log.appendv([entry(`k${i}`)], entry(`k${i}`).length)
    await first.log.sync()
    await first.log.zeroingIdle()
    const end = first.log.endOffset
    first.log.close()
    // The crash: a batch [lost page of zeros][stale whole entries] was written at `end`; the page
    // with its first bytes never reached the disk.
    const file = path.join(dir, files(dir)[0]?.name as string)
    const stale = Buffer.concat([entry('stale-1'), entry('stale-2')])
    const fd = fs.openSync(file, 'r+')
    fs.writeSync(fd, stale, 0, stale.length, end + 4096)
    fs.closeSync(fd)

    // First recovery without resynchronising: damage to the end of the segment, cut at `end`.
    const a = openLog(dir)
    const cuts = await a.recover(0, check, () => undefined)
    t.match(cuts, [{ logOffset: end, droppedBytes: 4096 + stale.length }], 'reported as a truncation')
    t.equal(a.endOffset, end)
    await a.zeroingIdle()
    const bytes = fs.readFileSync(file)
    t.ok(allZero(bytes.subarray(end)), 'nothing but zeros past the end: the stale entries are gone')
    // A new batch, shorter than the lost page, then another crash.
    await a.appendv([entry('new')], entry('new').length)
    await a.sync()
    a.close()

    // The second recovery resynchronises (as the message log does): it would take stale entries
    // past the new batch for data if they were still in the file.
    const b = await recovered(dir)
    t.teardown(() => b.log.close())
    t.same(b.truncations, [])
    t.same(b.skipped, [])
    const got = await payloads(b.log)
    t.same(got, [...Array.from({ length: 10 }, (_, i) => `k${i}`), 'new'])
  },
)

t.test('prezero - damage followed by non-zero bytes stays a torn tail', async (t) => {
  const dir = t.testdir()
  const first = await recovered(dir)
  for (let i = 0; i < 5; i++) await first.log.appendv([entry(`t${i}`)], entry(`t${i}`).length)
  await first.log.zeroingIdle()
  const end = first.log.endOffset
  first.log.close()
  const file = path.join(dir, files(dir)[0]?.name as string)
  const torn = entry('torn entry').subarray(0, 12) // a header and a few payload bytes
  const fd = fs.openSync(file, 'r+')
  fs.writeSync(fd, torn, 0, torn.length, end)
  fs.closeSync(fd)
  const { log, truncations } = await recovered(dir)
  t.teardown(() => log.close())
  t.match(truncations, [{ logOffset: end, droppedBytes: 12 }], 'the torn entry is cut and reported')
  t.equal(fs.statSync(file).size >= end, true)
  await log.zeroingIdle()
  t.ok(allZero(fs.readFileSync(file).subarray(end)), 'zeros past the end again')
})

t.test('prezero - truncate and a failed append leave only zeros past the new end', async (t) => {
  const dir = t.testdir()
  let failNext = false
  const io: FsIo = {
    ...nodeFsIo,
    // A batch whose write fails half way: its first half reaches the file.
    writev: async (fd, buffers, position) => {
      if (!failNext) return nodeFsIo.writev(fd, buffers, position)
      failNext = false
      const all = Buffer.concat(buffers)
      await nodeFsIo.write(fd, all.subarray(0, all.length >> 1), position)
      throw Object.assign(new Error('EIO: injected write failure'), { code: 'EIO' })
    },
  }
  const { log } = await recovered(dir, { io })
  t.teardown(() => log.close())
  const offsets: number[] = []
  for (let i = 0; i < 40; i++) offsets.push(await log.appendv([entry(`c${i}`)], entry(`c${i}`).length))
  await log.zeroingIdle()
  const file = path.join(dir, files(dir)[0]?.name as string)

  await log.truncate(offsets[20] as number)
  t.equal(log.endOffset, offsets[20])
  t.ok(allZero(fs.readFileSync(file).subarray(offsets[20])), 'truncate: zeros (or nothing) past the cut')
  await log.zeroingIdle()
  t.ok(log.activeFileBytes > (offsets[20] as number), 'the zeroed tail is made again')
  t.ok(allZero(fs.readFileSync(file).subarray(offsets[20])))

  failNext = true
  const big = entry('f'.repeat(2000))
  await t.rejects(log.appendv([big], big.length), { code: 'QMQ_ERR_STORE_IO' })
  t.equal(log.endOffset, offsets[20], 'the failed append is undone')
  t.ok(allZero(fs.readFileSync(file).subarray(offsets[20])), 'its half-written bytes are gone')
  await log.appendv([entry('ok')], entry('ok').length)
  t.same((await payloads(log)).slice(-2), ['c19', 'ok'])
})

t.test('prezero - the zeroer never writes bytes an append is writing at the same time', async (t) => {
  const dir = t.testdir()
  /** Writes in flight: [start, end) per kind; an overlap between a zero write and a data write fails. */
  const inFlight: { start: number; end: number; zeros: boolean }[] = []
  const overlaps: string[] = []
  const delay = () => new Promise((r) => setTimeout(r, Math.random() * 3))
  const track = async (start: number, bytes: Buffer[], run: () => Promise<number>) => {
    const len = bytes.reduce((n, b) => n + b.length, 0)
    const me = { start, end: start + len, zeros: bytes.every(allZero) }
    for (const o of inFlight)
      if (o.zeros !== me.zeros && o.start < me.end && me.start < o.end)
        overlaps.push(`[${o.start}, ${o.end}) and [${me.start}, ${me.end})`)
    inFlight.push(me)
    try {
      await delay()
      return await run()
    } finally {
      inFlight.splice(inFlight.indexOf(me), 1)
    }
  }
  const io: FsIo = {
    ...nodeFsIo,
    writev: (fd, buffers, position) => track(position, buffers, () => nodeFsIo.writev(fd, buffers, position)),
    write: (fd, buffer, position) => track(position, [buffer], () => nodeFsIo.write(fd, buffer, position)),
  }
  const { log } = await recovered(dir, { io, prezeroBytes: 16 * 1024, prezeroChunkBytes: 4096 })
  t.teardown(() => log.close())
  const want: string[] = []
  for (let i = 0; i < 400; i++) {
    // Sizes from tiny to more than the zeroed tail: appends run past it now and then.
    const p = `${i}:${'z'.repeat((i * 7919) % (i % 25 === 0 ? 20_000 : 600))}`
    want.push(p)
    await log.appendv([entry(p)], entry(p).length)
  }
  await log.zeroingIdle()
  t.same(overlaps, [], 'no zero write overlapped an append in flight')
  t.same(await payloads(log), want)
  for (const f of files(dir).slice(0, -1)) t.ok(f.bytes.length <= SEGMENT)
  const segs = log.segments()
  const active = files(dir).at(-1)?.bytes as Buffer
  t.ok(allZero(active.subarray(segs.at(-1)?.size)), 'zeros past the end of the active segment')
})

t.test('prezero - a full disk stops the zeroer, not the appends', async (t) => {
  const dir = t.testdir()
  let zeroWrites = 0
  const io: FsIo = {
    ...nodeFsIo,
    write: (fd, buffer, position) => {
      if (allZero(buffer)) {
        zeroWrites++
        return Promise.reject(Object.assign(new Error('ENOSPC (injected)'), { code: 'ENOSPC' }))
      }
      return nodeFsIo.write(fd, buffer, position)
    },
  }
  const { log } = await recovered(dir, { io })
  t.teardown(() => log.close())
  for (let i = 0; i < 30; i++) await log.appendv([entry(`n${i}`)], entry(`n${i}`).length)
  await log.zeroingIdle()
  t.equal(zeroWrites, 1, 'one failed extension, then the zeroer rests')
  t.equal(log.activeFileBytes, log.endOffset)
  t.equal(fs.statSync(path.join(dir, files(dir)[0]?.name as string)).size, log.endOffset)
  t.equal((await payloads(log)).length, 30)
})

t.test(
  'prezero - message store: a crash leaves a zeroed tail; reopening reports nothing and goes on',
  async (t) => {
    const dir = t.testdir()
    const store = await open(dir, { segmentBytes: 4 * 1024 * 1024, checkpointIntervalMs: 600_000 })
    for (let i = 0; i < 30; i++) await store.append([rec('z', { body: `b${i}` })])
    await store.mlog.log.zeroingIdle()
    const end = store.mlog.log.endOffset
    t.ok(store.mlog.log.activeFileBytes > end, 'the message log keeps a zeroed tail (default)')
    await store.abandon()
    const segFile = path.join(dir, 'messagelog', fs.readdirSync(path.join(dir, 'messagelog'))[0] as string)
    t.ok(fs.statSync(segFile).size > end, 'the file is longer than its data')

    const again = await open(dir, { segmentBytes: 4 * 1024 * 1024 })
    t.teardown(() => again.close())
    t.same(again.recoveryReport?.truncated, [], 'no truncation')
    t.same(again.recoveryReport?.skipped ?? [], [], 'nothing skipped')
    t.equal(again.mlog.log.endOffset, end)
    const [r] = await again.append([rec('z', { body: 'next' })])
    t.equal(r?.sequence, 30, 'sequences go on')
    const got = await again.pull(pullOpts('z', 'g', 'c', { maxMessages: 100 }))
    t.same(
      got.map((m) => bodyOf(m.record)),
      [...Array.from({ length: 30 }, (_, i) => `b${i}`), 'next'],
    )
  },
)

t.test('prezero - message store option 0: no zeroed tail', async (t) => {
  const dir = t.testdir()
  const store = await open(dir, { segmentBytes: 4 * 1024 * 1024, prezeroBytes: 0 })
  t.teardown(() => store.close())
  for (let i = 0; i < 10; i++) await store.append([rec('z', { body: `b${i}` })])
  await store.mlog.log.zeroingIdle()
  t.equal(store.mlog.log.activeFileBytes, store.mlog.log.endOffset)
})
