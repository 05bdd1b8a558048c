import { QmqError } from '../../common/errors'
import type { Logger } from '../../common/logger'
import type { MetaClient } from '../../common/meta/meta-client'
import type { RouteGroup } from '../../common/meta/types'
import type { ClientTlsOptions } from '../../common/tls'
import type { AuthRequest } from '../../common/protocol/auth'
import { decodeSendResponse, encodeSendRequest } from '../../common/protocol/commands'
import { RequestCode } from '../../common/protocol/codes'
import { Connection } from '../../client/transport/connection'

/**
 * How the dispatcher delivers due messages: as a producer would, to the real subject's broker groups.
 * `send` resolves with one result per record (undefined = stored by a broker, duplicates included)
 * and rejects when no broker could take the request at all. It never retries on its own beyond one
 * failover pass over the subject's groups: the dispatcher owns retries and backoff.
 */
export interface Sender {
  send(subject: string, records: readonly Buffer[]): Promise<(QmqError | undefined)[]>
  close(): Promise<void>
}

/** Where a subject's broker groups are (kind 'producer' routes: alive, writable groups). */
export interface RouteProvider {
  groups(subject: string): Promise<readonly RouteGroup[]>
  close?(): Promise<void>
}

/** Routes from the metaserver, cached per subject for `ttlMs`; a failed refresh keeps the old route. */
export class MetaRouteProvider implements RouteProvider {
  private readonly cache = new Map<string, { groups: RouteGroup[]; at: number }>()
  constructor(
    private readonly meta: MetaClient,
    private readonly ttlMs: number,
    private readonly clientId: string,
  ) {}

  async groups(subject: string): Promise<readonly RouteGroup[]> {
    const hit = this.cache.get(subject)
    const now = Date.now()
    if (hit !== undefined && now - hit.at < this.ttlMs) return hit.groups
    try {
      const res = await this.meta.route({ subject, kind: 'producer', clientId: this.clientId })
      const groups = res.groups.filter((g) => g.state === 'rw')
      this.cache.set(subject, { groups, at: now })
      return groups
    } catch (err) {
      if (hit !== undefined && !(err instanceof QmqError && err.code === 'QMQ_ERR_NO_ROUTE')) {
        hit.at = now - this.ttlMs / 2 // ask again soon
        return hit.groups
      }
      if (err instanceof QmqError && err.code === 'QMQ_ERR_NO_ROUTE') this.cache.delete(subject)
      throw err
    }
  }
}

/** Fixed routes (tests, benchmarks, a cluster without metaserver): every subject goes to these groups. */
export class StaticRouteProvider implements RouteProvider {
  constructor(private readonly all: readonly RouteGroup[]) {}
  async groups(): Promise<readonly RouteGroup[]> {
    return this.all
  }
}

/** `name=host:port,name=host:port` (or bare `host:port`) into route groups. */
export function parseStaticRoutes(spec: string): RouteGroup[] {
  return spec
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0)
    .map((s, i) => {
      const eq = s.indexOf('=')
      return eq > 0
        ? { name: s.slice(0, eq), address: s.slice(eq + 1), state: 'rw' as const }
        : { name: `broker${i + 1}`, address: s, state: 'rw' as const }
    })
}

export interface BrokerSenderOptions {
  routes: RouteProvider
  timeoutMs: number
  log: Logger
  maxFrameBytes?: number
  /** TLS towards the brokers (the delay server's own files: its CA, its certificate as client certificate). */
  tls?: ClientTlsOptions
  /** Sent as AUTH on each connection (the cluster secret as CLUSTER_APP: brokers with auth on need it). */
  auth?: AuthRequest
}

/**
 * Sends over the qmq TCP protocol (SEND), one multiplexed Connection per broker address.
 * Groups are tried round-robin per subject; a group that fails (connection, timeout, busy) is skipped
 * for the rest of this call and the next group is tried. Per-record errors a broker answers are
 * returned as they are.
 */
export class BrokerSender implements Sender {
  private readonly conns = new Map<string, Connection>()
  private readonly rr = new Map<string, number>()
  private closed = false

  constructor(private readonly options: BrokerSenderOptions) {}

  private conn(address: string): Connection {
    let c = this.conns.get(address)
    if (c === undefined) {
      c = new Connection({
        address,
        requestTimeoutMs: this.options.timeoutMs,
        connectTimeoutMs: Math.min(3_000, this.options.timeoutMs),
        reconnectInitialMs: 50,
        reconnectMaxMs: 2_000,
        maxFrameBytes: this.options.maxFrameBytes,
        logger: this.options.log,
        ...(this.options.tls !== undefined ? { tls: this.options.tls } : {}),
        ...(this.options.auth !== undefined ? { auth: this.options.auth } : {}),
      })
      this.conns.set(address, c)
    }
    return c
  }

  async send(subject: string, records: readonly Buffer[]): Promise<(QmqError | undefined)[]> {
    if (this.closed) throw new QmqError('QMQ_ERR_SHUTTING_DOWN', 'delay dispatcher is closing')
    const groups = await this.options.routes.groups(subject)
    if (groups.length === 0) throw new QmqError('QMQ_ERR_NO_ROUTE', `no broker group serves ${subject}`)
    const first = (this.rr.get(subject) ?? 0) % groups.length
    this.rr.set(subject, first + 1)
    let lastErr: unknown
    for (let k = 0; k < groups.length; k++) {
      const g = groups[(first + k) % groups.length] as RouteGroup
      try {
        const frame = await this.conn(g.address).request(RequestCode.SEND, encodeSendRequest(records))
        const results = decodeSendResponse(frame.body)
        if (results.length !== records.length) {
          throw new QmqError(
            'QMQ_ERR_PAYLOAD_MALFORMED',
            `broker ${g.name} answered ${results.length} results for ${records.length} records`,
          )
        }
        return results.map((r) => (r.status === 0 ? undefined : QmqError.fromStatus(r.status, r.message)))
      } catch (err) {
        lastErr = err
        this.options.log.debug(
          { err, group: g.name, subject },
          'dispatch to broker group failed; trying the next',
        )
      }
    }
    throw lastErr instanceof QmqError
      ? lastErr
      : new QmqError('QMQ_ERR_CONNECTION', String(lastErr), { cause: lastErr })
  }

  async close(): Promise<void> {
    this.closed = true
    const conns = [...this.conns.values()]
    this.conns.clear()
    await Promise.all(conns.map((c) => c.close()))
  }
}
