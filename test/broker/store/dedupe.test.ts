import t from 'tap'
import { encodeRecord } from '../../../src/common/record'
import { DedupeIndex, hashBytes } from '../../../src/broker/store/dedupe'

function rec(subject: string, id: string): Buffer {
  return encodeRecord({ id, subject, createdAt: 1, tags: [], properties: new Map(), body: undefined })
}

t.test('dedupe - (subject, id) keys: same id in another subject is a different key', async (t) => {
  const d = new DedupeIndex(60_000, 1000)
  t.equal(d.findOrAdd(rec('a', 'x1'), 0, 7, 0), -1)
  t.equal(d.findOrAdd(rec('a', 'x1'), 0, 99, 0), 7, 'the first copy wins')
  t.equal(d.find(rec('b', 'x1'), 0), -1, 'other subject')
  // Same concatenated bytes, different split between id and subject.
  t.equal(d.find(rec('1', 'ax'), 0), -1)
  t.equal(d.find(rec('x1a', 'a'), 0), -1)
  // A key embedded in a larger buffer (a SEND body) is found at its position.
  const r = rec('a', 'x1')
  const body = Buffer.concat([Buffer.alloc(13, 7), r])
  t.equal(d.find(body, 13), 7)
  t.equal(d.size, 1)
})

t.test('dedupe - many keys: every stored key found, no false positives, survives growth', async (t) => {
  const d = new DedupeIndex(60_000, 1_000_000)
  const n = 20_000
  let added = 0
  for (let i = 0; i < n; i++) if (d.findOrAdd(rec(`s${i % 7}`, `id-${i}`), 0, i, 0) === -1) added++
  t.equal(added, n)
  let found = 0
  let wrong = 0
  for (let i = 0; i < n; i++) if (d.find(rec(`s${i % 7}`, `id-${i}`), 0) === i) found++
  for (let i = 0; i < n; i++) if (d.find(rec(`s${(i + 1) % 7}`, `id-${i}`), 0) >= 0) wrong++
  t.equal(found, n)
  t.equal(wrong, 0)
})

t.test('dedupe - maxEntries forgets the oldest; deletions keep probe runs intact', async (t) => {
  const d = new DedupeIndex(60_000, 500)
  for (let i = 0; i < 5000; i++) d.findOrAdd(rec('s', `k${i}`), 0, i, i)
  t.equal(d.size, 500)
  for (let i = 0; i < 4500; i++) if (d.find(rec('s', `k${i}`), 0) !== -1) t.fail(`k${i} should be forgotten`)
  for (let i = 4500; i < 5000; i++) if (d.find(rec('s', `k${i}`), 0) !== i) t.fail(`k${i} lost`)
  t.pass('checked')
})

t.test('dedupe - window expiry and rollback of the newest entries', async (t) => {
  const d = new DedupeIndex(1000, 10_000)
  for (let i = 0; i < 100; i++) d.findOrAdd(rec('s', `k${i}`), 0, i, i * 100)
  d.expire(5000 + 1000) // keeps times >= 5000
  t.equal(d.size, 50)
  t.equal(d.find(rec('s', 'k49'), 0), -1)
  t.equal(d.find(rec('s', 'k50'), 0), 50)
  const mark = d.mark
  for (let i = 100; i < 120; i++) d.findOrAdd(rec('s', `k${i}`), 0, i, 10_000)
  t.equal(d.find(rec('s', 'k110'), 0), 110)
  d.rollbackTo(mark)
  t.equal(d.size, 50)
  t.equal(d.find(rec('s', 'k110'), 0), -1, 'rolled back')
  t.equal(d.find(rec('s', 'k99'), 0), 99, 'older entries kept')
  t.equal(d.findOrAdd(rec('s', 'k110'), 0, 500, 10_000), -1, 'can be added again')
  t.equal(d.find(rec('s', 'k110'), 0), 500)
})

t.test('dedupe - long keys and a small arena: the arena wraps and the oldest go', async (t) => {
  const d = new DedupeIndex(60_000, 100_000)
  const long = 'x'.repeat(120)
  for (let i = 0; i < 30_000; i++) d.findOrAdd(rec(`subject.${i % 3}`, `${long}${i}`), 0, i, 0)
  let ok = 0
  for (let i = 29_000; i < 30_000; i++) if (d.find(rec(`subject.${i % 3}`, `${long}${i}`), 0) === i) ok++
  t.equal(ok, 1000, 'recent long keys found')
  t.equal(d.find(rec('subject.0', `${long}x`), 0), -1)
})

t.test('dedupe - disabled index stores nothing', async (t) => {
  const d = new DedupeIndex(0, 100)
  t.equal(d.enabled, false)
  t.equal(d.findOrAdd(rec('s', 'a'), 0, 1, 0), -1)
  t.equal(d.find(rec('s', 'a'), 0), -1)
})

t.test('dedupe - every byte of the key counts in the hash (whole words and the 1-3 byte tail)', async (t) => {
  for (const len of [1, 2, 3, 4, 5, 6, 7, 8, 13]) {
    const a = Buffer.alloc(len, 0x41)
    const seen = new Set<number>([hashBytes(a, 0, len)])
    for (let i = 0; i < len; i++) {
      const b = Buffer.from(a)
      b[i] = 0x42
      seen.add(hashBytes(b, 0, len))
    }
    t.equal(seen.size, len + 1, `length ${len}`)
  }
  t.not(hashBytes(Buffer.from('ab'), 0, 1), hashBytes(Buffer.from('ab'), 0, 2), 'length counts')
})

t.test('dedupe - pending entries: settled, discarded, forgotten; entry numbers stay valid', async (t) => {
  const d = new DedupeIndex(60_000, 1000)
  const a = d.mark
  t.equal(d.findOrAdd(rec('s', 'a'), 0, DedupeIndex.PENDING, 0), -1, 'added pending')
  t.equal(d.findOrAdd(rec('s', 'a'), 0, 5, 0), DedupeIndex.PENDING, 'a second copy finds it pending')
  t.equal(d.size, 1, 'and adds nothing')
  d.settle(a, 40)
  t.equal(d.find(rec('s', 'a'), 0), 40, 'settled')
  d.discard(a)
  t.equal(d.find(rec('s', 'a'), 0), 40, 'a settled entry is not discarded')
  const b = d.mark
  d.findOrAdd(rec('s', 'b'), 0, DedupeIndex.PENDING, 0)
  d.discard(b)
  t.equal(d.find(rec('s', 'b'), 0), -1, 'discarded: found by no lookup')
  t.equal(d.findOrAdd(rec('s', 'b'), 0, 77, 0), -1, 'so the next copy is added')
  t.equal(d.find(rec('s', 'b'), 0), 77)
  // forget: by key bytes and sequence (the delay store's refusal markers).
  const r = rec('s', 'b')
  d.forget(r, 28, DedupeIndex.keyEnd(r, 0), 76)
  t.equal(d.find(r, 0), 77, 'another sequence: kept')
  d.forget(r, 28, DedupeIndex.keyEnd(r, 0), 77)
  t.equal(d.find(r, 0), -1, 'forgotten')
})

t.test(
  'dedupe - settle/discard of an entry that left does not touch the entry reusing its ring slot',
  async (t) => {
    const d = new DedupeIndex(1000, 1_000_000)
    const first = d.mark
    d.findOrAdd(rec('s', 'gone'), 0, DedupeIndex.PENDING, 0)
    d.settle(first, 3)
    d.expire(5000) // it leaves: head = first + 1
    t.equal(d.find(rec('s', 'gone'), 0), -1, 'left with the window')
    // The ring starts at 64 Ki slots: entry first + 65536 lands in the slot `first` had.
    for (let i = 1; i < 65_536; i++) d.findOrAdd(rec('s', `k${i}`), 0, i, 5000)
    const reuse = d.mark
    t.equal(reuse, first + 65_536)
    d.findOrAdd(rec('s', 'new'), 0, DedupeIndex.PENDING, 5000)
    d.discard(first) // a late (repeated) discard of the entry that left
    t.equal(d.find(rec('s', 'new'), 0), DedupeIndex.PENDING, 'the pending entry in its slot is untouched')
    d.settle(first, 9)
    t.equal(d.find(rec('s', 'new'), 0), DedupeIndex.PENDING, 'by a late settle neither')
    d.settle(reuse, 11)
    t.equal(d.find(rec('s', 'new'), 0), 11, 'its own settle works')
  },
)

t.test('dedupe - a pending entry is neither expired nor dropped for room', async (t) => {
  const d = new DedupeIndex(1000, 4)
  const p = d.mark
  d.findOrAdd(rec('s', 'p'), 0, DedupeIndex.PENDING, 0)
  d.expire(10_000)
  t.equal(d.find(rec('s', 'p'), 0), DedupeIndex.PENDING, 'not expired')
  for (let i = 0; i < 10; i++) d.findOrAdd(rec('s', `k${i}`), 0, i, 10_000)
  t.equal(d.find(rec('s', 'p'), 0), DedupeIndex.PENDING, 'not dropped by the cap')
  t.equal(d.findOrAdd(rec('s', 'p'), 0, 99, 10_000), DedupeIndex.PENDING, 'a second copy still finds it')
  d.settle(p, 50)
  t.equal(d.find(rec('s', 'p'), 0), 50)
  d.findOrAdd(rec('s', 'after'), 0, 100, 10_000)
  t.equal(d.size, 4, 'back within the cap once it settled')
  t.equal(d.find(rec('s', 'k9'), 0), 9, 'the newest kept')
  t.equal(d.find(rec('s', 'after'), 0), 100)
})

t.test('dedupe - discarded entries do not count toward maxEntries', async (t) => {
  const d = new DedupeIndex(60_000, 4)
  d.findOrAdd(rec('s', 'kept'), 0, 1, 0)
  for (let i = 0; i < 3; i++) {
    const e = d.mark
    d.findOrAdd(rec('s', `failed${i}`), 0, DedupeIndex.PENDING, 1)
    d.discard(e)
  }
  d.findOrAdd(rec('s', 'next'), 0, 2, 2)
  t.equal(d.find(rec('s', 'kept'), 0), 1, 'a run of failed writes does not push out a stored id')
  t.equal(d.effectiveWindowMs(3), 60_000, 'nor shortens the window')
  for (let i = 0; i < 3; i++) d.findOrAdd(rec('s', `more${i}`), 0, 3 + i, 3)
  t.equal(d.find(rec('s', 'kept'), 0), -1, 'the cap still holds for stored ids')
  t.equal(d.find(rec('s', 'more2'), 0), 5)
})
