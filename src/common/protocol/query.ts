import { QmqError } from '../errors'

/**
 * ADMIN_QUERY (request code 28): message query, lifecycle trace and per-minute history, asked of
 * a broker or a delay server (the metaserver fans it out, docs/query.md). Rare, operator-driven and
 * shaped like the metaserver's JSON answers, so its payload is JSON rather than a binary grammar:
 *
 * ADMIN_QUERY request
 *   UTF-8 JSON, at most MAX_QUERY_REQUEST_BYTES: one of the QueryRequest shapes below (`op`)
 * ADMIN_QUERY response
 *   UTF-8 JSON: the matching answer (QueryAnswer); errors are frame statuses as usual
 *   (QMQ_ERR_INVALID_ARGUMENT for a bad request). A server that keeps no index (`indexes: false`)
 *   answers `message` and `key` with nothing found.
 *
 * Reads only: open to whoever reaches the port, like ADMIN_BACKLOG and ADMIN_DLQ_LIST.
 */
export const MAX_QUERY_REQUEST_BYTES = 64 * 1024
export const MAX_QUERY_LIMIT = 500
export const DEFAULT_QUERY_LIMIT = 50
/** Bodies larger than this are not returned by a message query (bodyBytes says how large). */
export const MAX_QUERY_BODY_BYTES = 1024 * 1024

/** Per-minute count fields (delay servers: produced = scheduled, delivered = dispatched). */
export const COUNT_FIELDS = ['produced', 'delivered', 'acked', 'nacked', 'expired', 'dead', 'bytes'] as const
export type CountField = (typeof COUNT_FIELDS)[number]
export type Counts = Record<CountField, number>

export interface HistoryPoint extends Counts {
  /** ms since epoch, start of the minute */
  minute: number
}

export interface HistorySeries {
  subject: string
  /** '' for subject-level counts (produced, bytes) */
  consumerGroup: string
  points: HistoryPoint[]
}

export type QueryRequest =
  /** One message by id: its record(s), where it stands for each consumer group, and its trace. */
  | { op: 'message'; id: string }
  /** Messages of a subject stored in [from, to), newest first, with sequence < beforeSequence. */
  | { op: 'list'; subject: string; from: number; to: number; beforeSequence?: number; limit: number }
  /** Messages with a business key, newest first. */
  | { op: 'key'; key: string; subject?: string; limit: number }
  /** Per-minute counts. */
  | { op: 'history'; from: number; to: number; subject?: string; consumerGroup?: string }

export interface ConsumerView {
  consumerGroup: string
  state: 'pending' | 'inFlight' | 'retrying' | 'acked' | 'dead'
  deliveryCount: number
  holder?: string
  retryAt?: number
}

export interface MessageView {
  server: string
  kind: 'broker' | 'delay'
  id: string
  subject: string
  sequence: number
  createdAt: number
  storedAt: number
  scheduleAt?: number
  tags: string[]
  keys: string[]
  appCode?: string
  host?: string
  /** Absent when withheld (see bodyWithheld). */
  properties?: Record<string, string>
  bodyBytes: number
  body?: string
  bodyEncoding?: 'utf8' | 'base64'
  /**
   * Set by the metaserver when it has an admin token and the request did not carry it: body,
   * bodyEncoding and properties are left out (docs/query.md). Brokers never set it.
   */
  bodyWithheld?: true
  consumers?: ConsumerView[]
}

export type TraceEventType =
  | 'sent'
  | 'stored'
  | 'scheduled'
  | 'dispatched'
  | 'delivered'
  | 'acked'
  | 'nacked'
  | 'expired'
  | 'released'
  | 'dead'
  | 'redriven'

/** Order of events at the same ms (a message's life goes this way). */
const EVENT_RANK: Record<TraceEventType, number> = {
  sent: 0,
  scheduled: 1,
  dispatched: 2,
  stored: 3,
  delivered: 4,
  released: 5,
  expired: 6,
  nacked: 7,
  acked: 8,
  dead: 9,
  redriven: 10,
}

/** Sorts a timeline: by time, then by the usual order of a message's life. */
export function compareEvents(a: TraceEventView, b: TraceEventView): number {
  return a.time - b.time || EVENT_RANK[a.type] - EVENT_RANK[b.type]
}

export interface TraceEventView {
  time: number
  type: TraceEventType
  server: string
  subject: string
  sequence?: number
  consumerGroup?: string
  consumer?: string
  deliveryCount?: number
  retryAt?: number
  /** scheduled (delay server): when it is due */
  scheduleAt?: number
  appCode?: string
  host?: string
}

export interface MessageAnswer {
  messages: MessageView[]
  events: TraceEventView[]
}

export interface ListAnswer {
  messages: MessageView[]
}

export interface HistoryAnswer {
  series: HistorySeries[]
  truncated: boolean
}

// ---- the metaserver's HTTP answers (docs/query.md), merged from every group asked ----

/** A broker or delay group that did not answer. */
export interface FanoutError {
  group: string
  code: string
  message: string
}

/** GET /admin/messages/:id */
export interface MessageResult extends MessageAnswer {
  id: string
  found: boolean
  errors: FanoutError[]
}

/** GET /admin/messages?subject= or ?key= */
export interface ListResult extends ListAnswer {
  nextCursor?: string
  errors: FanoutError[]
}

/** GET /admin/history */
export interface HistoryResult extends HistoryAnswer {
  from: number
  to: number
  errors: FanoutError[]
}

export function encodeQueryRequest(req: QueryRequest): Buffer {
  return Buffer.from(JSON.stringify(req), 'utf8')
}

function bad(message: string): never {
  throw new QmqError('QMQ_ERR_INVALID_ARGUMENT', message)
}

function int(v: unknown, what: string, min = 0): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min)
    bad(`${what} must be an integer >= ${min}`)
  return v
}

function str(v: unknown, what: string, max = 1024): string {
  if (typeof v !== 'string' || v.length === 0 || v.length > max)
    bad(`${what} must be a string of 1 to ${max} characters`)
  return v
}

function optStr(v: unknown, what: string): string | undefined {
  return v === undefined ? undefined : str(v, what)
}

/** Decodes and validates a request (limits checked before anything is parsed). */
export function decodeQueryRequest(body: Buffer): QueryRequest {
  if (body.length > MAX_QUERY_REQUEST_BYTES)
    bad(`ADMIN_QUERY request of ${body.length} bytes; at most ${MAX_QUERY_REQUEST_BYTES}`)
  let v: unknown
  try {
    v = JSON.parse(body.toString('utf8'))
  } catch {
    bad('ADMIN_QUERY request is not JSON')
  }
  if (typeof v !== 'object' || v === null) bad('ADMIN_QUERY request must be an object')
  const o = v as Record<string, unknown>
  const limit = (x: unknown): number => {
    const n = x === undefined ? DEFAULT_QUERY_LIMIT : int(x, 'limit', 1)
    return Math.min(n, MAX_QUERY_LIMIT)
  }
  switch (o.op) {
    case 'message':
      return { op: 'message', id: str(o.id, 'id', 128) }
    case 'list': {
      const r: QueryRequest = {
        op: 'list',
        subject: str(o.subject, 'subject'),
        from: int(o.from, 'from'),
        to: int(o.to, 'to'),
        limit: limit(o.limit),
      }
      if (o.beforeSequence !== undefined) r.beforeSequence = int(o.beforeSequence, 'beforeSequence')
      return r
    }
    case 'key': {
      const subject = optStr(o.subject, 'subject')
      return {
        op: 'key',
        key: str(o.key, 'key', 128),
        limit: limit(o.limit),
        ...(subject ? { subject } : {}),
      }
    }
    case 'history': {
      const subject = optStr(o.subject, 'subject')
      const consumerGroup = o.consumerGroup === '' ? '' : optStr(o.consumerGroup, 'consumerGroup')
      return {
        op: 'history',
        from: int(o.from, 'from'),
        to: int(o.to, 'to'),
        ...(subject !== undefined ? { subject } : {}),
        ...(consumerGroup !== undefined ? { consumerGroup } : {}),
      }
    }
    default:
      return bad(`unknown ADMIN_QUERY op ${JSON.stringify(o.op)} (message, list, key, history)`)
  }
}

export function encodeQueryAnswer(answer: MessageAnswer | ListAnswer | HistoryAnswer): Buffer {
  return Buffer.from(JSON.stringify(answer), 'utf8')
}

export function decodeQueryAnswer<T extends MessageAnswer | ListAnswer | HistoryAnswer>(body: Buffer): T {
  try {
    return JSON.parse(body.toString('utf8')) as T
  } catch {
    throw new QmqError('QMQ_ERR_PAYLOAD_MALFORMED', 'ADMIN_QUERY answer is not JSON')
  }
}
