import { QmqError, toQmqError } from '../common/errors'
import type { Logger } from '../common/logger'
import { validateSubject } from '../common/names'
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
  encodeSendResponse,
} from '../common/protocol/commands'
import { RequestCode, requestCodeName } from '../common/protocol/codes'
import type { Frame } from '../common/protocol/frame'
import type { ResponseBody } from '../common/server/connection'
import type { DelayMetrics } from './metrics'
import type { DelayStore } from './store/delay-store'

/**
 * The delay server's requests: SEND (delayed messages), CANCEL, PING, and the admin requests of its
 * dead letters (ADMIN_DELAY_DLQ_LIST, ADMIN_DELAY_DLQ_REDRIVE). The connection loop around them
 * (framing, limits checked before buffering, in-flight bound, write high-water mark, first-frame, idle
 * and frame deadlines, partial-frame budget) is the one the broker uses: common/server/ (TcpServer,
 * ServerConnection), set up in delay-server.ts.
 * - A well delimited but bad request (unknown code, unsupported version, malformed payload) gets an
 *   error response (the handler throws a QmqError); the connection stays.
 */
export interface HandlerContext {
  store: DelayStore
  metrics: DelayMetrics
  log: Logger
  maxMessageBytes: number
}

const EMPTY: readonly Buffer[] = []

export function createDelayFrameHandler(ctx: HandlerContext): (frame: Frame) => Promise<ResponseBody> {
  return (f) => handleFrame(f, ctx)
}

async function handleFrame(f: Frame, ctx: HandlerContext): Promise<ResponseBody> {
  switch (f.code) {
    case RequestCode.PING:
      return EMPTY
    case RequestCode.SEND: {
      // The frame body is a view into a socket chunk: copy it once, as the store keeps the records.
      const items = decodeSendRequest(Buffer.from(f.body), { maxMessageBytes: ctx.maxMessageBytes })
      // A subject the brokers would refuse when it is due ('%', whitespace...) is refused now.
      for (const item of items) {
        if (item.header === undefined || item.error !== undefined) continue
        try {
          validateSubject(item.header.subject)
        } catch (err) {
          item.error = toQmqError(err, 'QMQ_ERR_SUBJECT_INVALID')
        }
      }
      const results = await ctx.store.accept(items)
      for (const r of results) ctx.metrics.received.inc({ result: r === undefined ? 'stored' : r.code })
      return encodeSendResponse(
        results.map((r) =>
          r === undefined ? { status: 0, message: '' } : { status: r.status, message: r.message },
        ),
      )
    }
    case RequestCode.CANCEL: {
      const ids = decodeCancelRequest(f.body)
      const res = await ctx.store.cancel(ids)
      for (const c of res) ctx.metrics.cancelled.inc({ result: c ? 'cancelled' : 'not_pending' })
      return encodeCancelResponse(res)
    }
    case RequestCode.ADMIN_DELAY_DLQ_LIST: {
      const req = decodeDelayDlqListRequest(f.body)
      return encodeDelayDlqListResponse(ctx.store.listDeadLetters(req.limit, req.afterSequence))
    }
    case RequestCode.ADMIN_DELAY_DLQ_REDRIVE: {
      const req = decodeDelayDlqRedriveRequest(f.body)
      const n = await ctx.store.redriveDeadLetters(req.sequences)
      if (n > 0) ctx.log.info({ redriven: n }, 'delay dead letters redriven')
      return encodeCountResponse(n)
    }
    default:
      throw new QmqError(
        'QMQ_ERR_UNKNOWN_REQUEST',
        `request code ${f.code}${requestCodeName(f.code) ? ` (${requestCodeName(f.code)})` : ''} is not served by a delay server`,
      )
  }
}
