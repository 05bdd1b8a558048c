import type { IncomingMessage, ServerResponse } from 'node:http'
import { ERROR_CODES, QmqError, toQmqError } from '../common/errors'
import type { Logger } from '../common/logger'
import { META_PATHS } from '../common/meta/types'
import { Counter, renderMetrics, type Registry } from '../common/metrics'
import { validateGroup, validateRouteSubject, validateSubject } from '../common/names'
import { tokenMatches } from '../common/token'
import type { MetaService } from './service'
import {
  parseClientHeartbeat,
  parseClientKind,
  parseExtend,
  parseReadOnly,
  parseServerHeartbeat,
} from './validate'

/**
 * HTTP routing of the metaserver (docs/metaserver-api.md). No framework: a switch on the path.
 * Every answer is JSON; every error is `QmqError.toJSON()` with the code's HTTP status.
 */

export interface HttpContext {
  service: MetaService
  log: Logger
  registry: Registry
  maxBodyBytes: number
  adminToken: string | undefined
  /** Answer of GET /meta/address. */
  addresses: () => string[]
  startedAt: number
}

type Answer = { status: number; body: unknown } | { status: number; raw: string; contentType: string }

/** Route label for metrics: a fixed set, never the raw path. */
type RouteName =
  | 'address'
  | 'route'
  | 'heartbeat'
  | 'client_heartbeat'
  | 'admin_subjects'
  | 'admin_subject'
  | 'admin_subject_groups'
  | 'admin_groups'
  | 'admin_group'
  | 'admin_readonly'
  | 'admin_consumers'
  | 'health'
  | 'metrics'
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

  function requireAdmin(req: IncomingMessage): void {
    if (tokenBuf === undefined) {
      throw new QmqError(
        'QMQ_ERR_UNAUTHORIZED',
        'admin writes are disabled: configure adminToken (QMQ_METASERVER_ADMIN_TOKEN) and send "Authorization: Bearer <token>"',
      )
    }
    const header = req.headers.authorization ?? ''
    const m = /^Bearer\s+(.+)$/i.exec(header)
    if (!tokenMatches(m?.[1]?.trim(), tokenBuf)) {
      throw new QmqError(
        'QMQ_ERR_UNAUTHORIZED',
        m === null ? 'missing "Authorization: Bearer <token>" header' : 'wrong admin token',
      )
    }
  }

  async function dispatch(
    req: IncomingMessage,
    path: string,
    query: URLSearchParams,
    setRoute: (r: RouteName) => void,
  ): Promise<Answer> {
    const method = req.method ?? 'GET'
    const svc = ctx.service
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
        return { status: 200, body: await svc.route(subject, kind) }
      }
      case META_PATHS.serverHeartbeat:
        setRoute('heartbeat')
        if (method !== 'POST') throw methodNotAllowed(method, path)
        return {
          status: 200,
          body: await svc.heartbeat(parseServerHeartbeat(await readJson(req, ctx.maxBodyBytes))),
        }
      case META_PATHS.clientHeartbeat:
        setRoute('client_heartbeat')
        if (method !== 'POST') throw methodNotAllowed(method, path)
        return {
          status: 200,
          body: await svc.clientHeartbeat(parseClientHeartbeat(await readJson(req, ctx.maxBodyBytes))),
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
    }
    setRoute('unknown')
    throw new QmqError('QMQ_ERR_NOT_FOUND', `no such endpoint: ${method} ${path}`)
  }

  function send(
    res: ServerResponse,
    status: number,
    contentType: string,
    payload: string,
    close: boolean,
  ): void {
    res.statusCode = status
    res.setHeader('content-type', contentType)
    res.setHeader('content-length', Buffer.byteLength(payload))
    if (close) res.setHeader('connection', 'close')
    res.end(payload)
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
      (answer) => {
        count(route, answer.status)
        if ('raw' in answer) send(res, answer.status, answer.contentType, answer.raw, false)
        else send(res, answer.status, 'application/json', JSON.stringify(answer.body), false)
      },
      (err: unknown) => {
        const e = toQmqError(err)
        const status = ERROR_CODES[e.code].httpStatus
        count(route, status)
        if (e.code === 'QMQ_ERR_INTERNAL' || e.code === 'QMQ_ERR_METASERVER_STORE') {
          ctx.log.error(err instanceof Error ? err : { err }, `${req.method} ${path} failed`)
        }
        // A refused body may still be arriving: close the connection rather than read it.
        const close = e.code === 'QMQ_ERR_BODY_TOO_LARGE'
        send(res, status, 'application/json', JSON.stringify(e.toJSON()), close)
        if (close) res.on('finish', () => req.destroy())
      },
    )
  }
}
