import type { FollowerStatus } from '../replication/follower'
import type { SlaveStatus } from '../replication/source'
import { createServer, type RequestListener, type Server } from 'node:http'
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https'
import type { AddressInfo } from 'node:net'
import type { Logger } from '../../common/logger'
import { type Registry, renderMetrics } from '../../common/metrics'
import type { ServerTls } from '../../common/tls'

/**
 * The broker's HTTP port: `GET /metrics` (Prometheus text) and `GET /health` (JSON). Nothing else.
 */
export interface BrokerHealth {
  /** 'failed': the store failed closed (writes refused until restarted); /health answers 503 unless 'ok'. */
  status: 'ok' | 'closing' | 'failed'
  /** Why the status is not 'ok' ('failed': the store's error code and message). */
  reason?: string
  group: string
  role: string
  address: string
  uptimeMs: number
  connections: number
  subjects: number
  longPollWaiters: number
  metaserver: { configured: boolean; lastHeartbeatOkAt: number; lastError: string | undefined }
  replication: ReplicationHealth
}

/** /health's `replication`: a master's view of its slaves, or a slave's progress. */
export type ReplicationHealth =
  | {
      role: 'master' | 'slave'
      epoch: number
      mode: 'sync' | 'async'
      /** 'sync' with a known slave: SENDs wait for one. */
      requiresSlave: boolean
      /** Writing alone under 'sync' (degradedWrites). */
      degraded: boolean
      inSync: boolean
      slaves: SlaveStatus[]
    }
  | { role: 'slave'; epoch: number; slave: FollowerStatus }

export class BrokerHttpServer {
  private readonly server: Server
  private readonly log: Logger
  private readonly tls: ServerTls | undefined

  /** With `tls`: HTTPS with the broker's certificate (reloaded with it). */
  constructor(registry: Registry, health: () => BrokerHealth, log: Logger, tls?: ServerTls) {
    this.log = log
    this.tls = tls
    const handler: RequestListener = (req, res) => {
      const path = (req.url ?? '/').split('?')[0]
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405, { 'content-type': 'application/json', allow: 'GET' })
        res.end(JSON.stringify({ code: 'QMQ_ERR_METHOD_NOT_ALLOWED', status: 205, message: 'use GET' }))
        return
      }
      if (path === '/metrics') {
        renderMetrics(registry).then(
          ({ contentType, body }) => {
            res.writeHead(200, { 'content-type': contentType })
            res.end(body)
          },
          (err: unknown) => {
            this.log.error(err instanceof Error ? err : { err }, 'metrics failed')
            res.writeHead(500, { 'content-type': 'text/plain' })
            res.end('metrics failed')
          },
        )
        return
      }
      if (path === '/health') {
        const h = health()
        res.writeHead(h.status === 'ok' ? 200 : 503, { 'content-type': 'application/json' })
        res.end(JSON.stringify(h))
        return
      }
      res.writeHead(404, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ code: 'QMQ_ERR_NOT_FOUND', status: 27, message: `no route ${path}` }))
    }
    if (tls === undefined) this.server = createServer(handler)
    else {
      const server = createHttpsServer(tls.options(), handler)
      tls.attach(server)
      this.server = server
    }
    this.server.keepAliveTimeout = 5_000
  }

  listen(host: string, port: number): Promise<AddressInfo> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject)
      this.server.listen({ host, port }, () => {
        this.server.removeListener('error', reject)
        resolve(this.server.address() as AddressInfo)
      })
    })
  }

  close(): Promise<void> {
    this.tls?.detach(this.server as HttpsServer)
    return new Promise((resolve) => {
      this.server.close(() => resolve())
      this.server.closeAllConnections()
    })
  }
}
