import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client'

/**
 * Metrics: every service instance owns one prom-client Registry (never the global one), so two
 * brokers in one test process, or two tests in a row, never share counters.
 */
export { Counter, Gauge, Histogram, Registry }
export { type HistogramSeries, NO_LABELS, SummedCounter, SummedHistogram } from './summed-metrics'

export interface RegistryOptions {
  /** Labels added to every metric of this registry, e.g. { service: 'broker', group: 'g1' }. */
  defaultLabels?: Record<string, string>
  /**
   * Node's default process metrics (prom-client's names: `process_cpu_user_seconds_total`,
   * `nodejs_heap_size_used_bytes`, event-loop lag, ...). On for the services (broker, delay server,
   * metaserver), off by default.
   */
  processMetrics?: boolean
}

/** This build's version (package.json), on every registry as `qmq_build_info{version} 1`. */
const VERSION = (require('../../package.json') as { version: string }).version

export function createRegistry(options: RegistryOptions = {}): Registry {
  const registry = new Registry()
  if (options.defaultLabels) registry.setDefaultLabels(options.defaultLabels)
  if (options.processMetrics) collectDefaultMetrics({ register: registry })
  new Gauge({
    name: 'qmq_build_info',
    help: 'Always 1; labelled with the version of qmq running',
    labelNames: ['version', 'node'],
    registers: [registry],
  })
    .labels(VERSION, process.version)
    .set(1)
  return registry
}

/** Latency buckets in seconds, from 50 µs to 10 s: fsync and request latencies both fit. */
export const LATENCY_BUCKETS_SECONDS: readonly number[] = [
  0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
]

/** Answers a GET /metrics: content type and body. */
export async function renderMetrics(registry: Registry): Promise<{ contentType: string; body: string }> {
  return { contentType: registry.contentType, body: await registry.metrics() }
}
