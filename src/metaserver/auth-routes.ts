import type { IncomingMessage } from 'node:http'
import { generateToken, hashToken, validateAppCode } from '../common/auth/credentials'
import { type Grant, sameGrant, validateGrant } from '../common/auth/grants'
import type { Clock } from '../common/clock'
import { QmqError } from '../common/errors'
import type { Logger } from '../common/logger'
import { type AppCredentialStore, changeApp, type NewApp, type StoredApp } from './app-store'

/**
 * The credential endpoints of the metaserver (docs/metaserver-api.md, docs/security.md):
 *
 *   GET  /meta/credentials            servers (cluster secret): every app's token hashes and grants
 *   GET  /admin/apps                  admin token: apps and grants (no hashes)
 *   POST /admin/apps                  admin token: {appCode, grants?} -> {appCode, token, grants}
 *   POST /admin/apps/<app>/rotate     admin token: {keepPrevious?} -> {appCode, token}
 *   POST /admin/apps/<app>/grant      admin token: {action, subject, group?} -> the app
 *   POST /admin/apps/<app>/revoke     admin token: {action, subject, group?} -> the app
 *   POST /admin/apps/<app>/delete     admin token: -> {deleted}
 *
 * A token is answered once, when created or rotated; the store keeps its SHA-256 only. Rotation with
 * keepPrevious keeps the previous token valid too (at most 2) until the next rotation, for rolling
 * restarts of an application. Logs name the app and the action, never a token.
 */
export const CREDENTIALS_PATH = '/meta/credentials'
export const ADMIN_APPS_PATH = '/admin/apps'
const MAX_GRANTS = 1_000

export type AuthRouteName = 'credentials' | 'admin_apps' | 'admin_app'

export interface AuthRouteContext {
  apps: AppCredentialStore | undefined
  clock: Clock
  log: Logger
  readJson(req: IncomingMessage): Promise<unknown>
  requireAdmin(req: IncomingMessage): void
  requireClusterSecret(req: IncomingMessage): void
}

function publicApp(a: StoredApp): {
  appCode: string
  grants: Grant[]
  tokens: number
  createdAt: number
  updatedAt: number
} {
  return {
    appCode: a.appCode,
    grants: a.grants,
    tokens: a.tokenHashes.length,
    createdAt: a.createdAt,
    updatedAt: a.updatedAt,
  }
}

function objectBody(v: unknown): Record<string, unknown> {
  if (v === null || typeof v !== 'object' || Array.isArray(v))
    throw new QmqError('QMQ_ERR_INVALID_ARGUMENT', 'request body must be a JSON object')
  return v as Record<string, unknown>
}

function methodNotAllowed(method: string, path: string): QmqError {
  return new QmqError('QMQ_ERR_METHOD_NOT_ALLOWED', `${method} is not allowed on ${path}`)
}

/** Answers a credential endpoint, or undefined when `path` is none of them. */
export async function handleAuthRoute(
  ctx: AuthRouteContext,
  req: IncomingMessage,
  path: string,
  setRoute: (r: AuthRouteName) => void,
): Promise<{ status: number; body: unknown } | undefined> {
  const method = req.method ?? 'GET'
  const isList = path === ADMIN_APPS_PATH
  const isOne = path.startsWith(`${ADMIN_APPS_PATH}/`)
  if (path !== CREDENTIALS_PATH && !isList && !isOne) return undefined
  setRoute(path === CREDENTIALS_PATH ? 'credentials' : isList ? 'admin_apps' : 'admin_app')
  if (path === CREDENTIALS_PATH) {
    if (method !== 'GET') throw methodNotAllowed(method, path)
    ctx.requireClusterSecret(req)
  } else if (method === 'GET' && isList) ctx.requireAdmin(req)
  else if (method === 'POST') ctx.requireAdmin(req)
  else throw methodNotAllowed(method, path)
  const store = ctx.apps
  if (store === undefined)
    throw new QmqError('QMQ_ERR_NOT_FOUND', "this metaserver's store keeps no application credentials")
  const now = ctx.clock.now()

  if (path === CREDENTIALS_PATH) {
    const apps = await store.listApps()
    return {
      status: 200,
      body: { apps: apps.map((a) => ({ appCode: a.appCode, tokenHashes: a.tokenHashes, grants: a.grants })) },
    }
  }
  if (isList && method === 'GET')
    return { status: 200, body: { apps: (await store.listApps()).map(publicApp) } }
  if (isList) {
    const body = objectBody(await ctx.readJson(req))
    const appCode = validateAppCode(body.appCode)
    const raw = body.grants ?? []
    if (!Array.isArray(raw) || raw.length > MAX_GRANTS)
      throw new QmqError('QMQ_ERR_INVALID_ARGUMENT', `grants must be a list of at most ${MAX_GRANTS} grants`)
    const grants: Grant[] = []
    for (const g of raw.map(validateGrant)) if (!grants.some((x) => sameGrant(x, g))) grants.push(g)
    const token = generateToken()
    const app: NewApp = {
      appCode,
      tokenHashes: [hashToken(token)],
      grants,
      createdAt: now,
      updatedAt: now,
    }
    if (!(await store.insertApp(app)))
      throw new QmqError(
        'QMQ_ERR_INVALID_ARGUMENT',
        `app ${appCode} exists already (rotate its token instead)`,
      )
    ctx.log.info({ app: appCode, grants: grants.length }, 'app created')
    return { status: 200, body: { appCode, token, grants } }
  }

  const rest = path.slice(ADMIN_APPS_PATH.length + 1).split('/')
  if (rest.length !== 2) throw new QmqError('QMQ_ERR_NOT_FOUND', `no such endpoint: ${method} ${path}`)
  let appCode: string
  try {
    appCode = validateAppCode(decodeURIComponent(rest[0] ?? ''))
  } catch (err) {
    throw err instanceof QmqError ? err : new QmqError('QMQ_ERR_INVALID_ARGUMENT', 'bad app in path')
  }
  const action = rest[1]
  const app = await store.getApp(appCode)
  if (app === undefined) throw new QmqError('QMQ_ERR_NOT_FOUND', `no app ${appCode}`)
  switch (action) {
    // Read-modify-write under compare-and-set (changeApp): the change is redone on the app as it is
    // now when another change of it came first, so none is lost.
    case 'rotate': {
      const body = objectBody(await ctx.readJson(req))
      const token = generateToken()
      const keepPrevious = body.keepPrevious === true
      await changeApp(store, app, (a) => ({
        ...a,
        tokenHashes: [...(keepPrevious ? a.tokenHashes.slice(-1) : []), hashToken(token)],
        updatedAt: now,
      }))
      ctx.log.info({ app: appCode, keptPrevious: keepPrevious }, 'app token rotated')
      return { status: 200, body: { appCode, token } }
    }
    case 'grant':
    case 'revoke': {
      const g = validateGrant(objectBody(await ctx.readJson(req)))
      const next = await changeApp(store, app, (a) => {
        const has = a.grants.some((x) => sameGrant(x, g))
        let grants = a.grants
        if (action === 'grant' && !has) {
          if (grants.length >= MAX_GRANTS)
            throw new QmqError('QMQ_ERR_INVALID_ARGUMENT', `an app has at most ${MAX_GRANTS} grants`)
          grants = [...grants, g]
        }
        if (action === 'revoke') {
          if (!has) throw new QmqError('QMQ_ERR_NOT_FOUND', `app ${appCode} has no such grant`)
          grants = grants.filter((x) => !sameGrant(x, g))
        }
        return { ...a, grants, updatedAt: now }
      })
      ctx.log.info(
        { app: appCode, action, grant: g },
        `app permission ${action === 'grant' ? 'granted' : 'revoked'}`,
      )
      return { status: 200, body: publicApp(next) }
    }
    case 'delete': {
      const deleted = await store.deleteApp(appCode)
      ctx.log.info({ app: appCode }, 'app deleted')
      return { status: 200, body: { deleted } }
    }
    default:
      throw new QmqError('QMQ_ERR_NOT_FOUND', `no such endpoint: ${method} ${path}`)
  }
}
