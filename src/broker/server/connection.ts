import type { Socket } from 'node:net'
import { QmqError, toQmqError } from '../../common/errors'
import type { Logger } from '../../common/logger'
import { encodeErrorBody } from '../../common/protocol/commands'
import {
  encodeFrameHeader,
  FLAG_ONEWAY,
  FLAG_RESPONSE,
  type Frame,
  FrameDecoder,
  PROTOCOL_VERSION,
} from '../../common/protocol/frame'

/**
 * One client connection of the broker: a FrameDecoder over the socket, a cap on requests in flight,
 * and write-side backpressure.
 *
 * Flow control (a slow or greedy client only ever slows itself down):
 * - At most `maxInFlight` requests of this connection are being handled at once (long polls count).
 *   Frames beyond that wait in `queued` and the socket stops being read until a slot frees, so
 *   `queued` is bounded by the frames of one read.
 * - While the socket's unsent answers (`writableLength`) are above `writeHighWaterBytes`, reading
 *   stops too: a consumer that does not read its PULL answers cannot make us buffer without bound.
 *   Reading resumes on 'drain'.
 *
 * Errors:
 * - The decoder throws (bad magic, oversize or short frame, unknown flags): the stream can no longer
 *   be trusted. One error frame (requestId 0, code 0) is sent, the write side is ended, and the socket
 *   is destroyed shortly after. Other connections are not affected.
 * - A request fails (bad payload, invalid name, store error): an error answer with the code's status
 *   and an ErrorBody; the connection stays.
 *
 * Idle: a connection that sends no complete frame within `firstFrameTimeoutMs`, or that is silent and
 * has nothing in flight for `idleTimeoutMs`, is closed.
 */
export interface ConnectionOptions {
  maxFrameBytes: number
  maxInFlight: number
  writeHighWaterBytes: number
  idleTimeoutMs: number
  firstFrameTimeoutMs: number
}

/** What a handler answers: a body, or body parts written back to back without copying. */
export type ResponseBody = Buffer | readonly Buffer[]

export type FrameHandler = (frame: Frame, connection: Connection) => Promise<ResponseBody>

export interface ConnectionHooks {
  handle: FrameHandler
  onClose(connection: Connection): void
  onError?(connection: Connection, err: QmqError): void
}

const EMPTY: readonly Buffer[] = []
const FATAL_LINGER_MS = 1_000

let nextConnectionId = 1

export class Connection {
  readonly id = nextConnectionId++
  readonly remoteAddress: string
  /**
   * Keys (subject, group, consumerId) that already pulled on this connection: a consumer's first pull
   * on a new connection asks the store to hand back what it still holds (resumeHeld).
   */
  readonly pulledKeys = new Set<string>()
  private readonly socket: Socket
  private readonly options: ConnectionOptions
  private readonly hooks: ConnectionHooks
  private readonly log: Logger
  private readonly decoder: FrameDecoder
  private readonly queued: Frame[] = []
  private inFlight = 0
  private readPaused = false
  private corked = false
  private sawFrame = false
  private closing = false
  private closed = false
  private firstFrameTimer: NodeJS.Timeout | undefined
  private idleSince = Date.now()
  private readonly idlePromiseWaiters: (() => void)[] = []
  private readonly closePromise: Promise<void>
  private resolveClosed: () => void = () => {}

  constructor(socket: Socket, options: ConnectionOptions, hooks: ConnectionHooks, log: Logger) {
    this.socket = socket
    this.options = options
    this.hooks = hooks
    this.remoteAddress = `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? 0}`
    this.log = log.child({ conn: this.id, remote: this.remoteAddress })
    this.decoder = new FrameDecoder({ maxFrameBytes: options.maxFrameBytes })
    this.closePromise = new Promise((resolve) => {
      this.resolveClosed = resolve
    })
    socket.setNoDelay(true)
    socket.on('data', (chunk: Buffer) => this.onData(chunk))
    socket.on('drain', () => this.updateFlow())
    socket.on('error', (err) => this.log.debug({ err: err.message }, 'socket error'))
    socket.on('close', () => this.onClose())
    socket.on('end', () => {
      // The peer will send nothing more; answer what is in flight, then close.
      if (!this.closing) this.shutdown()
    })
    if (options.firstFrameTimeoutMs > 0) {
      this.firstFrameTimer = setTimeout(() => {
        if (!this.sawFrame) {
          this.log.info(
            { timeoutMs: options.firstFrameTimeoutMs },
            'no request within the first-frame timeout; closing',
          )
          this.destroy()
        }
      }, options.firstFrameTimeoutMs)
      this.firstFrameTimer.unref()
    }
    if (options.idleTimeoutMs > 0) {
      socket.setTimeout(options.idleTimeoutMs, () => {
        if (this.inFlight === 0 && this.queued.length === 0) {
          this.log.info({ idleTimeoutMs: options.idleTimeoutMs }, 'idle connection; closing')
          this.destroy()
        }
      })
    }
  }

  get requestsInFlight(): number {
    return this.inFlight
  }

  get isClosed(): boolean {
    return this.closed
  }

  get isReadPaused(): boolean {
    return this.readPaused
  }

  /** Bytes of answers written but not yet sent. */
  get pendingWriteBytes(): number {
    return this.socket.writableLength
  }

  private onData(chunk: Buffer): void {
    if (this.closing) return
    let frames: Frame[]
    try {
      frames = this.decoder.push(chunk)
    } catch (err) {
      this.fatal(toQmqError(err, 'QMQ_ERR_FRAME_MALFORMED'))
      return
    }
    if (frames.length > 0 && !this.sawFrame) {
      this.sawFrame = true
      if (this.firstFrameTimer !== undefined) clearTimeout(this.firstFrameTimer)
    }
    for (const frame of frames) {
      if (this.inFlight < this.options.maxInFlight) this.run(frame)
      else this.queued.push(frame)
    }
    this.updateFlow()
  }

  private run(frame: Frame): void {
    this.inFlight++
    let answer: Promise<ResponseBody>
    try {
      answer = this.dispatch(frame)
    } catch (err) {
      answer = Promise.reject(err)
    }
    answer.then(
      (body) => this.finish(frame, 0, body),
      (err: unknown) => {
        const qerr = toQmqError(err)
        if (qerr.code === 'QMQ_ERR_INTERNAL') this.log.error(qerr, 'request failed')
        this.hooks.onError?.(this, qerr)
        this.finish(frame, qerr.status, encodeErrorBody(qerr.message))
      },
    )
  }

  private dispatch(frame: Frame): Promise<ResponseBody> {
    if (frame.version !== PROTOCOL_VERSION) {
      throw new QmqError(
        'QMQ_ERR_UNSUPPORTED_VERSION',
        `protocol version ${frame.version} is not supported (this broker speaks ${PROTOCOL_VERSION})`,
      )
    }
    if ((frame.flags & FLAG_RESPONSE) !== 0) {
      throw new QmqError('QMQ_ERR_FRAME_MALFORMED', 'a client sent a frame flagged as a response')
    }
    return this.hooks.handle(frame, this)
  }

  private finish(frame: Frame, status: number, body: ResponseBody): void {
    this.inFlight--
    if (!this.closed && (frame.flags & FLAG_ONEWAY) === 0) this.write(frame, status, body)
    while (this.inFlight < this.options.maxInFlight && this.queued.length > 0 && !this.closing) {
      this.run(this.queued.shift() as Frame)
    }
    if (this.inFlight === 0) {
      this.idleSince = Date.now()
      for (const w of this.idlePromiseWaiters.splice(0)) w()
      if (this.closing && !this.closed) this.socket.end()
    }
    this.updateFlow()
  }

  private write(frame: Frame, status: number, body: ResponseBody): void {
    const parts = Buffer.isBuffer(body) ? [body] : body
    let length = 0
    for (const p of parts) length += p.length
    const header = encodeFrameHeader(
      { code: frame.code, flags: FLAG_RESPONSE, status, requestId: frame.requestId },
      length,
    )
    const s = this.socket
    // Answers finished in the same turn of the event loop (one fdatasync acknowledges many SENDs of a
    // connection; one wake answers many long polls) leave in one writev: the socket stays corked
    // until the current tick's callbacks and promise jobs have run.
    if (!this.corked) {
      this.corked = true
      s.cork()
      process.nextTick(() => {
        this.corked = false
        s.uncork()
      })
    }
    s.write(header)
    for (const p of parts) if (p.length > 0) s.write(p)
  }

  /** Pauses reading while over the in-flight cap or the write high-water mark; resumes otherwise. */
  private updateFlow(): void {
    if (this.closed || this.closing) return
    const over =
      this.inFlight >= this.options.maxInFlight ||
      this.queued.length > 0 ||
      this.socket.writableLength > this.options.writeHighWaterBytes
    if (over && !this.readPaused) {
      this.readPaused = true
      this.socket.pause()
    } else if (!over && this.readPaused) {
      this.readPaused = false
      this.socket.resume()
    }
  }

  /** The stream cannot be trusted any more: one error frame, then close this connection only. */
  private fatal(err: QmqError): void {
    this.log.warn({ code: err.code, reason: err.message }, 'closing connection after a protocol error')
    this.hooks.onError?.(this, err)
    this.closing = true
    this.queued.length = 0
    if (!this.socket.destroyed) {
      const body = encodeErrorBody(err.message)
      this.socket.write(
        Buffer.concat([
          encodeFrameHeader({ code: 0, flags: FLAG_RESPONSE, status: err.status, requestId: 0 }, body.length),
          body,
        ]),
      )
      this.socket.end()
      // Keep reading (and dropping) so the peer gets our frame instead of a reset; then make sure it dies.
      this.socket.resume()
      setTimeout(() => this.socket.destroy(), FATAL_LINGER_MS).unref()
    }
  }

  /**
   * Graceful close: stop taking requests, let those in flight answer (the server answers long polls
   * with an empty list first), then end the socket.
   */
  shutdown(): void {
    if (this.closing) return
    this.closing = true
    this.queued.length = 0
    if (this.inFlight === 0) this.socket.end()
  }

  /** Resolves when nothing of this connection is in flight. */
  whenIdle(): Promise<void> {
    if (this.inFlight === 0) return Promise.resolve()
    return new Promise((resolve) => this.idlePromiseWaiters.push(resolve))
  }

  /** Resolves once the socket is closed. */
  whenClosed(): Promise<void> {
    return this.closePromise
  }

  destroy(): void {
    this.socket.destroy()
  }

  /** Milliseconds since the last request of this connection finished (0 while one is in flight). */
  idleMs(now = Date.now()): number {
    return this.inFlight > 0 ? 0 : now - this.idleSince
  }

  private onClose(): void {
    if (this.closed) return
    this.closed = true
    this.closing = true
    if (this.firstFrameTimer !== undefined) clearTimeout(this.firstFrameTimer)
    this.queued.length = 0
    this.hooks.onClose(this)
    this.resolveClosed()
  }
}

export { EMPTY as EMPTY_BODY }
