import { QmqError } from '../common/errors'
import { MetaClient } from '../common/meta/meta-client'
import type { GroupInfo } from '../common/meta/types'
import type { Frame } from '../common/protocol/frame'
import { Connection } from '../client/transport/connection'
import { aliveBrokerGroups } from '../client/consumer/reset-cursor'
import { type ClientTlsOptions, clientTlsFromFiles } from '../common/tls'
import { CLUSTER_APP } from '../common/auth/credentials'
import type { AuthRequest } from '../common/protocol/auth'
import { CLUSTER_SECRET_ENV, CLUSTER_SECRET_FILE_FLAG } from '../common/token'
import { type FlagSpec, type ParsedArgs, stringFlag } from './args'
import { readSecretFile } from './service-options'

/**
 * What the admin commands talk to: the metaserver (HTTP, through MetaClient) and brokers (the admin
 * requests of the TCP protocol). `--metaserver URL` or QMQ_METASERVER picks the metaserver (default
 * http://127.0.0.1:8080); `--token` or QMQ_ADMIN_TOKEN is sent with admin writes (the metaserver's
 * and the brokers' cursor resets, dead-letter redrives and forget-group) and with message queries (a metaserver with an admin token
 * shows bodies and properties only to it). The cluster secret, which
 * the delay servers' CANCEL and dead-letter requests carry, comes from QMQ_CLUSTER_SECRET or
 * `--cluster-secret-file FILE`, never from a flag with the value (`ps` shows command lines).
 */
export const DEFAULT_METASERVER_URL = 'http://127.0.0.1:8080'
const REQUEST_TIMEOUT_MS = 10_000

export class ClusterAdmin {
  readonly meta: MetaClient
  /** Sent with admin writes; undefined = none given. */
  readonly adminToken: string | undefined
  /** Sent with the delay servers' CANCEL and dead-letter requests; undefined = none given. */
  readonly clusterSecret: string | undefined
  private readonly connections = new Map<string, Connection>()
  /** TLS towards the metaserver (https URLs) and the brokers; undefined = plain TCP. */
  readonly tls: ClientTlsOptions | undefined
  /**
   * AUTH of the broker and delay connections (servers with --auth): QMQ_APP_CODE with its token
   * (--app-token-file or QMQ_APP_TOKEN), else the cluster secret when one is given.
   */
  readonly auth: AuthRequest | undefined

  constructor(flags: ParsedArgs['flags'], env: NodeJS.ProcessEnv = process.env) {
    const url = stringFlag(flags, 'metaserver') ?? env.QMQ_METASERVER ?? DEFAULT_METASERVER_URL
    const adminToken = stringFlag(flags, 'token') ?? env.QMQ_ADMIN_TOKEN
    this.adminToken = adminToken === '' ? undefined : adminToken
    if (flags.clusterSecret !== undefined)
      throw new QmqError(
        'QMQ_ERR_USAGE',
        `--cluster-secret is not accepted: every user of the machine can read a command line (ps); set ${CLUSTER_SECRET_ENV} or use ${CLUSTER_SECRET_FILE_FLAG} FILE`,
      )
    const secretFile = flags.clusterSecretFile
    const secret =
      secretFile !== undefined
        ? readSecretFile(CLUSTER_SECRET_FILE_FLAG, secretFile)
        : env[CLUSTER_SECRET_ENV]
    this.clusterSecret = secret === '' ? undefined : secret
    this.tls = cliTls(flags, env)
    const appCode = stringFlag(flags, 'appCode') ?? (env.QMQ_APP_CODE || undefined)
    const tokenFile = stringFlag(flags, 'appTokenFile')
    const appToken =
      tokenFile !== undefined ? readSecretFile('--app-token-file', tokenFile) : env.QMQ_APP_TOKEN || undefined
    if ((appCode === undefined) !== (appToken === undefined))
      throw new QmqError(
        'QMQ_ERR_USAGE',
        '--app-code (QMQ_APP_CODE) and its token (--app-token-file or QMQ_APP_TOKEN) go together',
      )
    this.auth =
      appCode !== undefined && appToken !== undefined
        ? { appCode, token: appToken }
        : this.clusterSecret !== undefined
          ? { appCode: CLUSTER_APP, token: this.clusterSecret }
          : undefined
    this.meta = new MetaClient({
      url,
      ...(adminToken ? { adminToken } : {}),
      ...(this.auth !== undefined ? { auth: this.auth } : {}),
      timeoutMs: 5_000,
      ...(this.tls !== undefined ? { tls: this.tls } : {}),
    })
  }

  /** Alive broker groups (kind 'broker'), optionally only those of a subject's route. */
  brokerGroups(subject?: string): Promise<GroupInfo[]> {
    return aliveBrokerGroups(this.meta, subject)
  }

  /** One admin request to a broker; rejects with the broker's QmqError. */
  request(address: string, code: number, body: Buffer | readonly Buffer[]): Promise<Frame> {
    let c = this.connections.get(address)
    if (c === undefined) {
      c = new Connection({
        address,
        requestTimeoutMs: REQUEST_TIMEOUT_MS,
        ...(this.tls !== undefined ? { tls: this.tls } : {}),
        ...(this.auth !== undefined ? { auth: this.auth } : {}),
      })
      this.connections.set(address, c)
    }
    return c.request(code, body)
  }

  async close(): Promise<void> {
    await Promise.all([...this.connections.values()].map((c) => c.close()))
    await this.meta.close()
  }
}

/** Runs fn with a ClusterAdmin and always closes it. */
export async function withCluster<T>(
  flags: ParsedArgs['flags'],
  fn: (c: ClusterAdmin) => Promise<T>,
): Promise<T> {
  const cluster = new ClusterAdmin(flags)
  try {
    return await fn(cluster)
  } finally {
    await cluster.close()
  }
}

export const METASERVER_FLAG: FlagSpec = {
  name: 'metaserver',
  value: 'URL',
  doc: `metaserver base or /meta/address URL (default ${DEFAULT_METASERVER_URL}) [QMQ_METASERVER]`,
}

/** The flags of every admin command. */
export const CLUSTER_FLAGS: readonly FlagSpec[] = [
  METASERVER_FLAG,
  {
    name: 'token',
    value: 'TOKEN',
    doc: 'admin token for metaserver and broker admin writes, and message bodies in queries [QMQ_ADMIN_TOKEN]',
  },
  {
    name: 'cluster-secret-file',
    value: 'FILE',
    doc: 'the cluster secret, for qmq cancel and qmq delay-dlq [QMQ_CLUSTER_SECRET]',
  },
  { name: 'tls', doc: 'talk TLS to brokers and delay servers (implied by the --tls-*-file flags) [QMQ_TLS]' },
  { name: 'tls-ca-file', value: 'FILE', doc: 'PEM CA bundle to trust [QMQ_TLS_CA_FILE]' },
  {
    name: 'tls-cert-file',
    value: 'FILE',
    doc: 'PEM client certificate, for servers that require one [QMQ_TLS_CERT_FILE]',
  },
  { name: 'tls-key-file', value: 'FILE', doc: 'PEM key of --tls-cert-file [QMQ_TLS_KEY_FILE]' },
  {
    name: 'app-code',
    value: 'APP',
    doc: 'application to authenticate as to brokers and delay servers [QMQ_APP_CODE]',
  },
  { name: 'app-token-file', value: 'FILE', doc: 'the token of --app-code [QMQ_APP_TOKEN]' },
  { name: 'json', doc: 'print JSON instead of a table' },
]

/**
 * The SDK identity and TLS of a command that sends or consumes as an application (qmq send / tail,
 * qmq outbox-watchdog): QMQ_APP_CODE (else `defaultAppCode`) with QMQ_APP_TOKEN for servers started
 * with --auth, and the --tls* flags / QMQ_TLS* variables (cliTls).
 */
export function sdkIdentity(
  flags: ParsedArgs['flags'],
  env: NodeJS.ProcessEnv,
  defaultAppCode: string,
): { appCode: string; token?: string; tls?: ClientTlsOptions } {
  const tls = cliTls(flags, env)
  return {
    appCode: env.QMQ_APP_CODE || defaultAppCode,
    ...(env.QMQ_APP_TOKEN ? { token: env.QMQ_APP_TOKEN } : {}),
    ...(tls !== undefined ? { tls } : {}),
  }
}

/**
 * The CLI's TLS client options: `--tls-ca-file`, `--tls-cert-file`, `--tls-key-file` (or
 * QMQ_TLS_CA_FILE...); `--tls` / QMQ_TLS=1 alone = TLS with Node's default trust. None = plain TCP.
 */
export function cliTls(flags: ParsedArgs['flags'], env: NodeJS.ProcessEnv): ClientTlsOptions | undefined {
  const tlsCaFile = stringFlag(flags, 'tlsCaFile') ?? (env.QMQ_TLS_CA_FILE || undefined)
  const tlsCertFile = stringFlag(flags, 'tlsCertFile') ?? (env.QMQ_TLS_CERT_FILE || undefined)
  const tlsKeyFile = stringFlag(flags, 'tlsKeyFile') ?? (env.QMQ_TLS_KEY_FILE || undefined)
  if ((tlsCertFile === undefined) !== (tlsKeyFile === undefined))
    throw new QmqError('QMQ_ERR_USAGE', '--tls-cert-file and --tls-key-file go together')
  const files = clientTlsFromFiles({ tlsCaFile, tlsCertFile, tlsKeyFile, tlsRequireClientCert: false })
  if (files !== undefined) return files
  return flags.tls === true || env.QMQ_TLS === '1' || env.QMQ_TLS === 'true' ? {} : undefined
}
