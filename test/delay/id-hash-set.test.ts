import t from 'tap'
import { IdHashSet } from '../../src/delay/store/id-hash-set'

t.test('id hash set - add, has, delete with duplicates and the reserved values 0 and 1', async (t) => {
  const s = new IdHashSet(16)
  for (const h of [0, 1, 2, 0xffffffff, 42, 42]) s.add(h)
  t.equal(s.size, 6)
  for (const h of [0, 1, 2, 0xffffffff, 42]) t.ok(s.has(h), `has ${h}`)
  t.notOk(s.has(7))
  t.ok(s.delete(42))
  t.ok(s.has(42), 'one copy of a duplicate stays')
  t.ok(s.delete(42))
  t.notOk(s.has(42))
  t.notOk(s.delete(42))
  t.equal(s.size, 4)
})

t.test('id hash set - grows and compacts deleted slots, keeping every live hash', async (t) => {
  const s = new IdHashSet(16)
  const live = new Set<number>()
  let notDeleted = 0
  let x = 12345
  for (let i = 0; i < 50_000; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0
    s.add(x)
    live.add(x)
    if (i % 3 === 0) {
      const first = live.values().next().value as number
      if (!s.delete(first)) notDeleted++
      live.delete(first)
    }
  }
  t.equal(notDeleted, 0)
  t.equal(s.size, live.size)
  let missing = 0
  for (const h of live) if (!s.has(h)) missing++
  t.equal(missing, 0)
  t.ok(s.memoryBytes <= 4 * 4 * 65_536, `bounded table (${s.memoryBytes} bytes for ${s.size})`)
})

t.test(
  'id hash set - matches a reference multiset through growth, duplicates and colliding homes',
  async (t) => {
    const s = new IdHashSet(16)
    const ref = new Map<number, number>()
    let x = 987654321
    const rnd = () => {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0
      return x
    }
    // Inverse of the set's mix (h ^ h >>> 16, then * 0x45d9f3b): hashes whose mixed value is chosen,
    // so that hundreds share one home slot (as ids crafted against the hash would).
    const inv = (m: number) => {
      let y = Math.imul(m, 0x119de1f3) >>> 0 // 0x45d9f3b * 0x119de1f3 = 1 (mod 2^32)
      y = (y ^ (y >>> 16)) >>> 0
      return y
    }
    const colliding = Array.from({ length: 600 }, (_, i) => inv(((0xabc << 20) | i) >>> 0))
    const pool = [...Array.from({ length: 5_000 }, rnd), ...colliding]
    const addRef = (h: number) => ref.set(h, (ref.get(h) ?? 0) + 1)
    let mismatches = 0
    for (let step = 0; step < 200_000; step++) {
      const r = rnd()
      const h = r % 4 === 0 ? (pool[r % pool.length] as number) : r
      if (r % 7 < 4) {
        s.add(h)
        addRef(h)
        if (r % 5 === 0) pool.push(h)
      } else {
        const want = (ref.get(h) ?? 0) > 0
        if (s.delete(h) !== want) mismatches++
        if (want) ref.set(h, (ref.get(h) as number) - 1)
      }
      if (s.has(h) !== (ref.get(h) ?? 0) > 0) mismatches++
    }
    for (const h of colliding) {
      s.add(h)
      addRef(h)
    }
    t.equal(mismatches, 0, 'add/delete/has agree with the reference at every step')
    let live = 0
    let missing = 0
    for (const [h, n] of ref) {
      live += n
      if (n > 0 && !s.has(h)) missing++
    }
    t.equal(missing, 0, 'every live hash is found')
    t.equal(s.size, live)
    for (const [h, n] of ref) for (let k = 0; k < n; k++) if (!s.delete(h)) missing++
    t.equal(missing, 0, 'every copy deletes')
    t.equal(s.size, 0)
    for (const h of pool) if (s.has(h)) missing++
    t.equal(missing, 0, 'empty at the end')
  },
)

t.test('id hash set - 2 bytes per slot from 2^24 slots up', async (t) => {
  const s = new IdHashSet(1 << 24)
  t.equal(s.memoryBytes, 2 * 2 ** 24)
})
