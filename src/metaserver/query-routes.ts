import { QmqError } from '../common/errors'
import { validateGroup, validateRouteSubject } from '../common/names'
import { DEFAULT_QUERY_LIMIT, MAX_QUERY_LIMIT, type MessageView } from '../common/protocol/query'
import type { QueryFanout } from './query-fanout'

/**
 * HTTP routes of message query, trace and history (docs/query.md): reads, open like the other admin
 * reads, except message bodies and properties: with an admin token configured, the metaserver hands
 * them only to requests carrying it (`mayReadBodies`, asked only on these routes). Answers `undefined` for a path
 * that is not one of them.
 */
export const QUERY_PATHS = {
  messages: '/admin/messages',
  history: '/admin/history',
} as const

export type QueryRouteName = 'admin_messages' | 'admin_message' | 'admin_history'

const HOUR_MS = 3_600_000
const MAX_HISTORY_SPAN_MS = 25 * HOUR_MS

function bad(message: string): QmqError {
  return new QmqError('QMQ_ERR_INVALID_ARGUMENT', message)
}

/** A time parameter: ms since the epoch or an ISO 8601 date. */
function time(q: URLSearchParams, name: string, dflt: number): number {
  const v = q.get(name)
  if (v === null || v === '') return dflt
  const n = /^\d+$/.test(v) ? Number(v) : Date.parse(v)
  if (!Number.isSafeInteger(n) || n < 0) throw bad(`${name} must be ms since the epoch or an ISO 8601 time`)
  return n
}

function limit(q: URLSearchParams): number {
  const v = q.get('limit')
  if (v === null || v === '') return DEFAULT_QUERY_LIMIT
  const n = Number(v)
  if (!Number.isSafeInteger(n) || n < 1 || n > MAX_QUERY_LIMIT)
    throw bad(`limit must be 1 to ${MAX_QUERY_LIMIT}`)
  return n
}

function optSubject(q: URLSearchParams): string | undefined {
  const s = q.get('subject')
  return s === null || s === '' ? undefined : validateRouteSubject(s).subject
}

/**
 * A view without what the producer put in the message (body, its encoding, properties): what an
 * unauthenticated reader of a metaserver with an admin token gets. Ids, keys, tags, sizes, the app
 * and host that sent it and the trace stay (the same reader sees them in the console's lists).
 */
export function withholdBody(m: MessageView): MessageView {
  const { body: _b, bodyEncoding: _e, properties: _p, ...rest } = m
  return { ...rest, bodyWithheld: true }
}

function withheld<T extends { messages: MessageView[] }>(r: T, bodies: boolean): T {
  return bodies ? r : { ...r, messages: r.messages.map(withholdBody) }
}

export async function handleQueryRoute(
  fanout: QueryFanout,
  method: string,
  path: string,
  query: URLSearchParams,
  setRoute: (r: QueryRouteName) => void,
  decodeSegment: (s: string) => string,
  mayReadBodies: () => boolean,
): Promise<{ status: number; body: unknown } | undefined> {
  const isMessages = path === QUERY_PATHS.messages
  const isOne = path.startsWith(`${QUERY_PATHS.messages}/`)
  const isHistory = path === QUERY_PATHS.history
  if (!isMessages && !isOne && !isHistory) return undefined
  setRoute(isMessages ? 'admin_messages' : isOne ? 'admin_message' : 'admin_history')
  if (method !== 'GET')
    throw new QmqError('QMQ_ERR_METHOD_NOT_ALLOWED', `${method} is not allowed on ${path}`)
  const now = Date.now()
  const bodies = isHistory || mayReadBodies()
  if (isOne) {
    const id = decodeSegment(path.slice(QUERY_PATHS.messages.length + 1))
    if (id === '' || id.includes('/') || Buffer.byteLength(id) > 128)
      throw bad('message id must be 1 to 128 bytes')
    return { status: 200, body: withheld(await fanout.message(id, optSubject(query)), bodies) }
  }
  if (isMessages) {
    const key = query.get('key')
    const subject = optSubject(query)
    if (key !== null && key !== '') {
      if (Buffer.byteLength(key) > 128 || key.includes(' '))
        throw bad('key must be 1 to 128 bytes without spaces')
      return { status: 200, body: withheld(await fanout.key(key, limit(query), subject), bodies) }
    }
    if (subject === undefined) throw bad('give subject (with from, to) or key')
    const to = time(query, 'to', now)
    const from = time(query, 'from', to - HOUR_MS)
    if (from > to) throw bad('from must not be after to')
    const cursor = query.get('cursor')
    return {
      status: 200,
      body: withheld(
        await fanout.list(
          subject,
          from,
          to,
          limit(query),
          cursor === null || cursor === '' ? undefined : cursor,
        ),
        bodies,
      ),
    }
  }
  const to = time(query, 'to', now)
  const from = Math.max(time(query, 'from', to - HOUR_MS), to - MAX_HISTORY_SPAN_MS)
  if (from > to) throw bad('from must not be after to')
  const group = query.get('consumerGroup')
  const server = query.get('server')
  return {
    status: 200,
    body: await fanout.history({
      from,
      to,
      subject: optSubject(query),
      consumerGroup: group === null ? undefined : group === '' ? '' : validateGroup(group),
      server: server === null || server === '' ? undefined : validateGroup(server),
    }),
  }
}
