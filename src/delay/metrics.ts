import {
  Counter,
  Gauge,
  Histogram,
  type HistogramSeries,
  type Registry,
  SummedCounter,
  SummedHistogram,
} from '../common/metrics'
import { ConnectionMetrics } from '../common/server/metrics'
import type { TcpServerStats } from '../common/server/tcp-server'
import type { Dispatcher } from './dispatch/dispatcher'
import type { DelayStore } from './store/delay-store'

/** Lateness buckets in seconds: 1 ms to 1 min (the precision goal is p99 < 200 ms). */
const LATENESS_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60]
const LOAD_BUCKETS = [0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]

export interface DelayMetrics {
  /** Counted per record (SummedCounters: see src/common/summed-metrics.ts). */
  received: SummedCounter<'result'>
  cancelled: Counter<'result'>
  /** Authenticated requests refused (no or wrong cluster secret), by request name. */
  unauthorized: Counter<'request'>
  dispatched: SummedCounter<never>
  dispatchFailures: Counter
  tickErrors: Counter
  deadLettered: Counter
  /** Observed per dispatched message: a SummedHistogram's one series (no allocation per observation). */
  lateness: HistogramSeries
  bucketLoad: Histogram
  bucketLoadLast: Gauge<'bucket'>
  /** The connection loop's (shared with the broker): closes by reason, partial-frame and write-buffer bytes. */
  connectionLoop: ConnectionMetrics
}

/**
 * Metrics of one delay server (names `qmq_delay_*`). Pending per bucket, wheel size and dispatch
 * backlog are read at scrape time; the rest are counted as things happen. Dispatch rate is
 * `rate(qmq_delay_dispatched_total[1m])`.
 */
export function createDelayMetrics(
  registry: Registry,
  source: {
    store: () => DelayStore | undefined
    dispatcher: () => Dispatcher | undefined
    tcp?: () => TcpServerStats | undefined
  },
): DelayMetrics {
  const registers = [registry]
  new Gauge({
    name: 'qmq_delay_pending_messages',
    help: 'Messages stored and not yet delivered, per schedule bucket (bucket start, ISO 8601)',
    labelNames: ['bucket'],
    registers,
    collect() {
      this.reset()
      for (const [start, pending] of source.store()?.pendingByBucket() ?? []) {
        this.set({ bucket: new Date(start).toISOString() }, pending)
      }
    },
  })
  new Gauge({
    name: 'qmq_delay_wheel_entries',
    help: 'Index entries in the hash wheel (loaded, not yet due)',
    registers,
    collect() {
      this.set(source.store()?.wheel.size ?? 0)
    },
  })
  new Gauge({
    name: 'qmq_delay_dispatch_backlog',
    help: 'Due messages waiting to be sent or retried',
    registers,
    collect() {
      this.set(source.dispatcher()?.backlog ?? 0)
    },
  })
  new Gauge({
    name: 'qmq_delay_dedupe_window_seconds',
    help: 'How far back the dedupe window remembers every id now: dedupeWindowMs unless dedupeMaxEntries or the rebuild limit cut it',
    registers,
    collect() {
      const store = source.store()
      this.set(store === undefined ? 0 : store.dedupe.windowSeconds(store.options.clock.now()))
    },
  })
  new Gauge({
    name: 'qmq_delay_dedupe_entries',
    help: 'Ids held by the dedupe window',
    registers,
    collect() {
      this.set(source.store()?.dedupe.index.size ?? 0)
    },
  })
  return {
    connectionLoop: new ConnectionMetrics(registry, 'qmq_delay', source.tcp ?? (() => undefined)),
    received: new SummedCounter({
      name: 'qmq_delay_received_total',
      help: 'Delayed messages received, by result (stored, duplicate: within the dedupe window, not stored again; or an error code)',
      labelNames: ['result'],
      registers,
    }),
    cancelled: new Counter({
      name: 'qmq_delay_cancel_requests_total',
      help: 'Message ids asked to be cancelled, by result (cancelled, not_pending)',
      labelNames: ['result'],
      registers,
    }),
    unauthorized: new Counter({
      name: 'qmq_delay_unauthorized_requests_total',
      help: 'CANCEL and dead-letter requests refused for a missing or wrong cluster secret, by request',
      labelNames: ['request'],
      registers,
    }),
    dispatched: new SummedCounter({
      name: 'qmq_delay_dispatched_total',
      help: 'Messages delivered to a broker (acknowledged)',
      registers,
    }),
    dispatchFailures: new Counter({
      name: 'qmq_delay_dispatch_failures_total',
      help: 'Messages whose send to a broker failed (each is retried)',
      registers,
    }),
    tickErrors: new Counter({
      name: 'qmq_delay_tick_errors_total',
      help: 'Errors a dispatch tick ran into (e.g. reading a schedule log); the tick is retried',
      registers,
    }),
    deadLettered: new Counter({
      name: 'qmq_delay_dead_lettered_total',
      help: 'Due messages a broker refused for good, parked as dead letters of the delay group',
      registers,
    }),
    lateness: new SummedHistogram({
      name: 'qmq_delay_dispatch_lateness_seconds',
      help: 'Time from a message due time to the broker acknowledging it',
      buckets: LATENESS_BUCKETS,
      registers,
    }).labels({}),
    bucketLoad: new Histogram({
      name: 'qmq_delay_bucket_load_seconds',
      help: 'Time to load a schedule bucket index into the wheel',
      buckets: LOAD_BUCKETS,
      registers,
    }),
    bucketLoadLast: new Gauge({
      name: 'qmq_delay_bucket_last_load_seconds',
      help: 'Load time of each recently loaded bucket (bucket start, ISO 8601)',
      labelNames: ['bucket'],
      registers,
    }),
  }
}
