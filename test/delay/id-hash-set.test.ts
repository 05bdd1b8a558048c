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
