import { Counter, Gauge, type Registry } from 'prom-client'

/**
 * Outbox metrics (on the registry given to the producer, as src/client/metrics.ts), labelled by
 * outbox table. The gauges show what the last watchdog pass counted (no query per scrape).
 *
 *   qmq_outbox_pending_rows               rows in the outbox (committed, not yet known stored)
 *   qmq_outbox_oldest_row_age_seconds     age of the oldest row (0 when empty)
 *   qmq_outbox_committed_messages_total   messages written in transactions that committed
 *   qmq_outbox_resent_messages_total      rows the watchdog sent again and deleted
 *   qmq_outbox_resend_failures_total      watchdog resends that failed (the row is kept)
 *   qmq_outbox_watchdog_errors_total      watchdog passes that failed (database unreachable, ...)
 */
type Probe = (set: (labels: Record<string, string>, value: number) => void) => void

class OutboxMetricSet {
  readonly pendingProbes = new Set<Probe>()
  readonly ageProbes = new Set<Probe>()
  readonly committed: Counter<'table'>
  readonly resent: Counter<'table'>
  readonly resendFailed: Counter<'table'>
  readonly watchdogErrors: Counter<'table'>

  constructor(r: Registry) {
    const registers = [r]
    const probed = (name: string, help: string, probes: Set<Probe>) =>
      new Gauge({
        name,
        help,
        labelNames: ['table'],
        registers,
        collect() {
          this.reset()
          for (const p of probes) p((labels, value) => this.set(labels, value))
        },
      })
    probed(
      'qmq_outbox_pending_rows',
      'Rows in the outbox table at the last watchdog pass',
      this.pendingProbes,
    )
    probed(
      'qmq_outbox_oldest_row_age_seconds',
      'Age of the oldest outbox row at the last watchdog pass (0 when empty)',
      this.ageProbes,
    )
    const counter = (name: string, help: string) =>
      new Counter({ name, help, labelNames: ['table'], registers })
    this.committed = counter(
      'qmq_outbox_committed_messages_total',
      'Messages written to the outbox in transactions that committed',
    )
    this.resent = counter(
      'qmq_outbox_resent_messages_total',
      'Outbox rows the watchdog sent again and deleted',
    )
    this.resendFailed = counter(
      'qmq_outbox_resend_failures_total',
      'Watchdog resends that failed (the row is kept and tried again)',
    )
    this.watchdogErrors = counter(
      'qmq_outbox_watchdog_errors_total',
      'Watchdog passes that failed (e.g. the database was unreachable)',
    )
  }
}

const sets = new WeakMap<Registry, OutboxMetricSet>()

export class OutboxMetrics {
  private readonly set: OutboxMetricSet
  private readonly probes: [Probe, Probe]
  pending = 0
  /** ms since the epoch of the oldest row's created_at; undefined when empty. */
  oldest: number | undefined

  constructor(
    registry: Registry,
    private readonly table: string,
  ) {
    let s = sets.get(registry)
    if (s === undefined) {
      s = new OutboxMetricSet(registry)
      sets.set(registry, s)
    }
    this.set = s
    this.probes = [
      (set) => set({ table }, this.pending),
      (set) => set({ table }, this.oldest === undefined ? 0 : Math.max(0, (Date.now() - this.oldest) / 1000)),
    ]
    s.pendingProbes.add(this.probes[0])
    s.ageProbes.add(this.probes[1])
  }

  committed(n: number): void {
    if (n > 0) this.set.committed.inc({ table: this.table }, n)
  }

  resent(n: number): void {
    if (n > 0) this.set.resent.inc({ table: this.table }, n)
  }

  resendFailed(n: number): void {
    if (n > 0) this.set.resendFailed.inc({ table: this.table }, n)
  }

  watchdogError(): void {
    this.set.watchdogErrors.inc({ table: this.table })
  }

  close(): void {
    this.set.pendingProbes.delete(this.probes[0])
    this.set.ageProbes.delete(this.probes[1])
  }
}
