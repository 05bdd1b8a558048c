import t from 'tap'
import { createRegistry, NO_LABELS, SummedCounter } from '../../src/common/metrics'

/** SummedCounter: prom-client's series, summed outside it between reads (src/common/summed-metrics.ts). */

t.test('increments are summed per label set and read through every prom-client path', async (t) => {
  const registry = createRegistry()
  const c = new SummedCounter({
    name: 'test_summed_total',
    help: 'test',
    labelNames: ['subject', 'consumer_group'],
    registers: [registry],
  })
  c.inc({ subject: 'a', consumer_group: 'g' }, 2)
  c.inc({ subject: 'a', consumer_group: 'g' })
  c.inc({ subject: 'a', consumer_group: 'h' }, 5)
  c.inc({ subject: 'b', consumer_group: 'g' }, 0)
  const values = (await c.counter.get()).values.map((v) => [
    v.labels.subject,
    v.labels.consumer_group,
    v.value,
  ])
  t.same(values.sort(), [
    ['a', 'g', 3],
    ['a', 'h', 5],
    ['b', 'g', 0],
  ])
  c.inc({ subject: 'a', consumer_group: 'g' }, 4)
  const text = await registry.metrics()
  t.match(text, /^test_summed_total\{subject="a",consumer_group="g"\} 7$/m, 'scrape sees the new sum')
  // Read twice: the sums were handed over once.
  t.match(await registry.metrics(), /^test_summed_total\{subject="a",consumer_group="g"\} 7$/m)
  const json = await registry.getMetricsAsJSON()
  const m = json.find((x) => x.name === 'test_summed_total')
  t.equal(m?.values.find((v) => v.labels.consumer_group === 'h')?.value, 5)
})

t.test('a counter without labels, and the errors prom-client gives', async (t) => {
  const registry = createRegistry()
  const plain = new SummedCounter({ name: 'test_plain_total', help: 'test', registers: [registry] })
  plain.inc({}, 3)
  plain.inc({})
  plain.inc(NO_LABELS, 2) // the shared frozen empty set: the same series
  t.match(await registry.metrics(), /^test_plain_total 6$/m)
  const labelled = new SummedCounter({
    name: 'test_labelled_total',
    help: 'test',
    labelNames: ['code'],
    registers: [registry],
  })
  t.throws(() => labelled.inc({ code: 'x' }, -1), /decrease/)
  t.throws(() => labelled.inc({ nope: 'x' } as never, 1), /label/)
  let collected = 0
  const withCollect = new SummedCounter({
    name: 'test_collect_total',
    help: 'test',
    labelNames: ['code'],
    registers: [registry],
    collect() {
      collected++
    },
  })
  withCollect.inc({ code: 'a' })
  t.match(await registry.metrics(), /^test_collect_total\{code="a"\} 1$/m)
  t.equal(collected, 1, "the configuration's own collect still runs")
})

t.test('a reset clears pending sums and label sets, as prom-client does', async (t) => {
  const registry = createRegistry()
  const c = new SummedCounter({
    name: 'test_reset_total',
    help: 'test',
    labelNames: ['code'],
    registers: [registry],
  })
  c.inc({ code: 'a' }, 5)
  registry.resetMetrics()
  t.same((await c.counter.get()).values, [], 'nothing counted before the reset survives it')
  c.inc({ code: 'b' }, 0)
  c.inc({ code: 'a' }, 2)
  c.counter.reset()
  c.inc({ code: 'b' }, 0)
  t.same(
    (await c.counter.get()).values.map((v) => [v.labels.code, v.value]),
    [['b', 0]],
    'a label set known before the reset comes back on its next inc',
  )
})
