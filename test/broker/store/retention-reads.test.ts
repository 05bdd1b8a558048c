import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { type FsIo, nodeFsIo } from '../../../src/broker/store/fs-io'
import { IndexKind, IndexLog, keyBytes } from '../../../src/broker/store/index-log'
import { SegmentLog } from '../../../src/broker/store/segment-log'
import type { StoredMessage } from '../../../src/broker/store/types'
import { silentLogger } from '../../../src/common/logger'
import { bodyOf, open, pullOpts, rec, deliveredTrace } from './helpers'

/**
 * Reads that were issued before retention (or a truncate) removed their segment. A gate parks reads
 * in the injected FsIo after they have picked their file descriptor: the removal then runs between
 * the issue and the completion of the read, every time. Foreign files are opened meanwhile so that a
 * descriptor closed under the read is reused by another file (the lowest free number is taken).
 */
function gatedIo() {
  let parking = false
  let parked: (() => void)[] = []
  const io: FsIo = {
    ...nodeFsIo,
    read: (fd, buffer, offset, length, position) => {
      if (!parking) return nodeFsIo.read(fd, buffer, offset, length, position)
      return new Promise<void>((resolve) => parked.push(resolve)).then(() =>
        nodeFsIo.read(fd, buffer, offset, length, position),
      )
    },
  }
  return {
    io,
    park: () => {
      parking = true
    },
    stopParking: () => {
      parking = false
    },
    parkedCount: () => parked.length,
    release: () => {
      const p = parked
      parked = []
      for (const r of p) r()
    },
  }
}

async function until(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 2000; i++) {
    if (cond()) return
    await new Promise((r) => setTimeout(r, 5))
  }
  throw new Error(`timed out waiting for ${what}`)
}

/** Opens `n` files holding `content` (they take the lowest free descriptors). */
/** The body, or what made the bytes undecodable. */
function safeBody(record: Buffer): string {
  try {
    return bodyOf(record)
  } catch (err) {
    return `undecodable: ${(err as Error).message}`
  }
}

/** Descriptors of this process open on `file` (Linux: /proc/self/fd). */
function fdsOn(file: string): number {
  let n = 0
  for (const fd of fs.readdirSync('/proc/self/fd')) {
    try {
      if (fs.readlinkSync(`/proc/self/fd/${fd}`).startsWith(file)) n++
    } catch {
      // closed meanwhile
    }
  }
  return n
}

function openForeign(dir: string, n: number, content: Buffer): number[] {
  const fds: number[] = []
  for (let i = 0; i < n; i++) {
    const file = path.join(dir, `foreign-${i}`)
    fs.writeFileSync(file, content)
    fds.push(fs.openSync(file, 'r'))
  }
  return fds
}

t.test('segment log - a read in flight keeps reading its own file when the segment is deleted', async (t) => {
  const dir = t.testdir()
  const gate = gatedIo()
  const log = SegmentLog.open({ dir: path.join(dir, 'log'), segmentBytes: 4096, io: gate.io })
  t.teardown(() => log.close())
  const a = Buffer.alloc(3000, 'a')
  const b = Buffer.alloc(3000, 'b')
  const c = Buffer.alloc(3000, 'c')
  t.equal(await log.appendv([a], a.length), 0)
  t.equal(await log.appendv([b], b.length), 3000, 'rolled: a batch never spans segments')
  await log.appendv([c], c.length)
  t.equal(log.segments().length, 3)
  gate.park()
  const reads = [log.read(0, 3000), log.read(3000, 3000)]
  await until(() => gate.parkedCount() === 2, 'two parked reads')
  gate.stopParking()
  t.ok(log.deleteOldest(), 'segment 0 deleted')
  t.equal(log.deleteBefore(6000), 1, 'segment 1 deleted')
  const seg0 = path.join(dir, 'log', '00000000000000000000.log')
  t.notOk(fs.existsSync(seg0), 'its file is unlinked at once')
  t.equal(fdsOn(seg0), 1, 'and stays open for the read in flight')
  const fds = openForeign(dir, 4, Buffer.alloc(3000, 'X'))
  t.teardown(() => {
    for (const fd of fds) fs.closeSync(fd)
  })
  gate.release()
  const [ra, rb] = await Promise.all(reads)
  t.ok(ra?.equals(a), 'the first read returns the bytes of the segment it started on')
  t.ok(rb?.equals(b), 'so does the second')
  t.equal(fdsOn(seg0), 0, 'the last read closed the deleted segment')
  t.ok((await log.read(6000, 3000)).equals(c), 'the retained segment still reads')
  await t.rejects(
    log.read(0, 10),
    { code: 'QMQ_ERR_NOT_FOUND' },
    'a read issued after the deletion is refused',
  )
})

t.test('segment log - a truncate under a read in flight does not close its file', async (t) => {
  const dir = t.testdir()
  const gate = gatedIo()
  const log = SegmentLog.open({ dir: path.join(dir, 'log'), segmentBytes: 4096, io: gate.io })
  t.teardown(() => log.close())
  const a = Buffer.alloc(3000, 'a')
  const b = Buffer.alloc(3000, 'b')
  await log.appendv([a], a.length)
  await log.appendv([b], b.length)
  gate.park()
  const read = log.read(3000, 3000)
  await until(() => gate.parkedCount() === 1, 'a parked read')
  gate.stopParking()
  await log.truncate(3000) // drops the segment being read
  const fds = openForeign(dir, 4, Buffer.alloc(3000, 'X'))
  t.teardown(() => {
    for (const fd of fds) fs.closeSync(fd)
  })
  gate.release()
  t.ok((await read).equals(b))
})

t.test('store - a pull started before retention deleted its message-log segment', async (t) => {
  const dir = t.testdir()
  const gate = gatedIo()
  const store = await open(path.join(dir, 'data'), {
    io: gate.io,
    segmentBytes: 4096,
    retentionBytes: 4096,
    hotCacheBytes: 0,
  })
  t.teardown(() => store.close())
  const body = (i: number) => `r${i}-${'x'.repeat(400)}`
  for (let i = 0; i < 40; i++) await store.append([rec('r', { body: body(i) })])
  gate.park()
  const pull = store.pull(pullOpts('r', 'g', 'c', { maxMessages: 5 }))
  await until(() => gate.parkedCount() > 0, 'the pull to read the message log')
  gate.stopParking()
  t.ok((await store.runRetention()) > 0, 'retention deleted segments under the read')
  const fds = openForeign(dir, 8, Buffer.alloc(8192, 'X'))
  t.teardown(() => {
    for (const fd of fds) fs.closeSync(fd)
  })
  gate.release()
  let got: StoredMessage[] = []
  await t.resolves(
    (async () => {
      got = await pull
    })(),
    'no EBADF',
  )
  t.same(
    got.map((m) => safeBody(m.record)),
    [0, 1, 2, 3, 4].map(body),
    'the records the pull started reading, byte for byte',
  )
})

t.test('store - a pull started before retention deleted its consume-log segment', async (t) => {
  const dir = t.testdir()
  const gate = gatedIo()
  const store = await open(path.join(dir, 'data'), {
    io: gate.io,
    segmentBytes: 4096,
    retentionBytes: 4096,
    hotCacheBytes: 0,
    consumeLogSegmentEntries: 16,
    consumeLogCacheEntries: 0,
  })
  t.teardown(() => store.close())
  const body = (i: number) => `r${i}-${'x'.repeat(400)}`
  for (let i = 0; i < 60; i++) await store.append([rec('r', { body: body(i) })])
  await store.append([rec('o', { body: 'another subject' })]) // in the segment retention keeps
  await store.checkpoint() // consume-log entries written to their files (and out of memory)
  // What a reused descriptor would hand the pull: entries of the other subject's consume log.
  const otherEntry = fs
    .readFileSync(path.join(dir, 'data', 'consumelog', 'o', '00000000000000000000.log'))
    .subarray(0, 24)
  const foreign = Buffer.concat(Array.from({ length: 64 }, () => otherEntry))
  gate.park()
  const pull = store.pull(pullOpts('r', 'g', 'c', { maxMessages: 100 }))
  await until(() => gate.parkedCount() > 0, 'the pull to read the consume log')
  gate.stopParking()
  t.ok((await store.runRetention()) > 0, 'retention deleted segments under the read')
  t.ok((store.subjectsIndex.get('r')?.consume.log.startOffset ?? 0) > 0, 'consume-log segments went too')
  const fds = openForeign(dir, 8, foreign)
  t.teardown(() => {
    for (const fd of fds) fs.closeSync(fd)
  })
  gate.release()
  let got: StoredMessage[] = []
  await t.resolves(
    (async () => {
      got = await pull
    })(),
    'no EBADF',
  )
  t.ok(got.length > 0, `${got.length} messages pulled`)
  t.same(
    got.filter((m) => safeBody(m.record) !== body(m.sequence)).map((m) => [m.sequence, safeBody(m.record)]),
    [],
    'every message is the one of its sequence (no foreign entries)',
  )
})

t.test('index log - a lookup reading a run file when retention removes its segment', async (t) => {
  // Regression: retention closed a run file's descriptor under a lookup reading it, and the lookup
  // failed (EBADF); a trace or id query right at a retention pass answered an error.
  const dir = t.testdir()
  const gate = gatedIo()
  const index = await IndexLog.open({ dataDir: dir, segmentBytes: 4096, io: gate.io, log: silentLogger })
  t.teardown(() => index.close())
  const trace = deliveredTrace
  for (let i = 0; i < 300; i++) {
    index.addTrace(trace(i))
    if (i % 10 === 9) await index.flush()
  }
  await index.flush()
  await index.sealed()
  const runs = path.join(dir, 'indexrun')
  const firstRun = path.join(runs, fs.readdirSync(runs).sort()[0] as string)
  t.ok(index.segmentCount > 2, `sealed segments with runs (${index.segmentCount})`)
  const lookup = (seq: number) => index.lookup(IndexKind.TRACE, keyBytes(IndexKind.TRACE, 'orders', seq))
  t.same(
    (await lookup(0)).map((e) => e.ref),
    [0],
    'found in the first run before retention',
  )
  gate.park()
  const racing = lookup(0)
  await until(() => gate.parkedCount() > 0, 'the lookup to read a run file')
  gate.stopParking()
  t.ok(index.retain(Date.now() + 60_000) > 0, 'retention removed sealed segments under the read')
  t.notOk(fs.existsSync(firstRun), 'the run file is unlinked at once')
  t.equal(fdsOn(firstRun), 1, 'and stays open for the lookup reading it')
  gate.release()
  let got: number[] = [-1]
  await t.resolves(
    (async () => {
      got = (await racing).map((e) => e.ref)
    })(),
    'no EBADF',
  )
  t.same(got, [], 'the removed segment is cleanly not found')
  t.equal(fdsOn(firstRun), 0, 'the lookup closed the removed run file')
  t.same(
    (await lookup(299)).map((e) => e.ref),
    [299],
    'the active segment is still found',
  )
})
