import { connect, type Socket } from 'node:net'
import { decodeErrorBody } from '../../src/common/protocol/commands'
import { encodeFrameHeader, FLAG_RESPONSE, type Frame, FrameDecoder } from '../../src/common/protocol/frame'

/**
 * A minimal test-side client of the broker's TCP protocol: sends frames, matches answers by
 * requestId. Not the SDK (src/client): no retries, no reconnects, no pooling. It exposes the raw
 * socket so tests can also write garbage on it.
 */
export interface RawResponse {
  status: number
  code: number
  requestId: number
  body: Buffer
  /** The error message of a status != 0 answer. */
  message: string
}

export class RawClient {
  readonly socket: Socket
  private readonly decoder = new FrameDecoder()
  private readonly waiting = new Map<
    number,
    { resolve: (r: RawResponse) => void; reject: (e: Error) => void }
  >()
  private nextId = 1
  private closedError: Error | undefined
  /** Frames that matched no waiting request (e.g. a connection-level error frame with requestId 0). */
  readonly unsolicited: Frame[] = []
  readonly closed: Promise<void>

  /**
   * `copyBodies: false` hands out answer bodies as views of the socket's read chunks (Node allocates a
   * fresh chunk per read, so a view stays valid), as the SDK does: benchmarks use it so the harness
   * does not copy every answer. Tests keep the default (a body independent of its neighbours).
   */
  private constructor(socket: Socket, copyBodies: boolean) {
    this.socket = socket
    socket.on('data', (chunk: Buffer) => {
      let frames: Frame[]
      try {
        frames = this.decoder.push(chunk)
      } catch (err) {
        socket.destroy(err as Error)
        return
      }
      for (const f of frames) {
        const w = this.waiting.get(f.requestId)
        if (w === undefined || (f.flags & FLAG_RESPONSE) === 0) {
          this.unsolicited.push({ ...f, body: Buffer.from(f.body) })
          continue
        }
        this.waiting.delete(f.requestId)
        w.resolve({
          status: f.status,
          code: f.code,
          requestId: f.requestId,
          body: copyBodies ? Buffer.from(f.body) : f.body,
          message: f.status === 0 ? '' : decodeErrorBody(f.body),
        })
      }
    })
    this.closed = new Promise((resolve) => {
      socket.on('close', () => {
        this.closedError ??= new Error('connection closed')
        for (const w of this.waiting.values()) w.reject(this.closedError)
        this.waiting.clear()
        resolve()
      })
    })
    socket.on('error', (err) => {
      this.closedError = err
    })
  }

  static connect(port: number, host = '127.0.0.1', opts: { copyBodies?: boolean } = {}): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const socket = connect({ port, host, noDelay: true })
      socket.once('connect', () => {
        socket.removeListener('error', reject)
        resolve(new RawClient(socket, opts.copyBodies ?? true))
      })
      socket.once('error', reject)
    })
  }

  get isClosed(): boolean {
    return this.socket.destroyed
  }

  /** Sends a request and resolves with its answer (whatever its status). */
  request(
    code: number,
    body: Buffer | readonly Buffer[] = [],
    options: { version?: number; flags?: number } = {},
  ): Promise<RawResponse> {
    const parts = Buffer.isBuffer(body) ? [body] : [...body]
    const length = parts.reduce((n, p) => n + p.length, 0)
    const requestId = this.nextId++
    if (this.nextId > 0xffffffff) this.nextId = 1
    const header = encodeFrameHeader(
      { code, flags: options.flags ?? 0, status: 0, requestId, version: options.version },
      length,
    )
    return new Promise((resolve, reject) => {
      if (this.socket.destroyed) {
        reject(this.closedError ?? new Error('connection closed'))
        return
      }
      this.waiting.set(requestId, { resolve, reject })
      this.socket.cork()
      this.socket.write(header)
      for (const p of parts) this.socket.write(p)
      this.socket.uncork()
    })
  }

  /** Like request() but throws on a non-zero status; resolves with the answer body. */
  async call(code: number, body: Buffer | readonly Buffer[] = []): Promise<Buffer> {
    const res = await this.request(code, body)
    if (res.status !== 0) {
      const err = new Error(`status ${res.status}: ${res.message}`) as Error & { status: number }
      err.status = res.status
      throw err
    }
    return res.body
  }

  writeRaw(bytes: Buffer): void {
    this.socket.write(bytes)
  }

  close(): Promise<void> {
    this.socket.end()
    const timer = setTimeout(() => this.socket.destroy(), 1000)
    return this.closed.finally(() => clearTimeout(timer))
  }

  destroy(): void {
    this.socket.destroy()
  }
}
