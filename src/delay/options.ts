import {
  boolean,
  integer,
  type OptionsSchema,
  optionalSecret,
  optionalString,
  resolveOptions,
  string,
} from '../common/config'
import { DEFAULT_DEDUPE_WINDOW_MS } from '../broker/store/options'
import { DEFAULT_MAX_FRAME_BYTES } from '../common/protocol/frame'
import { DEFAULT_MAX_MESSAGE_BYTES } from '../common/record'
import { type ConnectionLimitOptions, connectionLimitsSchema } from '../common/server/options'
import { checkTlsOptions, type TlsFileOptions, tlsFileSchema } from '../common/tls'
import { type AuthOptions, authOptionsSchema } from '../common/auth/options'
import {
  type BrokerServerOptions as BrokerOptions,
  brokerServerOptionsSchema as brokerOptionsSchema,
} from '../broker/server/options'

export const DEFAULT_DELAY_PORT = 20801
export const DEFAULT_HORIZON_MS = 2 * 366 * 24 * 3600 * 1000 // 2 years (of leap years: never shorter)
export const DEFAULT_BUCKET_MINUTES = 60
export const DEFAULT_LOAD_AHEAD_MS = 10 * 60 * 1000 // buckets starting within 10 min are loaded
export const DEFAULT_TICK_MS = 10
export const DEFAULT_SEGMENT_BYTES = 256 * 1024 * 1024 // message-log segment
export const DEFAULT_CHECKPOINT_INTERVAL_MS = 5_000
export const DEFAULT_DISPATCH_BATCH = 500 // records per SEND to a broker
export const DEFAULT_DISPATCH_IN_FLIGHT = 16 // SEND requests outstanding towards brokers
export const DEFAULT_RETRY_INITIAL_MS = 200
export const DEFAULT_RETRY_MAX_MS = 30_000
export const DEFAULT_SEND_TIMEOUT_MS = 5_000
export const DEFAULT_ROUTE_TTL_MS = 5_000
/**
 * Ids the dedupe window holds at most (the broker's default is 2M): ~120 bytes each with SDK ids
 * (docs/delay.md "Duplicates"), 57 MB when full: inside the RSS target at 10M pending.
 */
export const DEFAULT_DELAY_DEDUPE_MAX_ENTRIES = 500_000
export const DEFAULT_DELAY_DEDUPE_REBUILD_MAX_BYTES = 256 * 1024 * 1024

/** Replication options: the broker's, with the same meanings and defaults (docs/replication.md). */
export type DelayReplicationOptions = Pick<
  BrokerOptions,
  | 'role'
  | 'replication'
  | 'replicationAckTimeoutMs'
  | 'replicationInSyncLagMs'
  | 'degradedWrites'
  | 'masterAddress'
  | 'replicationFetchWaitMs'
  | 'replicationFetchBytes'
>

/** The connection limits (maxConnections ... closeTimeoutMs) are the broker's: common/server/options.ts. */
export interface DelayOptions
  extends ConnectionLimitOptions,
    TlsFileOptions,
    AuthOptions,
    DelayReplicationOptions {
  /** Delay group name registered with the metaserver. */
  group: string
  host: string
  /** TCP port (0 = any free port). */
  port: number
  /** Address advertised to the metaserver (`host:port`); default host:boundPort. */
  advertisedAddress: string | undefined
  /** HTTP port of /metrics and /health; -1 = no HTTP server, 0 = any free port. */
  httpPort: number
  dataDir: string
  /** Metaserver URL (base or /meta/address); unset = no registration. */
  metaserver: string | undefined
  /** Sent with metaserver heartbeats; required with `metaserver`. */
  clusterSecret: string | undefined
  /** Fixed routes `name=host:port,...`: every subject goes to these broker groups (over the metaserver's). */
  brokers: string | undefined
  /** Schedule times later than now + horizonMs are rejected (QMQ_ERR_DELAY_TOO_FAR). */
  horizonMs: number
  /** Width of a schedule-log bucket; fixed once a data dir is used. */
  bucketMinutes: number
  /** A bucket is loaded into the wheel when its start is within this of now. */
  loadAheadMs: number
  tickMs: number
  wheelSize: number
  segmentBytes: number
  checkpointIntervalMs: number
  maxMessageBytes: number
  maxFrameBytes: number
  dispatchBatch: number
  dispatchInFlight: number
  retryInitialMs: number
  retryMaxMs: number
  sendTimeoutMs: number
  routeTtlMs: number
  /** fdatasync the message log before acknowledging a SEND (group commit). */
  fsync: boolean
  /** A message id (with its subject) stored this recently is stored once (0 = off): the broker's option. */
  dedupeWindowMs: number
  /** Cap of remembered ids (oldest forgotten first); lower than the broker's default (memory target). */
  dedupeMaxEntries: number
  /** Message-log bytes scanned on open to rebuild the dedupe window (and kept past the checkpoint for it). */
  dedupeRebuildMaxBytes: number
}

export const delayOptionsSchema: OptionsSchema<DelayOptions> = {
  group: string({
    default: 'delay1',
    minLength: 1,
    doc: 'Delay group name registered with the metaserver (kind delay)',
  }),
  host: string({ default: '127.0.0.1', minLength: 1, doc: 'Address to bind the TCP (and HTTP) server to' }),
  port: integer({ default: DEFAULT_DELAY_PORT, min: 0, max: 65535, doc: 'TCP port (0 = any free port)' }),
  advertisedAddress: optionalString({
    doc: 'host:port announced to the metaserver (default host:port bound)',
  }),
  httpPort: integer({
    default: -1,
    min: -1,
    max: 65535,
    doc: 'HTTP port of /metrics and /health (-1 = off)',
  }),
  dataDir: string({ default: './data/delay', minLength: 1, doc: 'Directory of the delay logs' }),
  metaserver: optionalString({ doc: 'Metaserver URL; unset = no registration, routes from --brokers' }),
  clusterSecret: optionalSecret({
    doc: "The metaserver's cluster secret, sent with heartbeats (required with --metaserver; never a flag: QMQ_CLUSTER_SECRET or --cluster-secret-file)",
  }),
  brokers: optionalString({
    doc: "Fixed routes name=host:port,... : every subject to these broker groups (instead of the metaserver's)",
  }),
  horizonMs: integer({
    default: DEFAULT_HORIZON_MS,
    min: 1_000,
    max: 10 * 366 * 24 * 3600 * 1000,
    doc: 'Latest accepted schedule time, relative to now',
  }),
  bucketMinutes: integer({
    default: DEFAULT_BUCKET_MINUTES,
    min: 1,
    max: 60,
    doc: 'Minutes per schedule-log bucket (fixed once the data dir is used)',
  }),
  loadAheadMs: integer({
    default: DEFAULT_LOAD_AHEAD_MS,
    min: 0,
    max: 24 * 3600 * 1000,
    doc: 'Load a bucket into the wheel this long before it starts',
  }),
  tickMs: integer({ default: DEFAULT_TICK_MS, min: 1, max: 1_000, doc: 'Wheel tick' }),
  wheelSize: integer({ default: 4096, min: 16, max: 1 << 20, doc: 'Wheel slots' }),
  segmentBytes: integer({
    default: DEFAULT_SEGMENT_BYTES,
    min: 64 * 1024,
    max: 2 ** 40,
    doc: 'Message-log segment size',
  }),
  checkpointIntervalMs: integer({
    default: DEFAULT_CHECKPOINT_INTERVAL_MS,
    min: 10,
    max: 600_000,
    doc: 'How often schedule and dispatch logs are synced and the replay checkpoint written',
  }),
  maxMessageBytes: integer({
    default: DEFAULT_MAX_MESSAGE_BYTES,
    min: 1024,
    max: 64 * 1024 * 1024,
    doc: 'Largest accepted message record',
  }),
  maxFrameBytes: integer({
    default: DEFAULT_MAX_FRAME_BYTES,
    min: 4096,
    max: 256 * 1024 * 1024,
    doc: 'Largest accepted frame',
  }),
  ...connectionLimitsSchema,
  dispatchBatch: integer({ default: DEFAULT_DISPATCH_BATCH, min: 1, max: 10_000, doc: 'Records per SEND' }),
  dispatchInFlight: integer({
    default: DEFAULT_DISPATCH_IN_FLIGHT,
    min: 1,
    max: 1024,
    doc: 'SEND requests outstanding towards brokers',
  }),
  retryInitialMs: integer({
    default: DEFAULT_RETRY_INITIAL_MS,
    min: 1,
    max: 600_000,
    doc: 'First retry delay after a failed dispatch',
  }),
  retryMaxMs: integer({
    default: DEFAULT_RETRY_MAX_MS,
    min: 1,
    max: 3_600_000,
    doc: 'Longest retry delay after failed dispatches (retries never stop)',
  }),
  sendTimeoutMs: integer({
    default: DEFAULT_SEND_TIMEOUT_MS,
    min: 10,
    max: 600_000,
    doc: 'Deadline of one SEND to a broker',
  }),
  routeTtlMs: integer({
    default: DEFAULT_ROUTE_TTL_MS,
    min: 10,
    max: 600_000,
    doc: 'How long a subject route from the metaserver is used before asking again',
  }),
  fsync: boolean({
    default: true,
    doc: 'fdatasync the message log before acknowledging (false: acknowledged after the write)',
  }),
  dedupeWindowMs: integer({
    default: DEFAULT_DEDUPE_WINDOW_MS,
    min: 0,
    doc: 'A message id SENT again this recently is stored once (0 = off)',
  }),
  dedupeMaxEntries: integer({
    default: DEFAULT_DELAY_DEDUPE_MAX_ENTRIES,
    min: 0,
    max: 2 ** 30,
    doc: 'Cap of remembered ids (oldest forgotten first)',
  }),
  dedupeRebuildMaxBytes: integer({
    default: DEFAULT_DELAY_DEDUPE_REBUILD_MAX_BYTES,
    min: 0,
    doc: 'Message-log bytes scanned on open to rebuild the dedupe window',
  }),
  ...tlsFileSchema,
  ...authOptionsSchema,
  role: {
    ...brokerOptionsSchema.role,
    doc: 'Role inside the delay group (a slave copies its master: docs/replication.md)',
  },
  replication: brokerOptionsSchema.replication,
  replicationAckTimeoutMs: brokerOptionsSchema.replicationAckTimeoutMs,
  replicationInSyncLagMs: brokerOptionsSchema.replicationInSyncLagMs,
  degradedWrites: brokerOptionsSchema.degradedWrites,
  masterAddress: brokerOptionsSchema.masterAddress,
  replicationFetchWaitMs: brokerOptionsSchema.replicationFetchWaitMs,
  replicationFetchBytes: brokerOptionsSchema.replicationFetchBytes,
}

export function resolveDelayOptions(input: unknown = {}): Readonly<DelayOptions> {
  const o = resolveOptions('delay', delayOptionsSchema, input)
  checkTlsOptions('delay', o)
  return o
}
