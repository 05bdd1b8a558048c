/**
 * Heap bytes and CPU per histogram observation (one process, one core): prom-client's `observe` with a
 * labels object, through a `labels()` child and without labels, against a SummedHistogram series
 * (src/common/summed-metrics.ts) looked up by labels and resolved once. The broker observes about 8
 * times per message (issue 21). Bytes are summed from `v8.GCProfiler`'s before/after heap sizes.
 */
import { GCProfiler } from 'node:v8'
import { Histogram, Registry } from 'prom-client'
import { LATENCY_BUCKETS_SECONDS, SummedHistogram } from '../src/common/metrics'
import { quick, report } from './common'

const N = quick ? 200_000 : 2_000_000

function measure(name: string, observe: (i: number) => void): void {
  for (let i = 0; i < N / 10; i++) observe(i) // warm-up: optimized before the clock starts
  const profiler = new GCProfiler()
  profiler.start()
  const cpu = process.cpuUsage()
  const usedBefore = process.memoryUsage().heapUsed
  for (let i = 0; i < N; i++) observe(i)
  const used = process.cpuUsage(cpu)
  let bytes = process.memoryUsage().heapUsed - usedBefore
  for (const s of profiler.stop().statistics)
    bytes += s.beforeGC.heapStatistics.usedHeapSize - s.afterGC.heapStatistics.usedHeapSize
  report({
    bench: 'metrics-observe',
    metric: `${name}: heap bytes per observation`,
    value: +(bytes / N).toFixed(1),
    unit: 'B',
  })
  report({
    bench: 'metrics-observe',
    metric: `${name}: CPU per observation`,
    value: Math.round(((used.user + used.system) * 1000) / N),
    unit: 'ns',
  })
}

const registers = [new Registry()]
const buckets = [...LATENCY_BUCKETS_SECONDS]
const labelNames = ['request']
const plain = new Histogram({ name: 'plain_seconds', help: 'h', labelNames, buckets, registers })
const plainBare = new Histogram({ name: 'plain_bare_seconds', help: 'h', buckets, registers })
const summed = new SummedHistogram({ name: 'summed_seconds', help: 'h', labelNames, buckets, registers })
const summedBare = new SummedHistogram({ name: 'summed_bare_seconds', help: 'h', buckets, registers }).labels(
  {},
)
const labels = { request: 'SEND' }
const plainChild = plain.labels(labels)
const series = summed.labels(labels)
// Latencies from 0 to 10 ms: the buckets a broker request usually lands in.
const value = (i: number) => (i % 1000) * 0.00001

measure('prom-client observe(labels, v)', (i) => plain.observe(labels, value(i)))
measure('prom-client labels(...).observe(v)', (i) => plainChild.observe(value(i)))
measure('prom-client observe(v), no labels', (i) => plainBare.observe(value(i)))
measure('SummedHistogram observe(labels, v)', (i) => summed.observe(labels, value(i)))
measure('SummedHistogram series.observe(v)', (i) => series.observe(value(i)))
measure('SummedHistogram series.observe(v), no labels', (i) => summedBare.observe(value(i)))
