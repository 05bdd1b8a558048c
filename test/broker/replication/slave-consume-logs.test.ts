import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { SlaveConsumeLogs } from '../../../src/broker/replication/slave-consume'
import { openMessageStore } from '../../../src/broker/store'
import { SegmentLog } from '../../../src/broker/store/segment-log'
import { subjectDirName } from '../../../src/broker/store/subject-dirs'
import { silentLogger } from '../../../src/common/logger'
import { encodeRecord, readRecordHeader } from '../../../src/common/record'
import { tempDir } from '../../helpers/replication'

/**
 * The slave's consume logs (replication/slave-consume.ts) against a store's own: the bytes of a real
 * message log written in chunks cut anywhere (inside a frame header, a record, a frame length) give
 * the same consume-log files as the store wrote; a cut of the copy and a copy of other bytes after it
 * too.
 */

const SUBJECTS = ['a', 'b.c', 'd']

/** Record j's subject: SUBJECTS in turn unless `subjectOf` says otherwise. */
async function masterLog(
  dir: string,
  from: number,
  count: number,
  subjectOf = (j: number) => SUBJECTS[j % SUBJECTS.length] as string,
): Promise<void> {
  const store = await openMessageStore({ dataDir: dir, flush: 'async', checkpointIntervalMs: 3_600_000 })
  for (let i = from; i < from + count; i += 50) {
    const batch = []
    for (let j = i; j < Math.min(from + count, i + 50); j++) {
      const bytes = encodeRecord({
        id: `id-${j}`,
        subject: subjectOf(j),
        createdAt: Date.now(),
        tags: [`t${j % 4}`],
        properties: new Map(),
        body: Buffer.alloc(10 + ((j * 37) % 300), j),
      })
      batch.push({ bytes, header: readRecordHeader(bytes) })
    }
    await store.append(batch)
  }
  await store.close()
}

function logBytes(dir: string): Buffer {
  const files = fs.existsSync(dir) ? fs.readdirSync(dir).filter((f) => f.endsWith('.log')) : []
  return Buffer.concat(files.sort().map((f) => fs.readFileSync(path.join(dir, f))))
}

function consumeFiles(dataDir: string, subjects = SUBJECTS): Record<string, Buffer> {
  const out: Record<string, Buffer> = {}
  for (const s of subjects) out[s] = logBytes(path.join(dataDir, 'consumelog', subjectDirName(s)))
  return out
}

/** Writes `bytes` at the copy's end in chunks of the sizes given (cycled), telling `consume`. */
async function copy(
  mlog: SegmentLog,
  consume: SlaveConsumeLogs,
  bytes: Buffer,
  sizes: number[],
  segmentBase = 0,
): Promise<void> {
  let i = 0
  for (let o = mlog.endOffset; o < bytes.length; i++) {
    const data = bytes.subarray(o, Math.min(bytes.length, o + (sizes[i % sizes.length] as number)))
    const at = await mlog.appendCopied(segmentBase, Buffer.from(data))
    consume.written(at, data)
    o += data.length
  }
}

t.test('consume logs from chunks cut anywhere equal the store own, also after a cut', async (t) => {
  const master = tempDir(t, 'qmq-slave-consume-master-')
  await masterLog(master, 0, 600)
  const bytes = logBytes(path.join(master, 'messagelog'))
  const slave = tempDir(t, 'qmq-slave-consume-slave-')
  const mlog = SegmentLog.open({ dir: path.join(slave, 'messagelog'), segmentBytes: Number.MAX_SAFE_INTEGER })
  t.teardown(() => mlog.close())
  const consumeRoot = path.join(slave, 'consumelog')
  let consume = new SlaveConsumeLogs(
    { root: consumeRoot, maxMessageBytes: 1024 * 1024, entriesPerSegment: 100 },
    silentLogger,
  )
  await consume.open(mlog, undefined)
  await copy(mlog, consume, bytes, [1, 3, 2, 31, 33, 500, 7, 4096, 5])
  await consume.close()
  t.equal(consume.dispatchedTo, bytes.length)
  // The store's consume logs use 1,000,000 entries per segment: compare the entries, not the files.
  t.same(consumeFiles(slave), consumeFiles(master), 'same entries as the store wrote')

  // Cut inside a frame in the middle, then other bytes after it (another master's history).
  const other = tempDir(t, 'qmq-slave-consume-other-')
  fs.cpSync(master, other, { recursive: true })
  const cutAt = Math.floor(bytes.length / 2) + 3
  const otherStore = await openMessageStore({
    dataDir: other,
    flush: 'async',
    checkpointIntervalMs: 3_600_000,
  })
  // The other master's log ends at the last whole frame before the cut, then has records of its own.
  let frameEnd = 0
  await otherStore.mlog.log.scan(
    0,
    cutAt,
    (b, p, e) => {
      if (e - p < 4) return { kind: 'short' }
      const length = b.readUInt32BE(p)
      return e - p < length ? { kind: 'short' } : { kind: 'record', length }
    },
    (_b, _p, length, offset) => {
      frameEnd = offset + length
    },
  )
  await otherStore.close()
  fs.rmSync(path.join(other, 'consumelog'), { recursive: true, force: true })
  fs.rmSync(path.join(other, 'checkpoint'), { recursive: true, force: true })
  const otherLog = SegmentLog.open({
    dir: path.join(other, 'messagelog'),
    segmentBytes: Number.MAX_SAFE_INTEGER,
  })
  await otherLog.truncate(frameEnd)
  otherLog.close()
  await masterLog(other, 10_000, 200)
  const otherBytes = logBytes(path.join(other, 'messagelog'))

  consume = new SlaveConsumeLogs(
    { root: consumeRoot, maxMessageBytes: 1024 * 1024, entriesPerSegment: 100 },
    silentLogger,
  )
  await consume.open(mlog, undefined)
  await mlog.truncate(cutAt)
  await consume.cut(cutAt)
  await mlog.truncate(frameEnd)
  await consume.cut(frameEnd)
  await copy(mlog, consume, otherBytes, [4097, 2, 1, 900])
  await consume.close()
  t.same(consumeFiles(slave), consumeFiles(other), 'same entries as the other master wrote')
})

t.test('after a RESET each subject starts at its first sequence copied, without holes', async (t) => {
  const master = tempDir(t, 'qmq-slave-consume-master-')
  await masterLog(master, 0, 600)
  const bytes = logBytes(path.join(master, 'messagelog'))
  // Frame boundaries of the master's log (the length field of each frame).
  const frames: number[] = []
  for (let o = 0; o < bytes.length; o += bytes.readUInt32BE(o)) frames.push(o)
  const slave = tempDir(t, 'qmq-slave-consume-slave-')
  const mlog = SegmentLog.open({ dir: path.join(slave, 'messagelog'), segmentBytes: Number.MAX_SAFE_INTEGER })
  t.teardown(() => mlog.close())
  const consume = new SlaveConsumeLogs(
    { root: path.join(slave, 'consumelog'), maxMessageBytes: 1024 * 1024, entriesPerSegment: 100 },
    silentLogger,
  )
  await consume.open(mlog, undefined)
  // The slave holds the first 100 frames; the master's log now starts at frame 400 (retention).
  await copy(mlog, consume, bytes.subarray(0, frames[100]), [777])
  const start = frames[400] as number
  await mlog.truncate(mlog.startOffset)
  await mlog.truncate(start)
  mlog.deleteBefore(start)
  await consume.cut(start)
  await copy(mlog, consume, bytes, [1000, 3], start)
  await consume.close()
  const mine = consumeFiles(slave)
  const theirs = consumeFiles(master)
  for (const s of SUBJECTS) {
    const first = SUBJECTS.indexOf(s) // the records' subjects cycle: frame j is subject j % 3, seq j / 3
    const seq = Math.floor((400 - first + 2) / 3)
    t.same(mine[s], theirs[s]?.subarray(seq * 24), `${s}: the master's entries from sequence ${seq}`)
  }
  // Nothing before: the consume log's files start at the first sequence copied.
  const dir = path.join(slave, 'consumelog', subjectDirName('a'))
  const files = fs.readdirSync(dir).filter((f) => f.endsWith('.log'))
  t.equal(Math.min(...files.map((f) => Number.parseInt(f, 10))), Math.ceil(400 / 3) * 24)
})

t.test(
  'many subjects in turn (more than it remembers by their bytes) get the store own entries',
  async (t) => {
    // Same lengths differing in one byte, non-ASCII ones, a prefix of another: 12 subjects in turn.
    const subjects = [
      's.a0',
      's.a1',
      's.b0',
      's.é',
      's.è',
      's.a',
      's.a00',
      'x',
      'y',
      'zz',
      'orders.created',
      'ü',
    ]
    const master = tempDir(t, 'qmq-slave-consume-master-')
    // Runs of a few subjects (remembered), then all of them in turn (more than are remembered).
    await masterLog(
      master,
      0,
      900,
      (j) => subjects[j < 450 ? (j % 3) + 3 * Math.floor(j / 150) : j % 12] as string,
    )
    const bytes = logBytes(path.join(master, 'messagelog'))
    const slave = tempDir(t, 'qmq-slave-consume-slave-')
    const mlog = SegmentLog.open({
      dir: path.join(slave, 'messagelog'),
      segmentBytes: Number.MAX_SAFE_INTEGER,
    })
    t.teardown(() => mlog.close())
    const consume = new SlaveConsumeLogs(
      { root: path.join(slave, 'consumelog'), maxMessageBytes: 1024 * 1024, entriesPerSegment: 100 },
      silentLogger,
    )
    await consume.open(mlog, undefined)
    await copy(mlog, consume, bytes, [70_000, 13, 2049])
    await consume.close()
    const theirs = consumeFiles(master, subjects)
    for (const s of subjects) t.ok((theirs[s]?.length ?? 0) > 0, `${s} has entries`)
    t.same(consumeFiles(slave, subjects), theirs, 'same entries as the store wrote')
  },
)

t.test('a damaged record whose frame header still reads is not filed under another subject', async (t) => {
  // Review finding: bytes copied unverified (the master's stored damage) or read back from the file at
  // a restart were parsed with the frame header's checks only: a flipped subject byte ("q.1" -> "q.3")
  // filed the record, and holes up to its sequence, into q.3's consume log.
  const master = tempDir(t, 'qmq-slave-consume-damaged-')
  await masterLog(master, 0, 40, (j) => (j % 2 === 0 ? 'q.1' : 'q.3'))
  const bytes = Buffer.from(logBytes(path.join(master, 'messagelog')))
  // The 31st frame (a q.1 record, sequence 15) gets q.3's subject; its record CRC no longer matches.
  let p = 0
  for (let i = 0; i < 30; i++) p += bytes.readUInt32BE(p)
  const s = bytes.indexOf('q.1', p + 32)
  t.ok(s > p, 'found the subject bytes')
  bytes[s + 2] = '3'.charCodeAt(0)
  const slave = tempDir(t, 'qmq-slave-consume-damaged-slave-')
  const mlog = SegmentLog.open({ dir: path.join(slave, 'messagelog'), segmentBytes: Number.MAX_SAFE_INTEGER })
  t.teardown(() => mlog.close())
  await mlog.appendCopied(0, bytes)
  // A slave restarted with this copy rebuilds its consume logs by reading the file.
  const consume = new SlaveConsumeLogs(
    { root: path.join(slave, 'consumelog'), maxMessageBytes: 1024 * 1024, entriesPerSegment: 100 },
    silentLogger,
  )
  await consume.open(mlog, undefined)
  await consume.close()
  const files = consumeFiles(slave, ['q.1', 'q.3'])
  t.equal(
    files['q.3']?.length ?? 0,
    0,
    "q.3's consume log holds nothing: the logs were dropped at the damage",
  )
  t.equal(files['q.1']?.length ?? 0, 0, 'and q.1 too (a promotion rebuilds both with recovery checks)')
})
