import t from 'tap'
import { HashWheel } from '../../src/delay/wheel/hash-wheel'

const T0 = 1_700_000_000_000

function drain(w: HashWheel, now: number, limit?: number): number[][] {
  const out: number[][] = []
  w.advance(now, (due, ref, x, y) => out.push([due, ref, x, y]), limit)
  return out
}

t.test('wheel - fires nothing before due, everything at due, in due order', async (t) => {
  const w = new HashWheel(T0, { tickMs: 10, wheelSize: 8 })
  w.add(T0 + 55, 3, 30, 300)
  w.add(T0 + 15, 1, 10, 100)
  w.add(T0 + 35, 2, 20, 200)
  t.equal(w.size, 3)
  t.same(drain(w, T0 + 14), [])
  t.same(drain(w, T0 + 15), [[T0 + 15, 1, 10, 100]])
  t.same(drain(w, T0 + 100), [
    [T0 + 35, 2, 20, 200],
    [T0 + 55, 3, 30, 300],
  ])
  t.equal(w.size, 0)
})

t.test('wheel - entries many turns ahead wait for their time', async (t) => {
  const w = new HashWheel(T0, { tickMs: 10, wheelSize: 4 }) // one turn = 40 ms
  w.add(T0 + 1005, 7)
  for (let now = T0; now < T0 + 1005; now += 7) t.same(drain(w, now), [], `nothing at +${now - T0}`)
  t.same(
    drain(w, T0 + 1005).map((e) => e[1]),
    [7],
  )
})

t.test('wheel - a jump over many turns fires everything due, sorted', async (t) => {
  const w = new HashWheel(T0, { tickMs: 10, wheelSize: 16 })
  const dues: number[] = []
  for (let i = 0; i < 500; i++) {
    const due = T0 + ((i * 7919) % 100_000)
    dues.push(due)
    w.add(due, i)
  }
  const out = drain(w, T0 + 50_000)
  const expected = dues.filter((d) => d <= T0 + 50_000).sort((a, b) => a - b)
  t.same(
    out.map((e) => e[0]),
    expected,
  )
  t.equal(w.size, 500 - expected.length)
  const rest = drain(w, T0 + 200_000)
  t.equal(rest.length, 500 - expected.length)
  t.equal(w.size, 0)
})

t.test('wheel - equal due times fire in insertion order, late entries after earlier ones', async (t) => {
  const w = new HashWheel(T0, { tickMs: 10, wheelSize: 8 })
  for (let i = 0; i < 5; i++) w.add(T0 + 20, i)
  drain(w, T0 + 10) // cursor moves on, nothing due
  t.same(drain(w, T0 + 5), [], 'time going back fires nothing')
  drain(w, T0 + 19)
  // The wheel has passed tick(T0) and tick(T0+10): an entry due then goes to the late list.
  w.add(T0 + 1, 99)
  const out = drain(w, T0 + 20)
  t.same(
    out.map((e) => e[1]),
    [99, 0, 1, 2, 3, 4],
  )
})

t.test('wheel - past due entries fire at the next advance', async (t) => {
  const w = new HashWheel(T0, { tickMs: 10 })
  drain(w, T0 + 1000)
  w.add(T0 - 5000, 1)
  w.add(T0 + 500, 2)
  t.same(
    drain(w, T0 + 1000).map((e) => e[1]),
    [1, 2],
  )
})

t.test('wheel - cancel removes an entry once; stale handles are refused', async (t) => {
  const w = new HashWheel(T0, { tickMs: 10, wheelSize: 8 })
  const a = w.add(T0 + 30, 1)
  const b = w.add(T0 + 30, 2)
  const c = w.add(T0 + 30, 3)
  t.ok(w.cancel(b))
  t.notOk(w.cancel(b), 'second cancel is refused')
  t.equal(w.size, 2)
  t.same(
    drain(w, T0 + 30).map((e) => e[1]),
    [1, 3],
  )
  t.notOk(w.cancel(a), 'fired entry cannot be cancelled')
  // The freed index is reused: the old handle must not cancel the new entry.
  const d = w.add(T0 + 40, 4)
  t.notOk(w.cancel(c))
  t.ok(w.cancel(d))
  t.equal(w.size, 0)
})

t.test('wheel - limit fires the earliest first and keeps the rest', async (t) => {
  const w = new HashWheel(T0, { tickMs: 10 })
  for (let i = 0; i < 10; i++) w.add(T0 + 100 - i, i)
  t.same(
    drain(w, T0 + 200, 3).map((e) => e[1]),
    [9, 8, 7],
  )
  t.equal(w.size, 7)
  t.same(
    drain(w, T0 + 200).map((e) => e[1]),
    [6, 5, 4, 3, 2, 1, 0],
  )
})

t.test('wheel - grows past its initial capacity and reports memory', async (t) => {
  const w = new HashWheel(T0, { tickMs: 10, wheelSize: 64, initialCapacity: 16 })
  const before = w.memoryBytes
  for (let i = 0; i < 10_000; i++) w.add(T0 + (i % 977) * 13, i, i % 7, i * 3)
  t.equal(w.size, 10_000)
  t.ok(w.memoryBytes > before)
  t.equal(w.earliestDue(), T0)
  let last = 0
  let n = 0
  let ok = true
  w.advance(T0 + 1_000_000, (due, ref, x, y) => {
    if (due < last || x !== ref % 7 || y !== ref * 3) ok = false
    last = due
    n++
  })
  t.ok(ok, 'due order and payloads kept')
  t.equal(n, 10_000)
  t.equal(w.earliestDue(), undefined)
})

t.test('wheel - clear drops everything', async (t) => {
  const w = new HashWheel(T0)
  const h = w.add(T0 + 10, 1)
  w.clear()
  t.equal(w.size, 0)
  t.notOk(w.cancel(h))
  t.same(drain(w, T0 + 100), [])
})

t.test('wheel - rejects bad options and times', async (t) => {
  t.throws(() => new HashWheel(T0, { tickMs: 0 }), RangeError)
  t.throws(() => new HashWheel(T0, { wheelSize: 1 }), RangeError)
  t.throws(() => new HashWheel(T0).add(Number.NaN, 1), RangeError)
})
