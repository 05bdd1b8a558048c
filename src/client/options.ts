import type { ClientEventSink } from './events'
import {
  integer,
  type OptionSpec,
  type OptionsSchema,
  optionalSecret,
  optionalString,
  string,
} from '../common/config'
import { QmqError } from '../common/errors'
import type { Logger } from '../common/logger'
import { MetaClient } from '../common/meta/meta-client'
import type { ClientTlsOptions } from '../common/tls'
import { defaultClientId } from './client-id'
import { RouteCache } from './meta/route-cache'
import { ConnectionPool } from './transport/connection-pool'

/** Options every qmq client (producer, consumer) takes. */
export interface CommonClientOptions {
  /** Your application's name, for operators (QMQ's appCode). */
  appCode: string
  /** The discovery URL `http://host:port/meta/address` (or a metaserver base URL). */
  metaServer: string
  /** Identity of this client; default `hostname@pid@random`. */
  clientId: string | undefined
  /** How often cached routes are asked for again. */
  routeRefreshMs: number
  /** Bound on the first route lookup of a subject when the metaserver does not answer. */
  firstLookupTimeoutMs: number
  /** Bound on one metaserver HTTP request. */
  metaTimeoutMs: number
  connectTimeoutMs: number
  /** Requests on the wire per broker connection; more wait in the connection's queue. */
  maxInFlightPerConnection: number
  reconnectInitialMs: number
  reconnectMaxMs: number
  /**
   * TLS towards brokers and delay servers (and an https metaserver): `{ ca, cert, key }` as PEM
   * strings or Buffers (cert + key for servers that require client certificates), or `true` for TLS
   * with Node's default trust. Unset = plain TCP.
   */
  tls: ClientTlsOptions | true | undefined
  /**
   * The application's token (from `qmq auth create`), sent with appCode in the first frame of every
   * connection to brokers and delay servers that require authentication, and with the metaserver route
   * lookups and client heartbeats (a metaserver with `auth` requires it there). Read it from a file or
   * an environment variable, never put it in code or on a command line.
   */
  token: string | undefined
}

const TLS_KEYS = new Set(['ca', 'cert', 'key', 'servername', 'rejectUnauthorized'])

const clientTlsSpec: OptionSpec<ClientTlsOptions | true | undefined> = {
  default: undefined,
  doc: 'TLS: true, or { ca, cert, key, servername, rejectUnauthorized }',
  parse: (raw) => (raw === 'true' ? true : raw),
  check: (v) => {
    if (v === undefined || v === true) return undefined
    if (v === null || typeof v !== 'object' || Array.isArray(v))
      return 'must be true or an object { ca, cert, key, servername, rejectUnauthorized }'
    for (const [k, x] of Object.entries(v)) {
      if (!TLS_KEYS.has(k))
        return `has an unknown key ${JSON.stringify(k)} (known: ${[...TLS_KEYS].join(', ')})`
      if (k === 'rejectUnauthorized' ? typeof x !== 'boolean' : typeof x !== 'string' && !Buffer.isBuffer(x))
        return `.${k} must be ${k === 'rejectUnauthorized' ? 'a boolean' : 'a PEM string or Buffer'}`
    }
    return undefined
  },
}

export const commonClientSchema: OptionsSchema<CommonClientOptions> = {
  appCode: string({ default: '', doc: 'application name (QMQ appCode)' }),
  metaServer: string({ default: '', doc: 'discovery URL http://host:port/meta/address' }),
  clientId: optionalString({ doc: 'client id; default hostname@pid@random' }),
  routeRefreshMs: integer({ default: 30_000, min: 100, doc: 'route refresh interval (ms)' }),
  firstLookupTimeoutMs: integer({ default: 5_000, min: 10, doc: 'first route lookup bound (ms)' }),
  metaTimeoutMs: integer({ default: 2_000, min: 10, doc: 'one metaserver request bound (ms)' }),
  connectTimeoutMs: integer({ default: 3_000, min: 10, doc: 'TCP connect timeout (ms)' }),
  maxInFlightPerConnection: integer({ default: 1_024, min: 1, doc: 'requests on the wire per connection' }),
  reconnectInitialMs: integer({ default: 100, min: 1, doc: 'first reconnect backoff (ms)' }),
  reconnectMaxMs: integer({ default: 1_000, min: 1, doc: 'largest reconnect backoff (ms)' }),
  tls: clientTlsSpec,
  token: optionalSecret({ doc: "the application's token (qmq auth create)" }),
}

/** What a started client holds: one metaserver client, one route cache, one connection per server. */
export interface ClientRuntime {
  clientId: string
  meta: MetaClient
  routes: RouteCache
  pool: ConnectionPool
}

export function requireMetaServer(component: string, o: CommonClientOptions): void {
  if (o.metaServer.length === 0) {
    throw new QmqError(
      'QMQ_ERR_CONFIG_INVALID',
      `${component}: metaServer is required (e.g. http://127.0.0.1:8080/meta/address)`,
    )
  }
  if (o.appCode.length === 0) {
    throw new QmqError(
      'QMQ_ERR_CONFIG_INVALID',
      `${component}: appCode is required (your application's name)`,
    )
  }
}

export function createRuntime(o: CommonClientOptions, log: Logger, events?: ClientEventSink): ClientRuntime {
  const clientId = o.clientId ?? defaultClientId()
  const tls = o.tls === true ? {} : o.tls
  const meta = new MetaClient({
    ...(tls !== undefined ? { tls } : {}),
    url: o.metaServer,
    // Route lookups and client heartbeats carry the app's credential (a metaserver with auth needs it).
    ...(o.token !== undefined ? { auth: { appCode: o.appCode, token: o.token } } : {}),
    timeoutMs: Math.min(o.metaTimeoutMs, o.firstLookupTimeoutMs),
    connectTimeoutMs: Math.min(1_000, o.metaTimeoutMs),
    connections: 2,
  })
  const routes = new RouteCache({
    meta,
    clientId,
    refreshIntervalMs: o.routeRefreshMs,
    firstLookupTimeoutMs: o.firstLookupTimeoutMs,
    logger: log,
  })
  const pool = new ConnectionPool({
    connectTimeoutMs: o.connectTimeoutMs,
    maxInFlight: o.maxInFlightPerConnection,
    reconnectInitialMs: o.reconnectInitialMs,
    reconnectMaxMs: o.reconnectMaxMs,
    logger: log,
    events,
    ...(tls !== undefined ? { tls } : {}),
    ...(o.token !== undefined ? { auth: { appCode: o.appCode, token: o.token } } : {}),
  })
  // A group routed to a new address (a failover promoted its slave, issue 14): the connection to
  // that address is tried at once, whatever backoff earlier failures there left (a former master
  // back on its address as a slave, and now promoted again).
  routes.onChange((_q, groups, before) => {
    for (const g of groups) {
      if (!before.some((b) => b.name === g.name && b.address === g.address)) pool.resetBackoff(g.address)
    }
  })
  if (events !== undefined) {
    routes.onChange((q, groups) =>
      events('routeChange', {
        kind: q.kind,
        subject: q.subject,
        consumerGroup: q.group,
        groups: groups.map((g) => g.name),
      }),
    )
  }
  return { clientId, meta, routes, pool }
}

export async function closeRuntime(rt: ClientRuntime): Promise<void> {
  rt.routes.close()
  await Promise.all([rt.pool.close(), rt.meta.close()])
}
