import { Counter, Gauge, type Registry } from 'prom-client'
import { type HistogramSeries, LATENCY_BUCKETS_SECONDS, SummedHistogram } from '../common/metrics'

/**
 * Client metrics, on a prom-client Registry the application passes (`registry` option of the
 * producer and consumer providers). Without one, nothing is counted and nothing is allocated.
 *
 * Several providers may share a registry: the metric objects are made once per registry and every
 * provider adds its own probes for the gauges (removed by its close()). Hot paths count per batch or
 * through label-bound children made once, never by labels per message; the histograms are
 * SummedHistograms (an observation allocates nothing; handed to prom-client when read).
 */

type Probe = (set: (labels: Record<string, string>, value: number) => void) => void

function gauge(registry: Registry, name: string, help: string, labelNames: string[], probes: Set<Probe>) {
  return new Gauge({
    name,
    help,
    labelNames,
    registers: [registry],
    collect() {
      this.reset()
      for (const p of probes) p((labels, value) => this.set(labels, value))
    },
  })
}

class ClientMetricSet {
  readonly queueProbes = new Set<Probe>()
  readonly circuitProbes = new Set<Probe>()
  readonly bufferedProbes = new Set<Probe>()
  readonly sent: Counter<'subject'>
  readonly sendFailed: Counter<'subject' | 'code'>
  readonly sendRetried: Counter<'subject'>
  readonly sendRequest: SummedHistogram<'broker_group' | 'result'>
  readonly pulled: Counter<'subject' | 'consumer_group'>
  readonly pullFailed: Counter<'subject' | 'consumer_group'>
  readonly consumed: Counter<'subject' | 'consumer_group' | 'result'>
  readonly handler: SummedHistogram<'subject' | 'consumer_group'>

  constructor(r: Registry) {
    const registers = [r]
    this.sent = new Counter({
      name: 'qmq_client_sent_messages_total',
      help: 'Messages a broker or delay group stored',
      labelNames: ['subject'],
      registers,
    })
    this.sendFailed = new Counter({
      name: 'qmq_client_send_failed_messages_total',
      help: 'Messages whose send failed for good (sendMessage rejected), by error code',
      labelNames: ['subject', 'code'],
      registers,
    })
    this.sendRetried = new Counter({
      name: 'qmq_client_send_retries_total',
      help: 'Messages sent again after a retriable failure',
      labelNames: ['subject'],
      registers,
    })
    this.sendRequest = new SummedHistogram({
      name: 'qmq_client_send_request_duration_seconds',
      help: 'SEND requests (one batch each) from write to answer',
      labelNames: ['broker_group', 'result'],
      buckets: [...LATENCY_BUCKETS_SECONDS],
      registers,
    })
    gauge(
      r,
      'qmq_client_send_queue_messages',
      'Messages accepted by sendMessage and not settled yet (maxQueueSize bounds it)',
      [],
      this.queueProbes,
    )
    gauge(
      r,
      'qmq_client_circuit_open',
      '1 while the producer circuit breaker of a group is open',
      ['broker_group'],
      this.circuitProbes,
    )
    this.pulled = new Counter({
      name: 'qmq_client_pulled_messages_total',
      help: 'Messages received from PULL answers',
      labelNames: ['subject', 'consumer_group'],
      registers,
    })
    this.pullFailed = new Counter({
      name: 'qmq_client_pull_failures_total',
      help: 'PULL requests that failed (retried with backoff)',
      labelNames: ['subject', 'consumer_group'],
      registers,
    })
    this.consumed = new Counter({
      name: 'qmq_client_consumed_messages_total',
      help: 'Messages consumed, by result: ack (handler returned), retry (nacked), dead_letter, dropped (failed but already settled: at-most-once), or corrupt (a record in a PULL answer failed its CRC: nacked, not handled)',
      labelNames: ['subject', 'consumer_group', 'result'],
      registers,
    })
    this.handler = new SummedHistogram({
      name: 'qmq_client_handler_duration_seconds',
      help: 'Time in the message handler',
      labelNames: ['subject', 'consumer_group'],
      buckets: [...LATENCY_BUCKETS_SECONDS],
      registers,
    })
    gauge(
      r,
      'qmq_client_consumer_held_messages',
      'Messages pulled and not yet through their handler (prefetch bounds it)',
      ['subject', 'consumer_group'],
      this.bufferedProbes,
    )
  }
}

const sets = new WeakMap<Registry, ClientMetricSet>()

function metricSet(registry: Registry): ClientMetricSet {
  let s = sets.get(registry)
  if (s === undefined) {
    s = new ClientMetricSet(registry)
    sets.set(registry, s)
  }
  return s
}

type Inc = { inc(n?: number): void }

function child(cache: Map<string, Inc>, counter: Counter<'subject'>, subject: string): Inc {
  let c = cache.get(subject)
  if (c === undefined) {
    c = counter.labels(subject)
    if (cache.size < 1_024) cache.set(subject, c)
  }
  return c
}

export class ProducerMetrics {
  private readonly set: ClientMetricSet
  /** Label-bound children by subject (bounded: beyond it a lookup per call). */
  private readonly sentBy = new Map<string, Inc>()
  private readonly retriedBy = new Map<string, Inc>()
  /** The send-request series of a broker group, by result (bounded as the children above). */
  private readonly requestsBy = new Map<string, { ok: HistogramSeries; error: HistogramSeries }>()
  private readonly probes: Probe[]

  constructor(registry: Registry, probes: { queueSize: () => number; openCircuits: () => Iterable<string> }) {
    this.set = metricSet(registry)
    this.probes = [
      (set) => set({}, probes.queueSize()),
      (set) => {
        for (const g of probes.openCircuits()) set({ broker_group: g }, 1)
      },
    ]
    this.set.queueProbes.add(this.probes[0] as Probe)
    this.set.circuitProbes.add(this.probes[1] as Probe)
  }

  sent(subject: string, n: number): void {
    child(this.sentBy, this.set.sent, subject).inc(n)
  }

  failed(subject: string, code: string): void {
    this.set.sendFailed.inc({ subject, code })
  }

  retried(subject: string, n: number): void {
    child(this.retriedBy, this.set.sendRetried, subject).inc(n)
  }

  request(brokerGroup: string, ok: boolean, seconds: number): void {
    let series = this.requestsBy.get(brokerGroup)
    if (series === undefined) {
      const h = this.set.sendRequest
      series = {
        ok: h.labels({ broker_group: brokerGroup, result: 'ok' }),
        error: h.labels({ broker_group: brokerGroup, result: 'error' }),
      }
      if (this.requestsBy.size < 1_024) this.requestsBy.set(brokerGroup, series)
    }
    ;(ok ? series.ok : series.error).observe(seconds)
  }

  close(): void {
    this.set.queueProbes.delete(this.probes[0] as Probe)
    this.set.circuitProbes.delete(this.probes[1] as Probe)
  }
}

/** What became of a consumed message (the `result` label). */
export type ConsumeResult = 'ack' | 'retry' | 'dead_letter' | 'dropped' | 'corrupt'

/** The metrics of one (subject, consumer group), bound to its labels once. */
export class SubscriptionMetrics {
  private readonly pulledC: Inc
  private readonly pullFailedC: Inc
  private readonly results: Record<ConsumeResult, Inc>
  private readonly handlerH: HistogramSeries
  private readonly set: ClientMetricSet
  private probe: Probe | undefined

  /** `held`: messages pulled and not through their handler yet (a gauge), when there is such a thing. */
  constructor(registry: Registry, subject: string, group: string, held?: () => number) {
    const s = metricSet(registry)
    this.set = s
    const labels = { subject, consumer_group: group }
    this.pulledC = s.pulled.labels(labels)
    this.pullFailedC = s.pullFailed.labels(labels)
    this.results = {
      ack: s.consumed.labels({ ...labels, result: 'ack' }),
      retry: s.consumed.labels({ ...labels, result: 'retry' }),
      dead_letter: s.consumed.labels({ ...labels, result: 'dead_letter' }),
      dropped: s.consumed.labels({ ...labels, result: 'dropped' }),
      corrupt: s.consumed.labels({ ...labels, result: 'corrupt' }),
    }
    this.handlerH = s.handler.labels(labels)
    if (held !== undefined) {
      const probe: Probe = (set) => set(labels, held())
      this.probe = probe
      s.bufferedProbes.add(probe)
    }
  }

  pulled(n: number): void {
    if (n > 0) this.pulledC.inc(n)
  }

  pullFailed(): void {
    this.pullFailedC.inc()
  }

  consumed(result: ConsumeResult, seconds: number | undefined): void {
    this.results[result].inc()
    if (seconds !== undefined) this.handlerH.observe(seconds)
  }

  close(): void {
    if (this.probe !== undefined) this.set.bufferedProbes.delete(this.probe)
  }
}
