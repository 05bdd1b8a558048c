import {
  Counter,
  type CounterConfiguration,
  collectDefaultMetrics,
  Gauge,
  Histogram,
  Registry,
} from 'prom-client'

/**
 * Metrics: every service instance owns one prom-client Registry (never the global one), so two
 * brokers in one test process, or two tests in a row, never share counters.
 */
export { Counter, Gauge, Histogram, Registry }

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

type Labels<T extends string> = Partial<Record<T, string | number>>

/** One label set's increments not yet handed to prom-client. */
interface PendingSum<T extends string> {
  labels: Labels<T>
  value: number
}

/**
 * A labelled counter for per-request and per-message paths. prom-client's `inc(labels, n)` builds a
 * label-hash string and a result object on every call; here an inc finds its label set through
 * nested Maps on the label values (in `labelNames` order, nothing allocated once the set is known)
 * and adds to a plain number. The sums go into the prom-client counter (`counter`, registered as
 * usual) whenever it is read: its collect hook runs on every scrape, `get()` and JSON export, so a
 * reader never sees a stale value. A label set's series appears (at 0) on its first inc, as it would
 * with prom-client; invalid labels and negative or non-finite increments throw as prom-client's do.
 */
export class SummedCounter<T extends string> {
  readonly counter: Counter<T>
  private readonly names: readonly T[]
  private readonly root = new Map<string | number | undefined, unknown>()
  private readonly sums: PendingSum<T>[] = []

  constructor(config: CounterConfiguration<T>) {
    const flush = () => this.flush()
    const collect = config.collect
    this.names = config.labelNames ?? []
    this.counter = new Counter<T>({
      ...config,
      collect() {
        flush()
        return collect?.call(this)
      },
    })
    // A reset (the counter's, or the registry's resetMetrics) forgets the pending sums and the label
    // sets too: a set's series comes back (at 0) on its next inc, as with prom-client alone.
    const reset = this.counter.reset.bind(this.counter)
    this.counter.reset = () => {
      this.root.clear()
      this.sums.length = 0
      reset()
    }
  }

  inc(labels: Labels<T>, value = 1): void {
    if (!(value >= 0 && value < Number.POSITIVE_INFINITY)) {
      this.counter.inc(labels, value) // throws as prom-client does (or adds a NaN as it does)
      return
    }
    const names = this.names
    let map = this.root
    for (let i = 0; i < names.length - 1; i++) {
      const v = labels[names[i] as T]
      let next = map.get(v) as Map<string | number | undefined, unknown> | undefined
      if (next === undefined) {
        next = new Map()
        map.set(v, next)
      }
      map = next
    }
    const last = names.length === 0 ? undefined : labels[names[names.length - 1] as T]
    let sum = map.get(last) as PendingSum<T> | undefined
    if (sum === undefined) {
      this.counter.inc(labels, 0) // validates the label names, creates the series
      sum = { labels: { ...labels }, value: 0 }
      map.set(last, sum)
      this.sums.push(sum)
    }
    sum.value += value
  }

  /** Hands the pending sums to the prom-client counter. */
  private flush(): void {
    for (const s of this.sums) {
      if (s.value === 0) continue
      this.counter.inc(s.labels, s.value)
      s.value = 0
    }
  }
}

/** Latency buckets in seconds, from 50 µs to 10 s: fsync and request latencies both fit. */
export const LATENCY_BUCKETS_SECONDS: readonly number[] = [
  0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
]

/** Answers a GET /metrics: content type and body. */
export async function renderMetrics(registry: Registry): Promise<{ contentType: string; body: string }> {
  return { contentType: registry.contentType, body: await registry.metrics() }
}
