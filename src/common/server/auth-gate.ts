import { AuthError, type CredentialCache } from '../auth/credentials'
import { QmqError, toQmqError } from '../errors'
import type { Logger } from '../logger'
import { Counter, type Registry } from '../metrics'
import { decodeAuthRequest } from '../protocol/auth'
import { RequestCode, requestCodeName } from '../protocol/codes'
import type { Frame } from '../protocol/frame'
import type { ResponseBody, ServerConnection } from './connection'

/**
 * Application authentication and permissions on a qmq TCP port (broker and delay server alike),
 * around the frame handler of the shared connection loop.
 *
 * - AUTH (protocol/auth.ts) sets the connection's principal. It is checked synchronously, before the
 *   next frame of the same read is dispatched, so a client may pipeline its requests right behind it.
 *   A refused AUTH is answered QMQ_ERR_UNAUTHORIZED and the connection is shut down after its answers
 *   (every guess costs a new connection, and a TLS handshake when TLS is on). A second AUTH on an
 *   authenticated connection is refused (the first identity stays).
 * - Every other request except PING needs a principal: without one, or when its token or app was
 *   revoked since (checked on every request against the cache the servers refresh every few
 *   seconds), QMQ_ERR_UNAUTHORIZED.
 * - Handlers ask `produce`, `consume`, `admin` for their subjects: QMQ_ERR_FORBIDDEN when the app has
 *   no grant (grants.ts).
 * Every refusal is counted (`<prefix>_auth_refused_total{result,request,reason}`) and logged with the
 * app and the remote address, never with a credential.
 */
export class AuthGate {
  private readonly refused: Counter<'result' | 'request' | 'reason'>
  private readonly accepted: Counter<'kind'>

  constructor(
    readonly cache: CredentialCache,
    private readonly log: Logger,
    registry: Registry,
    prefix: string,
  ) {
    this.refused = new Counter({
      name: `${prefix}_auth_refused_total`,
      help: 'Requests refused by authentication (unauthorized) or permissions (forbidden), by request and reason',
      labelNames: ['result', 'request', 'reason'],
      registers: [registry],
    })
    this.accepted = new Counter({
      name: `${prefix}_auth_accepted_total`,
      help: 'Connections authenticated, by kind (app or cluster server)',
      labelNames: ['kind'],
      registers: [registry],
    })
  }

  /** Wraps a frame handler with authentication (see the class comment). */
  wrap<C extends ServerConnection>(
    handle: (frame: Frame, conn: C) => Promise<ResponseBody>,
  ): (frame: Frame, conn: C) => Promise<ResponseBody> {
    return (frame, conn) => {
      if (frame.code === RequestCode.AUTH) {
        try {
          this.authenticate(frame, conn)
          return Promise.resolve(EMPTY)
        } catch (err) {
          return Promise.reject(err)
        }
      }
      if (frame.code !== RequestCode.PING) {
        const p = conn.principal
        const request = requestCodeName(frame.code) ?? String(frame.code)
        if (p === undefined) return Promise.reject(this.unauthorized(conn, request, 'no_auth', undefined))
        if (!this.cache.stillValid(p)) {
          conn.principal = undefined
          return Promise.reject(this.unauthorized(conn, request, 'revoked', p.appCode))
        }
      }
      return handle(frame, conn)
    }
  }

  private authenticate(frame: Frame, conn: ServerConnection): void {
    if (conn.principal !== undefined)
      throw this.unauthorized(
        conn,
        'AUTH',
        'again',
        conn.principal.appCode,
        'this connection is authenticated already',
      )
    let appCode = ''
    try {
      const req = decodeAuthRequest(frame.body)
      appCode = req.appCode
      conn.principal = this.cache.authenticate(req.appCode, req.token)
      this.accepted.inc({ kind: conn.principal.cluster ? 'cluster' : 'app' })
      this.log.debug({ app: appCode, remote: conn.remoteAddress }, 'connection authenticated')
    } catch (err) {
      const reason = err instanceof AuthError ? err.reason : 'malformed'
      const e = err instanceof AuthError && err.code === 'QMQ_ERR_BUSY' ? err : undefined
      const refusal = this.unauthorized(conn, 'AUTH', reason, appCode, toQmqError(err).message)
      if (e === undefined) conn.shutdown()
      throw e ?? refusal
    }
  }

  private unauthorized(
    conn: ServerConnection,
    request: string,
    reason: string,
    app: string | undefined,
    message?: string,
  ): QmqError {
    this.refused.inc({ result: 'unauthorized', request, reason })
    this.log.warn({ app, remote: conn.remoteAddress, request, reason }, 'unauthenticated request refused')
    return new QmqError(
      'QMQ_ERR_UNAUTHORIZED',
      message ??
        (reason === 'revoked'
          ? `the credential of ${app} was revoked`
          : `${request} needs an authenticated connection: give the client appCode and token (AUTH first)`),
    )
  }

  private forbidden(conn: ServerConnection, request: string, what: string): QmqError {
    const app = conn.principal?.appCode
    this.refused.inc({ result: 'forbidden', request, reason: 'no_grant' })
    this.log.warn({ app, remote: conn.remoteAddress, request, what }, 'request refused: no permission')
    return new QmqError('QMQ_ERR_FORBIDDEN', `app ${app ?? '?'} may not ${what}`)
  }

  /** undefined when the connection's app may produce to `subject`, else the error (counted, logged). */
  produceError(conn: ServerConnection, request: string, subject: string): QmqError | undefined {
    const p = conn.principal
    if (p !== undefined && this.cache.mayProduce(p, subject)) return undefined
    return this.forbidden(conn, request, `produce to ${subject}`)
  }

  consume(conn: ServerConnection, request: string, subject: string, group: string): void {
    const p = conn.principal
    if (p !== undefined && this.cache.mayConsume(p, subject, group)) return
    throw this.forbidden(conn, request, `consume ${subject} as group ${group}`)
  }

  /** `subject` undefined = a cluster-wide admin request. */
  admin(conn: ServerConnection, request: string, subject: string | undefined): void {
    const p = conn.principal
    if (p !== undefined && this.cache.mayAdmin(p, subject)) return
    throw this.forbidden(
      conn,
      request,
      subject === undefined ? `use ${request}` : `use ${request} on ${subject}`,
    )
  }

  /** Whether the connection is a server of the cluster (cluster secret). */
  isCluster(conn: ServerConnection): boolean {
    return conn.principal?.cluster === true
  }
}

const EMPTY: readonly Buffer[] = []
