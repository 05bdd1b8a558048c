import { QmqError } from '../../common/errors'
import {
  APP_CODE_PROPERTY,
  decodeRecord,
  HOST_PROPERTY,
  KEYS_PROPERTY,
  type MessageRecord,
  splitKeys,
} from '../../common/record'
import {
  compareEvents,
  type ConsumerView,
  type HistoryAnswer,
  type ListAnswer,
  MAX_QUERY_BODY_BYTES,
  type MessageAnswer,
  type MessageView,
  type QueryRequest,
  type TraceEventType,
  type TraceEventView,
} from '../../common/protocol/query'
import { HELD, RETRY } from './consumer-state'
import type { FileMessageStore } from './file-message-store'
import { IndexKind, keyBytes, TRACE_EVENT_NAMES } from './index-log'
import { readSeqs } from './subjects'

/**
 * The broker's answers to ADMIN_QUERY (src/common/protocol/query.ts): message query by id, key and
 * time (index-log.ts, consume logs), where a message stands for each consumer group (consumer
 * state), its lifecycle trace (index-log.ts) and per-minute counts (history.ts).
 */
export async function answerQuery(
  store: FileMessageStore,
  req: QueryRequest,
): Promise<MessageAnswer | ListAnswer | HistoryAnswer> {
  switch (req.op) {
    case 'message':
      return findMessage(store, req.id)
    case 'list':
      return listMessages(store, req.subject, req.from, req.to, req.beforeSequence, req.limit)
    case 'key':
      return findByKey(store, req.key, req.subject, req.limit)
    case 'history': {
      if (!store.history) return { series: [], truncated: false }
      return store.history.query(req)
    }
  }
}

/** Builds the view of a stored record (without body and consumers unless `full`). */
export function messageView(
  server: string,
  kind: 'broker' | 'delay',
  rec: MessageRecord,
  sequence: number,
  storedAt: number,
  full: boolean,
): MessageView {
  const properties: Record<string, string> = {}
  for (const [k, v] of rec.properties) properties[k] = v
  const v: MessageView = {
    server,
    kind,
    id: rec.id,
    subject: rec.subject,
    sequence,
    createdAt: rec.createdAt,
    storedAt,
    tags: rec.tags,
    keys: splitKeys(rec.properties.get(KEYS_PROPERTY)),
    properties,
    bodyBytes: rec.body === undefined ? 0 : Buffer.byteLength(rec.body),
  }
  if (rec.scheduleAt !== undefined) v.scheduleAt = rec.scheduleAt
  const app = rec.properties.get(APP_CODE_PROPERTY)
  if (app !== undefined) v.appCode = app
  const host = rec.properties.get(HOST_PROPERTY)
  if (host !== undefined) v.host = host
  if (full && rec.body !== undefined && v.bodyBytes <= MAX_QUERY_BODY_BYTES) {
    if (typeof rec.body === 'string') {
      v.body = rec.body
      v.bodyEncoding = 'utf8'
    } else {
      v.body = rec.body.toString('base64')
      v.bodyEncoding = 'base64'
    }
  }
  return v
}

/** The 'sent' and 'stored' events every stored message has. */
export function storedEvents(server: string, v: MessageView): TraceEventView[] {
  const sent: TraceEventView = { time: v.createdAt, type: 'sent', server, subject: v.subject }
  if (v.appCode !== undefined) sent.appCode = v.appCode
  if (v.host !== undefined) sent.host = v.host
  return [
    sent,
    {
      time: v.storedAt,
      type: v.kind === 'delay' ? 'scheduled' : 'stored',
      server,
      subject: v.subject,
      sequence: v.sequence,
    },
  ]
}

/** Where message `seq` of `subject` stands for every consumer group of the subject on this broker. */
export function consumerViews(store: FileMessageStore, subject: string, seq: number): ConsumerView[] {
  const out: ConsumerView[] = []
  const groups = store.state.groups.get(subject)
  if (!groups) return out
  for (const g of groups.values()) {
    const d = g.dead.get(seq)
    if (d) {
      out.push({ consumerGroup: g.group, state: 'dead', deliveryCount: d.dc })
      continue
    }
    const f = g.inflight.get(seq)
    if (f) {
      const v: ConsumerView = {
        consumerGroup: g.group,
        state: f.state === HELD ? 'inFlight' : f.state === RETRY ? 'retrying' : 'pending',
        deliveryCount: f.dc,
      }
      if (f.state === HELD && f.holder !== undefined) v.holder = f.holder
      if (f.state === RETRY) v.retryAt = f.dueAt
      out.push(v)
      continue
    }
    // A broadcast-only group: acked once every instance's cursor passed it.
    const cursor = g.broadcastOnly ? Math.min(...g.broadcast.values()) : g.cursor
    out.push({ consumerGroup: g.group, state: seq < cursor ? 'acked' : 'pending', deliveryCount: 0 })
  }
  return out.sort((a, b) => a.consumerGroup.localeCompare(b.consumerGroup))
}

async function findMessage(store: FileMessageStore, id: string): Promise<MessageAnswer> {
  const out: MessageAnswer = { messages: [], events: [] }
  if (!store.index) return out
  const server = store.serverName
  const entries = await store.index.lookup(IndexKind.MESSAGE, keyBytes(IndexKind.MESSAGE, id))
  const seen = new Set<number>()
  for (const e of entries) {
    if (seen.has(e.ref)) continue
    seen.add(e.ref)
    const bytes = await readRecordAt(store, e.ref, e.refSize)
    if (!bytes) continue // removed by retention
    let rec: MessageRecord
    try {
      rec = decodeRecord(bytes)
    } catch {
      continue
    }
    if (rec.id !== id) continue // a hash collision
    const v = messageView(server, 'broker', rec, e.extra, e.time, true)
    // Dead letters and progress of each consumer group (the live state; the trace has the history).
    // The state first: the trace read after it holds every event that led to it (events are queued
    // synchronously with the state change they record).
    const views = consumerViews(store, rec.subject, e.extra)
    const dc = new Map<string, number>()
    const trace = await traceEvents(store, rec.subject, e.extra)
    for (const t of trace) {
      if (t.consumerGroup !== undefined && t.deliveryCount !== undefined)
        dc.set(t.consumerGroup, Math.max(dc.get(t.consumerGroup) ?? 0, t.deliveryCount))
    }
    v.consumers = views.map((c) =>
      c.state === 'acked' ? { ...c, deliveryCount: dc.get(c.consumerGroup) ?? 0 } : c,
    )
    out.messages.push(v)
    out.events.push(...storedEvents(server, v), ...trace)
  }
  // Not found (yet): the index may not cover the message's record while it is being built.
  if (out.messages.length === 0) refuseWhileBuilding(store)
  out.events.sort(compareEvents)
  return out
}

/**
 * While the index is built in the background (index-build.ts) a lookup may miss records: answers
 * that could be incomplete are refused with a retriable code instead.
 */
function refuseWhileBuilding(store: FileMessageStore): void {
  const b = store.indexBuilding
  if (b === undefined) return
  throw new QmqError(
    'QMQ_ERR_INDEX_BUILDING',
    `the message index is being built: it covers ${Math.floor(b.covered * 100)}% of the message log; retry the query`,
  )
}

/** The lifecycle events recorded for (subject, sequence), oldest first. */
export async function traceEvents(
  store: FileMessageStore,
  subject: string,
  seq: number,
): Promise<TraceEventView[]> {
  if (!store.index) return []
  const entries = await store.index.lookup(IndexKind.TRACE, keyBytes(IndexKind.TRACE, subject, seq))
  const out: TraceEventView[] = []
  for (const e of entries) {
    if (e.subject !== subject || e.ref !== seq) continue // a hash collision
    const t: TraceEventView = {
      time: e.time,
      type: (TRACE_EVENT_NAMES[e.event] ?? 'delivered') as TraceEventType,
      server: store.serverName,
      subject,
      sequence: seq,
      consumerGroup: e.group,
    }
    if (e.consumer !== '') t.consumer = e.consumer
    if (e.deliveryCount > 0) t.deliveryCount = e.deliveryCount
    if (e.extra > 0) t.retryAt = e.extra
    out.push(t)
  }
  return out
}

async function listMessages(
  store: FileMessageStore,
  subject: string,
  from: number,
  to: number,
  beforeSequence: number | undefined,
  limit: number,
): Promise<ListAnswer> {
  const s = store.subjectsIndex.get(subject)
  if (!s || to <= from) return { messages: [] }
  // Sequences stored in [from, to): the consume log's store times only grow.
  const lo = Math.max(s.lowSeq, await s.consume.search((e) => e.storedAt >= from))
  let hi = await s.consume.search((e) => e.storedAt >= to)
  if (beforeSequence !== undefined) hi = Math.min(hi, beforeSequence)
  const out: MessageView[] = []
  while (hi > lo && out.length < limit) {
    const n = Math.min(limit - out.length, hi - lo, 100)
    const seqs: number[] = []
    for (let q = hi - 1; q >= hi - n; q--) seqs.push(q)
    const [recs, entries] = await Promise.all([readSeqs(store.mlog, s, seqs), s.consume.read(hi - n, n)])
    const storedAt = new Map(entries.map((e) => [e.seq, e.storedAt]))
    for (let i = 0; i < seqs.length; i++) {
      const bytes = recs[i]
      if (!bytes) continue
      try {
        const q = seqs[i] as number
        out.push(messageView(store.serverName, 'broker', decodeRecord(bytes), q, storedAt.get(q) ?? 0, false))
      } catch {
        // a damaged record is not listed
      }
    }
    hi -= n
  }
  return { messages: out }
}

async function findByKey(
  store: FileMessageStore,
  key: string,
  subject: string | undefined,
  limit: number,
): Promise<ListAnswer> {
  if (!store.index) return { messages: [] }
  // Newest first, up to `limit`: what a partial index finds may not be that.
  refuseWhileBuilding(store)
  const entries = await store.index.lookup(IndexKind.KEY, keyBytes(IndexKind.KEY, key))
  const out: MessageView[] = []
  const seen = new Set<number>()
  // Newest first.
  for (let i = entries.length - 1; i >= 0 && out.length < limit; i--) {
    const e = entries[i]
    if (!e || seen.has(e.ref)) continue
    seen.add(e.ref)
    const bytes = await readRecordAt(store, e.ref, e.refSize)
    if (!bytes) continue
    try {
      const rec = decodeRecord(bytes)
      if (subject !== undefined && rec.subject !== subject) continue
      if (!splitKeys(rec.properties.get(KEYS_PROPERTY)).includes(key)) continue
      out.push(messageView(store.serverName, 'broker', rec, e.extra, e.time, false))
    } catch {
      // a damaged record is not listed
    }
  }
  return { messages: out }
}

/** The record at a message-log offset; undefined when it is gone (retention) or unreadable. */
async function readRecordAt(
  store: FileMessageStore,
  offset: number,
  size: number,
): Promise<Buffer | undefined> {
  if (offset < store.mlog.log.startOffset || offset + size > store.mlog.committedEnd) return undefined
  try {
    const [bytes] = await store.mlog.readMany([{ offset, size }])
    return bytes
  } catch {
    return undefined
  }
}
