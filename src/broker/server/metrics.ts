import {
  Counter,
  Gauge,
  type HistogramSeries,
  LATENCY_BUCKETS_SECONDS,
  type Registry,
  SummedCounter,
  SummedHistogram,
} from '../../common/metrics'
import { ConnectionMetrics } from '../../common/server/metrics'
import type { TcpServerStats } from '../../common/server/tcp-server'
import type { BacklogInfo } from '../store/types'

/**
 * The broker server's Prometheus metrics, all on the broker instance's own registry.
 * Counters count messages (not requests) unless the name says otherwise. Those incremented per
 * request are SummedCounters, and the histograms SummedHistograms (no prom-client label hash or
 * objects per inc or observation; handed to the prom-client series when read).
 */
export class BrokerMetrics {
  readonly received: SummedCounter<'subject'>
  readonly receivedBytes: SummedCounter<'subject'>
  readonly duplicates: SummedCounter<'subject'>
  readonly rejected: Counter<'code'>
  readonly pulled: SummedCounter<'subject' | 'consumer_group'>
  readonly pulledBytes: SummedCounter<'subject' | 'consumer_group'>
  readonly redelivered: SummedCounter<'subject' | 'consumer_group'>
  readonly acked: SummedCounter<'subject' | 'consumer_group'>
  readonly nacked: Counter<'subject' | 'consumer_group'>
  readonly deadLetteredByNack: Counter<'subject' | 'consumer_group'>
  readonly redriven: Counter<'subject' | 'consumer_group'>
  readonly requests: SummedCounter<'request' | 'status'>
  readonly requestSeconds: SummedHistogram<'request'>
  /** The one series of `qmq_broker_append_seconds` (no labels). */
  readonly appendSeconds: HistogramSeries
  readonly connections: Gauge
  readonly connectionsTotal: Counter
  readonly protocolErrors: Counter<'code'>
  readonly longPollWaiters: Gauge
  readonly backlogPending: Gauge<'subject' | 'consumer_group'>
  readonly backlogInFlight: Gauge<'subject' | 'consumer_group'>
  readonly backlogRetrying: Gauge<'subject' | 'consumer_group'>
  readonly deadLetters: Gauge<'subject' | 'consumer_group'>
  /** The connection loop's: closes by reason, partial-frame and write-buffer bytes. */
  readonly connectionLoop: ConnectionMetrics

  constructor(
    registry: Registry,
    sources: {
      backlog: () => BacklogInfo[]
      waiters: () => number
      connections: () => number
      tcp: () => TcpServerStats | undefined
    },
  ) {
    const registers = [registry]
    // The consumer group is `consumer_group`: `group` is every broker metric's default label (the broker
    // group), which a metric label of the same name would silently replace.
    const sg = ['subject', 'consumer_group'] as const
    this.received = new SummedCounter({
      name: 'qmq_broker_messages_received_total',
      help: 'Messages stored (duplicates excluded)',
      labelNames: ['subject'],
      registers,
    })
    this.receivedBytes = new SummedCounter({
      name: 'qmq_broker_bytes_received_total',
      help: 'Record bytes stored (duplicates excluded)',
      labelNames: ['subject'],
      registers,
    })
    this.duplicates = new SummedCounter({
      name: 'qmq_broker_messages_duplicate_total',
      help: 'Messages received again within the dedupe window (stored once)',
      labelNames: ['subject'],
      registers,
    })
    this.rejected = new Counter({
      name: 'qmq_broker_messages_rejected_total',
      help: 'Records of SEND requests that were not stored, by error code',
      labelNames: ['code'],
      registers,
    })
    this.pulled = new SummedCounter({
      name: 'qmq_broker_messages_pulled_total',
      help: 'Messages handed to consumers (redeliveries included)',
      labelNames: sg,
      registers,
    })
    this.pulledBytes = new SummedCounter({
      name: 'qmq_broker_bytes_pulled_total',
      help: 'Record bytes handed to consumers',
      labelNames: sg,
      registers,
    })
    this.redelivered = new SummedCounter({
      name: 'qmq_broker_messages_redelivered_total',
      help: 'Messages handed out with a delivery count above 1',
      labelNames: sg,
      registers,
    })
    this.acked = new SummedCounter({
      name: 'qmq_broker_messages_acked_total',
      help: 'Messages acked',
      labelNames: sg,
      registers,
    })
    this.nacked = new Counter({
      name: 'qmq_broker_messages_nacked_total',
      help: 'Messages given back for redelivery or dead-lettered by a NACK',
      labelNames: sg,
      registers,
    })
    this.deadLetteredByNack = new Counter({
      name: 'qmq_broker_messages_dead_lettered_total',
      help: 'Messages dead-lettered at once by a NACK with DEAD_LETTER (retry exhaustion: see qmq_broker_dead_letters)',
      labelNames: sg,
      registers,
    })
    this.redriven = new Counter({
      name: 'qmq_broker_messages_redriven_total',
      help: 'Dead letters made deliverable again',
      labelNames: sg,
      registers,
    })
    this.requests = new SummedCounter({
      name: 'qmq_broker_requests_total',
      help: 'Requests answered, by request and status (0 = ok)',
      labelNames: ['request', 'status'],
      registers,
    })
    this.requestSeconds = new SummedHistogram({
      name: 'qmq_broker_request_seconds',
      help: 'Time to answer a request (long polls included)',
      labelNames: ['request'],
      buckets: [...LATENCY_BUCKETS_SECONDS],
      registers,
    })
    this.appendSeconds = new SummedHistogram({
      name: 'qmq_broker_append_seconds',
      help: 'Time for the store to make a SEND batch durable (write + shared fsync under flush sync)',
      buckets: [...LATENCY_BUCKETS_SECONDS],
      registers,
    }).labels({})
    this.connections = new Gauge({
      name: 'qmq_broker_connections',
      help: 'Open client connections',
      registers,
      collect() {
        this.set(sources.connections())
      },
    })
    this.connectionsTotal = new Counter({
      name: 'qmq_broker_connections_total',
      help: 'Client connections accepted',
      registers,
    })
    this.protocolErrors = new Counter({
      name: 'qmq_broker_protocol_errors_total',
      help: 'Requests answered with an error, and streams closed as untrustworthy, by code',
      labelNames: ['code'],
      registers,
    })
    this.connectionLoop = new ConnectionMetrics(registry, 'qmq_broker', sources.tcp)
    this.longPollWaiters = new Gauge({
      name: 'qmq_broker_long_poll_waiters',
      help: 'PULL requests waiting for messages',
      registers,
      collect() {
        this.set(sources.waiters())
      },
    })
    // Backlog gauges: read from the store at scrape time, one snapshot for all four.
    let snapshot: BacklogInfo[] = []
    let snapshotAt = -1
    const backlog = (): BacklogInfo[] => {
      const now = Date.now()
      if (now - snapshotAt > 100) {
        try {
          snapshot = sources.backlog()
        } catch {
          snapshot = []
        }
        snapshotAt = now
      }
      return snapshot
    }
    const backlogGauge = (name: string, help: string, pick: (b: BacklogInfo) => number) =>
      new Gauge({
        name,
        help,
        labelNames: sg,
        registers,
        collect() {
          this.reset()
          for (const b of backlog()) this.set({ subject: b.subject, consumer_group: b.group }, pick(b))
        },
      })
    this.backlogPending = backlogGauge(
      'qmq_broker_backlog_messages',
      'Messages stored after the group cursor, not yet handed out',
      (b) => b.pending,
    )
    this.backlogInFlight = backlogGauge(
      'qmq_broker_in_flight_messages',
      'Messages handed out and not yet acked (retrying included)',
      (b) => b.inFlight,
    )
    this.backlogRetrying = backlogGauge(
      'qmq_broker_retrying_messages',
      'Messages waiting for their redeliver-after time',
      (b) => b.retrying,
    )
    this.deadLetters = backlogGauge(
      'qmq_broker_dead_letters',
      'Dead letters of the group (listable and redrivable)',
      (b) => b.deadLettered,
    )
  }
}
