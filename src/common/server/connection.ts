import type { Socket } from 'node:net'
import type { Principal } from '../auth/credentials'
import { QmqError, toQmqError } from '../errors'
import type { Logger } from '../logger'
import { encodeErrorBody } from '../protocol/commands'
import {
  encodeFrame,
  encodeFrameHeader,
  FLAG_ONEWAY,
  FLAG_RESPONSE,
  type Frame,
  FrameDecoder,
  PROTOCOL_VERSION,
} from '../protocol/frame'
import type { BudgetHolder, PartialFrameBudget } from './partial-frame-budget'

/**
 * One client connection of a qmq TCP server (broker and delay server alike): a FrameDecoder over the
 * socket, a cap on requests in flight, write-side backpressure, and the limits that keep a slow or
 * hostile client from holding memory or a connection slot.
 *
 * Flow control (a slow or greedy client only ever slows itself down):
 * - At most `maxInFlight` requests of this connection are being handled at once (long polls count).
 *   Frames beyond that wait in `queued` and the socket stops being read until a slot frees, so
 *   `queued` is bounded by the frames of one read.
 * - While the socket's unsent answers (`writableLength`) are above `writeHighWaterBytes`, no further
 *   request is started (decoded frames wait in `queued`) and reading stops: a consumer that does not
 *   read its answers cannot make us buffer without bound. Reading resumes on 'drain'. Sockets are
 *   created with a 16 KiB stream highWaterMark (tcp-server.ts), not above the smallest allowed
 *   `writeHighWaterBytes`, so being above the mark implies a write returned false and 'drain' follows.
 * - Large answers (PULL) additionally reserve room before reading what they will answer
 *   (`withAnswerRoom`): a reservation of `bytes` is granted while unsent + reserved + bytes stays within
 *   the mark, or when nothing else is reserved and unsent bytes are within it (so a mark smaller than
 *   one answer still makes progress). Hence unsent answer bytes stay below `writeHighWaterBytes` plus
 *   one reservation (plus small answers: SEND/ACK results). A reservation is released when its answer
 *   is written (it then counts in `writableLength`) or when the read found nothing.
 *
 * Write completion (`afterWrite`): an answer's body parts are written as views, not copies (a PULL's
 * records, a REPL_FETCH's data). A handler whose answer views memory it wants back (read buffers of a
 * pool) attaches a release to its frame; it is called exactly once: from the write callback of the
 * answer's last chunk (the socket has handed every byte of the answer to the kernel: writes complete
 * in order, and a corked batch completes as one writev), at once when no answer is written (an error
 * answer, which references none of the handler's memory; a one-way frame; a closed connection), or
 * at the latest when the socket closes (the handle is closed then: nothing of it is read any more).
 *
 * Slow clients:
 * - Frame deadline: a frame must complete within `frameTimeoutMs` of its first byte, whatever trickles
 *   in meanwhile (each byte resets the idle timer, not this deadline). Checked by the server's sweep
 *   (`checkFrameDeadline`); not counted while reading is paused by flow control (the client cannot
 *   send then), and restarted when reading resumes.
 * - Partial-frame budget: the bytes this connection holds in a partial frame count against the
 *   server-wide PartialFrameBudget; a connection evicted by it is closed (oldest partial first).
 * - A connection that sends no complete frame within `firstFrameTimeoutMs`, or that is silent and has
 *   nothing in flight for `idleTimeoutMs`, is closed.
 * Each of these closes sends one error frame (requestId 0) saying why when one applies, logs one line,
 * and reports the reason to the server (`onClosedFor`, counted in a metric).
 *
 * Errors:
 * - The decoder throws (bad magic, oversize or short frame, unknown flags): the stream can no longer
 *   be trusted. One error frame (requestId 0) is sent, the write side is ended, and the socket is
 *   destroyed shortly after. Other connections are not affected.
 * - A request fails (bad payload, invalid name, store error): an error answer with the code's status
 *   and an ErrorBody; the connection stays.
 */
export interface ConnectionOptions {
  maxFrameBytes: number
  maxInFlight: number
  writeHighWaterBytes: number
  idleTimeoutMs: number
  firstFrameTimeoutMs: number
  /** A frame must complete this long after its first byte arrived (0 = no deadline). */
  frameTimeoutMs: number
}

/** What a handler answers: a body, or body parts written back to back without copying. */
export type ResponseBody = Buffer | readonly Buffer[]

/** Why the server closed a connection (the `reason` label of the connections-closed metric). */
export type CloseReason = 'first_frame' | 'idle' | 'frame_timeout' | 'frame_budget' | 'protocol'

export interface ConnectionHooks {
  handle(frame: Frame): Promise<ResponseBody>
  onClose(connection: ServerConnection): void
  onError?(connection: ServerConnection, err: QmqError): void
  /** The server closed the connection for `reason` (not the client, not a server shutdown). */
  onClosedFor?(connection: ServerConnection, reason: CloseReason): void
}

const FATAL_LINGER_MS = 1_000

/** Answers up to this long are copied behind their header and written as one piece. */
const SMALL_ANSWER_BYTES = 512

let nextConnectionId = 1

export class ServerConnection implements BudgetHolder {
  readonly id = nextConnectionId++
  readonly remoteAddress: string
  /** Who the connection authenticated as (AUTH; server/auth-gate.ts); undefined = nobody yet. */
  principal: Principal | undefined = undefined
  private readonly socket: Socket
  private readonly options: ConnectionOptions
  private readonly hooks: ConnectionHooks
  private readonly log: Logger
  private readonly decoder: FrameDecoder
  private readonly budget: PartialFrameBudget | undefined
  private readonly queued: Frame[] = []
  private inFlight = 0
  private readPaused = false
  private corked = false
  private sawFrame = false
  private closing = false
  private closed = false
  private firstFrameTimer: NodeJS.Timeout | undefined
  private idleSince = Date.now()
  /** When the partial frame now held started arriving (0 = none held): orders budget evictions. */
  private partialStart = 0
  /** Start of the frame deadline (0 = none running): partialStart, or the last resume of reading. */
  private deadlineFrom = 0
  /** Answer bytes reserved by requests reading what they will answer (see withAnswerRoom). */
  private reserved = 0
  private readonly reservations = new Map<Frame, number>()
  private readonly roomWaiters = new Set<() => void>()
  /** Releases attached to frames in flight (`afterWrite`), until their answer is written. */
  private readonly releases = new Map<Frame, () => void>()
  /** Releases of answers written whose write callback has not fired yet (called on close). */
  private readonly unwritten = new Set<() => void>()
  private readonly idlePromiseWaiters: (() => void)[] = []
  private readonly closePromise: Promise<void>
  private resolveClosed: () => void = () => {}

  constructor(
    socket: Socket,
    options: ConnectionOptions,
    hooks: ConnectionHooks,
    log: Logger,
    budget?: PartialFrameBudget,
  ) {
    this.socket = socket
    this.options = options
    this.hooks = hooks
    this.budget = budget
    this.remoteAddress = `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? 0}`
    this.log = log.child({ conn: this.id, remote: this.remoteAddress })
    this.decoder = new FrameDecoder({ maxFrameBytes: options.maxFrameBytes })
    this.closePromise = new Promise((resolve) => {
      this.resolveClosed = resolve
    })
    socket.setNoDelay(true)
    socket.on('data', (chunk: Buffer) => this.onData(chunk))
    socket.on('drain', () => {
      this.wakeRoomWaiters()
      this.pump()
    })
    socket.on('error', (err) => this.log.debug({ err: err.message }, 'socket error'))
    socket.on('close', () => this.onClose())
    socket.on('end', () => {
      // The peer will send nothing more; answer what is in flight, then close.
      if (!this.closing) this.shutdown()
    })
    if (options.firstFrameTimeoutMs > 0) {
      this.firstFrameTimer = setTimeout(() => {
        if (!this.sawFrame && !this.closing) {
          this.log.info(
            { timeoutMs: options.firstFrameTimeoutMs },
            'no request within the first-frame timeout; closing',
          )
          this.hooks.onClosedFor?.(this, 'first_frame')
          this.destroy()
        }
      }, options.firstFrameTimeoutMs)
      this.firstFrameTimer.unref()
    }
    if (options.idleTimeoutMs > 0) {
      socket.setTimeout(options.idleTimeoutMs, () => {
        if (this.inFlight === 0 && this.queued.length === 0 && !this.closing) {
          this.log.info({ idleTimeoutMs: options.idleTimeoutMs }, 'idle connection; closing')
          this.hooks.onClosedFor?.(this, 'idle')
          this.destroy()
        }
      })
    }
  }

  get requestsInFlight(): number {
    return this.inFlight
  }

  /** Frames decoded and waiting for a free slot (or for the write buffer to drain). */
  get requestsQueued(): number {
    return this.queued.length
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

  /** Bytes held in a partial frame. */
  get partialFrameBytes(): number {
    return this.decoder.pendingBytes
  }

  /** When the partial frame held started arriving (ms since epoch; 0 = none). */
  get partialSince(): number {
    return this.partialStart
  }

  private onData(chunk: Buffer): void {
    if (this.closing) return
    let frames: Frame[]
    try {
      frames = this.decoder.push(chunk)
    } catch (err) {
      this.fatal(toQmqError(err, 'QMQ_ERR_FRAME_MALFORMED'), 'protocol')
      return
    }
    // Partial-frame accounting: bytes left over after the frames of this chunk belong to a frame that
    // started in this chunk if a frame completed in it, else to the one already being assembled.
    const pending = this.decoder.pendingBytes
    if (pending === 0) {
      this.partialStart = 0
      this.deadlineFrom = 0
    } else if (frames.length > 0 || this.partialStart === 0) {
      this.partialStart = Date.now()
      this.deadlineFrom = this.partialStart
    }
    if (this.budget !== undefined && !this.budget.update(this, pending)) return // evicted: closed
    if (frames.length > 0 && !this.sawFrame) {
      this.sawFrame = true
      if (this.firstFrameTimer !== undefined) clearTimeout(this.firstFrameTimer)
    }
    for (const frame of frames) {
      if (this.queued.length === 0 && this.canStart()) this.run(frame)
      else this.queued.push(frame)
    }
    this.updateFlow()
  }

  /** Called by the server's sweep: closes the connection if its partial frame is past the deadline. */
  checkFrameDeadline(now: number): void {
    const limit = this.options.frameTimeoutMs
    if (limit <= 0 || this.deadlineFrom === 0 || this.readPaused || this.closing) return
    if (now - this.deadlineFrom < limit) return
    this.fatal(
      new QmqError(
        'QMQ_ERR_FRAME_TIMEOUT',
        `a frame did not complete within ${limit} ms of its first byte (${this.decoder.pendingBytes} bytes received)`,
      ),
      'frame_timeout',
    )
  }

  /** Called by the PartialFrameBudget when this connection's partial frame is evicted. */
  evictForBudget(): void {
    this.fatal(
      new QmqError(
        'QMQ_ERR_FRAME_BUDGET',
        `the server holds too many bytes of partial frames (${this.budget?.limit ?? 0} at most); this connection's ${this.decoder.pendingBytes} bytes were the oldest`,
      ),
      'frame_budget',
    )
  }

  private canStart(): boolean {
    return (
      this.inFlight < this.options.maxInFlight &&
      this.socket.writableLength <= this.options.writeHighWaterBytes
    )
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
      (body) => this.finish(frame, 0, body, true),
      (err: unknown) => {
        const qerr = toQmqError(err)
        if (qerr.code === 'QMQ_ERR_INTERNAL') this.log.error(qerr, 'request failed')
        this.hooks.onError?.(this, qerr)
        this.finish(frame, qerr.status, encodeErrorBody(qerr.message), false)
      },
    )
  }

  private dispatch(frame: Frame): Promise<ResponseBody> {
    if (frame.version !== PROTOCOL_VERSION) {
      throw new QmqError(
        'QMQ_ERR_UNSUPPORTED_VERSION',
        `protocol version ${frame.version} is not supported (this server speaks ${PROTOCOL_VERSION})`,
      )
    }
    if ((frame.flags & FLAG_RESPONSE) !== 0) {
      throw new QmqError('QMQ_ERR_FRAME_MALFORMED', 'a client sent a frame flagged as a response')
    }
    return this.hooks.handle(frame)
  }

  /**
   * Calls `release` exactly once when the socket is done with the answer to `frame` (see the class
   * comment). To be called by the frame's handler before its answer settles; a second release
   * attached to the same frame runs after the first.
   */
  afterWrite(frame: Frame, release: () => void): void {
    const before = this.releases.get(frame)
    this.releases.set(
      frame,
      before === undefined
        ? release
        : () => {
            before()
            release()
          },
    )
  }

  /** `viewsBody`: the answer is the handler's (it may view memory released by `afterWrite`). */
  private finish(frame: Frame, status: number, body: ResponseBody, viewsBody: boolean): void {
    this.inFlight--
    let release = this.releases.get(frame)
    if (release !== undefined) {
      this.releases.delete(frame)
      if (!viewsBody) {
        release()
        release = undefined
      }
    }
    if (!this.closed && (frame.flags & FLAG_ONEWAY) === 0) this.write(frame, status, body, release)
    else release?.()
    // Written: the answer now counts in writableLength instead of its reservation.
    this.release(frame)
    if (this.inFlight === 0) {
      this.idleSince = Date.now()
      for (const w of this.idlePromiseWaiters.splice(0)) w()
      if (this.closing && !this.closed && this.queued.length === 0) this.socket.end()
    }
    this.pump()
  }

  /** Starts queued frames while there is a free slot and the write buffer is within its mark. */
  private pump(): void {
    while (this.queued.length > 0 && !this.closing && this.canStart()) {
      this.run(this.queued.shift() as Frame)
    }
    this.updateFlow()
  }

  private write(frame: Frame, status: number, body: ResponseBody, release?: () => void): void {
    const s = this.socket
    // Answers finished in the same turn of the event loop (one fdatasync acknowledges many SENDs of a
    // connection; one wake answers many long polls) leave in one writev: the socket stays corked
    // until the current tick's callbacks and promise jobs have run.
    if (!this.corked) {
      this.corked = true
      s.cork()
      process.nextTick(this.uncork)
    }
    const header = { code: frame.code, flags: FLAG_RESPONSE, status, requestId: frame.requestId }
    const done = release === undefined ? undefined : this.onceWritten(release)
    if (Buffer.isBuffer(body)) {
      // A small answer (SEND and ACK results, errors, empty PULLs) goes as one piece with its header:
      // one buffered chunk instead of two.
      if (body.length <= SMALL_ANSWER_BYTES) s.write(encodeFrame(header, body), done)
      else {
        s.write(encodeFrameHeader(header, body.length))
        s.write(body, done)
      }
      return
    }
    let length = 0
    let last = -1
    for (let i = 0; i < body.length; i++) {
      const n = (body[i] as Buffer).length
      length += n
      if (n > 0) last = i
    }
    // The write callback goes on the answer's last chunk: chunks complete in the order written.
    s.write(encodeFrameHeader(header, length), last < 0 ? done : undefined)
    for (let i = 0; i <= last; i++) {
      const p = body[i] as Buffer
      if (p.length > 0) s.write(p, i === last ? done : undefined)
    }
  }

  /**
   * The write callback that calls `release`: once, whether the write succeeded or failed (a failed
   * write is given up: its bytes are not read again), or earlier from `onClose`.
   */
  private onceWritten(release: () => void): () => void {
    let called = false
    const once = (): void => {
      if (called) return
      called = true
      this.unwritten.delete(once)
      release()
    }
    this.unwritten.add(once)
    return once
  }

  /** Ends the corking of `write` (made once: a closure per answer was garbage). */
  private readonly uncork = (): void => {
    this.corked = false
    this.socket.uncork()
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
      // The client could not send while we did not read: its frame deadline starts again.
      if (this.deadlineFrom !== 0) this.deadlineFrom = Date.now()
      this.socket.resume()
    }
  }

  /**
   * Whether an answer of up to `bytes` may be prepared now (see the class comment). When not, and
   * `onRoom` is given, it is called once room may have opened (a drain, a release, the close); the
   * same function registered twice is called once.
   */
  hasAnswerRoom(bytes: number, onRoom?: () => void): boolean {
    if (this.closed) return true
    const unsent = this.socket.writableLength
    const mark = this.options.writeHighWaterBytes
    const ok = unsent <= mark && (this.reserved === 0 || unsent + this.reserved + bytes <= mark)
    if (!ok && onRoom !== undefined) this.roomWaiters.add(onRoom)
    return ok
  }

  /**
   * Runs `read` (which produces the answer of `frame`, up to `bytes` long) once the answer has room,
   * holding a reservation of `bytes` until the answer is written. Waits for room first if there is
   * none. When `hasAnswerRoom(bytes)` was true just before (same turn), the reservation is taken at once.
   */
  async withAnswerRoom<T extends { length: number }>(
    frame: Frame,
    bytes: number,
    read: () => Promise<T>,
  ): Promise<T> {
    while (!this.hasAnswerRoom(bytes)) {
      await new Promise<void>((resolve) => this.roomWaiters.add(resolve))
    }
    this.release(frame)
    this.reservations.set(frame, bytes)
    this.reserved += bytes
    let result: T
    try {
      result = await read()
    } catch (err) {
      this.release(frame)
      throw err
    }
    if (result.length === 0) this.release(frame)
    return result
  }

  private release(frame: Frame): void {
    const bytes = this.reservations.get(frame)
    if (bytes === undefined) return
    this.reservations.delete(frame)
    this.reserved -= bytes
    this.wakeRoomWaiters()
  }

  private wakeRoomWaiters(): void {
    if (this.roomWaiters.size === 0) return
    const waiters = [...this.roomWaiters]
    this.roomWaiters.clear()
    for (const w of waiters) w()
  }

  /** Closes this connection only: one error frame saying why, a log line, the reason reported. */
  private fatal(err: QmqError, reason: CloseReason): void {
    if (this.closing && reason !== 'protocol') {
      // Already closing (a graceful shutdown): nothing more to tell, just stop holding bytes.
      this.dropPartial()
      return
    }
    this.log.warn({ code: err.code, reason: err.message }, 'closing connection')
    this.hooks.onError?.(this, err)
    this.hooks.onClosedFor?.(this, reason)
    this.closing = true
    this.queued.length = 0
    this.dropPartial()
    if (!this.socket.destroyed) {
      const body = encodeErrorBody(err.message)
      this.socket.write(
        Buffer.concat([
          encodeFrameHeader({ code: 0, flags: FLAG_RESPONSE, status: err.status, requestId: 0 }, body.length),
          body,
        ]),
      )
      this.socket.end()
      // After a protocol error, keep reading (and dropping) so the peer gets our frame instead of a
      // reset. A slow or flooding client is not read any more (reading what it floods costs CPU); it
      // normally reads our frame within the linger. Then make sure the socket dies.
      if (reason === 'protocol') this.socket.resume()
      else this.socket.pause()
      setTimeout(() => this.socket.destroy(), FATAL_LINGER_MS).unref()
    }
  }

  private dropPartial(): void {
    this.decoder.discard()
    this.partialStart = 0
    this.deadlineFrom = 0
    this.budget?.remove(this)
  }

  /**
   * Graceful close: stop taking requests, let those in flight answer (the server answers long polls
   * with an empty list first), then end the socket.
   */
  shutdown(): void {
    if (this.closing) return
    this.closing = true
    this.queued.length = 0
    this.dropPartial()
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
    this.dropPartial()
    this.wakeRoomWaiters()
    // The handle is closed: the socket reads no answer's bytes any more (its write callbacks normally
    // ran before this, with an error for writes it gave up).
    for (const release of [...this.unwritten]) release()
    this.hooks.onClose(this)
    this.resolveClosed()
  }
}
