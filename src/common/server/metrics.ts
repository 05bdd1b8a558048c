import { Counter, Gauge, type Registry } from '../metrics'
import type { CloseReason } from './connection'
import type { TcpServerStats } from './tcp-server'

/**
 * Metrics of a server's connection loop, the same for the broker (`prefix` qmq_broker) and the delay
 * server (qmq_delay): `<prefix>_connections_closed_total{reason}` counts connections the server closed
 * (first_frame, idle, frame_timeout, frame_budget, protocol); the gauges are read at scrape time.
 */
export class ConnectionMetrics {
  readonly closed: Counter<'reason'>
  /** TLS handshakes that failed (no or an untrusted client certificate, a plain-TCP client...). */
  readonly tlsHandshakeFailures: Counter

  constructor(registry: Registry, prefix: string, stats: () => TcpServerStats | undefined) {
    const registers = [registry]
    this.closed = new Counter({
      name: `${prefix}_connections_closed_total`,
      help: 'Connections closed by the server, by reason (first_frame, idle, frame_timeout, frame_budget, protocol)',
      labelNames: ['reason'],
      registers,
    })
    this.tlsHandshakeFailures = new Counter({
      name: `${prefix}_tls_handshake_failures_total`,
      help: 'TLS handshakes that failed (no or an untrusted client certificate, plain TCP on a TLS port)',
      registers,
    })
    const gauge = (name: string, help: string, pick: (s: TcpServerStats) => number) =>
      new Gauge({
        name: `${prefix}_${name}`,
        help,
        registers,
        collect() {
          const s = stats()
          this.set(s === undefined ? 0 : pick(s))
        },
      })
    gauge(
      'partial_frame_bytes',
      'Bytes held in incomplete frames across connections (bounded by maxPartialFrameBytes)',
      (s) => s.partialFrameBytes,
    )
    gauge('write_buffer_bytes', 'Unsent answer bytes across connections', (s) => s.writeBufferBytes)
    gauge(
      'connection_requests_in_flight',
      'Requests being handled across connections',
      (s) => s.requestsInFlight,
    )
  }

  countClose(reason: CloseReason): void {
    this.closed.inc({ reason })
  }
}
