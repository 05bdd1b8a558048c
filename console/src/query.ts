import { ApiError, getToken } from './api'

/**
 * The metaserver's message query and history API (docs/query.md): GET /admin/messages/:id,
 * /admin/messages?subject=|key=, /admin/history. Reads of the same origin; the admin token, when
 * the console holds one, goes along (Authorization header only): a metaserver with an admin token
 * shows message bodies and properties only to it (`bodyWithheld` otherwise).
 */
// The answers' types are the server's own (type-only: nothing of src/ enters the bundle).
export type {
  ConsumerView,
  FanoutError as GroupError,
  HistoryPoint,
  HistoryResult as HistoryAnswer,
  ListResult as MessageList,
  MessageResult as MessageAnswer,
  MessageView,
  TraceEventView as TraceEvent,
} from '../../src/common/protocol/query'

import type {
  HistoryResult as HistoryAnswer,
  ListResult as MessageList,
  MessageResult as MessageAnswer,
} from '../../src/common/protocol/query'

async function get<T>(path: string, params: Record<string, string | number | undefined> = {}): Promise<T> {
  const q = new URLSearchParams()
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== '') q.set(k, String(v))
  const headers: Record<string, string> = { accept: 'application/json' }
  const token = getToken()
  if (token !== undefined) headers.authorization = `Bearer ${token}`
  const res = await fetch(`${path}${q.size > 0 ? `?${q}` : ''}`, {
    headers,
    credentials: 'omit',
    cache: 'no-store',
  })
  const text = await res.text()
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch {
    throw new ApiError(res.status, 'QMQ_ERR_INTERNAL', `the metaserver answered ${res.status} with no JSON`)
  }
  if (!res.ok) {
    const e = json as { code?: string; message?: string }
    throw new ApiError(res.status, e.code ?? 'QMQ_ERR_INTERNAL', e.message ?? `HTTP ${res.status}`)
  }
  return json as T
}

/** True when the answer says the endpoint does not exist (a metaserver without the query API). */
export function isMissingEndpoint(err: unknown): boolean {
  return (
    err instanceof ApiError &&
    err.status === 404 &&
    err.code === 'QMQ_ERR_NOT_FOUND' &&
    err.message.startsWith('no such endpoint')
  )
}

export const query = {
  message: (id: string, subject?: string) =>
    get<MessageAnswer>(`/admin/messages/${encodeURIComponent(id)}`, { subject }),
  bySubject: (
    subject: string,
    from: number | undefined,
    to: number | undefined,
    limit: number,
    cursor?: string,
  ) => get<MessageList>('/admin/messages', { subject, from, to, limit, cursor }),
  byKey: (key: string, subject: string | undefined, limit: number) =>
    get<MessageList>('/admin/messages', { key, subject, limit }),
  history: (p: { subject?: string; consumerGroup?: string; server?: string; from: number; to: number }) =>
    get<HistoryAnswer>('/admin/history', p),
}
