import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { IndexKind, IndexLog, keyBytes, orderByH1 } from '../../../src/broker/store/index-log'
import { silentLogger } from '../../../src/common/logger'
import { deliveredTrace } from './helpers'

// A sealed index segment's run (its hashes sorted, a few MiB for a 16 MiB segment) is written off the
// event loop: it used to be written with synchronous writes and fsyncs inside the flush that rolled
// the segment, stalling every connection of the broker for tens of ms on a busy disk.

const trace = deliveredTrace

async function fill(index: IndexLog, from: number, to: number): Promise<void> {
  for (let i = from; i < to; i++) {
    index.addTrace(trace(i))
    if (i % 10 === 9) await index.flush()
  }
  await index.flush()
}

const found = async (index: IndexLog, seq: number) =>
  (await index.lookup(IndexKind.TRACE, keyBytes(IndexKind.TRACE, 'orders', seq))).map((e) => e.ref)

t.test(
  'index run: written in the background; its entries are found meanwhile, and after reopening',
  async (t) => {
    const dir = t.testdir()
    const runDir = path.join(dir, 'indexrun')
    let index = await IndexLog.open({ dataDir: dir, segmentBytes: 4096, log: silentLogger })
    let rolled = false
    let next = 0
    for (; next < 400 && !rolled; next++) {
      const i = next
      index.addTrace(trace(i))
      await index.flush()
      // The flush that rolled the segment returns before its run is on disk (the write is in flight).
      if (index.log.segments().length > 1) {
        rolled = true
        t.same(
          fs.readdirSync(runDir).filter((n) => n.endsWith('.run')),
          [],
          'the run is not written inside the flush that sealed the segment',
        )
        t.same(await found(index, 0), [0], "a sealed segment's entry is found while its run is written")
      }
    }
    t.ok(rolled, 'the index log rolled')
    await index.sealed()
    t.equal(fs.readdirSync(runDir).filter((n) => n.endsWith('.run')).length, 1, 'then the run is written')
    t.same(
      fs.readdirSync(runDir).filter((n) => n.endsWith('.tmp')),
      [],
      'no temp file left',
    )
    await fill(index, next, 1200)
    const segs = index.segmentCount
    t.ok(segs > 2, `several segments (${segs})`)
    t.same(await found(index, 0), [0], 'found in a run file')
    t.same(await found(index, 1100), [1100], 'found in the active segment')
    await index.close()
    index = await IndexLog.open({ dataDir: dir, segmentBytes: 4096, log: silentLogger })
    t.equal(index.segmentCount, segs, 'same segments after reopening')
    for (const seq of [0, next - 1, next, 700, 1199])
      t.same(await found(index, seq), [seq], `seq ${seq} found after reopening`)
    await index.close()
  },
)

t.test(
  'index run: a failed run write keeps the hashes in memory; the next open rebuilds the run',
  async (t) => {
    const dir = t.testdir()
    const runDir = path.join(dir, 'indexrun')
    let index = await IndexLog.open({ dataDir: dir, segmentBytes: 4096, log: silentLogger })
    // A directory where the run's temp file would go: its write fails (EISDIR), as on a full disk.
    fs.rmSync(runDir, { recursive: true })
    fs.writeFileSync(runDir, 'not a directory')
    await fill(index, 0, 200)
    await index.sealed()
    t.ok(index.log.segments().length > 1, 'rolled')
    t.same(await found(index, 0), [0], 'found without its run file')
    await index.close()
    fs.rmSync(runDir)
    index = await IndexLog.open({ dataDir: dir, segmentBytes: 4096, log: silentLogger })
    t.same(await found(index, 0), [0], 'found after the run was rebuilt at open')
    t.ok(
      fs.readdirSync(runDir).some((n) => n.endsWith('.run')),
      'run file rebuilt',
    )
    await index.close()
  },
)

t.test('index run: entries ordered by h1, equal h1 in log order (radix sort)', async (t) => {
  for (const n of [0, 1, 2, 1000, 70_000]) {
    const h1 = new Uint32Array(n)
    // Few distinct values (many ties), spread over both 16-bit halves.
    for (let i = 0; i < n; i++) h1[i] = ((Math.random() * 50) | 0) * 0x01010101 + (i % 3 === 0 ? 0x10000 : 0)
    const got = await orderByH1(h1, n)
    const want = Array.from({ length: n }, (_, i) => i).sort(
      (a, b) => (h1[a] as number) - (h1[b] as number) || a - b,
    )
    t.same(Array.from(got), want, `${n} entries`)
  }
})

t.test('index run: a lookup running while a run completes still finds its segment', async (t) => {
  // Regression: lookup awaited the runs' reads before looking at the segments still being sealed, so
  // a segment whose run completed in between was in neither view and its entries were missed.
  const dir = t.testdir()
  const index = await IndexLog.open({ dataDir: dir, segmentBytes: 4096, log: silentLogger })
  let misses = 0
  let lookups = 0
  let seq = 0
  for (let round = 0; round < 40; round++) {
    const first = seq
    // Fill until the log rolls: the segment holding `first` is then being sealed (its run in flight).
    const segments = index.log.segments().length
    while (index.log.segments().length === segments) {
      index.addTrace(trace(seq++))
      await index.flush()
    }
    const sealed = index.sealed()
    let done = false
    void sealed.then(() => {
      done = true
    })
    // Lookups overlapping the run's completion (each also reads the older runs).
    while (!done) {
      lookups++
      if ((await found(index, first)).length !== 1) misses++
    }
    lookups++
    if ((await found(index, first)).length !== 1) misses++
  }
  t.ok(lookups > 40, `lookups overlapped run writes (${lookups})`)
  t.equal(misses, 0, 'no lookup missed an entry of a segment being sealed')
  await index.close()
})
