import type { IncomingMessage, ServerResponse } from 'node:http'
import { ERROR_CODES, QmqError, toQmqError } from '../common/errors'
import type { Logger } from '../common/logger'
import { CLUSTER_SECRET_HEADER, META_PATHS } from '../common/meta/types'
import { Counter, renderMetrics, type Registry } from '../common/metrics'
import { validateGroup, validateRouteSubject, validateSubject } from '../common/names'
import { tokenMatches } from '../common/token'
import type { QueryFanout } from './query-fanout'
import { handleQueryRoute, type QueryRouteName } from './query-routes'
import type { Clock } from '../common/clock'
import type { AppCredentialStore } from './app-store'
import { type AuthRouteName, handleAuthRoute } from './auth-routes'
import type { ClientAuth } from './client-auth'
import type { MetaService } from './service'
import {
  parseClientHeartbeat,
  parseClientKind,
  parseExtend,
  parseReadOnly,
  parseServerHeartbeat,
} from './validate'
import type { ConsoleApi } from './console/api'
import { CONSOLE_PREFIX, handleConsole } from './console/routes'

/**
 * HTTP routing of the metaserver (docs/metaserver-api.md). No framework: a switch on the path.
 * Every answer is JSON; every error is `QmqError.toJSON()` with the code's HTTP status.
 */

export interface HttpContext {
  service: MetaService
  log: Logger
  /** The web console's data (undefined = the console is off: /console answers 404). */
  console?: ConsoleApi | undefined
  registry: Registry
  maxBodyBytes: number
  adminToken: string | undefined
  /** Required on POST /meta/heartbeat, in the CLUSTER_SECRET_HEADER header. */
  clusterSecret: string
  /** Answer of GET /meta/address. */
  addresses: () => string[]
  startedAt: number
  /** Message query, trace and history (docs/query.md); undefined = those routes answer 404. */
  fanout?: QueryFanout
  /** Application credentials (auth-routes.ts); undefined = the store keeps none. */
  apps?: AppCredentialStore | undefined
  clock?: Clock
  /** `auth` on: route lookups and client heartbeats need a credential (client-auth.ts); undefined = open. */
  clientAuth?: ClientAuth | undefined
}

type Answer =
  | { status: number; body: unknown }
  | { status: number; raw: string | Buffer; contentType: string; headers?: Record<string, string> }

/** Route label for metrics: a fixed set, never the raw path. */
type RouteName =
  | 'address'
  | 'console_page'
  | 'console_api'
  | 'route'
  | 'heartbeat'
  | 'client_heartbeat'
  | 'admin_subjects'
  | 'admin_subject'
  | 'admin_subject_groups'
  | 'admin_groups'
  | 'admin_group_failover'
  | 'admin_group_slave'
  | 'admin_group'
  | 'admin_readonly'
  | 'admin_consumers'
  | 'health'
  | 'metrics'
  | QueryRouteName
  | AuthRouteName
  | 'unknown'

function methodNotAllowed(method: string, path: string): QmqError {
  return new QmqError('QMQ_ERR_METHOD_NOT_ALLOWED', `${method} is not allowed on ${path}`)
}

function decodeSegment(s: string): string {
  try {
    return decodeURIComponent(s)
  } catch {
    throw new QmqError(
      'QMQ_ERR_INVALID_ARGUMENT',
      `path segment ${JSON.stringify(s)} is not valid percent-encoding`,
    )
  }
}

/**
 * A request refused before its body was read (too large, unauthenticated, not JSON) is answered only
 * once the rest of its body has been read and dropped, then the connection is closed: closing a socket
 * with unread bytes makes the kernel reset it, and the client may then lose the answer (what the issue
 * saw with 10 MB bodies). The drain is bounded; past a bound the answer goes out and the connection is
 * cut, reset or not (as nginx's lingering close does).
 */
export const REFUSED_BODY_DRAIN_BYTES = 64 * 1024 * 1024 // bytes read and dropped at most
export const REFUSED_BODY_DRAIN_MS = 10_000 // time spent draining at most

/** Calls `done(true)` once the request body is read to its end, `done(false)` past a bound or on error. */
function drainBody(req: IncomingMessage, done: (complete: boolean) => void): void {
  if (req.complete || req.readableEnded) {
    done(true)
    return
  }
  if (req.destroyed || req.socket.destroyed) {
    done(false) // the client went away: nothing to drain, nobody to answer
    return
  }
  const declared = Number(req.headers['content-length'] ?? 0)
  if (declared > REFUSED_BODY_DRAIN_BYTES) {
    done(false)
    return
  }
  let bytes = 0
  let settled = false
  const finish = (complete: boolean) => {
    if (settled) return
    settled = true
    clearTimeout(timer)
    req.off('data', onData)
    if (!complete) req.pause()
    done(complete)
  }
  const onData = (chunk: Buffer) => {
    bytes += chunk.length
    if (bytes > REFUSED_BODY_DRAIN_BYTES) finish(false)
  }
  const timer = setTimeout(() => finish(false), REFUSED_BODY_DRAIN_MS)
  timer.unref()
  req.on('data', onData)
  req.once('end', () => finish(true))
  req.once('error', () => finish(false))
  req.once('close', () => finish(req.complete))
  req.resume()
}

/** JSON endpoints take `application/json` (any case, parameters such as charset allowed) only. */
function requireJsonType(req: IncomingMessage): void {
  const type = req.headers['content-type']
  const media = (type ?? '').split(';')[0]?.trim().toLowerCase()
  if (media !== 'application/json') {
    throw new QmqError(
      'QMQ_ERR_UNSUPPORTED_MEDIA_TYPE',
      `request body must be sent as content-type application/json (got ${type === undefined ? 'none' : JSON.stringify(type.slice(0, 100))})`,
    )
  }
}

/** Reads the body, refusing more than `max` bytes (by content-length first, then while streaming). */
function readBody(req: IncomingMessage, max: number): Promise<Buffer> {
  const declared = req.headers['content-length']
  if (declared !== undefined && Number(declared) > max) {
    return Promise.reject(
      new QmqError('QMQ_ERR_BODY_TOO_LARGE', `request body is ${declared} bytes; the maximum is ${max}`, {
        details: { maxBodyBytes: max },
      }),
    )
  }
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    let size = 0
    let done = false
    req.on('data', (chunk: Buffer) => {
      if (done) return
      size += chunk.length
      if (size > max) {
        done = true
        req.pause()
        reject(
          new QmqError('QMQ_ERR_BODY_TOO_LARGE', `request body is over ${max} bytes`, {
            details: { maxBodyBytes: max },
          }),
        )
        return
      }
      chunks.push(chunk)
    })
    req.on('end', () => {
      if (done) return
      done = true
      resolve(Buffer.concat(chunks, size))
    })
    req.on('error', (err) => {
      if (done) return
      done = true
      reject(err)
    })
    // A client that goes away mid-body: settle, so nothing waits forever.
    req.on('close', () => {
      if (done) return
      done = true
      reject(new QmqError('QMQ_ERR_INVALID_ARGUMENT', 'request body ended early: the client went away'))
    })
  })
}

async function readJson(req: IncomingMessage, max: number): Promise<unknown> {
  requireJsonType(req)
  const buf = await readBody(req, max)
  if (buf.length === 0)
    throw new QmqError('QMQ_ERR_JSON_INVALID', 'request body is empty; a JSON object is expected')
  try {
    return JSON.parse(buf.toString('utf8'))
  } catch (err) {
    throw new QmqError('QMQ_ERR_JSON_INVALID', `request body is not valid JSON: ${(err as Error).message}`)
  }
}

export function createRequestHandler(ctx: HttpContext): (req: IncomingMessage, res: ServerResponse) => void {
  const requests = new Counter({
    name: 'qmq_metaserver_http_requests_total',
    help: 'HTTP requests answered, by route and HTTP status',
    labelNames: ['route', 'status'],
    registers: [ctx.registry],
  })
  // Children per (route, status), so the hot path does not hash labels on every request.
  const children = new Map<string, { inc(): void }>()
  const count = (route: RouteName, status: number): void => {
    const key = `${route} ${status}`
    let child = children.get(key)
    if (child === undefined) {
      child = requests.labels(route, String(status))
      children.set(key, child)
    }
    child.inc()
  }
  const tokenBuf = ctx.adminToken === undefined ? undefined : Buffer.from(ctx.adminToken, 'utf8')
  const secretBuf = Buffer.from(ctx.clusterSecret, 'utf8')

  /** Server heartbeats carry the cluster secret: without it nobody can register or move a group. */
  function requireClusterSecret(req: IncomingMessage): void {
    const given = req.headers[CLUSTER_SECRET_HEADER]
    if (typeof given !== 'string' || given.length === 0) {
      throw new QmqError(
        'QMQ_ERR_UNAUTHORIZED',
        `heartbeats must carry the cluster secret in the ${CLUSTER_SECRET_HEADER} header (give the broker or delay server QMQ_CLUSTER_SECRET or --cluster-secret-file)`,
      )
    }
    if (!tokenMatches(given, secretBuf)) throw new QmqError('QMQ_ERR_UNAUTHORIZED', 'wrong cluster secret')
  }

  /** Answers the token given, once it is the admin token. */
  function requireAdmin(req: IncomingMessage): string {
    if (tokenBuf === undefined) {
      throw new QmqError(
        'QMQ_ERR_UNAUTHORIZED',
        'admin writes are disabled: configure adminToken (QMQ_METASERVER_ADMIN_TOKEN) and send "Authorization: Bearer <token>"',
      )
    }
    const header = req.headers.authorization ?? ''
    const m = /^Bearer\s+(.+)$/i.exec(header)
    const given = m?.[1]?.trim()
    if (given === undefined || !tokenMatches(given, tokenBuf)) {
      throw new QmqError(
        'QMQ_ERR_UNAUTHORIZED',
        m === null ? 'missing "Authorization: Bearer <token>" header' : 'wrong admin token',
      )
    }
    return given
  }

  /**
   * Whether a read may see message bodies and properties: always without an admin token configured
   * (as before it existed), else only with it. No Authorization header = no (the view says
   * bodyWithheld); a wrong token is refused like on the admin writes, so a mistyped one is noticed.
   */
  function mayReadBodies(req: IncomingMessage): boolean {
    if (tokenBuf === undefined) return true
    if (req.headers.authorization === undefined) return false
    requireAdmin(req)
    return true
  }

  async function dispatch(
    req: IncomingMessage,
    path: string,
    query: URLSearchParams,
    setRoute: (r: RouteName) => void,
  ): Promise<Answer> {
    const method = req.method ?? 'GET'
    const svc = ctx.service
    if (ctx.console !== undefined && (path === CONSOLE_PREFIX || path.startsWith(`${CONSOLE_PREFIX}/`))) {
      const api = path.startsWith(`${CONSOLE_PREFIX}/api/`)
      setRoute(api ? 'console_api' : 'console_page')
      const a = await handleConsole(
        { api: ctx.console, requireAdmin, mayReadBodies, readJson: (r) => readJson(r, ctx.maxBodyBytes) },
        req,
        path,
        query,
      )
      if (a.raw !== undefined)
        return {
          status: a.status,
          raw: a.raw,
          contentType: a.contentType ?? 'application/octet-stream',
          ...(a.headers ? { headers: a.headers } : {}),
        }
      return { status: a.status, body: a.body }
    }
    switch (path) {
      case META_PATHS.route: {
        setRoute('route')
        if (method !== 'GET') throw methodNotAllowed(method, path)
        const { subject } = validateRouteSubject(query.get('subject') ?? undefined)
        const kind = parseClientKind(query.get('kind') ?? undefined)
        if (kind === 'consumer') {
          const group = query.get('group')
          if (group === null)
            throw new QmqError(
              'QMQ_ERR_INVALID_ARGUMENT',
              'group (the consumer group) is required for consumers',
            )
          validateGroup(group)
        }
        if (ctx.clientAuth !== undefined) {
          const p = await ctx.clientAuth.authenticate(req)
          ctx.clientAuth.checkRoute(p, kind, subject, query.get('group') ?? undefined)
        }
        return { status: 200, body: await svc.route(subject, kind) }
      }
      case META_PATHS.serverHeartbeat:
        setRoute('heartbeat')
        if (method !== 'POST') throw methodNotAllowed(method, path)
        requireClusterSecret(req)
        return {
          status: 200,
          body: await svc.heartbeat(parseServerHeartbeat(await readJson(req, ctx.maxBodyBytes))),
        }
      case META_PATHS.clientHeartbeat:
        setRoute('client_heartbeat')
        if (method !== 'POST') throw methodNotAllowed(method, path)
        {
          // Authenticated before the body is read: a refusal drains it (see drainBody).
          const p = await ctx.clientAuth?.authenticate(req)
          const hb = parseClientHeartbeat(await readJson(req, ctx.maxBodyBytes))
          if (p !== undefined) ctx.clientAuth?.checkHeartbeat(p, hb)
          return { status: 200, body: await svc.clientHeartbeat(hb) }
        }
      case META_PATHS.address:
        setRoute('address')
        if (method !== 'GET') throw methodNotAllowed(method, path)
        return { status: 200, body: { addresses: ctx.addresses() } }
      case META_PATHS.health: {
        setRoute('health')
        if (method !== 'GET') throw methodNotAllowed(method, path)
        const c = svc.counts()
        return {
          status: 200,
          body: {
            status: 'ok',
            uptimeMs: Date.now() - ctx.startedAt,
            groupsAlive: c.alive.broker + c.alive.delay,
            groups: c.groups.broker + c.groups.delay,
            subjects: c.subjects,
            store: svc.storeKind,
            storeDown: svc.storeDown,
          },
        }
      }
      case META_PATHS.metrics: {
        setRoute('metrics')
        if (method !== 'GET') throw methodNotAllowed(method, path)
        const m = await renderMetrics(ctx.registry)
        return { status: 200, raw: m.body, contentType: m.contentType }
      }
      case META_PATHS.adminSubjects:
        setRoute('admin_subjects')
        if (method !== 'GET') throw methodNotAllowed(method, path)
        return { status: 200, body: { subjects: svc.listSubjects() } }
      case META_PATHS.adminGroups:
        setRoute('admin_groups')
        if (method !== 'GET') throw methodNotAllowed(method, path)
        return { status: 200, body: { groups: svc.listGroups() } }
      case META_PATHS.adminReadOnly:
        setRoute('admin_readonly')
        if (method === 'GET') return { status: 200, body: { settings: svc.listReadOnly() } }
        if (method !== 'POST') throw methodNotAllowed(method, path)
        {
          requireAdmin(req)
          const r = parseReadOnly(await readJson(req, ctx.maxBodyBytes))
          return { status: 200, body: { settings: await svc.setReadOnly(r.group, r.subject, r.readOnly) } }
        }
      case META_PATHS.adminConsumers: {
        setRoute('admin_consumers')
        if (method !== 'GET') throw methodNotAllowed(method, path)
        const filter: {
          subject?: string
          consumerGroup?: string
          kind?: ReturnType<typeof parseClientKind>
        } = {}
        const subject = query.get('subject')
        const group = query.get('consumerGroup')
        const kind = query.get('kind')
        if (subject !== null) filter.subject = validateSubject(subject)
        if (group !== null) filter.consumerGroup = validateGroup(group)
        if (kind !== null) filter.kind = parseClientKind(kind)
        return { status: 200, body: { consumers: svc.listClients(filter) } }
      }
    }
    const subjectsPrefix = `${META_PATHS.adminSubjects}/`
    if (path.startsWith(subjectsPrefix)) {
      const rest = path.slice(subjectsPrefix.length).split('/')
      const { subject } = validateRouteSubject(decodeSegment(rest[0] ?? ''))
      if (rest.length === 1) {
        setRoute('admin_subject')
        if (method !== 'GET') throw methodNotAllowed(method, path)
        return { status: 200, body: svc.getSubject(subject) }
      }
      if (rest.length === 2 && rest[1] === 'groups') {
        setRoute('admin_subject_groups')
        if (method !== 'POST') throw methodNotAllowed(method, path)
        requireAdmin(req)
        const { group } = parseExtend(await readJson(req, ctx.maxBodyBytes))
        return { status: 200, body: await svc.extendSubject(subject, group) }
      }
    }
    const groupsPrefix = `${META_PATHS.adminGroups}/`
    if (path.startsWith(groupsPrefix)) {
      const rest = path.slice(groupsPrefix.length).split('/')
      if (rest.length === 1) {
        setRoute('admin_group')
        if (method !== 'GET') throw methodNotAllowed(method, path)
        return { status: 200, body: svc.getGroup(validateGroup(decodeSegment(rest[0] ?? ''))) }
      }
      if (rest.length === 2 && rest[1] === 'failover') {
        setRoute('admin_group_failover')
        if (method !== 'POST') throw methodNotAllowed(method, path)
        requireAdmin(req)
        return { status: 200, body: await svc.failover(validateGroup(decodeSegment(rest[0] ?? ''))) }
      }
      if (rest.length === 3 && rest[1] === 'slaves') {
        setRoute('admin_group_slave')
        if (method !== 'DELETE') throw methodNotAllowed(method, path)
        requireAdmin(req)
        const group = validateGroup(decodeSegment(rest[0] ?? ''))
        return { status: 200, body: await svc.removeSlave(group, decodeSegment(rest[2] ?? '')) }
      }
    }
    if (ctx.fanout !== undefined) {
      const a = await handleQueryRoute(ctx.fanout, method, path, query, setRoute, decodeSegment, () =>
        mayReadBodies(req),
      )
      if (a !== undefined) return a
    }
    const auth = await handleAuthRoute(
      {
        apps: ctx.apps,
        clock: ctx.clock ?? { now: () => Date.now() },
        log: ctx.log,
        readJson: (r) => readJson(r, ctx.maxBodyBytes),
        requireAdmin,
        requireClusterSecret,
      },
      req,
      path,
      setRoute,
    )
    if (auth !== undefined) {
      // An app changed here is known to the client endpoints at once (client-auth.ts).
      if (req.method === 'POST') await ctx.clientAuth?.reload()
      return auth
    }
    setRoute('unknown')
    throw new QmqError('QMQ_ERR_NOT_FOUND', `no such endpoint: ${method} ${path}`)
  }

  function send(
    res: ServerResponse,
    status: number,
    contentType: string,
    payload: string | Buffer,
    close: boolean,
    headers?: Record<string, string>,
  ): void {
    res.statusCode = status
    if (headers !== undefined) for (const [k, v] of Object.entries(headers)) res.setHeader(k, v)
    res.setHeader('content-type', contentType)
    res.setHeader('content-length', Buffer.byteLength(payload))
    if (close) res.setHeader('connection', 'close')
    res.end(payload)
  }

  /** Sends an answer; one that comes before the whole body was read first drains it (see drainBody). */
  function answer(
    req: IncomingMessage,
    res: ServerResponse,
    status: number,
    type: string,
    payload: string | Buffer,
    headers?: Record<string, string>,
  ) {
    if (req.complete) {
      send(res, status, type, payload, false, headers)
      return
    }
    drainBody(req, (complete) => {
      send(res, status, type, payload, true, headers)
      if (!complete) res.on('finish', () => req.socket.destroy())
    })
  }

  return (req, res) => {
    const url = req.url ?? '/'
    const q = url.indexOf('?')
    const path = q < 0 ? url : url.slice(0, q)
    const query = new URLSearchParams(q < 0 ? '' : url.slice(q + 1))
    let route: RouteName = 'unknown'
    dispatch(req, path, query, (r) => {
      route = r
    }).then(
      (a) => {
        count(route, a.status)
        if ('raw' in a) answer(req, res, a.status, a.contentType, a.raw, a.headers)
        else answer(req, res, a.status, 'application/json', JSON.stringify(a.body))
      },
      (err: unknown) => {
        const e = toQmqError(err)
        const status = ERROR_CODES[e.code].httpStatus
        count(route, status)
        if (e.code === 'QMQ_ERR_INTERNAL' || e.code === 'QMQ_ERR_METASERVER_STORE') {
          ctx.log.error(err instanceof Error ? err : { err }, `${req.method} ${path} failed`)
        }
        answer(req, res, status, 'application/json', JSON.stringify(e.toJSON()))
      },
    )
  }
}
