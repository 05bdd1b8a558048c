import { type AddressInfo, createServer, type Server, type Socket } from 'node:net'
import type { QmqError } from '../../common/errors'
import type { Logger } from '../../common/logger'
import { Connection, type ConnectionOptions, type FrameHandler } from './connection'

/**
 * The broker's TCP listener: accepts sockets, wraps each in a Connection, and closes them all
 * gracefully (answers in flight first) or by force after a deadline.
 */
const CLOSE_GRACE_MS = 500

export interface TcpServerOptions extends ConnectionOptions {
  host: string
  port: number
  maxConnections: number
}

export interface TcpServerHooks {
  handle: FrameHandler
  onConnection?(connection: Connection): void
  onProtocolError?(connection: Connection, err: QmqError): void
}

export class TcpServer {
  private readonly server: Server
  private readonly connections = new Set<Connection>()
  private readonly options: TcpServerOptions
  private readonly hooks: TcpServerHooks
  private readonly log: Logger

  constructor(options: TcpServerOptions, hooks: TcpServerHooks, log: Logger) {
    this.options = options
    this.hooks = hooks
    this.log = log
    // allowHalfOpen: a client that ends its side still gets the answers of its requests in flight.
    this.server = createServer({ allowHalfOpen: true, noDelay: true }, (socket) => this.accept(socket))
    this.server.maxConnections = options.maxConnections
  }

  get connectionCount(): number {
    return this.connections.size
  }

  listen(): Promise<AddressInfo> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject)
      this.server.listen({ host: this.options.host, port: this.options.port }, () => {
        this.server.removeListener('error', reject)
        this.server.on('error', (err) => this.log.error(err, 'tcp server error'))
        resolve(this.server.address() as AddressInfo)
      })
    })
  }

  private accept(socket: Socket): void {
    const conn = new Connection(
      socket,
      this.options,
      {
        handle: this.hooks.handle,
        onClose: (c) => this.connections.delete(c),
        onError: (c, err) => this.hooks.onProtocolError?.(c, err),
      },
      this.log,
    )
    this.connections.add(conn)
    this.hooks.onConnection?.(conn)
  }

  /** Stops accepting; lets requests in flight answer (up to `timeoutMs`), then closes every socket. */
  async close(timeoutMs: number): Promise<void> {
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
    const flushed = Promise.all(conns.map((c) => c.whenClosed()))
    await Promise.race([flushed, new Promise((r) => setTimeout(r, CLOSE_GRACE_MS).unref())])
    for (const c of this.connections) c.destroy()
    await closed
  }
}
