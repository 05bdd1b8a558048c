import type { ClientKind } from '../common/meta/types'

/**
 * Instrumentation events of the providers (`producer.on('connect', ...)`), beside the logger. Each is
 * emitted synchronously where it happens; a listener that throws is logged and does not disturb the
 * client. The providers never emit 'error'.
 */
export interface ClientEventMap {
  /** A connection to a broker or delay server opened. */
  connect: [{ address: string }]
  /** An open (or opening) connection was lost; the client reconnects after `retryInMs`. */
  disconnect: [{ address: string; error: string; code: string; retryInMs: number }]
  /** Producer: messages whose send failed with a retriable error go again. */
  retry: [{ subject: string; messages: number; attempt: number; code: string; error: string }]
  /** A route (the broker or delay groups of a subject) changed after a refresh. */
  routeChange: [{ kind: ClientKind; subject: string; consumerGroup: string | undefined; groups: string[] }]
}

/** Where the transport and the route cache report events (the provider's emitter, guarded). */
export type ClientEventSink = <K extends keyof ClientEventMap>(name: K, ...args: ClientEventMap[K]) => void
