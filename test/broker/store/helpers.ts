import type { ManualClock } from '../../../src/common/clock'
import { decodeRecord, encodeRecord, readRecordHeader } from '../../../src/common/record'
import { type FileMessageStoreOptions, openMessageStore } from '../../../src/broker/store'
import type { FileMessageStore } from '../../../src/broker/store/file-message-store'
import type { AppendInput, AppendResult, PullOptions } from '../../../src/broker/store/types'
import { TraceEvent } from '../../../src/broker/store/index-log'

let counter = 0

export function rec(
  subject: string,
  opts: { id?: string; tags?: string[]; body?: string | Buffer; properties?: Record<string, string> } = {},
): AppendInput {
  const bytes = encodeRecord({
    id: opts.id ?? `id-${process.pid}-${++counter}`,
    subject,
    createdAt: 1_700_000_000_000,
    tags: opts.tags ?? [],
    properties: new Map(Object.entries(opts.properties ?? {})),
    body: opts.body ?? `body ${counter}`,
  })
  return { bytes, header: readRecordHeader(bytes) }
}

export function bodyOf(record: Buffer): string {
  return String(decodeRecord(record).body)
}

export function pullOpts(
  subject: string,
  group: string,
  consumerId: string,
  extra: Partial<PullOptions> = {},
): PullOptions {
  return {
    subject,
    group,
    consumerId,
    maxMessages: 100,
    maxBytes: 16 * 1024 * 1024,
    broadcast: false,
    atMostOnce: false,
    tags: [],
    tagsAll: false,
    start: 1, // EARLIEST
    startTime: 0,
    ...extra,
  }
}

export async function open(
  dataDir: string,
  extra: FileMessageStoreOptions & { clock?: ManualClock } = {},
): Promise<FileMessageStore> {
  return openMessageStore({ dataDir, segmentBytes: 64 * 1024, ...extra })
}

/** Append results without their log offsets (`end`), for comparing sequences and duplicates. */
export function sd(results: readonly AppendResult[]): { sequence: number; duplicate: boolean }[] {
  return results.map((r) => ({ sequence: r.sequence, duplicate: r.duplicate }))
}

/** The index trace of sequence `i` the index-log tests add: orders / billing / c1, delivered once. */
export function deliveredTrace(i: number) {
  return {
    event: TraceEvent.DELIVERED,
    subject: 'orders',
    sequence: i,
    group: 'billing',
    consumer: 'c1',
    deliveryCount: 1,
    time: 1_700_000_000_000 + i,
  }
}
