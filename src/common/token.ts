import { createHash, timingSafeEqual } from 'node:crypto'
import { QmqError } from './errors'

/**
 * Whether a credential a request carried (an admin token, the cluster secret) equals the configured
 * one, in constant time: both are hashed first (SHA-256), so neither a wrong prefix nor a wrong length
 * shows in the time taken. `expected` is the configured credential as UTF-8 bytes, made once at start.
 */
export function tokenMatches(given: string | undefined, expected: Buffer): boolean {
  const a = createHash('sha256')
    .update(given ?? '', 'utf8')
    .digest()
  const b = createHash('sha256').update(expected).digest()
  return timingSafeEqual(a, b) && given !== undefined && given.length > 0
}

/** Where the services take the cluster secret from (never a plain flag: `ps` shows command lines). */
export const CLUSTER_SECRET_ENV = 'QMQ_CLUSTER_SECRET'
export const CLUSTER_SECRET_FILE_FLAG = '--cluster-secret-file'

/** The error of a service that needs the cluster secret and was given none. */
export function missingClusterSecret(service: string, why: string): QmqError {
  return new QmqError(
    'QMQ_ERR_CONFIG_INVALID',
    `${service} needs the cluster secret (${why}): set ${CLUSTER_SECRET_ENV}, or ${CLUSTER_SECRET_FILE_FLAG} FILE, or clusterSecret in code; every service of a cluster uses the same one (e.g. openssl rand -hex 32)`,
    {
      details: {
        problems: [`clusterSecret: not set (${CLUSTER_SECRET_ENV} or ${CLUSTER_SECRET_FILE_FLAG})`],
      },
    },
  )
}
