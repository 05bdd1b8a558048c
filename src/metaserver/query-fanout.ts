import { Connection } from '../client/transport/connection'
import type { AuthRequest } from '../common/protocol/auth'
import { QmqError, toQmqError } from '../common/errors'
import type { GroupInfo } from '../common/meta/types'
import { RequestCode } from '../common/protocol/codes'
import type { Frame } from '../common/protocol/frame'
import {
  compareEvents,
  decodeQueryAnswer,
  encodeQueryRequest,
  type FanoutError,
  type HistoryAnswer,
  type HistoryResult,
  type HistorySeries,
  type ListAnswer,
  type ListResult,
  type MessageAnswer,
  type MessageResult,
  type MessageView,
  type QueryRequest,
  type TraceEventView,
} from '../common/protocol/query'
import { mergeHistory } from '../broker/store/history'
import type { ClientTlsOptions } from '../common/tls'

/**
 * The metaserver's side of message query, trace and history (docs/query.md): asks every alive broker
 * and delay group (ADMIN_QUERY, one connection per address, kept) and merges the answers. A group
 * that does not answer within `timeoutMs` (or fails) is reported in `errors`; the others still count.
 */
export const QUERY_FANOUT_TIMEOUT_MS = 5_000
const MAX_CONNECTIONS = 1_000

export interface QueryFanoutOptions {
  /** Every group the metaserver knows (alive or not). */
  groups: () => GroupInfo[]
  /** The broker groups of a subject's route; undefined when the subject has none. */
  routeOf: (subject: string) => string[] | undefined
  timeoutMs?: number
  /** TLS towards brokers and delay servers (the metaserver's client side of its TLS files). */
  tls?: ClientTlsOptions | undefined
  /** AUTH sent first on every connection (the cluster app and secret), for servers with auth on. */
  auth?: AuthRequest | undefined
  /** Sends one request (tests inject; default: a kept Connection per address). */
  request?: (address: string, code: number, body: Buffer) => Promise<Frame>
}

interface Target {
  name: string
  kind: 'broker' | 'delay'
  address: string
}

export class QueryFanout {
  private readonly connections = new Map<string, Connection>()
  private readonly timeoutMs: number
  private readonly send: (address: string, code: number, body: Buffer) => Promise<Frame>

  constructor(private readonly opts: QueryFanoutOptions) {
    this.timeoutMs = opts.timeoutMs ?? QUERY_FANOUT_TIMEOUT_MS
    this.send = opts.request ?? ((address, code, body) => this.connection(address).request(code, body))
  }

  private connection(address: string): Connection {
    let c = this.connections.get(address)
    if (c === undefined) {
      if (this.connections.size >= MAX_CONNECTIONS) {
        const [oldest] = this.connections
        if (oldest) {
          this.connections.delete(oldest[0])
          oldest[1].close().catch(() => undefined)
        }
      }
      c = new Connection({
        address,
        requestTimeoutMs: this.timeoutMs,
        connectTimeoutMs: this.timeoutMs,
        ...(this.opts.tls !== undefined ? { tls: this.opts.tls } : {}),
        ...(this.opts.auth !== undefined ? { auth: this.opts.auth } : {}),
      })
      this.connections.set(address, c)
    }
    return c
  }

  /** Alive groups to ask: brokers (only those of `subject`'s route when given) and delay groups. */
  private targets(opts: {
    subject?: string | undefined
    server?: string | undefined
    delay?: boolean
  }): Target[] {
    const route = opts.subject !== undefined ? this.opts.routeOf(opts.subject) : undefined
    const out: Target[] = []
    for (const g of this.opts.groups()) {
      if (!g.alive || g.address === '') continue
      if (opts.server !== undefined && g.name !== opts.server) continue
      if (g.kind === 'delay') {
        if (opts.delay !== false) out.push({ name: g.name, kind: 'delay', address: g.address })
        continue
      }
      if (route !== undefined && !route.includes(g.name)) continue
      out.push({ name: g.name, kind: 'broker', address: g.address })
    }
    return out.sort((a, b) => a.name.localeCompare(b.name))
  }

  private async ask<T>(
    targets: readonly Target[],
    req: QueryRequest | ((t: Target) => QueryRequest | undefined),
  ): Promise<{ answers: { target: Target; answer: T }[]; errors: FanoutError[] }> {
    const errors: FanoutError[] = []
    const answers: { target: Target; answer: T }[] = []
    await Promise.all(
      targets.map(async (t) => {
        const r = typeof req === 'function' ? req(t) : req
        if (r === undefined) return
        try {
          const frame = await this.send(t.address, RequestCode.ADMIN_QUERY, encodeQueryRequest(r))
          answers.push({ target: t, answer: decodeQueryAnswer(frame.body) as T })
        } catch (err) {
          const e = toQmqError(err)
          errors.push({ group: t.name, code: e.code, message: e.message })
        }
      }),
    )
    answers.sort((a, b) => a.target.name.localeCompare(b.target.name))
    errors.sort((a, b) => a.group.localeCompare(b.group))
    return { answers, errors }
  }

  async message(id: string, subject?: string): Promise<MessageResult> {
    const { answers, errors } = await this.ask<MessageAnswer>(this.targets({ subject }), {
      op: 'message',
      id,
    })
    const messages: MessageView[] = []
    const events: TraceEventView[] = []
    for (const { answer } of answers) {
      messages.push(...answer.messages)
      events.push(...answer.events)
    }
    // Stable: ties keep server order (answers are sorted by server name).
    events.sort(compareEvents)
    return { id, found: messages.length > 0 || events.length > 0, messages, events, errors }
  }

  /**
   * Newest first over every broker group of the subject. The cursor is base64url JSON
   * `{ <broker group>: <sequence to continue below> }`: each group's sequences grow with time, so a
   * page takes the newest `limit` of every group's next `limit` and remembers where each stopped.
   */
  async list(subject: string, from: number, to: number, limit: number, cursor?: string): Promise<ListResult> {
    const before = cursor === undefined ? {} : decodeCursor(cursor)
    const targets = this.targets({ subject, delay: false })
    const { answers, errors } = await this.ask<ListAnswer>(targets, (t) => {
      const b = before[t.name]
      if (b !== undefined && b <= 0) return undefined // that group is done
      return { op: 'list', subject, from, to, limit, ...(b !== undefined ? { beforeSequence: b } : {}) }
    })
    const all: MessageView[] = []
    for (const { answer } of answers) all.push(...answer.messages)
    all.sort((a, b) => b.storedAt - a.storedAt || a.server.localeCompare(b.server) || b.sequence - a.sequence)
    const page = all.slice(0, limit)
    const next: Record<string, number> = { ...before }
    let more = false
    for (const { target, answer } of answers) {
      const taken = page.filter((m) => m.server === target.name)
      if (taken.length > 0) next[target.name] = Math.min(...taken.map((m) => m.sequence))
      // Exhausted: it answered less than a page and all of it was taken (0 = nothing below).
      const exhausted = answer.messages.length < limit && taken.length === answer.messages.length
      if (exhausted) next[target.name] = 0
      if ((next[target.name] ?? 1) > 0) more = true
    }
    const result: ListResult = { messages: page, errors }
    if (more) result.nextCursor = encodeCursor(next)
    return result
  }

  async key(key: string, limit: number, subject?: string): Promise<ListResult> {
    const req: QueryRequest = { op: 'key', key, limit, ...(subject !== undefined ? { subject } : {}) }
    const { answers, errors } = await this.ask<ListAnswer>(this.targets({ subject, delay: false }), req)
    const all: MessageView[] = []
    for (const { answer } of answers) all.push(...answer.messages)
    all.sort((a, b) => b.storedAt - a.storedAt)
    return { messages: all.slice(0, limit), errors }
  }

  async history(q: {
    from: number
    to: number
    subject?: string | undefined
    consumerGroup?: string | undefined
    server?: string | undefined
  }): Promise<HistoryResult> {
    const req: QueryRequest = {
      op: 'history',
      from: q.from,
      to: q.to,
      ...(q.subject !== undefined ? { subject: q.subject } : {}),
      ...(q.consumerGroup !== undefined ? { consumerGroup: q.consumerGroup } : {}),
    }
    const { answers, errors } = await this.ask<HistoryAnswer>(this.targets({ server: q.server }), req)
    const parts: HistorySeries[][] = answers.map((a) => a.answer.series)
    return {
      from: q.from,
      to: q.to,
      series: mergeHistory(parts),
      truncated: answers.some((a) => a.answer.truncated),
      errors,
    }
  }

  async close(): Promise<void> {
    await Promise.all([...this.connections.values()].map((c) => c.close().catch(() => undefined)))
    this.connections.clear()
  }
}

function encodeCursor(c: Record<string, number>): string {
  return Buffer.from(JSON.stringify(c), 'utf8').toString('base64url')
}

function decodeCursor(s: string): Record<string, number> {
  const bad = () => new QmqError('QMQ_ERR_INVALID_ARGUMENT', 'cursor is not one this metaserver gave')
  if (s.length > 16_384) throw bad()
  let v: unknown
  try {
    v = JSON.parse(Buffer.from(s, 'base64url').toString('utf8'))
  } catch {
    throw bad()
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw bad()
  const out: Record<string, number> = {}
  for (const [k, n] of Object.entries(v)) {
    if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) throw bad()
    out[k] = n
  }
  return out
}
