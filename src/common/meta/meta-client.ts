import { Pool } from 'undici'
import { isErrorCode } from '../error-codes'
import type { AppCredential } from '../auth/credentials'
import type { Grant } from '../auth/grants'
import { QmqError } from '../errors'
import type { ClientTlsOptions } from '../tls'
import {
  type AddressesResponse,
  APP_CODE_HEADER,
  APP_TOKEN_HEADER,
  CLUSTER_SECRET_HEADER,
  type ClientHeartbeatRequest,
  type ClientHeartbeatResponse,
  type ClientInfo,
  type ClientKind,
  type ConsumersResponse,
  type GroupInfo,
  type GroupsResponse,
  type HealthResponse,
  META_PATHS,
  type ReadOnlyRequest,
  type ReadOnlyResponse,
  type ReadOnlySetting,
  type RouteQuery,
  type RouteResponse,
  type ServerHeartbeatRequest,
  type ServerHeartbeatResponse,
  type SubjectInfo,
  type SubjectsResponse,
} from './types'

import type { HistoryResult, ListResult, MessageResult } from '../protocol/query'

/**
 * Typed HTTP client of the metaserver API (docs/metaserver-api.md), on undici keep-alive pools.
 * Used by brokers and delay servers (heartbeats), the SDK (routes, client heartbeats) and the CLI.
 *
 * Errors are always QmqError:
 * - an error answer `{ code, message }` becomes that code (e.g. QMQ_ERR_NO_ROUTE, QMQ_ERR_UNAUTHORIZED);
 * - a refused connection, a reset, a timeout, a 5xx without a qmq body or an unreadable answer
 *   becomes QMQ_ERR_METASERVER_UNAVAILABLE (retriable).
 * Every call is bounded by `timeoutMs` (connect included): a down metaserver never makes a caller hang.
 *
 * With several metaserver addresses, a call that finds one unavailable tries the next (each at most
 * once per call). Every call of this API is idempotent, so this is safe.
 */

export const DEFAULT_META_TIMEOUT_MS = 2_000 // whole request, connect included
export const DEFAULT_META_CONNECT_TIMEOUT_MS = 1_000
export const DEFAULT_META_MAX_RESPONSE_BYTES = 8 * 1024 * 1024 // admin lists can be large
export const DEFAULT_META_CONNECTIONS = 4 // per metaserver
export const DEFAULT_META_ADDRESS_REFRESH_MS = 60_000

export interface MetaClientOptions {
  /**
   * Either a metaserver base URL (`http://127.0.0.1:8080`) or the discovery URL
   * (`http://lb:8080/meta/address`). With the discovery URL, the client asks it for the list of
   * metaservers first and again at most every `addressRefreshMs` or when all of them fail.
   * Several comma-separated URLs of one kind (`http://m1:8080/meta/address,http://m2:8080/meta/address`)
   * remove the single point of failure of the first contact: each is tried in turn.
   */
  url: string
  /** Sent as `Authorization: Bearer <token>` (admin write endpoints need it). */
  adminToken?: string
  /**
   * The cluster secret, sent with server heartbeats (brokers and delay servers need it) and with route
   * lookups and client heartbeats (a metaserver with `auth` on takes it for a server's credential).
   */
  clusterSecret?: string
  /**
   * An application's credential (SDK options appCode + token), sent with route lookups and client
   * heartbeats only: a metaserver with `auth` on refuses those without one (docs/security.md).
   */
  auth?: { appCode: string; token: string }
  timeoutMs?: number
  connectTimeoutMs?: number
  maxResponseBytes?: number
  connections?: number
  addressRefreshMs?: number
  /** For https metaservers: the CA to trust, and a client certificate when they require one (mTLS). */
  tls?: ClientTlsOptions
}

interface CallOptions {
  method: 'GET' | 'POST' | 'DELETE'
  path: string
  body?: unknown
  /** Extra request headers. */
  headers?: Record<string, string>
  /** Which metaserver origin to use; default: the current address list with failover. */
  origin?: string
}

/** An application as GET /admin/apps lists it (never a token or its hash). */
export interface AppInfo {
  appCode: string
  grants: Grant[]
  /** Valid tokens (2 during a rotation with keepPrevious). */
  tokens: number
  createdAt: number
  updatedAt: number
}

function normalizeBase(url: string): string {
  let parsed: URL
  try {
    parsed = new URL(url.includes('://') ? url : `http://${url}`)
  } catch (err) {
    throw new QmqError('QMQ_ERR_INVALID_ARGUMENT', `metaserver URL ${JSON.stringify(url)} is not a URL`, {
      cause: err,
    })
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
    throw new QmqError(
      'QMQ_ERR_INVALID_ARGUMENT',
      `metaserver URL ${JSON.stringify(url)} must be http or https`,
    )
  }
  return parsed.origin
}

function unavailable(origin: string, reason: string, cause?: unknown): QmqError {
  return new QmqError('QMQ_ERR_METASERVER_UNAVAILABLE', `metaserver ${origin} unavailable: ${reason}`, {
    cause,
    details: { origin },
  })
}

export class MetaClient {
  private readonly timeoutMs: number
  private readonly connectTimeoutMs: number
  private readonly maxResponseBytes: number
  private readonly connections: number
  private readonly addressRefreshMs: number
  private readonly adminToken: string | undefined
  private readonly clusterSecret: string | undefined
  private readonly auth: { appCode: string; token: string } | undefined
  private readonly tls: ClientTlsOptions | undefined
  /** Origins of the discovery URLs, when given (tried in turn). */
  private readonly discoveryOrigins: string[]
  private discoveryCurrent = 0
  private readonly pools = new Map<string, Pool>()
  private addresses: string[]
  private current = 0
  private addressesFetchedAt = 0
  private closed = false

  constructor(options: MetaClientOptions) {
    const urls = options.url
      .split(',')
      .map((u) => u.trim())
      .filter((u) => u.length > 0)
    if (urls.length === 0) urls.push(options.url)
    const isDiscovery = (url: string): boolean => {
      try {
        const path = new URL(url.includes('://') ? url : `http://${url}`).pathname
        return path.replace(/\/+$/, '') === META_PATHS.address
      } catch {
        return false
      }
    }
    const origins = [...new Set(urls.map(normalizeBase))]
    const discovery = urls.map(isDiscovery)
    if (discovery.some((d) => d !== discovery[0]))
      throw new QmqError(
        'QMQ_ERR_INVALID_ARGUMENT',
        `metaserver URLs ${JSON.stringify(options.url)} mix discovery (/meta/address) and base URLs`,
      )
    this.discoveryOrigins = discovery[0] === true ? origins : []
    this.addresses = origins
    this.timeoutMs = options.timeoutMs ?? DEFAULT_META_TIMEOUT_MS
    this.connectTimeoutMs = Math.min(
      options.connectTimeoutMs ?? DEFAULT_META_CONNECT_TIMEOUT_MS,
      this.timeoutMs,
    )
    this.maxResponseBytes = options.maxResponseBytes ?? DEFAULT_META_MAX_RESPONSE_BYTES
    this.connections = options.connections ?? DEFAULT_META_CONNECTIONS
    this.addressRefreshMs = options.addressRefreshMs ?? DEFAULT_META_ADDRESS_REFRESH_MS
    this.adminToken = options.adminToken
    this.clusterSecret = options.clusterSecret
    this.auth = options.auth
    this.tls = options.tls
  }

  /** The metaserver base URLs currently in use. */
  get knownAddresses(): readonly string[] {
    return this.addresses
  }

  /**
   * GET /meta/address on a discovery URL (each in turn from the last that answered, or the current
   * metaserver without one): the metaservers to use.
   */
  async getAddresses(): Promise<string[]> {
    const from = this.discoveryOrigins.length > 0 ? this.discoveryOrigins : [this.addresses[this.current]]
    const start = this.discoveryOrigins.length > 0 ? this.discoveryCurrent : 0
    let lastErr: unknown
    for (let attempt = 0; attempt < from.length; attempt++) {
      const index = (start + attempt) % from.length
      const origin = from[index] as string
      try {
        const res = await this.call<AddressesResponse>({ method: 'GET', path: META_PATHS.address, origin })
        if (!Array.isArray(res.addresses)) throw unavailable(origin, 'address answer has no list')
        if (this.discoveryOrigins.length > 0) this.discoveryCurrent = index
        return res.addresses
      } catch (err) {
        if (!(err instanceof QmqError) || err.code !== 'QMQ_ERR_METASERVER_UNAVAILABLE') throw err
        lastErr = err
      }
    }
    throw lastErr
  }

  /** Asks the discovery URL again and switches to the answered metaservers. */
  async refreshAddresses(): Promise<readonly string[]> {
    const list = await this.getAddresses()
    const origins: string[] = []
    for (const a of list) {
      try {
        origins.push(normalizeBase(a))
      } catch {
        // a bad entry is skipped; the others still work
      }
    }
    if (origins.length > 0) {
      this.addresses = origins
      this.current = 0
    }
    this.addressesFetchedAt = Date.now()
    return this.addresses
  }

  /** POST /meta/heartbeat: register or keep alive a broker/delay server. */
  heartbeat(req: ServerHeartbeatRequest): Promise<ServerHeartbeatResponse> {
    const headers: Record<string, string> = {}
    if (this.clusterSecret !== undefined) headers[CLUSTER_SECRET_HEADER] = this.clusterSecret
    return this.call({ method: 'POST', path: META_PATHS.serverHeartbeat, body: req, headers })
  }

  /** GET /meta/route: the groups of a subject for a producer, consumer or delay producer. */
  route(query: RouteQuery): Promise<RouteResponse> {
    const params = new URLSearchParams({ subject: query.subject, kind: query.kind })
    if (query.group !== undefined) params.set('group', query.group)
    if (query.clientId !== undefined) params.set('clientId', query.clientId)
    return this.call({
      method: 'GET',
      path: `${META_PATHS.route}?${params.toString()}`,
      headers: this.clientCredentialHeaders(),
    })
  }

  /** POST /meta/client/heartbeat: a producer/consumer is online (or offline) for some subjects. */
  clientHeartbeat(req: ClientHeartbeatRequest): Promise<ClientHeartbeatResponse> {
    return this.call({
      method: 'POST',
      path: META_PATHS.clientHeartbeat,
      body: req,
      headers: this.clientCredentialHeaders(),
    })
  }

  /** The credential of route lookups and client heartbeats: the app's, else the cluster secret. */
  private clientCredentialHeaders(): Record<string, string> {
    if (this.auth !== undefined)
      return { [APP_CODE_HEADER]: this.auth.appCode, [APP_TOKEN_HEADER]: this.auth.token }
    if (this.clusterSecret !== undefined) return { [CLUSTER_SECRET_HEADER]: this.clusterSecret }
    return {}
  }

  async listSubjects(): Promise<SubjectInfo[]> {
    return (await this.call<SubjectsResponse>({ method: 'GET', path: META_PATHS.adminSubjects })).subjects
  }

  getSubject(subject: string): Promise<SubjectInfo> {
    return this.call({ method: 'GET', path: `${META_PATHS.adminSubjects}/${encodeURIComponent(subject)}` })
  }

  /** Adds `group` to the subject's route (assigning the subject first if it has no route). Needs the token. */
  extendSubject(subject: string, group: string): Promise<SubjectInfo> {
    return this.call({
      method: 'POST',
      path: `${META_PATHS.adminSubjects}/${encodeURIComponent(subject)}/groups`,
      body: { group },
    })
  }

  async listGroups(): Promise<GroupInfo[]> {
    return (await this.call<GroupsResponse>({ method: 'GET', path: META_PATHS.adminGroups })).groups
  }

  getGroup(name: string): Promise<GroupInfo> {
    return this.call({ method: 'GET', path: `${META_PATHS.adminGroups}/${encodeURIComponent(name)}` })
  }

  /**
   * `qmq failover`: the group's master steps down and its in-sync slave is promoted once the master's
   * lease ran out (docs/replication.md). Needs the token.
   */
  failover(name: string): Promise<GroupInfo> {
    return this.call({
      method: 'POST',
      path: `${META_PATHS.adminGroups}/${encodeURIComponent(name)}/failover`,
    })
  }

  /**
   * `qmq remove-slave`: forgets a slave of the group that is gone for good (refused while it is
   * alive). Needs the token.
   */
  removeSlave(group: string, address: string): Promise<GroupInfo> {
    return this.call({
      method: 'DELETE',
      path: `${META_PATHS.adminGroups}/${encodeURIComponent(group)}/slaves/${encodeURIComponent(address)}`,
    })
  }

  async listReadOnly(): Promise<ReadOnlySetting[]> {
    return (await this.call<ReadOnlyResponse>({ method: 'GET', path: META_PATHS.adminReadOnly })).settings
  }

  /** Marks or unmarks a group read-only for producers (of one subject or all). Needs the token. */
  async setReadOnly(req: ReadOnlyRequest): Promise<ReadOnlySetting[]> {
    return (await this.call<ReadOnlyResponse>({ method: 'POST', path: META_PATHS.adminReadOnly, body: req }))
      .settings
  }

  async listConsumers(
    filter: { subject?: string; consumerGroup?: string; kind?: ClientKind } = {},
  ): Promise<ClientInfo[]> {
    const params = new URLSearchParams()
    if (filter.subject !== undefined) params.set('subject', filter.subject)
    if (filter.consumerGroup !== undefined) params.set('consumerGroup', filter.consumerGroup)
    if (filter.kind !== undefined) params.set('kind', filter.kind)
    const q = params.toString()
    const path = q.length > 0 ? `${META_PATHS.adminConsumers}?${q}` : META_PATHS.adminConsumers
    return (await this.call<ConsumersResponse>({ method: 'GET', path })).consumers
  }

  /** GET /admin/messages/:id: one message, where it stands and its trace (docs/query.md). */
  getMessage(id: string, subject?: string): Promise<MessageResult> {
    const q = subject !== undefined ? `?${new URLSearchParams({ subject })}` : ''
    return this.call({ method: 'GET', path: `/admin/messages/${encodeURIComponent(id)}${q}` })
  }

  /** GET /admin/messages?subject=|key=: messages by subject and time, or by business key, newest first. */
  listMessages(q: {
    subject?: string
    key?: string
    from?: number
    to?: number
    limit?: number
    cursor?: string
  }): Promise<ListResult> {
    const params = new URLSearchParams()
    for (const [k, v] of Object.entries(q)) if (v !== undefined) params.set(k, String(v))
    return this.call({ method: 'GET', path: `/admin/messages?${params}` })
  }

  /** GET /admin/history: per-minute counts. */
  history(q: {
    subject?: string
    consumerGroup?: string
    server?: string
    from?: number
    to?: number
  }): Promise<HistoryResult> {
    const params = new URLSearchParams()
    for (const [k, v] of Object.entries(q)) if (v !== undefined) params.set(k, String(v))
    return this.call({ method: 'GET', path: `/admin/history?${params}` })
  }

  /** GET /meta/credentials (servers, with the cluster secret): every app's token hashes and grants. */
  credentials(): Promise<{ apps: AppCredential[] }> {
    const headers: Record<string, string> = {}
    if (this.clusterSecret !== undefined) headers[CLUSTER_SECRET_HEADER] = this.clusterSecret
    return this.call({ method: 'GET', path: '/meta/credentials', headers })
  }

  async listApps(): Promise<AppInfo[]> {
    return (await this.call<{ apps: AppInfo[] }>({ method: 'GET', path: '/admin/apps' })).apps
  }

  /** Creates an app; its token is in the answer and nowhere else. Needs the admin token. */
  createApp(
    appCode: string,
    grants: readonly Grant[] = [],
  ): Promise<{ appCode: string; token: string; grants: Grant[] }> {
    return this.call({ method: 'POST', path: '/admin/apps', body: { appCode, grants } })
  }

  /** A new token (the old one stops working, unless keepPrevious). Needs the admin token. */
  rotateApp(appCode: string, keepPrevious = false): Promise<{ appCode: string; token: string }> {
    return this.call({
      method: 'POST',
      path: `/admin/apps/${encodeURIComponent(appCode)}/rotate`,
      body: { keepPrevious },
    })
  }

  grantApp(appCode: string, grant: Grant): Promise<AppInfo> {
    return this.call({
      method: 'POST',
      path: `/admin/apps/${encodeURIComponent(appCode)}/grant`,
      body: grant,
    })
  }

  revokeApp(appCode: string, grant: Grant): Promise<AppInfo> {
    return this.call({
      method: 'POST',
      path: `/admin/apps/${encodeURIComponent(appCode)}/revoke`,
      body: grant,
    })
  }

  deleteApp(appCode: string): Promise<{ deleted: boolean }> {
    return this.call({ method: 'POST', path: `/admin/apps/${encodeURIComponent(appCode)}/delete`, body: {} })
  }

  health(): Promise<HealthResponse> {
    return this.call({ method: 'GET', path: META_PATHS.health })
  }

  async close(): Promise<void> {
    this.closed = true
    const pools = [...this.pools.values()]
    this.pools.clear()
    await Promise.all(pools.map((p) => p.close().catch(() => p.destroy())))
  }

  // ------------------------------------------------------------------ internals

  private pool(origin: string): Pool {
    let pool = this.pools.get(origin)
    if (pool === undefined) {
      pool = new Pool(origin, {
        connections: this.connections,
        pipelining: 1,
        keepAliveTimeout: 30_000,
        connect: { timeout: this.connectTimeoutMs, ...(this.tls ?? {}) },
        headersTimeout: this.timeoutMs,
        bodyTimeout: this.timeoutMs,
      })
      this.pools.set(origin, pool)
    }
    return pool
  }

  private async call<T>(opts: CallOptions): Promise<T> {
    if (this.closed) throw new QmqError('QMQ_ERR_CLIENT_CLOSED', 'metaserver client is closed')
    if (opts.origin !== undefined) return this.callOnce<T>(opts.origin, opts)
    if (
      this.discoveryOrigins.length > 0 &&
      (this.addressesFetchedAt === 0 || Date.now() - this.addressesFetchedAt > this.addressRefreshMs)
    ) {
      // A failed discovery keeps the last known list (clients keep working on what they had).
      await this.refreshAddresses().catch(() => {
        this.addressesFetchedAt = Date.now()
      })
    }
    let lastErr: QmqError | undefined
    for (let attempt = 0; attempt < this.addresses.length; attempt++) {
      const index = (this.current + attempt) % this.addresses.length
      const origin = this.addresses[index]
      if (origin === undefined) break
      try {
        const out = await this.callOnce<T>(origin, opts)
        this.current = index
        return out
      } catch (err) {
        if (!(err instanceof QmqError) || err.code !== 'QMQ_ERR_METASERVER_UNAVAILABLE') throw err
        lastErr = err
      }
    }
    if (this.discoveryOrigins.length > 0) this.addressesFetchedAt = 0 // ask discovery again next time
    throw lastErr ?? unavailable('(none)', 'no metaserver address')
  }

  private async callOnce<T>(origin: string, opts: CallOptions): Promise<T> {
    const headers: Record<string, string> = { accept: 'application/json', ...opts.headers }
    let body: string | undefined
    if (opts.body !== undefined) {
      body = JSON.stringify(opts.body)
      headers['content-type'] = 'application/json'
    }
    if (this.adminToken !== undefined) headers.authorization = `Bearer ${this.adminToken}`
    let statusCode: number
    let text: string
    try {
      const res = await this.pool(origin).request({
        method: opts.method,
        path: opts.path,
        headers,
        body,
        signal: AbortSignal.timeout(this.timeoutMs),
      })
      statusCode = res.statusCode
      text = await this.readBounded(res.body, origin)
    } catch (err) {
      if (err instanceof QmqError) throw err
      const reason =
        err instanceof Error ? `${(err as { code?: string }).code ?? err.name}: ${err.message}` : String(err)
      throw unavailable(origin, reason, err)
    }
    let parsed: unknown
    try {
      parsed = text.length === 0 ? undefined : JSON.parse(text)
    } catch (err) {
      if (statusCode >= 500 || statusCode < 400) {
        throw unavailable(origin, `answer to ${opts.path} is not JSON (HTTP ${statusCode})`, err)
      }
    }
    if (statusCode >= 200 && statusCode < 300) {
      if (parsed === null || typeof parsed !== 'object') {
        throw unavailable(origin, `answer to ${opts.path} is not a JSON object`)
      }
      return parsed as T
    }
    const errBody = parsed as { code?: unknown; message?: unknown; details?: unknown } | undefined
    if (errBody !== undefined && typeof errBody.code === 'string' && isErrorCode(errBody.code)) {
      const message = typeof errBody.message === 'string' ? errBody.message : undefined
      throw new QmqError(errBody.code, message, { details: { origin, httpStatus: statusCode } })
    }
    if (statusCode >= 500) throw unavailable(origin, `HTTP ${statusCode}`)
    throw new QmqError(
      statusCode === 401 || statusCode === 403
        ? 'QMQ_ERR_UNAUTHORIZED'
        : statusCode === 404
          ? 'QMQ_ERR_NOT_FOUND'
          : 'QMQ_ERR_INVALID_ARGUMENT',
      `metaserver ${origin} answered HTTP ${statusCode} to ${opts.method} ${opts.path}: ${text.slice(0, 200)}`,
      { details: { origin, httpStatus: statusCode } },
    )
  }

  private async readBounded(
    body: AsyncIterable<Buffer> & { destroy(err?: Error): unknown },
    origin: string,
  ): Promise<string> {
    const chunks: Buffer[] = []
    let size = 0
    for await (const chunk of body) {
      size += chunk.length
      if (size > this.maxResponseBytes) {
        body.destroy()
        throw unavailable(origin, `answer is larger than ${this.maxResponseBytes} bytes`)
      }
      chunks.push(chunk)
    }
    return Buffer.concat(chunks, size).toString('utf8')
  }
}
