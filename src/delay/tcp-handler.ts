import type { Socket } from 'node:net'
import { QmqError, toQmqError } from '../common/errors'
import type { Logger } from '../common/logger'
import {
  decodeDelayDlqListRequest,
  decodeDelayDlqRedriveRequest,
  encodeDelayDlqListResponse,
} from '../common/protocol/delay-admin'
import {
  decodeCancelRequest,
  encodeCountResponse,
  decodeSendRequest,
  encodeCancelResponse,
  encodeErrorBody,
  encodeSendResponse,
} from '../common/protocol/commands'
import { RequestCode, requestCodeName } from '../common/protocol/codes'
import {
  FLAG_ONEWAY,
  FLAG_RESPONSE,
  type Frame,
  FrameDecoder,
  encodeFrame,
  PROTOCOL_VERSION,
} from '../common/protocol/frame'
import type { DelayMetrics } from './metrics'
import type { DelayStore } from './store/delay-store'

/**
 * One client connection of the delay server: SEND (delayed messages), CANCEL, PING, and the admin
 * requests of its dead letters (ADMIN_DELAY_DLQ_LIST, ADMIN_DELAY_DLQ_REDRIVE).
 * - Frames are decoded with the size limit checked before buffering; a stream that can no longer be
 *   trusted (bad magic, oversize or malformed frame) gets one error response and is closed.
 * - A well delimited but bad request (unknown code, unsupported version, malformed payload) gets an
 *   error response; the connection stays.
 * - While the socket's write buffer is over its high-water mark, reading pauses.
 * - A connection silent for `idleTimeoutMs` is closed.
 */
export interface HandlerContext {
  store: DelayStore
  metrics: DelayMetrics
  log: Logger
  maxFrameBytes: number
  maxMessageBytes: number
  idleTimeoutMs: number
}

export function handleConnection(socket: Socket, ctx: HandlerContext): void {
  const decoder = new FrameDecoder({ maxFrameBytes: ctx.maxFrameBytes })
  socket.setNoDelay(true)
  socket.setTimeout(ctx.idleTimeoutMs, () => socket.destroy())
  socket.on('error', (err) => ctx.log.debug({ err }, 'client connection error'))
  socket.on('drain', () => socket.resume())

  const reply = (req: Frame, status: number, body: Buffer): void => {
    if ((req.flags & FLAG_ONEWAY) !== 0 || socket.destroyed) return
    const ok = socket.write(
      encodeFrame({ flags: FLAG_RESPONSE, code: req.code, status, requestId: req.requestId }, body),
    )
    if (!ok) socket.pause()
  }
  const replyError = (req: Frame, err: unknown): void => {
    const e = toQmqError(err)
    reply(req, e.status, encodeErrorBody(e.message))
  }

  socket.on('data', (chunk: Buffer) => {
    let frames: Frame[]
    try {
      frames = decoder.push(chunk)
    } catch (err) {
      const e = toQmqError(err, 'QMQ_ERR_FRAME_MALFORMED')
      ctx.log.warn({ err: e, remote: socket.remoteAddress }, 'closing connection: untrustworthy stream')
      socket.end(
        encodeFrame(
          { flags: FLAG_RESPONSE, code: 0, status: e.status, requestId: 0 },
          encodeErrorBody(e.message),
        ),
      )
      return
    }
    for (const f of frames) {
      if ((f.flags & FLAG_RESPONSE) !== 0) continue // we send no requests: ignore stray responses
      if (f.version !== PROTOCOL_VERSION) {
        replyError(
          f,
          new QmqError('QMQ_ERR_UNSUPPORTED_VERSION', `protocol version ${f.version} is not supported`),
        )
        continue
      }
      handleFrame(f, ctx, reply, replyError)
    }
  })
}

function handleFrame(
  f: Frame,
  ctx: HandlerContext,
  reply: (req: Frame, status: number, body: Buffer) => void,
  replyError: (req: Frame, err: unknown) => void,
): void {
  switch (f.code) {
    case RequestCode.PING:
      reply(f, 0, Buffer.alloc(0))
      return
    case RequestCode.SEND: {
      let items: ReturnType<typeof decodeSendRequest>
      try {
        // The frame body is a view into a socket chunk: copy it once, as the store keeps the records.
        items = decodeSendRequest(Buffer.from(f.body), { maxMessageBytes: ctx.maxMessageBytes })
      } catch (err) {
        replyError(f, err)
        return
      }
      ctx.store.accept(items).then(
        (results) => {
          for (const r of results) ctx.metrics.received.inc({ result: r === undefined ? 'stored' : r.code })
          reply(
            f,
            0,
            encodeSendResponse(
              results.map((r) =>
                r === undefined ? { status: 0, message: '' } : { status: r.status, message: r.message },
              ),
            ),
          )
        },
        (err) => replyError(f, err),
      )
      return
    }
    case RequestCode.CANCEL: {
      let ids: string[]
      try {
        ids = decodeCancelRequest(f.body)
      } catch (err) {
        replyError(f, err)
        return
      }
      ctx.store.cancel(ids).then(
        (res) => {
          for (const c of res) ctx.metrics.cancelled.inc({ result: c ? 'cancelled' : 'not_pending' })
          reply(f, 0, encodeCancelResponse(res))
        },
        (err) => replyError(f, err),
      )
      return
    }
    case RequestCode.ADMIN_DELAY_DLQ_LIST: {
      try {
        const req = decodeDelayDlqListRequest(f.body)
        const list = ctx.store.listDeadLetters(req.limit, req.afterSequence)
        reply(f, 0, Buffer.concat(encodeDelayDlqListResponse(list)))
      } catch (err) {
        replyError(f, err)
      }
      return
    }
    case RequestCode.ADMIN_DELAY_DLQ_REDRIVE: {
      let req: ReturnType<typeof decodeDelayDlqRedriveRequest>
      try {
        req = decodeDelayDlqRedriveRequest(f.body)
      } catch (err) {
        replyError(f, err)
        return
      }
      ctx.store.redriveDeadLetters(req.sequences).then(
        (n) => {
          if (n > 0) ctx.log.info({ redriven: n }, 'delay dead letters redriven')
          reply(f, 0, encodeCountResponse(n))
        },
        (err) => replyError(f, err),
      )
      return
    }
    default:
      replyError(
        f,
        new QmqError(
          'QMQ_ERR_UNKNOWN_REQUEST',
          `request code ${f.code}${requestCodeName(f.code) ? ` (${requestCodeName(f.code)})` : ''} is not served by a delay server`,
        ),
      )
  }
}
