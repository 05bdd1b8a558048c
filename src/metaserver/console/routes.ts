import type { IncomingMessage } from 'node:http'
import { QmqError } from '../../common/errors'
import { type ConsoleApi, DEFAULT_PAGE, MAX_PAGE, type PageQuery } from './api'
import { loadConsoleAssets } from './assets'

/**
 * The `/console` paths of the metaserver (docs/console.md):
 *
 *   GET  /console, /console/            the page (index.html); app.js and app.css beside it
 *   GET  /console/api/overview          groups (roles, liveness, load) and counts
 *   GET  /console/api/subjects          ?q=&offset=&limit=   paged, searched by substring
 *   GET  /console/api/subject           ?subject=S           route, clients, consumer groups' backlog
 *   GET  /console/api/consumer-groups   ?q=&offset=&limit=&fresh=1&dead=1   backlog summed over broker
 *                                       groups (dead=1: only groups with dead letters)
 *   POST /console/api/reset-cursor      {subject, group, to}                     admin token
 *   GET  /console/api/dead-letters      ?subject=&group=&limit=   properties and bodies only with the
 *                                       admin token when one is configured (bodyWithheld otherwise)
 *   POST /console/api/redrive           {subject, group, brokerGroup, sequences} | {subject, group, all}
 *                                                                                 admin token
 *   GET  /console/api/delay-groups      pending delayed messages per hour bucket, per delay group
 *
 * Admin writes need `Authorization: Bearer <adminToken>` (the metaserver's; never a query string),
 * checked by the HTTP layer before the request body is read.
 */

export interface ConsoleAnswer {
  status: number
  body?: unknown
  raw?: Buffer
  contentType?: string
  headers?: Record<string, string>
}

export interface ConsoleRouteDeps {
  api: ConsoleApi
  /** Throws QMQ_ERR_UNAUTHORIZED unless the request carries the admin token; answers it. */
  requireAdmin(req: IncomingMessage): string
  /** Whether the request may see message bodies and properties (throws on a wrong admin token). */
  mayReadBodies(req: IncomingMessage): boolean
  readJson(req: IncomingMessage): Promise<unknown>
}

/**
 * Headers of the page: scripts and styles only from this origin, no framing, no referrer (a page's
 * address never leaves it), and the browser must not guess types.
 */
const PAGE_HEADERS: Record<string, string> = {
  'content-security-policy':
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
  'cache-control': 'no-cache',
}

function intParam(query: URLSearchParams, name: string, dflt: number, min: number, max: number): number {
  const raw = query.get(name)
  if (raw === null || raw === '') return dflt
  const n = Number(raw)
  if (!Number.isSafeInteger(n) || n < min || n > max)
    throw new QmqError('QMQ_ERR_INVALID_ARGUMENT', `${name} must be a whole number from ${min} to ${max}`)
  return n
}

function pageQuery(query: URLSearchParams): PageQuery {
  const q = query.get('q') ?? ''
  if (q.length > 256) throw new QmqError('QMQ_ERR_INVALID_ARGUMENT', 'q is longer than 256 characters')
  return {
    q,
    offset: intParam(query, 'offset', 0, 0, 1_000_000_000),
    limit: intParam(query, 'limit', DEFAULT_PAGE, 1, MAX_PAGE),
  }
}

function required(query: URLSearchParams, name: string): string {
  const v = query.get(name)
  if (v === null || v === '') throw new QmqError('QMQ_ERR_INVALID_ARGUMENT', `${name} is required`)
  return v
}

function objectBody(v: unknown): Record<string, unknown> {
  if (v === null || typeof v !== 'object' || Array.isArray(v))
    throw new QmqError('QMQ_ERR_INVALID_ARGUMENT', 'the request body must be a JSON object')
  return v as Record<string, unknown>
}

function methodNotAllowed(method: string, path: string): QmqError {
  return new QmqError('QMQ_ERR_METHOD_NOT_ALLOWED', `${method} is not allowed on ${path}`)
}

export const CONSOLE_PREFIX = '/console'

export async function handleConsole(
  deps: ConsoleRouteDeps,
  req: IncomingMessage,
  path: string,
  query: URLSearchParams,
): Promise<ConsoleAnswer> {
  const method = req.method ?? 'GET'
  const api = deps.api
  const apiPrefix = `${CONSOLE_PREFIX}/api/`
  if (path.startsWith(apiPrefix)) {
    const name = path.slice(apiPrefix.length)
    const get = () => {
      if (method !== 'GET') throw methodNotAllowed(method, path)
    }
    switch (name) {
      case 'overview':
        get()
        return { status: 200, body: api.overview() }
      case 'subjects':
        get()
        return { status: 200, body: api.subjects(pageQuery(query)) }
      case 'subject':
        get()
        return { status: 200, body: await api.subject(required(query, 'subject')) }
      case 'consumer-groups':
        get()
        return {
          status: 200,
          body: await api.consumerGroups({
            ...pageQuery(query),
            fresh: query.get('fresh') === '1',
            withDead: query.get('dead') === '1',
          }),
        }
      case 'dead-letters': {
        get()
        const after: Record<string, number> = {}
        for (const [k, v] of query) {
          if (!k.startsWith('after.')) continue
          const n = Number(v)
          if (!Number.isSafeInteger(n) || n < -1)
            throw new QmqError('QMQ_ERR_INVALID_ARGUMENT', `${k} must be a sequence`)
          after[k.slice('after.'.length)] = n
        }
        return {
          status: 200,
          body: await api.deadLetters({
            subject: required(query, 'subject'),
            group: required(query, 'group'),
            limit: intParam(query, 'limit', DEFAULT_PAGE, 1, MAX_PAGE),
            after,
            withBodies: deps.mayReadBodies(req),
          }),
        }
      }
      case 'delay-groups':
        get()
        return { status: 200, body: { groups: await api.delayGroups() } }
      case 'reset-cursor': {
        if (method !== 'POST') throw methodNotAllowed(method, path)
        const token = deps.requireAdmin(req)
        const b = objectBody(await deps.readJson(req))
        return {
          status: 200,
          body: await api.resetCursor({ subject: b.subject, group: b.group, to: b.to }, token),
        }
      }
      case 'redrive': {
        if (method !== 'POST') throw methodNotAllowed(method, path)
        const token = deps.requireAdmin(req)
        const b = objectBody(await deps.readJson(req))
        return {
          status: 200,
          body: await api.redrive(
            {
              subject: b.subject,
              group: b.group,
              brokerGroup: b.brokerGroup,
              sequences: b.sequences,
              all: b.all,
            },
            token,
          ),
        }
      }
    }
    throw new QmqError('QMQ_ERR_NOT_FOUND', `no such console endpoint: ${method} ${path}`)
  }
  if (method !== 'GET' && method !== 'HEAD') throw methodNotAllowed(method, path)
  const file =
    path === CONSOLE_PREFIX || path === `${CONSOLE_PREFIX}/`
      ? 'index.html'
      : path.slice(CONSOLE_PREFIX.length + 1)
  const assets = await loadConsoleAssets()
  const f = assets.files.get(file)
  // Every other path under /console/ is a page of the single-page app (its router reads the hash).
  const served = f ?? (file.includes('.') ? undefined : assets.files.get('index.html'))
  if (served === undefined) throw new QmqError('QMQ_ERR_NOT_FOUND', `no such console file: ${path}`)
  return { status: 200, raw: served.body, contentType: served.contentType, headers: PAGE_HEADERS }
}
