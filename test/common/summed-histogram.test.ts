import t from 'tap'
import { Histogram } from 'prom-client'
import { createRegistry, LATENCY_BUCKETS_SECONDS, SummedHistogram } from '../../src/common/metrics'

/**
 * SummedHistogram (src/common/summed-metrics.ts): counted outside prom-client, handed over when read.
 * Every test runs the same observations through a plain prom-client Histogram in a registry of its
 * own and compares the exposition text: it must be the same, byte for byte.
 */

const buckets = [...LATENCY_BUCKETS_SECONDS]

/** A summed histogram and a plain prom-client one, each in its own registry (same default labels). */
function pair(labelNames: string[], extra: { buckets?: number[] } = { buckets }) {
  const summedRegistry = createRegistry()
  const plainRegistry = createRegistry()
  for (const r of [summedRegistry, plainRegistry]) r.setDefaultLabels({ service: 'broker', group: 'g1' })
  const config = { name: 'test_seconds', help: 'A test histogram', labelNames, ...extra }
  const summed = new SummedHistogram({ ...config, registers: [summedRegistry] })
  const plain = new Histogram({ ...config, registers: [plainRegistry] })
  return { summed, plain, summedRegistry, plainRegistry }
}

// Values on the bounds, between them, above the last, below the first, negative, and sums that
// round (0.1 + 0.2): the bucket edges and the float sum must come out as prom-client's.
const VALUES = [0.00005, 0.0000499, 0.1, 0.2, 0.30000000000000004, 12, 10, 0, -1, 0.0013, 0.7, 2.5, 1e-9, 0.1]

t.test('labelled series: the same exposition text as prom-client for the same observations', async (t) => {
  const { summed, plain, summedRegistry, plainRegistry } = pair(['request'])
  t.equal(await summedRegistry.metrics(), await plainRegistry.metrics(), 'before any observation')
  const send = summed.labels({ request: 'SEND' })
  for (const [i, v] of VALUES.entries()) {
    // PULL first observed before SEND's first: the series order is that of the first observations.
    if (i % 3 === 0) {
      summed.observe({ request: 'PULL' }, v * 2)
      plain.observe({ request: 'PULL' }, v * 2)
    }
    send.observe(v)
    plain.observe({ request: 'SEND' }, v)
  }
  const text = await summedRegistry.metrics()
  t.equal(text, await plainRegistry.metrics())
  // Spot checks of the text itself (its label order is prom-client's: le, default labels, the rest).
  t.match(text, /^test_seconds_bucket\{le="0\.00005",service="broker",group="g1",request="SEND"\} 5$/m)
  t.match(text, /^test_seconds_bucket\{le="\+Inf",service="broker",group="g1",request="SEND"\} 14$/m)
  t.match(text, /^test_seconds_count\{service="broker",group="g1",request="SEND"\} 14$/m)
  // Read again after more observations: the hand-off sets totals, it does not add them twice.
  send.observe(0.003)
  plain.observe({ request: 'SEND' }, 0.003)
  t.equal(await summedRegistry.metrics(), await plainRegistry.metrics(), 'second read')
  t.same(await summed.histogram.get(), await plain.get(), 'get() (the JSON path) too')
  t.same(await summedRegistry.getMetricsAsJSON(), await plainRegistry.getMetricsAsJSON())
})

t.test('two labels, a series resolved before it is observed, default buckets', async (t) => {
  const { summed, plain, summedRegistry, plainRegistry } = pair(['subject', 'consumer_group'], {})
  const resolved = summed.labels({ subject: 'a', consumer_group: 'late' })
  t.equal(summed.labels({ subject: 'a', consumer_group: 'late' }), resolved, 'one series per label set')
  for (const v of VALUES) {
    summed.observe({ subject: 'a', consumer_group: 'x' }, v)
    plain.observe({ subject: 'a', consumer_group: 'x' }, v)
    summed.observe({ subject: 'b', consumer_group: 'x' }, v / 3)
    plain.observe({ subject: 'b', consumer_group: 'x' }, v / 3)
  }
  t.equal(await summedRegistry.metrics(), await plainRegistry.metrics(), 'the unobserved series is not shown')
  resolved.observe(0.02)
  plain.observe({ subject: 'a', consumer_group: 'late' }, 0.02)
  t.equal(await summedRegistry.metrics(), await plainRegistry.metrics())
})

t.test('a number and its string are one series, as in prom-client', async (t) => {
  const { summed, plain, summedRegistry, plainRegistry } = pair(['status'])
  const asNumber = summed.labels({ status: 5 })
  for (const v of VALUES) {
    asNumber.observe(v)
    plain.observe({ status: 5 }, v)
    summed.observe({ status: '5' }, v / 7)
    plain.observe({ status: '5' }, v / 7)
  }
  t.equal(summed.labels({ status: '5' }), asNumber)
  t.equal(await summedRegistry.metrics(), await plainRegistry.metrics())
  summed.histogram.remove('5')
  plain.remove('5')
  t.equal(await summedRegistry.metrics(), await plainRegistry.metrics(), 'removed by either spelling')
})

t.test('no labels: the zero series from the start, as prom-client', async (t) => {
  const { summed, plain, summedRegistry, plainRegistry } = pair([])
  t.equal(await summedRegistry.metrics(), await plainRegistry.metrics())
  const only = summed.labels({})
  for (const v of VALUES) {
    only.observe(v)
    plain.observe(v)
  }
  t.equal(await summedRegistry.metrics(), await plainRegistry.metrics())
})

t.test('reset and remove, as prom-client', async (t) => {
  const { summed, plain, summedRegistry, plainRegistry } = pair(['code'])
  const a = summed.labels({ code: 'a' })
  const b = summed.labels({ code: 'b' })
  const both = (code: 'a' | 'b', v: number) => {
    ;(code === 'a' ? a : b).observe(v)
    plain.observe({ code }, v)
  }
  both('a', 0.5)
  both('b', 0.01)
  t.equal(await summedRegistry.metrics(), await plainRegistry.metrics())
  summedRegistry.resetMetrics()
  plainRegistry.resetMetrics()
  t.equal(await summedRegistry.metrics(), await plainRegistry.metrics(), 'empty after the reset')
  t.notMatch(await summedRegistry.metrics(), /code="a"/)
  both('b', 0.2) // b first now: the order after a reset is that of the new first observations
  both('a', 0.3)
  t.equal(await summedRegistry.metrics(), await plainRegistry.metrics(), 'a held series counts again')
  summed.histogram.remove({ code: 'b' })
  plain.remove({ code: 'b' })
  summed.histogram.remove('a')
  plain.remove('a')
  t.equal(await summedRegistry.metrics(), await plainRegistry.metrics(), 'removed')
  both('a', 4)
  t.equal(await summedRegistry.metrics(), await plainRegistry.metrics(), 'back after a remove')
  summed.histogram.reset()
  plain.reset()
  both('b', 1)
  t.equal(await summedRegistry.metrics(), await plainRegistry.metrics(), "the histogram's own reset")
})

t.test('the errors prom-client gives, and the configuration collect', async (t) => {
  const registry = createRegistry()
  let collected = 0
  const h = new SummedHistogram({
    name: 'test_errors_seconds',
    help: 'test',
    labelNames: ['code'],
    registers: [registry],
    collect() {
      collected++
    },
  })
  t.throws(() => h.labels({ nope: 'x' } as never), /label/)
  const s = h.labels({ code: 'x' })
  t.throws(() => s.observe(Number.NaN), TypeError)
  t.throws(() => s.observe(Number.POSITIVE_INFINITY), TypeError)
  t.throws(
    () =>
      new SummedHistogram({ name: 'test_ex_seconds', help: 'test', enableExemplars: true, registers: [] }),
    TypeError,
  )
  await registry.metrics()
  t.equal(collected, 1, "the configuration's own collect still runs")
  t.notMatch(await registry.metrics(), /code="x"/, 'failed observations counted nothing')
})
