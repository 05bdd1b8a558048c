import {
  Counter,
  Gauge,
  LATENCY_BUCKETS_SECONDS,
  NO_LABELS,
  type Registry,
  SummedCounter,
  SummedHistogram,
} from '../../common/metrics'

export type StoreLogName = 'message' | 'action'

/** The store's Prometheus metrics; all no-ops when no registry is given. */
export interface StoreMetrics {
  appendSeconds(seconds: number): void
  io(what: 'write' | 'sync', seconds: number, bytes: number): void
  appended(messages: number, duplicates: number): void
  retention(segments: number, bytes: number, unconsumed: number): void
  syncFailed(log: StoreLogName): void
  /** The log failed closed (refuses writes until the store is reopened). */
  failed(log: StoreLogName): void
  /** A stored record failed its CRC when read for a pull (counted once per record). */
  corruptRecord(): void
}

export const noMetrics: StoreMetrics = {
  appendSeconds: () => undefined,
  io: () => undefined,
  appended: () => undefined,
  retention: () => undefined,
  syncFailed: () => undefined,
  failed: () => undefined,
  corruptRecord: () => undefined,
}

/** Values read when the registry is scraped. */
export interface StoreProbes {
  /** Seconds of the dedupe window the index really covers now (DedupeIndex.effectiveWindowMs). */
  dedupeWindowSeconds(): number
}

export function createStoreMetrics(registry: Registry | undefined, probes?: StoreProbes): StoreMetrics {
  if (!registry) return noMetrics
  const registers = [registry]
  const syncErrors = new Counter({
    name: 'qmq_store_sync_errors_total',
    help: 'Failed fdatasyncs, by log (message: batches rejected under flush sync, retried under async)',
    labelNames: ['log'],
    registers,
  })
  const failed = new Gauge({
    name: 'qmq_store_failed',
    help: '1 when the log refuses writes after a write it could not undo (until the store is reopened)',
    labelNames: ['log'],
    registers,
  })
  for (const log of ['message', 'action']) {
    syncErrors.inc({ log }, 0)
    failed.set({ log }, 0)
  }
  if (probes) {
    new Gauge({
      name: 'qmq_store_dedupe_window_seconds',
      help: 'How far back the dedupe index remembers every id now: dedupeWindowMs unless dedupeMaxEntries or the rebuild limit cut it',
      registers,
      collect() {
        this.set(probes.dedupeWindowSeconds())
      },
    })
  }
  const append = new SummedHistogram({
    name: 'qmq_store_append_seconds',
    help: 'Time from append() to its resolution (includes the shared fdatasync under flush sync)',
    buckets: [...LATENCY_BUCKETS_SECONDS],
    registers,
  }).labels({})
  const write = new SummedHistogram({
    name: 'qmq_store_write_seconds',
    help: 'Duration of one group-commit writev of the message log',
    buckets: [...LATENCY_BUCKETS_SECONDS],
    registers,
  }).labels({})
  const fsync = new SummedHistogram({
    name: 'qmq_store_fsync_seconds',
    help: 'Duration of one fdatasync of the message log',
    buckets: [...LATENCY_BUCKETS_SECONDS],
    registers,
  }).labels({})
  // Counted per write or append batch: summed outside prom-client (no labels object per inc).
  const bytes = new SummedCounter({
    name: 'qmq_store_written_bytes_total',
    help: 'Message-log bytes written',
    registers,
  })
  const messages = new SummedCounter({ name: 'qmq_store_messages_total', help: 'Messages stored', registers })
  const dups = new SummedCounter({
    name: 'qmq_store_duplicates_total',
    help: 'Appends answered from the dedupe window (not stored again)',
    registers,
  })
  const retSegments = new Counter({
    name: 'qmq_store_retention_segments_total',
    help: 'Message-log segments deleted by retention',
    registers,
  })
  const retBytes = new Counter({
    name: 'qmq_store_retention_bytes_total',
    help: 'Message-log bytes deleted by retention',
    registers,
  })
  const unconsumed = new Counter({
    name: 'qmq_store_retention_unconsumed_messages_total',
    help: 'Messages deleted by retention before every consumer group had consumed them',
    registers,
  })
  const corrupt = new Counter({
    name: 'qmq_store_corrupt_records_total',
    help: 'Stored records that failed their CRC when read for consumers (skipped, never served)',
    registers,
  })
  return {
    corruptRecord: () => corrupt.inc(),
    appendSeconds: (s) => append.observe(s),
    io: (what, s, b) => {
      if (what === 'write') {
        write.observe(s)
        bytes.inc(NO_LABELS, b)
      } else fsync.observe(s)
    },
    appended: (m, d) => {
      if (m > 0) messages.inc(NO_LABELS, m)
      if (d > 0) dups.inc(NO_LABELS, d)
    },
    retention: (segs, b, u) => {
      retSegments.inc(segs)
      retBytes.inc(b)
      if (u > 0) unconsumed.inc(u)
    },
    syncFailed: (log) => syncErrors.inc({ log }),
    failed: (log) => failed.set({ log }, 1),
  }
}
