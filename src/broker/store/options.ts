import {
  boolean,
  integer,
  number,
  type OptionsSchema,
  oneOf,
  resolveOptions,
  string,
} from '../../common/config'

export const DEFAULT_SEGMENT_BYTES = 128 * 1024 * 1024 // 128 MiB per message-log segment
export const DEFAULT_FLUSH_INTERVAL_MS = 200 // 'async': fdatasync period
export const DEFAULT_LEASE_MS = 30_000
export const DEFAULT_RETRY_BASE_MS = 1_000
export const DEFAULT_RETRY_MAX_MS = 600_000 // 10 min
export const DEFAULT_MAX_RETRIES = 16
export const DEFAULT_DEDUPE_WINDOW_MS = 600_000 // 10 min
export const DEFAULT_RETENTION_MS = 72 * 3600_000 // 72 h, as QMQ

export interface MessageStoreOptions {
  /** Root directory: messagelog/, consumelog/, actionlog/, checkpoint/ live under it. */
  dataDir: string
  flush: 'sync' | 'async'
  flushIntervalMs: number
  /** Action-log (consumer progress) flush policy; see docs/storage.md. */
  actionFlush: 'sync' | 'async'
  segmentBytes: number
  actionLogSegmentBytes: number
  consumeLogSegmentEntries: number
  consumeLogCacheEntries: number
  hotCacheBytes: number
  /** Read buffers kept free for reuse (read-pool.ts); 0 = every read into fresh memory. */
  readPoolBytes: number
  maxMessageBytes: number
  leaseMs: number
  retryBaseMs: number
  retryMaxMs: number
  retryJitter: number
  maxRetries: number
  dedupeWindowMs: number
  dedupeMaxEntries: number
  dedupeRebuildMaxBytes: number
  retentionMs: number
  retentionBytes: number
  retentionCheckIntervalMs: number
  checkpointIntervalMs: number
  sweepIntervalMs: number
  broadcastIdleMs: number
  maxWaitingKeyed: number
  maxScanPerPull: number
  /** Index messages by id and business key and record their lifecycle (index-log.ts). */
  indexes: boolean
  indexSegmentBytes: number
  /** Per-minute counts kept (history.ts); 0 = none. */
  historyRetentionMs: number
}

export const messageStoreOptionsSchema: OptionsSchema<MessageStoreOptions> = {
  dataDir: string({ default: './data/broker', minLength: 1, doc: 'Root directory of the store' }),
  flush: oneOf({
    default: 'sync',
    values: ['sync', 'async'] as const,
    doc: "'sync': appends resolve after a shared fdatasync; 'async': after the write, synced every flushIntervalMs",
  }),
  flushIntervalMs: integer({
    default: DEFAULT_FLUSH_INTERVAL_MS,
    min: 1,
    max: 60_000,
    doc: "fdatasync period under flush 'async'",
  }),
  actionFlush: oneOf({
    default: 'async',
    values: ['sync', 'async'] as const,
    doc: "Consumer-progress writes: 'sync' fdatasyncs each batch; 'async' syncs every flushIntervalMs",
  }),
  segmentBytes: integer({ default: DEFAULT_SEGMENT_BYTES, min: 4096, doc: 'Message-log segment size' }),
  actionLogSegmentBytes: integer({ default: 64 * 1024 * 1024, min: 4096, doc: 'Action-log segment size' }),
  consumeLogSegmentEntries: integer({
    default: 1_000_000,
    min: 16,
    doc: 'Entries per consume-log segment (24 B each)',
  }),
  consumeLogCacheEntries: integer({
    default: 65_536,
    min: 0,
    doc: 'Recent consume-log entries kept in memory per subject',
  }),
  hotCacheBytes: integer({
    default: 64 * 1024 * 1024,
    min: 0,
    doc: 'Recent records kept in memory for pulls',
  }),
  readPoolBytes: integer({
    default: 32 * 1024 * 1024,
    min: 0,
    doc: 'Read buffers kept for reuse by pulls read from disk and replication fetches (0 = none)',
  }),
  maxMessageBytes: integer({
    default: 4 * 1024 * 1024,
    min: 64,
    doc: 'Largest record accepted (and trusted on recovery)',
  }),
  leaseMs: integer({
    default: DEFAULT_LEASE_MS,
    min: 10,
    doc: 'A silent consumer loses its unacked messages after this',
  }),
  retryBaseMs: integer({
    default: DEFAULT_RETRY_BASE_MS,
    min: 0,
    doc: 'First redelivery delay after a nack',
  }),
  retryMaxMs: integer({ default: DEFAULT_RETRY_MAX_MS, min: 0, doc: 'Cap of the doubling redelivery delay' }),
  retryJitter: number({
    default: 0.2,
    min: 0,
    max: 1,
    doc: 'Random spread of redelivery delays (0.2 = +-20%)',
  }),
  maxRetries: integer({
    default: DEFAULT_MAX_RETRIES,
    min: 1,
    doc: 'Deliveries ending in nack before a message is dead-lettered',
  }),
  dedupeWindowMs: integer({
    default: DEFAULT_DEDUPE_WINDOW_MS,
    min: 0,
    doc: 'A message id seen this recently is stored once (0 = off)',
  }),
  dedupeMaxEntries: integer({
    default: 2_000_000,
    min: 0,
    doc: 'Cap of remembered ids (oldest forgotten first)',
  }),
  dedupeRebuildMaxBytes: integer({
    default: 256 * 1024 * 1024,
    min: 0,
    doc: 'Message-log bytes scanned on open to rebuild the dedupe window',
  }),
  retentionMs: integer({
    default: DEFAULT_RETENTION_MS,
    min: 0,
    doc: 'Segments older than this are deleted (0 = no age limit)',
  }),
  retentionBytes: integer({
    default: 0,
    min: 0,
    doc: 'Oldest segments are deleted above this total (0 = no size limit)',
  }),
  retentionCheckIntervalMs: integer({ default: 60_000, min: 10, doc: 'How often retention runs' }),
  checkpointIntervalMs: integer({ default: 30_000, min: 10, doc: 'How often a checkpoint is written' }),
  sweepIntervalMs: integer({
    default: 250,
    min: 1,
    doc: 'Lease-expiry timer period (due retries have their own timer; the sweep is their fallback)',
  }),
  broadcastIdleMs: integer({
    default: 7 * 24 * 3_600_000,
    min: 0,
    doc: "A broadcast consumer's cursor is forgotten after this long without a pull (0 = never)",
  }),
  maxWaitingKeyed: integer({
    default: 100_000,
    min: 1,
    doc: 'Ordered messages one consumer group passes over (waiting behind an unsettled message of their key) at most; past it the group stops at the next one until some settle',
  }),
  maxScanPerPull: integer({
    default: 10_000,
    min: 1,
    doc: 'Consume-log entries a tag-filtered pull examines at most',
  }),
  indexes: boolean({
    default: true,
    doc: 'Index messages by id and business key and record their lifecycle (qmq message <id>)',
  }),
  indexSegmentBytes: integer({
    default: 16 * 1024 * 1024,
    min: 4096,
    doc: 'Index-log segment size (the active one is indexed in memory)',
  }),
  historyRetentionMs: integer({
    default: 25 * 3_600_000,
    min: 0,
    doc: 'Per-minute counts (qmq history) are kept this long (0 = not recorded)',
  }),
}

export function resolveMessageStoreOptions(
  input: Partial<MessageStoreOptions>,
): Readonly<MessageStoreOptions> {
  return resolveOptions('broker store', messageStoreOptionsSchema, input)
}
