import { QmqError } from '../../common/errors'
import {
  decodeBacklogRequest,
  decodeDlqListRequest,
  decodeDlqRedriveRequest,
  decodeForgetGroupRequest,
  decodeResetCursorRequest,
  encodeBacklogResponse,
  encodeDlqListResponse,
  encodeSubjectsResponse,
  ResetPosition,
} from '../../common/protocol/admin'
import { RequestCode, requestCodeName } from '../../common/protocol/codes'
import { decodeQueryRequest, encodeQueryAnswer } from '../../common/protocol/query'
import type { ServerConnection } from '../../common/server/connection'
import { encodeCountResponse } from '../../common/protocol/commands'
import { tokenMatches } from '../../common/token'
import type { CursorPosition } from '../store/types'
import type { ResponseBody } from './connection'
import type { ServerContext } from './handlers'

/**
 * Admin writes change what consumer groups receive (cursor reset, redrive, forgetting a group): with
 * an adminToken configured they must carry it.
 * (Reads, like the data path, are open to whoever reaches the port: keep broker ports private.)
 */
function requireAdminToken(ctx: ServerContext, given: string | undefined, what: string): void {
  const want = ctx.adminToken
  if (want === undefined) return
  if (!tokenMatches(given, want)) {
    throw new QmqError(
      'QMQ_ERR_UNAUTHORIZED',
      given
        ? `wrong admin token for ${what}`
        : `${what} needs the broker's admin token (qmq --token or QMQ_ADMIN_TOKEN)`,
    )
  }
}

/** Admin requests (codes 20-29); wire grammar in src/common/protocol/admin.ts. */
export async function handleAdmin(
  ctx: ServerContext,
  code: number,
  body: Buffer,
  conn: ServerConnection,
): Promise<ResponseBody> {
  // With auth on, each admin request needs an admin grant on its subject (cluster-wide ones on '*').
  const admin = (subject: string | undefined) =>
    ctx.auth?.admin(conn, requestCodeName(code) ?? String(code), subject)
  switch (code) {
    case RequestCode.ADMIN_SUBJECTS: {
      admin(undefined)
      if (body.length !== 0) throw new QmqError('QMQ_ERR_PAYLOAD_MALFORMED', 'ADMIN_SUBJECTS takes no body')
      return encodeSubjectsResponse(ctx.store.subjects())
    }
    case RequestCode.ADMIN_QUERY: {
      const req = decodeQueryRequest(body)
      // Reads of one subject need an admin grant on it; by id or across subjects, a cluster-wide one.
      admin('subject' in req && typeof req.subject === 'string' ? req.subject : undefined)
      const answer = ctx.store.query
        ? await ctx.store.query(req, ctx.group)
        : req.op === 'history'
          ? { series: [], truncated: false }
          : { messages: [], events: [] }
      return encodeQueryAnswer(answer)
    }
    case RequestCode.ADMIN_BACKLOG: {
      const req = decodeBacklogRequest(body)
      admin(req.subject)
      return encodeBacklogResponse(ctx.store.backlog(req.subject, req.group))
    }
    case RequestCode.ADMIN_RESET_CURSOR: {
      const req = decodeResetCursorRequest(body)
      admin(req.subject)
      requireAdminToken(ctx, req.token, 'a cursor reset')
      const position: CursorPosition =
        req.position === ResetPosition.EARLIEST
          ? { kind: 'earliest' }
          : req.position === ResetPosition.LATEST
            ? { kind: 'latest' }
            : { kind: 'timestamp', timeMs: req.timeMs }
      await ctx.store.resetCursor(req.subject, req.group, position)
      ctx.log.info({ subject: req.subject, group: req.group, position }, 'cursor reset by an operator')
      ctx.polls.notify(req.subject)
      return []
    }
    case RequestCode.ADMIN_DLQ_LIST: {
      const req = decodeDlqListRequest(body)
      admin(req.subject)
      const list = await ctx.store.listDeadLetters(req.subject, req.group, {
        limit: req.limit,
        afterSequence: req.afterSequence < 0 ? undefined : req.afterSequence,
      })
      return encodeDlqListResponse(list)
    }
    case RequestCode.ADMIN_DLQ_REDRIVE: {
      const req = decodeDlqRedriveRequest(body)
      admin(req.subject)
      requireAdminToken(ctx, req.token, 'a dead-letter redrive')
      const n = await ctx.store.redriveDeadLetters(req.subject, req.group, req.sequences)
      if (n > 0) {
        ctx.metrics.redriven.inc({ subject: req.subject, consumer_group: req.group }, n)
        ctx.log.info({ subject: req.subject, group: req.group, redriven: n }, 'dead letters redriven')
        ctx.polls.notify(req.subject)
      }
      return encodeCountResponse(n)
    }
    case RequestCode.ADMIN_FORGET_GROUP: {
      const req = decodeForgetGroupRequest(body)
      admin(req.subject)
      requireAdminToken(ctx, req.token, 'forgetting a consumer group')
      const forgotten = await ctx.store.forgetGroup(req.subject, req.group)
      if (forgotten)
        ctx.log.info({ subject: req.subject, group: req.group }, 'consumer group forgotten by an operator')
      return encodeCountResponse(forgotten ? 1 : 0)
    }
    default:
      throw new QmqError('QMQ_ERR_UNKNOWN_REQUEST', `unknown admin request code ${code}`)
  }
}
