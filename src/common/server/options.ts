import { integer, type OptionsSchema } from '../config'
import type { ServerTls } from '../tls'
import type { TcpServerOptions } from './tcp-server'

/**
 * The connection limits of a qmq TCP server, one schema shared by the broker (`qmq broker --...`,
 * `QMQ_BROKER_*`) and the delay server (`qmq delay --...`, `QMQ_DELAY_*`): same keys, same defaults.
 */
export const DEFAULT_MAX_CONNECTIONS = 10_000
export const DEFAULT_MAX_IN_FLIGHT = 256 // requests per connection, long polls included
export const DEFAULT_WRITE_HIGH_WATER_BYTES = 8 * 1024 * 1024 // unsent answers per connection
export const DEFAULT_IDLE_TIMEOUT_MS = 5 * 60_000
export const DEFAULT_FIRST_FRAME_TIMEOUT_MS = 10_000
export const DEFAULT_FRAME_TIMEOUT_MS = 30_000
export const DEFAULT_MAX_PARTIAL_FRAME_BYTES = 128 * 1024 * 1024
export const DEFAULT_CLOSE_TIMEOUT_MS = 5_000

export interface ConnectionLimitOptions {
  maxConnections: number
  maxInFlightPerConnection: number
  writeHighWaterBytes: number
  idleTimeoutMs: number
  firstFrameTimeoutMs: number
  frameTimeoutMs: number
  maxPartialFrameBytes: number
  closeTimeoutMs: number
}

export const connectionLimitsSchema: OptionsSchema<ConnectionLimitOptions> = {
  maxConnections: integer({
    default: DEFAULT_MAX_CONNECTIONS,
    min: 1,
    doc: 'Open connections accepted at once',
  }),
  maxInFlightPerConnection: integer({
    default: DEFAULT_MAX_IN_FLIGHT,
    min: 1,
    max: 100_000,
    doc: 'Requests of one connection handled at once (long polls included); reading pauses beyond',
  }),
  writeHighWaterBytes: integer({
    default: DEFAULT_WRITE_HIGH_WATER_BYTES,
    min: 16 * 1024,
    doc: 'Unsent answer bytes of one connection above which its requests stop being read and started',
  }),
  idleTimeoutMs: integer({
    default: DEFAULT_IDLE_TIMEOUT_MS,
    min: 0,
    doc: 'Close a connection silent this long with nothing in flight (0 = never)',
  }),
  firstFrameTimeoutMs: integer({
    default: DEFAULT_FIRST_FRAME_TIMEOUT_MS,
    min: 0,
    doc: 'Close a connection that sends no complete frame this long after connecting (0 = never)',
  }),
  frameTimeoutMs: integer({
    default: DEFAULT_FRAME_TIMEOUT_MS,
    min: 0,
    doc: 'Close a connection whose frame is not complete this long after its first byte (0 = never)',
  }),
  maxPartialFrameBytes: integer({
    default: DEFAULT_MAX_PARTIAL_FRAME_BYTES,
    min: 64 * 1024,
    doc: 'Bytes of incomplete frames held across all connections; beyond, the oldest are closed (at least maxFrameBytes)',
  }),
  closeTimeoutMs: integer({
    default: DEFAULT_CLOSE_TIMEOUT_MS,
    min: 0,
    doc: 'On close, how long requests in flight may take to answer before sockets are destroyed',
  }),
}

/** The TcpServer options of a server from its resolved options. */
export function tcpServerOptions(
  o: ConnectionLimitOptions & { host: string; maxFrameBytes: number },
  port: number,
  tls?: ServerTls,
): TcpServerOptions {
  return {
    ...(tls !== undefined ? { tls } : {}),
    host: o.host,
    port,
    maxConnections: o.maxConnections,
    maxFrameBytes: o.maxFrameBytes,
    maxInFlight: o.maxInFlightPerConnection,
    writeHighWaterBytes: o.writeHighWaterBytes,
    idleTimeoutMs: o.idleTimeoutMs,
    firstFrameTimeoutMs: o.firstFrameTimeoutMs,
    frameTimeoutMs: o.frameTimeoutMs,
    maxPartialFrameBytes: o.maxPartialFrameBytes,
  }
}
