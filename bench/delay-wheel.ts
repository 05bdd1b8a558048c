/**
 * Micro-benchmark of the hash wheel (src/delay/wheel/hash-wheel.ts): add rate, fire rate, bytes per
 * entry. DELAY_WHEEL_ENTRIES (default 1M, quick 200k) entries spread over one hour, fired by
 * advancing 10 ms at a time over the whole hour.
 */
import { HashWheel } from '../src/delay/wheel/hash-wheel'
import { quick, report } from './common'

const N = Number(process.env.DELAY_WHEEL_ENTRIES ?? (quick ? 200_000 : 1_000_000))
const T0 = 1_800_000_000_000
const HOUR = 3_600_000

const wheel = new HashWheel(T0, { tickMs: 10, wheelSize: 4096, initialCapacity: 1024 })
let t = performance.now()
for (let i = 0; i < N; i++) wheel.add(T0 + ((i * 2_654_435_761) % HOUR), i * 200, i & 0xffff, 180)
const addMs = performance.now() - t
report({ bench: 'delay-wheel', metric: 'add', value: Math.round(N / (addMs / 1000)), unit: 'entries/s' })
report({
  bench: 'delay-wheel',
  metric: 'memory per entry',
  value: Math.round((wheel.memoryBytes / N) * 10) / 10, // capacity (a power of two) / entries
  unit: 'bytes',
})

let fired = 0
let last = 0
let ordered = true
t = performance.now()
for (let now = T0; now <= T0 + HOUR; now += 10) {
  wheel.advance(now, (due) => {
    if (due < last) ordered = false
    last = due
    fired++
  })
}
const fireMs = performance.now() - t
report({
  bench: 'delay-wheel',
  metric: 'advance over 1 h (360k ticks) + fire',
  value: Math.round(fireMs),
  unit: 'ms',
})
report({
  bench: 'delay-wheel',
  metric: 'fire',
  value: Math.round(fired / (fireMs / 1000)),
  unit: 'entries/s',
})
if (!ordered || fired !== N) {
  process.stderr.write(`delay-wheel: fired ${fired}/${N}, ordered=${ordered}\n`)
  process.exit(1)
}

// A burst: N entries due in the same millisecond, fired by one advance.
const burst = new HashWheel(T0, { tickMs: 10 })
for (let i = 0; i < N; i++) burst.add(T0 + 1_000, i)
t = performance.now()
let n = 0
burst.advance(T0 + 1_000, () => {
  n++
})
report({
  bench: 'delay-wheel',
  metric: 'burst fire (same due time)',
  value: Math.round(n / ((performance.now() - t) / 1000)),
  unit: 'entries/s',
})
