import { type AddressInfo, createServer, type Server, type Socket } from 'node:net'
import { createServer as createTlsServer, type Server as TlsServer } from 'node:tls'
import type { QmqError } from '../errors'
import type { Logger } from '../logger'
import type { Frame } from '../protocol/frame'
import type { ServerTls } from '../tls'
import {
  type CloseReason,
  type ConnectionHooks,
  type ConnectionOptions,
  type ResponseBody,
  ServerConnection,
} from './connection'
import { PartialFrameBudget } from './partial-frame-budget'

/**
 * The TCP listener of a qmq server (the broker's and the delay server's port): accepts sockets, wraps
 * each in a ServerConnection (or a subclass, `createConnection`), enforces the server-wide limits
 * (connections, partial-frame budget, frame deadlines) and closes every connection gracefully
 * (answers in flight first) or by force after a deadline.
 */
const CLOSE_GRACE_MS = 500
/**
 * Node's stream highWaterMark of accepted sockets; not above the smallest `writeHighWaterBytes` (16 KiB)
 * so that a socket above a connection's mark has had a write return false and will emit 'drain'.
 */
const SOCKET_HIGH_WATER_MARK = 16 * 1024

export interface TcpServerOptions extends ConnectionOptions {
  host: string
  port: number
  maxConnections: number
  /** Bytes of partial frames held across all connections; raised to maxFrameBytes if smaller. */
  maxPartialFrameBytes: number
  /**
   * TLS (common/tls.ts): the same frames inside a TLS session. A connection becomes a ServerConnection
   * once its handshake is done; a failed handshake (no or a wrong client certificate under mTLS, a
   * plain-TCP client) is reported to `onTlsError` and never reaches the connection loop. The handshake
   * must finish within firstFrameTimeoutMs (10 s when that is 0).
   */
  tls?: ServerTls
}

export type ConnectionFactory<C extends ServerConnection> = (
  socket: Socket,
  options: ConnectionOptions,
  hooks: ConnectionHooks,
  log: Logger,
  budget: PartialFrameBudget,
) => C

export interface TcpServerHooks<C extends ServerConnection> {
  handle(frame: Frame, connection: C): Promise<ResponseBody>
  onConnection?(connection: C): void
  onProtocolError?(connection: C, err: QmqError): void
  /** The server closed a connection for `reason` (a slow, idle or misbehaving client). */
  onClosedFor?(connection: C, reason: CloseReason): void
  /** A TLS handshake failed (TLS listeners only). */
  onTlsError?(err: Error, remoteAddress: string): void
}

export interface TcpServerStats {
  connections: number
  /** Bytes held in partial frames across connections (bounded by the budget). */
  partialFrameBytes: number
  /** Unsent answer bytes across connections. */
  writeBufferBytes: number
  requestsInFlight: number
  requestsQueued: number
}

export class TcpServer<C extends ServerConnection = ServerConnection> {
  private readonly server: Server
  private readonly tlsServer: TlsServer | undefined
  private readonly connections = new Set<C>()
  private readonly options: TcpServerOptions
  private readonly hooks: TcpServerHooks<C>
  private readonly log: Logger
  private readonly create: ConnectionFactory<C>
  private readonly budget: PartialFrameBudget
  private sweepTimer: NodeJS.Timeout | undefined

  constructor(
    options: TcpServerOptions,
    hooks: TcpServerHooks<C>,
    log: Logger,
    createConnection?: ConnectionFactory<C>,
  ) {
    this.options = options
    this.hooks = hooks
    this.log = log
    this.create =
      createConnection ?? ((socket, o, h, l, b) => new ServerConnection(socket, o, h, l, b) as unknown as C)
    this.budget = new PartialFrameBudget(Math.max(options.maxPartialFrameBytes, options.maxFrameBytes))
    // allowHalfOpen: a client that ends its side still gets the answers of its requests in flight.
    const netOptions = { allowHalfOpen: true, noDelay: true, highWaterMark: SOCKET_HIGH_WATER_MARK }
    const tls = options.tls
    if (tls === undefined) this.server = createServer(netOptions, (socket) => this.accept(socket))
    else {
      // Not half-open during the handshake: a client that gives up on it (it refused our certificate)
      // ends its side, and a half-open TLS socket would then wait for ever. Half-open once secure.
      const server = createTlsServer(
        {
          ...netOptions,
          allowHalfOpen: false,
          ...tls.options(),
          handshakeTimeout: options.firstFrameTimeoutMs > 0 ? options.firstFrameTimeoutMs : 10_000,
        },
        (socket) => {
          socket.allowHalfOpen = true
          this.accept(socket)
        },
      )
      server.on('tlsClientError', (err, socket) => {
        const remote = `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? 0}`
        this.log.info({ err: err.message, remote }, 'TLS handshake failed')
        this.hooks.onTlsError?.(err, remote)
        // With a 'tlsClientError' listener Node leaves the socket open: close it here.
        socket.destroy()
      })
      tls.attach(server)
      this.server = server
      this.tlsServer = server
    }
    this.server.maxConnections = options.maxConnections
  }

  get connectionCount(): number {
    return this.connections.size
  }

  stats(): TcpServerStats {
    let writeBufferBytes = 0
    let requestsInFlight = 0
    let requestsQueued = 0
    for (const c of this.connections) {
      writeBufferBytes += c.pendingWriteBytes
      requestsInFlight += c.requestsInFlight
      requestsQueued += c.requestsQueued
    }
    return {
      connections: this.connections.size,
      partialFrameBytes: this.budget.bytes,
      writeBufferBytes,
      requestsInFlight,
      requestsQueued,
    }
  }

  listen(): Promise<AddressInfo> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject)
      this.server.listen({ host: this.options.host, port: this.options.port }, () => {
        this.server.removeListener('error', reject)
        this.server.on('error', (err) => this.log.error(err, 'tcp server error'))
        this.startSweep()
        resolve(this.server.address() as AddressInfo)
      })
    })
  }

  /** Checks frame deadlines a few times per deadline (at most once per second, at least every 25 ms). */
  private startSweep(): void {
    const deadline = this.options.frameTimeoutMs
    if (deadline <= 0 || this.sweepTimer !== undefined) return
    const every = Math.min(1_000, Math.max(25, Math.floor(deadline / 4)))
    this.sweepTimer = setInterval(() => {
      const now = Date.now()
      for (const c of this.connections) c.checkFrameDeadline(now)
    }, every)
    this.sweepTimer.unref()
  }

  private accept(socket: Socket): void {
    let conn: C | undefined
    const hooks: ConnectionHooks = {
      handle: (frame) => this.hooks.handle(frame, conn as C),
      onClose: () => {
        if (conn !== undefined) this.connections.delete(conn)
      },
      onError: (_c, err) => this.hooks.onProtocolError?.(conn as C, err),
      onClosedFor: (_c, reason) => this.hooks.onClosedFor?.(conn as C, reason),
    }
    conn = this.create(socket, this.options, hooks, this.log, this.budget)
    this.connections.add(conn)
    this.hooks.onConnection?.(conn)
  }

  /** Stops accepting; lets requests in flight answer (up to `timeoutMs`), then closes every socket. */
  async close(timeoutMs: number): Promise<void> {
    if (this.sweepTimer !== undefined) clearInterval(this.sweepTimer)
    this.sweepTimer = undefined
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()))
    const conns = [...this.connections]
    for (const c of conns) c.shutdown()
    let timer: NodeJS.Timeout | undefined
    const deadline = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, timeoutMs)
    })
    await Promise.race([Promise.all(conns.map((c) => c.whenIdle())), deadline])
    if (timer !== undefined) clearTimeout(timer)
    // Ended sockets flush their last answers and close; make sure none is left after a short grace.
    // The grace timer keeps the process alive: a socket that never closes by itself (one closed for
    // its frame deadline or the budget is not read any more, so its peer's end goes unseen) keeps
    // nothing alive, and with an unref'd timer the process could exit here, before the caller's
    // close (the store's) ran.
    const flushed = Promise.all(conns.map((c) => c.whenClosed()))
    let grace: NodeJS.Timeout | undefined
    await Promise.race([flushed, new Promise<void>((r) => (grace = setTimeout(r, CLOSE_GRACE_MS)))])
    clearTimeout(grace)
    for (const c of this.connections) c.destroy()
    await closed
    if (this.tlsServer !== undefined) this.options.tls?.detach(this.tlsServer)
  }
}
