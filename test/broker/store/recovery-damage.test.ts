import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { ENTRY_BYTES } from '../../../src/broker/store/consume-log'
import { FRAME_BYTES, writeFrameHeader } from '../../../src/broker/store/message-log'
import type { FileMessageStore } from '../../../src/broker/store/file-message-store'
import { bodyOf, open, pullOpts, rec } from './helpers'

/** The message-log segment (the test logs fit in one) and the file positions of its frames. */
function frames(dir: string): { file: string; buf: Buffer; starts: number[] } {
  const names = fs.readdirSync(path.join(dir, 'messagelog')).sort()
  const file = path.join(dir, 'messagelog', names[0] as string)
  const buf = fs.readFileSync(file)
  const starts: number[] = []
  for (let pos = 0; pos < buf.length; pos += buf.readUInt32BE(pos)) starts.push(pos)
  return { file, buf, starts }
}

async function pullAll(store: FileMessageStore, subject: string): Promise<string[]> {
  const got = await store.pull(pullOpts(subject, 'g', 'c', { maxMessages: 10_000 }))
  return got.map((m) => bodyOf(m.record))
}

const N = 60
const DAMAGED = 20
const body = (i: number) => `d${i}`
const damages: Record<string, (buf: Buffer, pos: number) => void> = {
  // Eight bytes over the frame checksum and the type/version/reserved fields.
  'eight flipped bytes of a frame header': (buf, pos) => {
    for (let k = 4; k < 12; k++) buf[pos + k] = (buf[pos + k] as number) ^ 0xa5
  },
  // The length is outside the frame checksum: a plausible length that runs past the segment's end
  // looks like a torn tail unless the scan looks further.
  'a frame length running past the segment end': (buf, pos) => {
    buf.writeUInt32BE(3_000_000, pos)
  },
}

for (const [damage, apply] of Object.entries(damages)) {
  t.test(`recovery - ${damage}: the records after it are kept, the loss reported`, async (t) => {
    const dir = t.testdir()
    const store = await open(dir, { checkpointIntervalMs: 600_000 })
    for (let i = 0; i < N; i++) await store.append([rec('d', { body: body(i) })])
    await store.abandon() // a crash: recovery scans (and verifies) everything after the checkpoint at 0
    const { file, buf, starts } = frames(dir)
    const pos = starts[DAMAGED] as number
    const len = buf.readUInt32BE(pos)
    apply(buf, pos)
    fs.writeFileSync(file, buf)
    const again = await open(dir)
    t.teardown(() => again.close())
    const expected = Array.from({ length: N }, (_, i) => body(i)).filter((_, i) => i !== DAMAGED)
    t.same(await pullAll(again, 'd'), expected, 'every intact record after the damage is readable')
    const rep = again.recoveryReport
    t.same(rep?.truncated, [], 'nothing cut off')
    t.match(rep?.skipped, [{ file: path.basename(file), offset: pos, bytes: len, reason: String }])
    t.equal(rep?.skipped?.length, 1)
    t.same(rep?.lostMessages, [{ subject: 'd', first: DAMAGED, last: DAMAGED }], 'the lost message named')
    const [r] = await again.append([rec('d', { body: 'next' })])
    t.equal(r?.sequence, N, 'sequences go on after the last one stored')
  })
}

t.test('recovery - a damaged frame header in the checkpointed part: its entry becomes a hole', async (t) => {
  const dir = t.testdir()
  const store = await open(dir)
  for (let i = 0; i < N; i++) await store.append([rec('d', { body: body(i) })])
  await store.close() // the checkpoint covers everything; the dedupe rebuild still scans the frames
  const { file, buf, starts } = frames(dir)
  const pos = starts[DAMAGED] as number
  const len = buf.readUInt32BE(pos)
  damages['eight flipped bytes of a frame header']?.(buf, pos)
  fs.writeFileSync(file, buf)
  const again = await open(dir)
  t.teardown(() => again.close())
  const rep = again.recoveryReport
  t.same(rep?.truncated, [], 'the rest of the segment is not cut off')
  t.match(rep?.skipped, [{ offset: pos, bytes: len }])
  t.same(rep?.lostMessages, [{ subject: 'd', first: DAMAGED, last: DAMAGED }])
  t.same(
    await pullAll(again, 'd'),
    Array.from({ length: N }, (_, i) => body(i)).filter((_, i) => i !== DAMAGED),
  )
})

t.test('recovery - damage with no valid record after it is a torn tail, still cut off', async (t) => {
  const dir = t.testdir()
  const store = await open(dir, { checkpointIntervalMs: 600_000 })
  for (let i = 0; i < 10; i++) await store.append([rec('d', { body: body(i) })])
  await store.abandon()
  const { file, buf, starts } = frames(dir)
  const pos = starts[9] as number
  damages['eight flipped bytes of a frame header']?.(buf, pos)
  fs.writeFileSync(file, buf)
  const again = await open(dir)
  t.teardown(() => again.close())
  t.match(again.recoveryReport?.truncated, [{ offset: pos, droppedBytes: buf.length - pos }])
  t.same(again.recoveryReport?.skipped, [])
  t.same(again.recoveryReport?.lostMessages, [], 'nothing after it shows a lost sequence')
  t.equal(fs.statSync(file).size, pos, 'the file is cut at the damage')
  t.same(
    await pullAll(again, 'd'),
    Array.from({ length: 9 }, (_, i) => body(i)),
  )
})

/** Consume-log damage: what is written over entries [10, 20) of subject c. */
const garbage: Record<string, (entries: Buffer) => void> = {
  'random bytes': (e) => randomBytes(e.length).copy(e),
  zeros: (e) => e.fill(0),
  // Entry 10 replaced by entry 11: every field plausible on its own.
  'a copy of the next entry': (e) => e.copy(e, 0, ENTRY_BYTES, 2 * ENTRY_BYTES),
}

for (const [kind, apply] of Object.entries(garbage)) {
  t.test(`recovery - ${kind} over consume-log entries: detected, rebuilt, reported`, async (t) => {
    const dir = t.testdir()
    const store = await open(dir)
    // Interleaved subjects: c's records are not adjacent in the message log.
    for (let i = 0; i < 40; i++)
      await store.append([rec('c', { body: `c${i}` }), rec('x', { body: `x${i}` })])
    await store.close()
    const file = path.join(dir, 'consumelog', 'c', '00000000000000000000.log')
    const log = fs.readFileSync(file)
    t.equal(log.length, 40 * ENTRY_BYTES)
    const original = Buffer.from(log)
    apply(log.subarray(10 * ENTRY_BYTES, 20 * ENTRY_BYTES))
    fs.writeFileSync(file, log)
    const again = await open(dir)
    t.teardown(() => again.close())
    t.same(
      await pullAll(again, 'c'),
      Array.from({ length: 40 }, (_, i) => `c${i}`),
      'every message is consumable',
    )
    t.same(
      await pullAll(again, 'x'),
      Array.from({ length: 40 }, (_, i) => `x${i}`),
      'the other subject',
    )
    const rep = again.recoveryReport
    t.equal(rep?.repairedConsumeLogs?.length, 1, 'one repair')
    const repair = rep?.repairedConsumeLogs?.[0]
    t.equal(repair?.subject, 'c')
    t.ok(
      repair !== undefined &&
        repair.first <= 10 &&
        repair.last >= (kind === 'a copy of the next entry' ? 10 : 19),
      `the damaged entries are in the rebuilt range ${repair?.first}..${repair?.last}`,
    )
    t.ok(
      fs
        .readFileSync(file)
        .subarray(0, 40 * ENTRY_BYTES)
        .equals(original),
      'the rebuilt entries are written back, equal to the originals',
    )
  })
}

t.test('recovery - resynchronisation does not trust a frame found inside a message body', async (t) => {
  const dir = t.testdir()
  const store = await open(dir, { checkpointIntervalMs: 600_000 })
  // A body that holds a well-formed frame and record claiming sequence 5,000,000 of subject d.
  const inner = rec('d', { body: 'forged' }).bytes
  const forged = Buffer.alloc(FRAME_BYTES + inner.length)
  writeFrameHeader(forged, 0, inner.length, 0, 5_000_000, Date.now())
  inner.copy(forged, FRAME_BYTES)
  for (let i = 0; i < 30; i++) {
    await store.append([rec('d', { body: i === 10 ? Buffer.concat([Buffer.from('x'), forged]) : body(i) })])
  }
  await store.abandon()
  const { file, buf, starts } = frames(dir)
  damages['eight flipped bytes of a frame header']?.(buf, starts[10] as number)
  fs.writeFileSync(file, buf)
  const again = await open(dir)
  t.teardown(() => again.close())
  t.same(again.recoveryReport?.lostMessages, [{ subject: 'd', first: 10, last: 10 }])
  t.equal(again.subjectsIndex.get('d')?.consume.nextSeq, 30, 'no sequence taken from the forged frame')
  t.same(
    await pullAll(again, 'd'),
    Array.from({ length: 30 }, (_, i) => body(i)).filter((_, i) => i !== 10),
  )
})

t.test(
  'recovery - damaged consume-log entries of messages retention deleted: holes, not losses',
  async (t) => {
    const dir = t.testdir()
    const opts = { segmentBytes: 4096, retentionBytes: 2 * 4096 }
    const store = await open(dir, opts)
    const big = (i: number) => `r${i}-${'x'.repeat(400)}`
    for (let i = 0; i < 40; i++) await store.append([rec('r', { body: big(i) })])
    t.ok((await store.runRetention()) > 0, 'retention deleted segments')
    const low = store.subjectsIndex.get('r')?.lowSeq as number
    t.ok(low > 5, `messages below ${low} are gone`)
    await store.close()
    const file = path.join(dir, 'consumelog', 'r', '00000000000000000000.log')
    const log = fs.readFileSync(file)
    randomBytes(5 * ENTRY_BYTES).copy(log, 0)
    fs.writeFileSync(file, log)
    const again = await open(dir, opts)
    t.teardown(() => again.close())
    t.match(again.recoveryReport?.repairedConsumeLogs, [{ subject: 'r', first: 0, last: 4, holes: 5 }])
    t.same(again.recoveryReport?.lostMessages, [], 'retention, not damage, took those messages')
    t.same(
      await pullAll(again, 'r'),
      Array.from({ length: 40 - low }, (_, i) => big(i + low)),
    )
  },
)
