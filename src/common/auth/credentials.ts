import { createHash, randomBytes } from 'node:crypto'
import { QmqError } from '../errors'
import { tokenMatches } from '../token'
import { type Grant, mayAdmin, mayConsume, mayProduce } from './grants'

/**
 * Application credentials as servers hold them: per appCode, the SHA-256 hashes of its valid tokens
 * and its grants. The metaserver stores only the hashes (never a token) and serves this list to
 * servers that present the cluster secret (GET /meta/credentials); servers refresh it every few
 * seconds (CredentialRefresher), so a revoked token or grant stops working within that time, on
 * connections already open too (every request looks its app up again).
 *
 * Tokens are 32 random bytes (`qmq_` + base64url): high-entropy secrets, for which one SHA-256 is
 * the right hash (as for GitHub or npm tokens); a slow password hash would only slow every
 * connection. A token is compared by hashing it and looking the hash up.
 *
 * Servers authenticate to each other with the cluster secret: appCode CLUSTER_APP, token = the
 * secret. That principal may do everything (the delay server's SENDs of due messages, replication).
 */
export const CLUSTER_APP = '%cluster'
export const TOKEN_PREFIX = 'qmq_'
export const MAX_APP_CODE_BYTES = 64
const APP_CODE = /^[A-Za-z0-9][A-Za-z0-9._-]*$/

export interface AppCredential {
  appCode: string
  /** SHA-256 (hex) of each valid token; usually one. */
  tokenHashes: string[]
  grants: Grant[]
}

export function validateAppCode(v: unknown): string {
  if (
    typeof v !== 'string' ||
    v.length === 0 ||
    Buffer.byteLength(v) > MAX_APP_CODE_BYTES ||
    !APP_CODE.test(v)
  )
    throw new QmqError(
      'QMQ_ERR_INVALID_ARGUMENT',
      `appCode must be 1 to ${MAX_APP_CODE_BYTES} letters, digits, '.', '_' or '-' (starting with a letter or digit)`,
    )
  return v
}

export function generateToken(): string {
  return `${TOKEN_PREFIX}${randomBytes(32).toString('base64url')}`
}

export function hashToken(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex')
}

/** Who a connection authenticated as. */
export interface Principal {
  appCode: string
  /** A server of the cluster (cluster secret): every permission. */
  cluster: boolean
  /** Hash of the token presented (to notice its revocation); '' for the cluster principal. */
  tokenHash: string
}

/** Why a credential was refused (metric label and log field; never the credential). */
export type AuthFailure = 'missing' | 'unknown_app' | 'wrong_token' | 'not_loaded' | 'no_cluster_secret'

export class AuthError extends QmqError {
  constructor(
    readonly reason: AuthFailure,
    message: string,
  ) {
    super(reason === 'not_loaded' ? 'QMQ_ERR_BUSY' : 'QMQ_ERR_UNAUTHORIZED', message)
  }
}

interface Entry {
  hashes: ReadonlySet<string>
  grants: readonly Grant[]
}

export class CredentialCache {
  private apps = new Map<string, Entry>()
  private loadedAt = 0

  constructor(private readonly clusterSecret: Buffer | undefined) {}

  /** False until the first list arrived: credentials cannot be checked yet. */
  get loaded(): boolean {
    return this.loadedAt > 0
  }

  get size(): number {
    return this.apps.size
  }

  replace(list: readonly AppCredential[], now = Date.now()): void {
    const next = new Map<string, Entry>()
    for (const a of list) next.set(a.appCode, { hashes: new Set(a.tokenHashes), grants: a.grants })
    this.apps = next
    this.loadedAt = now
  }

  authenticate(appCode: string, token: string): Principal {
    if (appCode === '' || token === '')
      throw new AuthError(
        'missing',
        'AUTH needs an appCode and a token (producer/consumer options appCode and token)',
      )
    if (appCode === CLUSTER_APP) {
      if (this.clusterSecret === undefined)
        throw new AuthError(
          'no_cluster_secret',
          'this server has no cluster secret to check a server against',
        )
      if (!tokenMatches(token, this.clusterSecret))
        throw new AuthError('wrong_token', `wrong credential for ${CLUSTER_APP}`)
      return { appCode, cluster: true, tokenHash: '' }
    }
    if (!this.loaded)
      throw new AuthError(
        'not_loaded',
        'this server has not loaded the credentials from the metaserver yet; retry',
      )
    const entry = this.apps.get(appCode)
    const hash = hashToken(token)
    // The same work whether the app exists or not (a hash either way).
    if (entry === undefined)
      throw new AuthError('unknown_app', `unknown appCode or wrong token for ${appCode}`)
    if (!entry.hashes.has(hash))
      throw new AuthError('wrong_token', `unknown appCode or wrong token for ${appCode}`)
    return { appCode, cluster: false, tokenHash: hash }
  }

  /** Whether `p` is still valid (its app exists and its token was not rotated away or revoked). */
  stillValid(p: Principal): boolean {
    if (p.cluster) return true
    return this.apps.get(p.appCode)?.hashes.has(p.tokenHash) === true
  }

  private grants(p: Principal): readonly Grant[] {
    return this.apps.get(p.appCode)?.grants ?? []
  }

  mayProduce(p: Principal, subject: string): boolean {
    return p.cluster || mayProduce(this.grants(p), subject)
  }

  mayConsume(p: Principal, subject: string, group: string): boolean {
    return p.cluster || mayConsume(this.grants(p), subject, group)
  }

  mayAdmin(p: Principal, subject: string | undefined): boolean {
    return p.cluster || mayAdmin(this.grants(p), subject)
  }
}
