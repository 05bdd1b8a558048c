import {
  boolean,
  integer,
  oneOf,
  type OptionsSchema,
  optionalSecret,
  optionalString,
  string,
} from '../../common/config'
import { DEFAULT_MAX_FRAME_BYTES } from '../../common/protocol/frame'
import { DEFAULT_MAX_MESSAGE_BYTES } from '../../common/record'
import { type ConnectionLimitOptions, connectionLimitsSchema } from '../../common/server/options'
import { type TlsFileOptions, tlsFileSchema } from '../../common/tls'
import { type AuthOptions, authOptionsSchema } from '../../common/auth/options'

/**
 * Options of the broker's network side (the store has its own; `Broker` takes both, see broker.ts).
 * Every key maps onto a `qmq broker` flag of the same name in kebab-case (`--data-dir`, `--http-port`)
 * and onto an environment variable `QMQ_BROKER_<KEY>` (`QMQ_BROKER_DATA_DIR`).
 */
export const DEFAULT_BROKER_PORT = 20881
export const DEFAULT_BROKER_HTTP_PORT = 20882
export const DEFAULT_MAX_POLL_MS = 30_000
export const DEFAULT_MAX_PULL_BYTES = 4 * 1024 * 1024
export const DEFAULT_HEARTBEAT_INTERVAL_MS = 5_000 // until the metaserver says otherwise
export const DEFAULT_REPLICATION_ACK_TIMEOUT_MS = 5_000
export const DEFAULT_REPLICATION_IN_SYNC_LAG_MS = 3_000
export const DEFAULT_REPLICATION_FETCH_WAIT_MS = 1_000
export const DEFAULT_REPLICATION_FETCH_BYTES = 4 * 1024 * 1024
export {
  DEFAULT_CLOSE_TIMEOUT_MS,
  DEFAULT_FIRST_FRAME_TIMEOUT_MS,
  DEFAULT_IDLE_TIMEOUT_MS,
  DEFAULT_MAX_CONNECTIONS,
  DEFAULT_MAX_IN_FLIGHT,
  DEFAULT_WRITE_HIGH_WATER_BYTES,
} from '../../common/server/options'

/** The connection limits (maxConnections ... closeTimeoutMs) are shared with the delay server. */
export interface BrokerServerOptions extends ConnectionLimitOptions, TlsFileOptions, AuthOptions {
  group: string
  role: 'master' | 'slave'
  host: string
  port: number
  advertisedHost: string | undefined
  httpHost: string
  httpPort: number
  dataDir: string
  metaserver: string | undefined
  /** Sent with metaserver heartbeats; required with `metaserver`. */
  clusterSecret: string | undefined
  heartbeatIntervalMs: number
  maxFrameBytes: number
  maxMessageBytes: number
  maxPollMs: number
  maxPullBytes: number
  adminToken: string | undefined
  /** Master: 'sync' holds a SEND's answer until a slave has its records durably; 'async' does not. */
  replication: 'sync' | 'async'
  replicationAckTimeoutMs: number
  replicationInSyncLagMs: number
  /** Master under 'sync' with no in-sync slave: keep acknowledging alone (degraded) instead of refusing. */
  degradedWrites: boolean
  /** Slave: the master's `host:port`; default: asked from the metaserver. */
  masterAddress: string | undefined
  replicationFetchWaitMs: number
  replicationFetchBytes: number
}

const NAME = /^[^\s/\\%]+$/

export const brokerServerOptionsSchema: OptionsSchema<BrokerServerOptions> = {
  group: string({
    default: 'broker-1',
    minLength: 1,
    pattern: NAME,
    doc: 'Broker group name this broker serves and registers under',
  }),
  role: oneOf({ default: 'master', values: ['master', 'slave'], doc: 'Role inside the broker group' }),
  host: string({ default: '127.0.0.1', minLength: 1, doc: 'Address the TCP port binds to' }),
  port: integer({ default: DEFAULT_BROKER_PORT, min: 0, max: 65_535, doc: 'TCP port (0 = any free port)' }),
  advertisedHost: optionalString({
    doc: 'Host clients are told to connect to (registered with the metaserver); default: host',
  }),
  httpHost: string({
    default: '127.0.0.1',
    minLength: 1,
    doc: 'Address the HTTP port (/metrics, /health) binds to',
  }),
  httpPort: integer({
    default: DEFAULT_BROKER_HTTP_PORT,
    min: -1,
    max: 65_535,
    doc: 'HTTP port for /metrics and /health (0 = any free port, -1 = no HTTP server)',
  }),
  dataDir: string({
    default: './data/broker',
    minLength: 1,
    doc: 'Directory of the message, consume and action logs',
  }),
  metaserver: optionalString({
    doc: 'Metaserver URL (http://host:port or http://host:port/meta/address); none = run standalone',
  }),
  clusterSecret: optionalSecret({
    doc: "The metaserver's cluster secret, sent with heartbeats (required with --metaserver; never a flag: QMQ_CLUSTER_SECRET or --cluster-secret-file)",
  }),
  heartbeatIntervalMs: integer({
    default: DEFAULT_HEARTBEAT_INTERVAL_MS,
    min: 100,
    max: 600_000,
    doc: 'Metaserver heartbeat interval until the metaserver answers its own',
  }),
  maxFrameBytes: integer({
    default: DEFAULT_MAX_FRAME_BYTES,
    min: 64 * 1024,
    max: 1024 * 1024 * 1024,
    doc: 'Largest frame accepted, header included; a larger one closes the connection',
  }),
  maxMessageBytes: integer({
    default: DEFAULT_MAX_MESSAGE_BYTES,
    min: 1024,
    max: 512 * 1024 * 1024,
    doc: 'Largest message record accepted',
  }),
  ...connectionLimitsSchema,
  maxPollMs: integer({
    default: DEFAULT_MAX_POLL_MS,
    min: 0,
    max: 3_600_000,
    doc: 'Server cap on a PULL long-poll wait',
  }),
  maxPullBytes: integer({
    default: DEFAULT_MAX_PULL_BYTES,
    min: 1024,
    doc: 'Server cap on the record bytes of one PULL answer (at least one message is always sent)',
  }),
  adminToken: optionalString({
    doc: 'Token admin writes (cursor reset, dead-letter redrive, forget-group) must carry; unset = not checked',
  }),
  ...tlsFileSchema,
  ...authOptionsSchema,
  replication: oneOf({
    default: 'sync',
    values: ['sync', 'async'],
    doc: "Once the group has a slave: 'sync' answers a SEND when every in-sync slave holds it durably, 'async' when the master does",
  }),
  replicationAckTimeoutMs: integer({
    default: DEFAULT_REPLICATION_ACK_TIMEOUT_MS,
    min: 10,
    max: 600_000,
    doc: "Under 'sync', how long a SEND waits for a slave's acknowledgement (then a retriable error)",
  }),
  replicationInSyncLagMs: integer({
    default: DEFAULT_REPLICATION_IN_SYNC_LAG_MS,
    min: 10,
    max: 600_000,
    doc: 'A slave that has not caught up with the master within this long is out of sync',
  }),
  degradedWrites: boolean({
    default: false,
    doc: "Under 'sync' with no in-sync slave, keep acknowledging on the master alone (degraded) instead of refusing writes",
  }),
  masterAddress: optionalString({
    doc: "Slave: the master's host:port (default: asked from the metaserver)",
  }),
  replicationFetchWaitMs: integer({
    default: DEFAULT_REPLICATION_FETCH_WAIT_MS,
    min: 1,
    max: 60_000,
    doc: 'Slave: how long a fetch waits on the master for new records',
  }),
  replicationFetchBytes: integer({
    default: DEFAULT_REPLICATION_FETCH_BYTES,
    min: 4096,
    max: 8 * 1024 * 1024,
    doc: 'Slave: bytes asked for per fetch',
  }),
}
