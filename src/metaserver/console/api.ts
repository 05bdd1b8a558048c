import { Connection } from '../../client/transport/connection'
import { CLUSTER_APP } from '../../common/auth/credentials'
import { QmqError, toQmqError } from '../../common/errors'
import type { ClientInfo, GroupInfo, SubjectInfo } from '../../common/meta/types'
import { validateGroup, validateSubject } from '../../common/names'
import {
  type BacklogEntry,
  decodeBacklogResponse,
  decodeDlqListResponse,
  encodeBacklogRequest,
  encodeDlqListRequest,
  encodeDlqRedriveRequest,
  encodeResetCursorRequest,
  MAX_DLQ_LIST,
  ResetPosition,
  type ResetPositionValue,
} from '../../common/protocol/admin'
import { RequestCode } from '../../common/protocol/codes'
import { decodeCountResponse } from '../../common/protocol/commands'
import {
  type DelayPendingBucket,
  decodeDelayPendingResponse,
  encodeDelayPendingRequest,
} from '../../common/protocol/delay-admin'
import type { Frame } from '../../common/protocol/frame'
import type { ClientTlsOptions } from '../../common/tls'
import type { MetaService } from '../service'

/**
 * What the web console shows, gathered by the metaserver: its own state (groups, routes, clients)
 * plus the brokers' and delay servers' admin requests (backlog, cursors, dead letters, pending delayed
 * messages), fanned out over their TCP ports. Lists are searched and paged here, so a page with
 * 10,000 subjects or consumer groups sends the browser one page of them.
 *
 * Admin writes (cursor reset, redrive) are authorised by the HTTP layer (the metaserver's admin
 * token) before they get here; the same token is passed on to the brokers, which check their own.
 */

/** Largest page a list endpoint answers. */
export const MAX_PAGE = 500
export const DEFAULT_PAGE = 50
/** The brokers' backlog answers are reused this long (ms): paging through groups asks them once. */
export const BACKLOG_CACHE_MS = 2_000
/** Per-request bound on a broker or delay server admin request (ms). */
export const FANOUT_TIMEOUT_MS = 5_000
/** A dead letter's body is shown up to this many characters (the rest is cut, and said so). */
export const BODY_PREVIEW_CHARS = 4_096

export interface Page<T> {
  total: number
  offset: number
  limit: number
  items: T[]
}

/** A broker or delay group that did not answer (the rest of the answer is still good). */
export interface GroupError {
  group: string
  code: string
  message: string
}

/** Runs `fn` on every group at once; answers what succeeded, and who failed with what. */
async function fanout<T>(
  groups: readonly GroupInfo[],
  fn: (g: GroupInfo) => Promise<T>,
): Promise<{ values: T[]; errors: GroupError[] }> {
  const settled = await Promise.allSettled(groups.map(fn))
  const values: T[] = []
  const errors: GroupError[] = []
  settled.forEach((s, i) => {
    if (s.status === 'fulfilled') values.push(s.value)
    else {
      const e = toQmqError(s.reason)
      errors.push({ group: groups[i]?.name ?? '', code: e.code, message: e.message })
    }
  })
  return { values, errors }
}

export interface PageQuery {
  q: string
  offset: number
  limit: number
}

/** One consumer group of one subject, summed over the broker groups of the subject. */
export interface ConsumerGroupRow {
  subject: string
  group: string
  pending: number
  inFlight: number
  retrying: number
  deadLettered: number
  consumersOnline: number
  brokers: (BacklogEntry & { brokerGroup: string })[]
}

export interface DeadLetterRow {
  brokerGroup: string
  sequence: number
  deliveryCount: number
  deadAt: number
  id: string
  createdAt: number
  tags: string[]
  /** Absent when withheld (see bodyWithheld). */
  properties?: Record<string, string>
  /** Text body (cut at BODY_PREVIEW_CHARS), `base64:...` for a binary one, undefined for none or withheld. */
  body?: string | undefined
  bodyTruncated: boolean
  bodyBytes: number
  /**
   * Set when the metaserver has an admin token and the request did not carry it: properties and body
   * are left out (as the query API does), only their size is said.
   */
  bodyWithheld?: true
}

export interface DelayGroupRow {
  name: string
  alive: boolean
  address: string
  /** Pending messages per schedule bucket; undefined with `error` when the server did not answer. */
  buckets: DelayPendingBucket[] | undefined
  pending: number
  error: string | undefined
}

function page<T>(all: readonly T[], p: PageQuery): Page<T> {
  return {
    total: all.length,
    offset: p.offset,
    limit: p.limit,
    items: all.slice(p.offset, p.offset + p.limit),
  }
}

/** Parses `to` (earliest | latest | ISO time | ms since epoch) as the CLI's reset-cursor --to does. */
export function parseResetTarget(to: unknown): { position: ResetPositionValue; timeMs: number } {
  if (to === 'earliest') return { position: ResetPosition.EARLIEST, timeMs: 0 }
  if (to === 'latest') return { position: ResetPosition.LATEST, timeMs: 0 }
  const t =
    typeof to === 'number'
      ? to
      : typeof to === 'string' && /^\d+$/.test(to)
        ? Number(to)
        : Date.parse(String(to))
  if (typeof to !== 'number' && typeof to !== 'string') {
    throw new QmqError(
      'QMQ_ERR_INVALID_ARGUMENT',
      'to must be earliest, latest, an ISO time or ms since epoch',
    )
  }
  if (!Number.isSafeInteger(t) || t < 0)
    throw new QmqError(
      'QMQ_ERR_INVALID_ARGUMENT',
      `to must be earliest, latest, an ISO time or ms since epoch (got ${JSON.stringify(String(to).slice(0, 60))})`,
    )
  return { position: ResetPosition.TIMESTAMP, timeMs: t }
}

export class ConsoleApi {
  private readonly connections = new Map<string, Connection>()
  private backlogCache:
    | { at: number; rows: Promise<{ rows: ConsumerGroupRow[]; errors: GroupError[] }> }
    | undefined
  private closed = false

  constructor(
    private readonly service: MetaService,
    /** Sent to delay servers, whose admin requests carry the cluster secret. */
    private readonly clusterSecret: string,
    private readonly now: () => number = Date.now,
    /** TLS towards brokers and delay servers (the metaserver's client side of its TLS files). */
    private readonly tls: ClientTlsOptions | undefined = undefined,
  ) {}

  private request(address: string, code: number, body: Buffer): Promise<Frame> {
    if (this.closed) return Promise.reject(new QmqError('QMQ_ERR_CLIENT_CLOSED', 'the metaserver is closing'))
    let c = this.connections.get(address)
    if (c === undefined) {
      c = new Connection({
        address,
        requestTimeoutMs: FANOUT_TIMEOUT_MS,
        connectTimeoutMs: FANOUT_TIMEOUT_MS,
        ...(this.tls !== undefined ? { tls: this.tls } : {}),
        // Brokers and delay servers with auth on take requests only after an AUTH: the cluster app.
        auth: { appCode: CLUSTER_APP, token: this.clusterSecret },
      })
      this.connections.set(address, c)
    }
    return c.request(code, body)
  }

  private aliveGroups(kind: 'broker' | 'delay'): GroupInfo[] {
    return this.service.listGroups().filter((g) => g.kind === kind && g.alive && g.address !== '')
  }

  /** Alive broker groups of a subject's route (every alive broker group for an unknown subject: none). */
  private brokersOf(subject: string): GroupInfo[] {
    let route: string[]
    try {
      route = this.service.getSubject(subject).groups
    } catch (err) {
      if (err instanceof QmqError && err.code === 'QMQ_ERR_NOT_FOUND') return []
      throw err
    }
    return this.aliveGroups('broker').filter((g) => route.includes(g.name))
  }

  overview(): {
    groups: GroupInfo[]
    counts: ReturnType<MetaService['counts']>
    serverTime: number
  } {
    return {
      groups: this.service.listGroups(),
      counts: this.service.counts(),
      serverTime: this.now(),
    }
  }

  subjects(p: PageQuery): Page<SubjectInfo & { consumerGroups: number; clientsOnline: number }> {
    const q = p.q.toLowerCase()
    const all = this.service.listSubjects().filter((s) => q === '' || s.subject.toLowerCase().includes(q))
    const out = page(all, p)
    return {
      ...out,
      items: out.items.map((s) => {
        const clients = this.service.listClients({ subject: s.subject }).filter((c) => c.online)
        const groups = new Set(clients.filter((c) => c.consumerGroup !== '').map((c) => c.consumerGroup))
        return { ...s, consumerGroups: groups.size, clientsOnline: clients.length }
      }),
    }
  }

  async subject(subject: string): Promise<{
    subject: SubjectInfo
    clients: ClientInfo[]
    consumerGroups: ConsumerGroupRow[]
    errors: GroupError[]
  }> {
    const info = this.service.getSubject(validateSubject(subject))
    const clients = this.service.listClients({ subject: info.subject })
    const { rows, errors } = await this.collectBacklog(info.subject, this.brokersOf(info.subject))
    return { subject: info, clients, consumerGroups: rows, errors }
  }

  /** Backlog of every (subject, group) on every alive broker, summed per (subject, group). */
  private async collectBacklog(
    subject: string | undefined,
    brokers: GroupInfo[],
  ): Promise<{ rows: ConsumerGroupRow[]; errors: GroupError[] }> {
    const { values: answers, errors } = await fanout(brokers, async (b) => {
      const frame = await this.request(
        b.address,
        RequestCode.ADMIN_BACKLOG,
        encodeBacklogRequest({ subject }),
      )
      return decodeBacklogResponse(frame.body).map((e) => ({ ...e, brokerGroup: b.name }))
    })
    const online = new Map<string, number>()
    for (const c of this.service.listClients(subject === undefined ? { kind: 'consumer' } : { subject })) {
      if (!c.online || c.consumerGroup === '') continue
      const key = `${c.subject}\u0000${c.consumerGroup}`
      online.set(key, (online.get(key) ?? 0) + 1)
    }
    const rows = new Map<string, ConsumerGroupRow>()
    for (const e of answers.flat()) {
      const key = `${e.subject}\u0000${e.group}`
      let row = rows.get(key)
      if (row === undefined) {
        row = {
          subject: e.subject,
          group: e.group,
          pending: 0,
          inFlight: 0,
          retrying: 0,
          deadLettered: 0,
          consumersOnline: online.get(key) ?? 0,
          brokers: [],
        }
        rows.set(key, row)
      }
      row.pending += e.pending
      row.inFlight += e.inFlight
      row.retrying += e.retrying
      row.deadLettered += e.deadLettered
      row.brokers.push(e)
    }
    const sorted = [...rows.values()].sort((a, b) =>
      a.subject === b.subject ? (a.group < b.group ? -1 : 1) : a.subject < b.subject ? -1 : 1,
    )
    return { rows: sorted, errors }
  }

  /** `withDead`: only groups that have dead letters. */
  async consumerGroups(
    p: PageQuery & { fresh?: boolean; withDead?: boolean },
  ): Promise<Page<ConsumerGroupRow> & { errors: GroupError[] }> {
    const now = this.now()
    const cached = this.backlogCache
    let rows: Promise<{ rows: ConsumerGroupRow[]; errors: GroupError[] }>
    if (cached !== undefined && p.fresh !== true && now - cached.at < BACKLOG_CACHE_MS) rows = cached.rows
    else {
      rows = this.collectBacklog(undefined, this.aliveGroups('broker'))
      this.backlogCache = { at: now, rows }
      rows.catch(() => {
        if (this.backlogCache?.rows === rows) this.backlogCache = undefined
      })
    }
    const q = p.q.toLowerCase()
    const answer = await rows
    const all = answer.rows.filter(
      (r) =>
        (q === '' || r.subject.toLowerCase().includes(q) || r.group.toLowerCase().includes(q)) &&
        (p.withDead !== true || r.deadLettered > 0),
    )
    return { ...page(all, p), errors: answer.errors }
  }

  async resetCursor(
    body: { subject: unknown; group: unknown; to: unknown },
    token: string,
  ): Promise<{ subject: string; group: string; brokerGroups: string[]; position: string; timeMs: number }> {
    const subject = validateSubject(String(body.subject ?? ''))
    const group = validateGroup(String(body.group ?? ''))
    const { position, timeMs } = parseResetTarget(body.to)
    const brokers = this.brokersOf(subject)
    if (brokers.length === 0)
      throw new QmqError('QMQ_ERR_NOT_FOUND', `no alive broker group serves ${subject}`)
    for (const b of brokers) {
      await this.request(
        b.address,
        RequestCode.ADMIN_RESET_CURSOR,
        encodeResetCursorRequest({ subject, group, position, timeMs, token }),
      )
    }
    this.backlogCache = undefined
    const name = Object.keys(ResetPosition).find(
      (k) => ResetPosition[k as keyof typeof ResetPosition] === position,
    )
    return { subject, group, brokerGroups: brokers.map((b) => b.name), position: name ?? '', timeMs }
  }

  async deadLetters(q: {
    subject: string
    group: string
    limit: number
    /** Per broker group: list after this sequence. */
    after: Record<string, number>
    /** Whether properties and bodies may be shown (the admin token, when one is configured). */
    withBodies: boolean
  }): Promise<{ items: DeadLetterRow[]; brokerGroups: string[]; errors: GroupError[] }> {
    const subject = validateSubject(q.subject)
    const group = validateGroup(q.group)
    const brokers = this.brokersOf(subject)
    const { values: lists, errors } = await fanout(brokers, async (b) => {
      const frame = await this.request(
        b.address,
        RequestCode.ADMIN_DLQ_LIST,
        encodeDlqListRequest({ subject, group, limit: q.limit, afterSequence: q.after[b.name] ?? -1 }),
      )
      return decodeDlqListResponse(frame.body).map((d): DeadLetterRow => {
        const body = d.record.body
        let text: string | undefined
        let bytes = 0
        if (typeof body === 'string') {
          text = body
          bytes = Buffer.byteLength(body)
        } else if (body !== undefined) {
          text = `base64:${body.toString('base64')}`
          bytes = body.length
        }
        const cut = text !== undefined && text.length > BODY_PREVIEW_CHARS
        const row: DeadLetterRow = {
          brokerGroup: b.name,
          sequence: d.sequence,
          deliveryCount: d.deliveryCount,
          deadAt: d.deadAt,
          id: d.record.id,
          createdAt: d.record.createdAt,
          tags: d.record.tags,
          bodyTruncated: q.withBodies && cut,
          bodyBytes: bytes,
        }
        if (!q.withBodies) return { ...row, bodyWithheld: true }
        return {
          ...row,
          properties: Object.fromEntries(d.record.properties),
          body: cut ? text?.slice(0, BODY_PREVIEW_CHARS) : text,
        }
      })
    })
    return {
      items: lists.flat().sort((a, b) => b.deadAt - a.deadAt),
      brokerGroups: brokers.map((b) => b.name),
      errors,
    }
  }

  async redrive(
    body: { subject: unknown; group: unknown; brokerGroup?: unknown; sequences?: unknown; all?: unknown },
    token: string,
  ): Promise<{ redriven: number }> {
    const subject = validateSubject(String(body.subject ?? ''))
    const group = validateGroup(String(body.group ?? ''))
    const all = body.all === true
    let sequences: number[] | undefined
    if (!all) {
      if (
        !Array.isArray(body.sequences) ||
        body.sequences.length === 0 ||
        body.sequences.length > MAX_DLQ_LIST ||
        !body.sequences.every((s) => Number.isSafeInteger(s) && (s as number) >= 0)
      )
        throw new QmqError(
          'QMQ_ERR_INVALID_ARGUMENT',
          `sequences must be 1 to ${MAX_DLQ_LIST} whole numbers (or all: true)`,
        )
      sequences = body.sequences as number[]
      if (typeof body.brokerGroup !== 'string')
        throw new QmqError(
          'QMQ_ERR_INVALID_ARGUMENT',
          'brokerGroup is required with sequences (they are per broker group)',
        )
    }
    const brokers = this.brokersOf(subject).filter((b) => all || b.name === body.brokerGroup)
    if (brokers.length === 0)
      throw new QmqError('QMQ_ERR_NOT_FOUND', `no alive broker group of ${subject} to redrive on`)
    let redriven = 0
    for (const b of brokers) {
      const frame = await this.request(
        b.address,
        RequestCode.ADMIN_DLQ_REDRIVE,
        encodeDlqRedriveRequest({ subject, group, sequences, token }),
      )
      redriven += decodeCountResponse(frame.body)
    }
    this.backlogCache = undefined
    return { redriven }
  }

  async delayGroups(): Promise<DelayGroupRow[]> {
    const groups = this.service.listGroups().filter((g) => g.kind === 'delay')
    return Promise.all(
      groups.map(async (g): Promise<DelayGroupRow> => {
        const row: DelayGroupRow = {
          name: g.name,
          alive: g.alive,
          address: g.address,
          buckets: undefined,
          pending: 0,
          error: undefined,
        }
        if (!g.alive || g.address === '') {
          row.error = 'not alive'
          return row
        }
        try {
          const frame = await this.request(
            g.address,
            RequestCode.ADMIN_DELAY_PENDING,
            encodeDelayPendingRequest(this.clusterSecret),
          )
          row.buckets = decodeDelayPendingResponse(frame.body)
          row.pending = row.buckets.reduce((n, b) => n + b.pending, 0)
        } catch (err) {
          row.error = err instanceof Error ? err.message : String(err)
        }
        return row
      }),
    )
  }

  async close(): Promise<void> {
    this.closed = true
    await Promise.all([...this.connections.values()].map((c) => c.close()))
    this.connections.clear()
  }
}
