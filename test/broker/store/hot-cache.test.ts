import t from 'tap'
import { type HotEntry, HotCache } from '../../../src/broker/store/hot-cache'
import { prng } from '../../helpers/messages'

// The ring hands out space, batches commit in order or are cancelled newest first, and a read returns
// exactly the bytes written for that log offset or nothing: never another batch's bytes.

t.test('hot cache - random reserve / commit / cancel / evict against a model', async (t) => {
  let checks = 0
  let hits = 0
  for (let seed = 1; seed <= 40; seed++) {
    const rand = prng(seed)
    const cap = 256 + Math.floor(rand() * 4096)
    const cache = new HotCache(cap)
    /** Reserved, not yet committed (oldest first). */
    const inFlight: { entry: HotEntry; bytes: Buffer }[] = []
    /** What the log holds: offset -> bytes of each committed batch. */
    const log: { start: number; bytes: Buffer }[] = []
    let logEnd = 0
    let retainedFrom = 0
    for (let step = 0; step < 400; step++) {
      const op = rand()
      if (op < 0.45) {
        const len = 1 + Math.floor(rand() * (cap / 3))
        const r = cache.reserve(len)
        const bytes = Buffer.alloc(len)
        for (let i = 0; i < len; i++) bytes[i] = Math.floor(rand() * 256)
        if (r !== undefined) {
          if (r.buf.length !== len) t.fail(`seed ${seed}: asked ${len} bytes, got ${r.buf.length}`)
          bytes.copy(r.buf)
          inFlight.push({ entry: r.entry, bytes })
        } else {
          // Not cached: the batch is still stored (the log does not depend on the cache).
          log.push({ start: logEnd, bytes })
          logEnd += len
        }
      } else if (op < 0.75 && inFlight.length > 0) {
        const b = inFlight.shift() as { entry: HotEntry; bytes: Buffer }
        cache.commit(b.entry, logEnd)
        log.push({ start: logEnd, bytes: b.bytes })
        logEnd += b.bytes.length
      } else if (op < 0.82 && inFlight.length > 0) {
        cache.cancel((inFlight.pop() as { entry: HotEntry }).entry)
      } else if (op < 0.85) {
        retainedFrom = Math.floor(rand() * (logEnd + 1))
        cache.evictBefore(retainedFrom)
      } else {
        // Read a random slice of a committed batch: mostly recent ones (what pulls of the tail read).
        const back =
          rand() < 0.7 ? Math.floor(rand() * Math.min(4, log.length)) : Math.floor(rand() * log.length)
        const b = log[log.length - 1 - back]
        if (b === undefined) continue
        const rel = Math.floor(rand() * b.bytes.length)
        const size = 1 + Math.floor(rand() * (b.bytes.length - rel))
        const got = cache.get(b.start + rel, size)
        checks++
        if (got !== undefined) {
          hits++
          if (!got.equals(b.bytes.subarray(rel, rel + size)))
            t.fail(`seed ${seed} step ${step}: wrong bytes at ${b.start + rel}`)
        }
      }
      if (cache.bytes > cap) t.fail(`seed ${seed}: ${cache.bytes} cached bytes over capacity ${cap}`)
    }
    // Everything in flight still commits and the newest batch is readable.
    for (const b of inFlight) {
      cache.commit(b.entry, logEnd)
      log.push({ start: logEnd, bytes: b.bytes })
      logEnd += b.bytes.length
      const got = cache.get(logEnd - b.bytes.length, b.bytes.length)
      t.ok(got?.equals(b.bytes), `seed ${seed}: a just-committed batch is readable`)
    }
  }
  t.ok(checks > 1000 && hits > checks / 4, `${hits} of ${checks} reads served from the ring, all correct`)
})

t.test('hot cache - a batch in flight is never overwritten; the ring refuses instead', async (t) => {
  const cache = new HotCache(100)
  const a = cache.reserve(40)
  const b = cache.reserve(40)
  t.ok(a && b, 'two batches fit')
  t.equal(cache.reserve(40), undefined, 'a third does not while both are in flight')
  cache.commit((a as { entry: HotEntry }).entry, 0)
  const c = cache.reserve(40)
  t.ok(c, 'once the oldest is committed it can be reclaimed')
  t.equal(cache.get(32, 8), undefined, 'the reclaimed batch is no longer readable')
  cache.commit((b as { entry: HotEntry }).entry, 40)
  t.ok(cache.get(40, 8), 'the next one still is')
  t.equal(cache.reserve(60), undefined, 'a batch over half the ring is not cached')
  t.equal(new HotCache(0).reserve(1), undefined, 'capacity 0 disables caching')
})

t.test('hot cache - cancelled batches are never readable and free their space', async (t) => {
  const cache = new HotCache(200)
  const a = cache.reserve(50) as { entry: HotEntry; buf: Buffer }
  a.buf.fill(1)
  cache.commit(a.entry, 0)
  const b = cache.reserve(50) as { entry: HotEntry; buf: Buffer }
  const c = cache.reserve(50) as { entry: HotEntry; buf: Buffer }
  cache.cancel(c.entry)
  cache.cancel(b.entry)
  t.equal(cache.get(50, 1), undefined, 'nothing at the cancelled offsets')
  const d = cache.reserve(100)
  const e = cache.reserve(50)
  t.ok(d && e, 'their space is free again (150 bytes after the committed batch)')
  d?.buf.fill(2)
  cache.commit((d as { entry: HotEntry }).entry, 50)
  t.same([...(cache.get(0, 50) ?? [])], new Array(50).fill(1), 'the committed batch before is intact')
  t.same([...(cache.get(50, 100) ?? [])], new Array(100).fill(2))
})
