import type { ClientEventSink } from '../events'
import { connect, type Socket } from 'node:net'
import { connect as tlsConnect } from 'node:tls'
import { QmqError } from '../../common/errors'
import type { Logger } from '../../common/logger'
import { silentLogger } from '../../common/logger'
import { decodeErrorBody } from '../../common/protocol/commands'
import {
  DEFAULT_MAX_FRAME_BYTES,
  FLAG_RESPONSE,
  type Frame,
  FrameDecoder,
  HEADER_BYTES,
  writeFrameHeader,
} from '../../common/protocol/frame'
import { type ClientTlsOptions, tlsConnectOptions } from '../../common/tls'
import { Backoff, RETRY_MAX_MS } from '../retry'
import { type AuthRequest, encodeAuthRequest } from '../../common/protocol/auth'
import { RequestCode } from '../../common/protocol/codes'

/**
 * One multiplexed TCP connection to a broker or delay server.
 *
 * - Many requests in flight, correlated by a u32 request id; at most `maxInFlight` are on the wire,
 *   the rest wait in a FIFO pending queue bounded by `maxPending` (beyond it: QMQ_ERR_TOO_MANY_IN_FLIGHT).
 * - Every request has a deadline counted from the moment it was asked for (queue time included);
 *   when it passes the caller gets QMQ_ERR_TIMEOUT and a late answer is dropped.
 * - Frames written in one turn of the event loop go out together: the first write schedules a
 *   microtask that corks the socket, writes every queued frame and uncorks (one writev). Once
 *   WRITE_THROUGH_BYTES are waiting they are written at once instead, so a caller that produces for
 *   a long synchronous stretch keeps the peer busy.
 *   When `socket.write()` returns false, nothing more is moved from the pending queue to the wire
 *   until 'drain': the pending queue, not the socket buffer, absorbs a burst.
 * - Connects lazily on the first request. A failed connect or a dropped connection fails the
 *   requests it held (retriable QMQ_ERR_CONNECTION / QMQ_ERR_CONNECTION_CLOSED) and the next
 *   attempt is allowed only after a jittered, growing backoff; requests made before then fail at once
 *   with QMQ_ERR_CONNECTION, so a producer can fail over to another group instead of waiting.
 *   The backoff grows only over failures that follow each other: a first attempt made long after the
 *   last one was allowed (more than `reconnectMaxMs` later) starts from `reconnectInitialMs` again,
 *   and `resetBackoff()` (the metaserver now routes a group to this address: a promoted master, a
 *   restarted broker) allows the next attempt at once and starts the backoff over.
 * - The socket keeps the process alive only while requests are outstanding (it is unref'd when idle):
 *   an idle client does not hold Node up until the broker closes the idle connection.
 */
export interface ConnectionOptions {
  /** `host:port` */
  address: string
  connectTimeoutMs?: number
  /** Default deadline of a request (queue time included). */
  requestTimeoutMs?: number
  maxInFlight?: number
  maxPending?: number
  maxFrameBytes?: number
  reconnectInitialMs?: number
  reconnectMaxMs?: number
  logger?: Logger
  /** Instrumentation events of the provider (events.ts): connect and disconnect. */
  events?: ClientEventSink
  /**
   * Talk TLS (servers started with a certificate): the connection counts as open once the handshake
   * is done; a refused handshake (untrusted certificate, no client certificate under mTLS) fails the
   * requests it held with QMQ_ERR_CONNECTION like a refused connect.
   */
  tls?: ClientTlsOptions
  /**
   * The credential sent in an AUTH frame first on every new socket (servers with `auth` on require
   * it; others accept and ignore it). A refused AUTH fails the requests the socket held with the
   * server's error (QMQ_ERR_UNAUTHORIZED) and closes it; a server that does not know AUTH (older
   * version, QMQ_ERR_UNKNOWN_REQUEST) is talked to as one with auth off; QMQ_ERR_BUSY (credentials
   * not loaded yet) is retried on the next connect.
   */
  auth?: AuthRequest
}

export const DEFAULT_CONNECT_TIMEOUT_MS = 3_000
export const DEFAULT_REQUEST_TIMEOUT_MS = 10_000
export const DEFAULT_MAX_IN_FLIGHT = 1_024
export const DEFAULT_MAX_PENDING = 100_000
export const DEFAULT_RECONNECT_INITIAL_MS = 100
export const DEFAULT_RECONNECT_MAX_MS = RETRY_MAX_MS
/** Frames waiting to be written are written at once (not at the end of the turn) from this size on. */
export const WRITE_THROUGH_BYTES = 64 * 1024
/** Buffers smaller than this are coalesced (copied) into one before they are written. */
export const COALESCE_BELOW_BYTES = 4 * 1024
/** Answers from this size on are assembled in their final buffer (FrameDecoder `assembleFrom`). */
export const ASSEMBLE_FROM_BYTES = 256 * 1024
/** Socket reads go into slabs of this size (what Node allocates per read by default)... */
const SLAB_BYTES = 64 * 1024
/** ...and a new slab is taken when less than this is left of the current one. */
const SLAB_MIN_READ_BYTES = 16 * 1024

export interface RequestOptions {
  timeoutMs?: number
}

interface Pending {
  id: number
  code: number
  parts: Buffer[]
  bodyLength: number
  resolve: (frame: Frame) => void
  reject: (err: QmqError) => void
  timer: NodeJS.Timeout | undefined
  /** On the wire (in `inFlight`) rather than waiting in `queue`. */
  sent: boolean
  settled: boolean
}

type State = 'idle' | 'connecting' | 'open' | 'closed'

export function parseAddress(address: string): { host: string; port: number } {
  const i = address.lastIndexOf(':')
  const port = Number(address.slice(i + 1))
  if (i <= 0 || !Number.isInteger(port) || port <= 0 || port > 65535) {
    throw new QmqError('QMQ_ERR_INVALID_ARGUMENT', `address ${JSON.stringify(address)} is not host:port`)
  }
  let host = address.slice(0, i)
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1)
  return { host, port }
}

export class Connection {
  readonly address: string
  private readonly host: string
  private readonly port: number
  private readonly connectTimeoutMs: number
  private readonly requestTimeoutMs: number
  private readonly maxInFlight: number
  private readonly maxPending: number
  private readonly maxFrameBytes: number
  private readonly log: Logger
  private readonly backoff: Backoff
  private readonly reconnectMaxMs: number
  private readonly tls: ClientTlsOptions | undefined
  private readonly authBody: Buffer | undefined

  private state: State = 'idle'
  private socket: Socket | undefined
  private decoder: FrameDecoder | undefined
  private nextId = 1
  private readonly inFlight = new Map<number, Pending>()
  private queue: Pending[] = []
  private queueHead = 0
  /** Frames ready to write in the next flush (already counted in inFlight). */
  private out: Buffer[] = []
  private outBytes = 0
  private flushScheduled = false
  private writable = true
  /** No connect attempt before this time (ms since epoch) after a failure. */
  private retryAt = 0
  private lastError: QmqError | undefined
  private closeWaiters: (() => void)[] = []
  /** Whether `socket` is ref'd (keeps the event loop alive): exactly while requests are outstanding. */
  private socketRef = false

  private readonly events: ClientEventSink | undefined

  constructor(options: ConnectionOptions) {
    this.address = options.address
    const { host, port } = parseAddress(options.address)
    this.host = host
    this.port = port
    this.connectTimeoutMs = options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS
    this.requestTimeoutMs = options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS
    this.maxInFlight = options.maxInFlight ?? DEFAULT_MAX_IN_FLIGHT
    this.maxPending = options.maxPending ?? DEFAULT_MAX_PENDING
    this.maxFrameBytes = options.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES
    this.log = (options.logger ?? silentLogger).child({ broker: options.address })
    this.events = options.events
    this.tls = options.tls
    this.authBody = options.auth === undefined ? undefined : encodeAuthRequest(options.auth)
    this.reconnectMaxMs = options.reconnectMaxMs ?? DEFAULT_RECONNECT_MAX_MS
    this.backoff = new Backoff({
      initialMs: options.reconnectInitialMs ?? DEFAULT_RECONNECT_INITIAL_MS,
      maxMs: this.reconnectMaxMs,
    })
  }

  /** True while a socket is established. */
  get connected(): boolean {
    return this.state === 'open'
  }

  /** Requests on the wire plus those waiting for a slot. */
  get outstanding(): number {
    return this.inFlight.size + (this.queue.length - this.queueHead)
  }

  /**
   * Sends a request and resolves with the response frame (status 0). An error status becomes the
   * matching QmqError; transport failures are retriable QmqErrors. `body` may be several buffers
   * (written with writev, not concatenated).
   */
  request(code: number, body: Buffer | readonly Buffer[], options: RequestOptions = {}): Promise<Frame> {
    return new Promise<Frame>((resolve, reject) => {
      if (this.state === 'closed') {
        reject(new QmqError('QMQ_ERR_CLIENT_CLOSED', `connection to ${this.address} is closed`))
        return
      }
      if (this.state === 'idle' && Date.now() < this.retryAt) {
        reject(
          new QmqError(
            'QMQ_ERR_CONNECTION',
            `not connected to ${this.address}; next attempt in ${this.retryAt - Date.now()} ms` +
              (this.lastError ? ` (last error: ${this.lastError.message})` : ''),
            // notSent: the request never left this client (producers do not count it as an attempt).
            {
              cause: this.lastError,
              details: { address: this.address, notSent: true, retryInMs: this.retryAt - Date.now() },
            },
          ),
        )
        return
      }
      if (this.outstanding >= this.maxInFlight + this.maxPending) {
        reject(
          new QmqError(
            'QMQ_ERR_TOO_MANY_IN_FLIGHT',
            `${this.outstanding} requests are waiting on the connection to ${this.address}`,
          ),
        )
        return
      }
      const parts = Buffer.isBuffer(body) ? [body] : [...body]
      let bodyLength = 0
      for (const p of parts) bodyLength += p.length
      if (HEADER_BYTES + bodyLength > this.maxFrameBytes) {
        reject(
          new QmqError(
            'QMQ_ERR_FRAME_TOO_LARGE',
            `request of ${HEADER_BYTES + bodyLength} bytes exceeds the frame limit of ${this.maxFrameBytes}`,
          ),
        )
        return
      }
      const id = this.allocateId()
      const p: Pending = {
        id,
        code,
        parts,
        bodyLength,
        resolve,
        reject,
        timer: undefined,
        sent: false,
        settled: false,
      }
      const timeoutMs = options.timeoutMs ?? this.requestTimeoutMs
      p.timer = setTimeout(() => this.timeout(p, timeoutMs), timeoutMs)
      this.queue.push(p)
      if (this.state === 'idle') {
        // Failures long ago (this address was left alone meanwhile) say nothing about it now.
        if (this.retryAt !== 0 && Date.now() - this.retryAt > this.reconnectMaxMs) this.backoff.reset()
        this.open()
      } else if (this.state === 'open') this.pump()
      this.updateRef()
    })
  }

  /**
   * Allows the next connect attempt at once and starts the backoff over: the caller learnt that the
   * server at this address is (or is about to be) serving, e.g. the metaserver routes a promoted
   * master here. An open or connecting connection is left as it is.
   */
  resetBackoff(): void {
    if (this.state !== 'idle') return
    this.backoff.reset()
    this.retryAt = 0
  }

  /** Fails everything outstanding and closes the socket. Idempotent. */
  close(): Promise<void> {
    if (this.state === 'closed' && this.socket === undefined) return Promise.resolve()
    const wasSocket = this.socket
    this.state = 'closed'
    this.failAll(new QmqError('QMQ_ERR_CLIENT_CLOSED', `connection to ${this.address} was closed`))
    if (wasSocket === undefined) return Promise.resolve()
    return new Promise((resolve) => {
      this.closeWaiters.push(resolve)
      // The caller waits for this close: the socket keeps the process up until it is done.
      wasSocket.ref()
      wasSocket.end()
      // A peer that never answers our FIN must not hold close() forever.
      setTimeout(() => wasSocket.destroy(), 1_000).unref()
    })
  }

  // ------------------------------------------------------------------ internals

  private allocateId(): number {
    let id = this.nextId
    // u32 ids wrap; skip ones still in flight (only possible with ~4 billion requests outstanding).
    while (this.inFlight.has(id)) id = (id + 1) >>> 0 || 1
    this.nextId = (id + 1) >>> 0 || 1
    return id
  }

  private open(): void {
    this.state = 'connecting'
    this.writable = true
    const decoder = new FrameDecoder({ maxFrameBytes: this.maxFrameBytes, assembleFrom: ASSEMBLE_FROM_BYTES })
    this.decoder = decoder
    // Plain TCP reads through `onread` into buffers chosen here, per socket: the unfilled rest of a
    // large frame being assembled (the kernel writes its body in place: no copy), else the unused
    // tail of the current slab, else a new slab. Bytes read into a slab are never overwritten (the
    // frames decoded from them are views into it): a slab is filled front to back, never reused.
    // TLS sockets take no `onread` and go through 'data'.
    let slab = Buffer.allocUnsafe(0)
    let slabUsed = 0
    let intoSlab = false
    const nextReadBuffer = (): Uint8Array => {
      const target = decoder.readTarget()
      intoSlab = target === undefined
      if (target !== undefined) return target
      if (slab.length - slabUsed < SLAB_MIN_READ_BYTES) {
        slab = Buffer.allocUnsafe(SLAB_BYTES)
        slabUsed = 0
      }
      return slab.subarray(slabUsed)
    }
    let socket: Socket
    if (this.tls === undefined) {
      socket = connect({
        host: this.host,
        port: this.port,
        noDelay: true,
        onread: {
          buffer: nextReadBuffer,
          callback: (nread: number, buf: Uint8Array): boolean => {
            if (intoSlab) slabUsed += nread
            this.onData(socket, Buffer.from(buf.buffer, buf.byteOffset, nread))
            return true
          },
        },
      })
    } else {
      socket = tlsConnect(tlsConnectOptions(this.host, this.port, this.tls))
      socket.setNoDelay(true)
    }
    this.socket = socket
    this.socketRef = true
    const connectTimer = setTimeout(() => {
      socket.destroy(
        new QmqError(
          'QMQ_ERR_CONNECTION',
          `connect to ${this.address} timed out after ${this.connectTimeoutMs} ms`,
        ),
      )
    }, this.connectTimeoutMs)
    socket.once(this.tls === undefined ? 'connect' : 'secureConnect', () => {
      clearTimeout(connectTimer)
      if (this.socket !== socket) return
      this.state = 'open'
      this.backoff.reset()
      this.lastError = undefined
      this.log.debug('connected')
      this.events?.('connect', { address: this.address })
      if (this.authBody !== undefined) this.sendAuth(socket, this.authBody)
      this.pump()
    })
    if (this.tls !== undefined) socket.on('data', (chunk: Buffer) => this.onData(socket, chunk))
    socket.on('drain', () => {
      if (this.socket !== socket) return
      this.writable = true
      this.pump()
    })
    socket.on('error', (err) => {
      if (this.socket !== socket) return
      this.lastError =
        err instanceof QmqError
          ? err
          : new QmqError(
              this.state === 'connecting' ? 'QMQ_ERR_CONNECTION' : 'QMQ_ERR_CONNECTION_CLOSED',
              `${this.state === 'connecting' ? 'connect to' : 'connection to'} ${this.address} failed: ${err.message}`,
              { cause: err, details: { address: this.address } },
            )
    })
    socket.once('close', () => {
      clearTimeout(connectTimer)
      this.onClose(socket)
    })
  }

  /** Puts the AUTH frame ahead of every queued request of this socket (see ConnectionOptions.auth). */
  private sendAuth(socket: Socket, body: Buffer): void {
    const p: Pending = {
      id: this.allocateId(),
      code: RequestCode.AUTH,
      parts: [body],
      bodyLength: body.length,
      resolve: () => {},
      reject: (err) => {
        if (this.socket !== socket || err.code === 'QMQ_ERR_CLIENT_CLOSED') return
        // A server older than AUTH (a rolling upgrade) does not know the request: it has no auth to
        // satisfy, so the socket goes on as with a server whose auth is off.
        if (err.code === 'QMQ_ERR_UNKNOWN_REQUEST') {
          this.log.debug('the server does not know AUTH (an older version): going on without it')
          return
        }
        this.log.warn({ code: err.code, err: err.message }, 'authentication refused; closing the connection')
        this.lastError = err
        socket.destroy()
      },
      timer: undefined,
      sent: false,
      settled: false,
    }
    p.timer = setTimeout(() => this.timeout(p, this.requestTimeoutMs), this.requestTimeoutMs)
    this.queue.splice(this.queueHead, 0, p)
  }

  private onClose(socket: Socket): void {
    if (this.socket !== socket) return
    this.socket = undefined
    this.decoder = undefined
    this.out = []
    this.outBytes = 0
    this.flushScheduled = false
    const waiters = this.closeWaiters
    this.closeWaiters = []
    for (const w of waiters) w()
    if (this.state === 'closed') return
    const wasConnecting = this.state === 'connecting'
    const err =
      this.lastError ??
      new QmqError(
        wasConnecting ? 'QMQ_ERR_CONNECTION' : 'QMQ_ERR_CONNECTION_CLOSED',
        `connection to ${this.address} closed by the peer`,
        { details: { address: this.address } },
      )
    this.lastError = err
    this.state = 'idle'
    const delay = this.backoff.next()
    this.retryAt = Date.now() + delay
    this.log.warn({ err: err.message, retryInMs: delay }, 'connection lost')
    this.events?.('disconnect', {
      address: this.address,
      error: err.message,
      code: err.code,
      retryInMs: delay,
    })
    this.failAll(err)
  }

  private failAll(err: QmqError): void {
    const inFlight = [...this.inFlight.values()]
    this.inFlight.clear()
    const queued = this.queue.slice(this.queueHead)
    this.queue = []
    this.queueHead = 0
    for (const p of inFlight) this.settle(p, undefined, err)
    for (const p of queued) this.settle(p, undefined, err)
  }

  private settle(p: Pending, frame: Frame | undefined, err: QmqError | undefined): void {
    if (p.settled) return
    p.settled = true
    if (p.timer !== undefined) clearTimeout(p.timer)
    if (err !== undefined) p.reject(err)
    else p.resolve(frame as Frame)
  }

  private timeout(p: Pending, timeoutMs: number): void {
    if (p.settled) return
    if (p.sent) {
      this.inFlight.delete(p.id)
      this.pump()
    } else {
      const i = this.queue.indexOf(p, this.queueHead)
      if (i >= 0) this.queue.splice(i, 1)
    }
    this.updateRef()
    this.settle(
      p,
      undefined,
      new QmqError('QMQ_ERR_TIMEOUT', `request to ${this.address} timed out after ${timeoutMs} ms`, {
        details: { address: this.address, code: p.code },
      }),
    )
  }

  /** Moves queued requests to the wire while there are slots and the socket takes more. */
  private pump(): void {
    if (this.state !== 'open') return
    while (this.writable && this.inFlight.size < this.maxInFlight && this.queueHead < this.queue.length) {
      const p = this.queue[this.queueHead++] as Pending
      if (p.settled) continue
      p.sent = true
      this.inFlight.set(p.id, p)
      const header = Buffer.allocUnsafe(HEADER_BYTES)
      writeFrameHeader(header, 0, { flags: 0, code: p.code, status: 0, requestId: p.id }, p.bodyLength)
      this.out.push(header)
      for (const part of p.parts) this.out.push(part)
      this.outBytes += HEADER_BYTES + p.bodyLength
      p.parts = []
      // A large frame goes out now: the peer starts on it while the caller keeps producing.
      if (this.outBytes >= WRITE_THROUGH_BYTES) this.flush()
      else if (!this.flushScheduled) {
        this.flushScheduled = true
        queueMicrotask(() => this.flush())
      }
    }
    if (this.queueHead > 1024 && this.queueHead * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.queueHead)
      this.queueHead = 0
    }
  }

  private flush(): void {
    this.flushScheduled = false
    const socket = this.socket
    const out = this.out
    this.out = []
    this.outBytes = 0
    if (socket === undefined || out.length === 0) return
    // The stream machinery costs per buffer written: runs of small buffers (frame headers, records
    // of small messages) are copied into one; large ones are written as they are (writev).
    socket.cork()
    let ok = true
    let runStart = 0
    let runBytes = 0
    for (let i = 0; i <= out.length; i++) {
      const b = out[i]
      if (b !== undefined && b.length < COALESCE_BELOW_BYTES) {
        runBytes += b.length
        continue
      }
      if (i - runStart === 1) ok = socket.write(out[runStart] as Buffer)
      else if (i > runStart) ok = socket.write(Buffer.concat(out.slice(runStart, i), runBytes))
      if (b !== undefined) ok = socket.write(b)
      runStart = i + 1
      runBytes = 0
    }
    socket.uncork()
    if (!ok) this.writable = false
  }

  private onData(socket: Socket, chunk: Buffer): void {
    if (this.socket !== socket || this.decoder === undefined) return
    let frames: Frame[]
    try {
      frames = this.decoder.push(chunk)
    } catch (err) {
      this.lastError = err as QmqError
      this.log.error({ err: (err as Error).message }, 'undecodable stream from broker; closing')
      socket.destroy()
      return
    }
    for (const frame of frames) {
      if ((frame.flags & FLAG_RESPONSE) === 0) continue // we serve no requests
      const p = this.inFlight.get(frame.requestId)
      if (p === undefined) continue // timed out already
      this.inFlight.delete(frame.requestId)
      if (frame.status === 0) this.settle(p, frame, undefined)
      else this.settle(p, undefined, QmqError.fromStatus(frame.status, decodeErrorBody(frame.body)))
    }
    if (frames.length > 0) {
      this.pump()
      this.updateRef()
    }
  }

  /** Refs the socket while requests are outstanding, unrefs it when there are none. */
  private updateRef(): void {
    const socket = this.socket
    if (socket === undefined) return
    const busy = this.outstanding > 0
    if (busy === this.socketRef) return
    this.socketRef = busy
    if (busy) socket.ref()
    else socket.unref()
  }
}
