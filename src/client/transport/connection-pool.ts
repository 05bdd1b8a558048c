import { QmqError } from '../../common/errors'
import { Connection, type ConnectionOptions } from './connection'

/** One Connection per server address, shared by everything a client does with that server. */
export class ConnectionPool {
  private readonly connections = new Map<string, Connection>()
  private closed = false

  constructor(private readonly defaults: Omit<ConnectionOptions, 'address'> = {}) {}

  get(address: string): Connection {
    if (this.closed) throw new QmqError('QMQ_ERR_CLIENT_CLOSED', 'connection pool is closed')
    let c = this.connections.get(address)
    if (c === undefined) {
      c = new Connection({ ...this.defaults, address })
      this.connections.set(address, c)
    }
    return c
  }

  /** Connection.resetBackoff() of the connection to `address`, if there is one. */
  resetBackoff(address: string): void {
    this.connections.get(address)?.resetBackoff()
  }

  async close(): Promise<void> {
    this.closed = true
    const all = [...this.connections.values()]
    this.connections.clear()
    await Promise.all(all.map((c) => c.close()))
  }
}
