import type { IncomingMessage } from 'node:http'
import { AuthError, CLUSTER_APP, CredentialCache, type Principal } from '../common/auth/credentials'
import { CredentialRefresher } from '../common/auth/refresher'
import { QmqError } from '../common/errors'
import type { Logger } from '../common/logger'
import {
  APP_CODE_HEADER,
  APP_TOKEN_HEADER,
  CLUSTER_SECRET_HEADER,
  type ClientHeartbeatRequest,
  type ClientKind,
} from '../common/meta/types'
import type { AppCredentialStore } from './app-store'

/**
 * Application credentials on the metaserver's client endpoints (GET /meta/route, POST
 * /meta/client/heartbeat) when `auth` is on (docs/security.md, "The metaserver"). A request carries
 * either an app credential (APP_CODE_HEADER + APP_TOKEN_HEADER: what the SDK sends when it has a token)
 * or the cluster secret (CLUSTER_SECRET_HEADER, or appCode `%cluster` with the secret as token: brokers,
 * delay servers, the CLI with the cluster secret). Refusals: no or a wrong credential 401
 * QMQ_ERR_UNAUTHORIZED, no grant 403 QMQ_ERR_FORBIDDEN.
 *
 * What a route lookup of `subject` needs (the same per subscription of a client heartbeat, whose
 * answer can carry those routes and which lists the app as online on them):
 *   producer, delay-producer   produce on the subject
 *   consumer with GROUP        consume on the subject with GROUP (a dead-letter subject: its group's)
 *   any kind                   admin on the subject (operators' tools)
 * A heartbeat that names an appCode other than its credential's is refused (403): the consumer list
 * operators read names the app that really is there.
 *
 * Credentials come from this metaserver's own store, held in a CredentialCache (the brokers' class)
 * reloaded every `refreshMs`, so a route lookup does not query the store and keeps working while a
 * shared store is down (on the last list). An unknown app or a wrong token reloads at once (at most
 * every MISS_RELOAD_MS) before the refusal, so an app created or rotated a moment ago on any metaserver
 * sharing the store works from its first request; a change made through this metaserver reloads at
 * once (reload()), one made through another within `refreshMs`.
 */
export const MISS_RELOAD_MS = 250 // a credential miss reloads the list at most this often

export class ClientAuth {
  private readonly cache: CredentialCache
  private readonly refresher: CredentialRefresher
  private lastMissReload = 0
  private missReload: Promise<boolean> | undefined

  constructor(
    apps: AppCredentialStore | undefined,
    clusterSecret: string,
    refreshMs: number,
    log: Logger,
    private readonly now: () => number = Date.now,
  ) {
    this.cache = new CredentialCache(Buffer.from(clusterSecret, 'utf8'))
    this.refresher = new CredentialRefresher(
      {
        credentials: async () => {
          if (apps === undefined)
            throw new QmqError(
              'QMQ_ERR_NOT_FOUND',
              "this metaserver's store keeps no application credentials",
            )
          return { apps: await apps.listApps() }
        },
      },
      this.cache,
      refreshMs,
      log,
    )
  }

  /** Loads the credentials once (resolves either way: until loaded, apps are answered QMQ_ERR_BUSY). */
  start(): Promise<void> {
    return this.refresher.start()
  }

  stop(): void {
    this.refresher.stop()
  }

  /** Reloads now: after an app was created, rotated, granted, revoked or deleted through this metaserver. */
  async reload(): Promise<void> {
    await this.refresher.refresh()
  }

  /** Who sent `req`; throws 401 (or BUSY before the first load). */
  async authenticate(req: IncomingMessage): Promise<Principal> {
    const secret = header(req, CLUSTER_SECRET_HEADER)
    if (secret !== undefined) return this.cache.authenticate(CLUSTER_APP, secret)
    const appCode = header(req, APP_CODE_HEADER) ?? ''
    const token = header(req, APP_TOKEN_HEADER) ?? ''
    if (appCode === '' || token === '')
      throw new AuthError(
        'missing',
        `this metaserver requires an application credential: send ${APP_CODE_HEADER} and ${APP_TOKEN_HEADER} (SDK options appCode and token)`,
      )
    try {
      return this.cache.authenticate(appCode, token)
    } catch (err) {
      if (!(err instanceof AuthError) || (err.reason !== 'unknown_app' && err.reason !== 'wrong_token'))
        throw err
      // Perhaps created or rotated since the last load: look again, at most every MISS_RELOAD_MS.
      if (!(await this.reloadAfterMiss())) throw err
      return this.cache.authenticate(appCode, token)
    }
  }

  /** Throws 403 unless `p` may look up the route of `subject` as `kind` (table above). */
  checkRoute(p: Principal, kind: ClientKind, subject: string, group: string | undefined): void {
    if (p.cluster || this.cache.mayAdmin(p, subject)) return
    const ok =
      kind === 'consumer'
        ? group !== undefined && this.cache.mayConsume(p, subject, group)
        : this.cache.mayProduce(p, subject)
    if (!ok)
      throw new QmqError(
        'QMQ_ERR_FORBIDDEN',
        kind === 'consumer'
          ? `app ${p.appCode} may not consume ${subject} as group ${group ?? ''} (needs a consume grant)`
          : `app ${p.appCode} may not produce to ${subject} (needs a produce grant)`,
      )
  }

  /** Throws 403 unless every subscription of the heartbeat passes checkRoute, under its own appCode. */
  checkHeartbeat(p: Principal, hb: ClientHeartbeatRequest): void {
    if (p.cluster) return
    if (hb.appCode !== undefined && hb.appCode !== '' && hb.appCode !== p.appCode)
      throw new QmqError(
        'QMQ_ERR_FORBIDDEN',
        `the heartbeat names app ${hb.appCode} but its credential is app ${p.appCode}`,
      )
    for (const s of hb.subscriptions) this.checkRoute(p, hb.kind, s.subject, s.consumerGroup)
  }

  private reloadAfterMiss(): Promise<boolean> {
    if (this.missReload !== undefined) return this.missReload
    if (this.now() - this.lastMissReload < MISS_RELOAD_MS) return Promise.resolve(false)
    this.lastMissReload = this.now()
    this.missReload = this.refresher.refresh().finally(() => {
      this.missReload = undefined
    })
    return this.missReload
  }
}

function header(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name]
  return typeof v === 'string' && v.length > 0 ? v : undefined
}
