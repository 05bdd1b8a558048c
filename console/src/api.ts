import type {
  ConsumerGroupRow,
  DeadLetterRow,
  DelayGroupRow,
  GroupError,
  Page,
} from '../../src/metaserver/console/api'
import type { ClientInfo, GroupInfo, SubjectInfo } from '../../src/common/meta/types'

/**
 * The console's calls to the metaserver (/console/api/*, same origin). The admin token lives in
 * sessionStorage (this tab only, gone when it closes) and travels only in the Authorization header
 * of admin writes and of the reads that show message bodies: never in an address, never in a query string.
 */
export type {
  GroupError,
  ConsumerGroupRow,
  DeadLetterRow,
  DelayGroupRow,
  Page,
  ClientInfo,
  GroupInfo,
  SubjectInfo,
}

const TOKEN_KEY = 'qmq.console.adminToken'

export function getToken(): string | undefined {
  try {
    return sessionStorage.getItem(TOKEN_KEY) ?? undefined
  } catch {
    return memoryToken
  }
}
let memoryToken: string | undefined
export function setToken(token: string | undefined): void {
  memoryToken = token
  try {
    if (token === undefined) sessionStorage.removeItem(TOKEN_KEY)
    else sessionStorage.setItem(TOKEN_KEY, token)
  } catch {
    // storage disabled: the token stays in memory for this page
  }
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message)
  }
}

async function call<T>(
  method: 'GET' | 'POST',
  path: string,
  params?: Record<string, string | number | undefined>,
  body?: unknown,
  /** Send the admin token on a read too (reads that show message bodies and properties with it). */
  withToken = false,
): Promise<T> {
  const q = new URLSearchParams()
  for (const [k, v] of Object.entries(params ?? {})) if (v !== undefined && v !== '') q.set(k, String(v))
  const headers: Record<string, string> = { accept: 'application/json' }
  if (method === 'POST') headers['content-type'] = 'application/json'
  if (method === 'POST' || withToken) {
    const token = getToken()
    if (token !== undefined) headers.authorization = `Bearer ${token}`
  }
  const res = await fetch(`/console/api/${path}${q.size > 0 ? `?${q}` : ''}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: 'omit',
    cache: 'no-store',
  })
  const text = await res.text()
  let json: unknown
  try {
    json = text === '' ? undefined : JSON.parse(text)
  } catch {
    throw new ApiError(res.status, 'QMQ_ERR_INTERNAL', `the metaserver answered ${res.status} with no JSON`)
  }
  if (!res.ok) {
    const e = (json ?? {}) as { code?: string; message?: string }
    throw new ApiError(res.status, e.code ?? 'QMQ_ERR_INTERNAL', e.message ?? `HTTP ${res.status}`)
  }
  return json as T
}

export interface Overview {
  groups: GroupInfo[]
  counts: {
    groups: { broker: number; delay: number }
    alive: { broker: number; delay: number }
    subjects: number
    clients: number
  }
  serverTime: number
}

export const api = {
  overview: () => call<Overview>('GET', 'overview'),
  subjects: (q: string, offset: number, limit: number) =>
    call<Page<SubjectInfo & { consumerGroups: number; clientsOnline: number }>>('GET', 'subjects', {
      q,
      offset,
      limit,
    }),
  subject: (subject: string) =>
    call<{
      subject: SubjectInfo
      clients: ClientInfo[]
      consumerGroups: ConsumerGroupRow[]
      errors: GroupError[]
    }>('GET', 'subject', {
      subject,
    }),
  consumerGroups: (q: string, offset: number, limit: number, fresh: boolean, withDead = false) =>
    call<Page<ConsumerGroupRow> & { errors: GroupError[] }>('GET', 'consumer-groups', {
      q,
      offset,
      limit,
      fresh: fresh ? 1 : undefined,
      dead: withDead ? 1 : undefined,
    }),
  resetCursor: (subject: string, group: string, to: string | number) =>
    call<{ brokerGroups: string[]; position: string }>('POST', 'reset-cursor', undefined, {
      subject,
      group,
      to,
    }),
  /** `after`: per broker group, list after this sequence (the next page). */
  deadLetters: (subject: string, group: string, limit: number, after: Record<string, number> = {}) =>
    call<{ items: DeadLetterRow[]; brokerGroups: string[]; errors: GroupError[] }>(
      'GET',
      'dead-letters',
      {
        subject,
        group,
        limit,
        ...Object.fromEntries(Object.entries(after).map(([b, seq]) => [`after.${b}`, seq])),
      },
      undefined,
      true,
    ),
  redrive: (subject: string, group: string, brokerGroup: string, sequences: number[]) =>
    call<{ redriven: number }>('POST', 'redrive', undefined, { subject, group, brokerGroup, sequences }),
  redriveAll: (subject: string, group: string) =>
    call<{ redriven: number }>('POST', 'redrive', undefined, { subject, group, all: true }),
  delayGroups: () => call<{ groups: DelayGroupRow[] }>('GET', 'delay-groups'),
}
