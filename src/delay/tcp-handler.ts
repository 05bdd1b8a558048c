import { QmqError, toQmqError } from '../common/errors'
import type { Logger } from '../common/logger'
import { validateSubject } from '../common/names'
import {
  decodeDelayDlqListRequest,
  decodeDelayDlqRedriveRequest,
  decodeDelayPendingRequest,
  encodeDelayDlqListResponse,
  encodeDelayPendingResponse,
} from '../common/protocol/delay-admin'
import {
  decodeCancelRequest,
  decodeRequestToken,
  encodeCountResponse,
  decodeSendRequest,
  encodeCancelResponse,
  encodeSendResponse,
} from '../common/protocol/commands'
import { RequestCode, requestCodeName } from '../common/protocol/codes'
import type { Frame } from '../common/protocol/frame'
import type { AuthGate } from '../common/server/auth-gate'
import type { ResponseBody, ServerConnection } from '../common/server/connection'
import { CLUSTER_SECRET_ENV, CLUSTER_SECRET_FILE_FLAG, tokenMatches } from '../common/token'
import type { DelayMetrics } from './metrics'
import { decodeQueryRequest, encodeQueryAnswer } from '../common/protocol/query'
import type { DelayTrace } from './trace'
import type { DelayStore } from './store/delay-store'
import type { ReplicationSource } from '../broker/replication/source'
import { storedUnconfirmed } from '../broker/replication/ack-waiters'
import { decodeFetchRequest, encodeFetchResponse, ReplicatedLog } from '../common/protocol/replication'
import type { DelayReplicationSource } from './replication/source'
import {
  decodeCancelsRequest,
  decodeFileRequest,
  decodeManifestRequest,
  encodeCancelsResponse,
  encodeFileResponse,
  encodeManifestResponse,
} from './replication/wire'

/**
 * The delay server's requests: SEND (delayed messages), CANCEL, PING, and the admin requests of its
 * dead letters (ADMIN_DELAY_DLQ_LIST, ADMIN_DELAY_DLQ_REDRIVE). The connection loop around them
 * (framing, limits checked before buffering, in-flight bound, write high-water mark, first-frame, idle
 * and frame deadlines, partial-frame budget) is the one the broker uses: common/server/ (TcpServer,
 * ServerConnection), set up in delay-server.ts.
 * - A well delimited but bad request (unknown code, unsupported version, malformed payload) gets an
 *   error response (the handler throws a QmqError); the connection stays.
 * - CANCEL and the dead-letter requests carry a token (their first field, commands.ts): the delay
 *   server's cluster secret. It is checked (in constant time) before the rest of the request is
 *   decoded; a missing or wrong one, or a server without a cluster secret, is answered
 *   QMQ_ERR_UNAUTHORIZED, changes nothing, is counted and logged with the remote address (never a
 *   token). With `auth` on (docs/security.md) an app with an `admin *` grant needs no token for them.
 * - With `auth` on, the AuthGate (common/server/auth-gate.ts) answers AUTH and requires it before
 *   anything but PING; SEND needs a `produce` grant per record's subject. With auth off, SEND and
 *   PING are open to whoever reaches the port, and AUTH is accepted and ignored.
 */
export interface HandlerContext {
  store: DelayStore
  metrics: DelayMetrics
  log: Logger
  maxMessageBytes: number
  /** The cluster secret as UTF-8 bytes; undefined = none configured: authenticated requests are refused. */
  clusterSecret: Buffer | undefined
  /** Trace and per-minute counts (undefined = not recorded). */
  trace?: DelayTrace | undefined
  /** The delay group's name (reported in ADMIN_QUERY answers). */
  group: string
  /** Application authentication and permissions (`auth` on; set after creation); undefined = open port. */
  auth: AuthGate | undefined
  /** The master's side of replication (docs/replication.md); undefined: slaves are refused. */
  replication?: DelayReplication | undefined
  /** Throws QMQ_ERR_NOT_MASTER when a replicated master lost its metaserver lease (fencing). */
  checkLease?: (() => void) | undefined
}

/** The generic source (message log, `sync` acknowledgements) and the delay-specific one. */
export interface DelayReplication {
  logs: ReplicationSource
  delay: DelayReplicationSource
}

const EMPTY: readonly Buffer[] = []
/** `qmq_delay_received_total` label sets counted per record, made once. */
const STORED = { result: 'stored' }
const DUPLICATE = { result: 'duplicate' }

/** The frame handler and its context (whose `auth` the server sets once its gate exists). */
export function createDelayFrameHandler(ctx: HandlerContext): {
  handle: (frame: Frame, conn: ServerConnection) => Promise<ResponseBody>
  context: HandlerContext
} {
  return { handle: (f, conn) => handleFrame(f, ctx, conn), context: ctx }
}

/**
 * CANCEL and the dead-letter requests: with auth on, a server of the cluster or an app with an admin
 * grant on '*' needs nothing more; anyone else (and everyone with auth off) must carry the cluster
 * secret as the request's token (the interim scheme of issue 12).
 */
function authenticate(f: Frame, ctx: HandlerContext, conn: ServerConnection): void {
  const p = conn.principal
  if (ctx.auth !== undefined && p !== undefined && ctx.auth.cache.mayAdmin(p, undefined)) return
  const remote = conn.remoteAddress
  const token = decodeRequestToken(f.body)
  const want = ctx.clusterSecret
  if (want !== undefined && tokenMatches(token, want)) return
  const request = requestCodeName(f.code) ?? String(f.code)
  const reason = want === undefined ? 'no_secret_configured' : token === '' ? 'missing' : 'wrong'
  ctx.metrics.unauthorized.inc({ request })
  ctx.log.warn({ request, remote, reason }, 'unauthorized request refused')
  throw new QmqError(
    'QMQ_ERR_UNAUTHORIZED',
    want === undefined
      ? `${request} is refused: this delay server has no cluster secret (${CLUSTER_SECRET_ENV} or ${CLUSTER_SECRET_FILE_FLAG}) to check it against`
      : token === ''
        ? `${request} needs the cluster secret (producer option clusterSecret; qmq: ${CLUSTER_SECRET_ENV} or ${CLUSTER_SECRET_FILE_FLAG})`
        : `wrong cluster secret for ${request}`,
  )
}

async function handleFrame(f: Frame, ctx: HandlerContext, conn: ServerConnection): Promise<ResponseBody> {
  switch (f.code) {
    case RequestCode.PING:
      return EMPTY
    case RequestCode.AUTH:
      return EMPTY // auth off (the AuthGate answers it otherwise): accepted and ignored

    case RequestCode.SEND: {
      // Fencing and `sync` (as the broker's SEND): refused without the lease or an in-sync slave,
      // answered once a slave holds the records durably.
      ctx.checkLease?.()
      ctx.replication?.logs.checkWritable()
      // The frame body is a view into a socket chunk: copy it once, as the store keeps the records.
      const items = decodeSendRequest(Buffer.from(f.body), { maxMessageBytes: ctx.maxMessageBytes })
      // A subject the brokers would refuse when it is due ('%', whitespace...) is refused now.
      for (const item of items) {
        if (item.header === undefined || item.error !== undefined) continue
        try {
          validateSubject(item.header.subject)
        } catch (err) {
          item.error = toQmqError(err, 'QMQ_ERR_SUBJECT_INVALID')
          continue
        }
        const denied = ctx.auth?.produceError(conn, 'SEND', item.header.subject)
        if (denied !== undefined) item.error = denied
      }
      const { results, end, duplicate, refusedEnd } = await ctx.store.accept(items)
      const stored = results.some((r) => r === undefined)
      if (ctx.replication !== undefined && (stored || refusedEnd > 0)) {
        // Its own records' end: not the log's, which may hold other requests' records still being
        // written, or end past offsets a failed fdatasync cut (written again only by later SENDs).
        // A record refused after its write: its refusal marker's end too (a slave promoted without
        // the marker would schedule it).
        try {
          await ctx.replication.logs.waitReplicated(Math.max(end, refusedEnd))
          ctx.checkLease?.()
        } catch (e) {
          // Stored, outcome uncertain (as the broker's SEND): never NOT_MASTER, which moves the batch.
          // Nothing stored but refused after a write: uncertain too, not a definite refusal (a slave
          // promoted without the refusal marker would schedule the record, and a producer told
          // "refused" may send it to another group). The SDK resends to this group; dedupe answers.
          if (stored) throw storedUnconfirmed(e)
          throw refusalUnconfirmed(e)
        }
      }
      for (let i = 0; i < results.length; i++) {
        const r = results[i]
        const dup = duplicate[i] === true
        ctx.metrics.received.inc(r !== undefined ? { result: r.code } : dup ? DUPLICATE : STORED)
        const it = items[i]
        if (r === undefined && !dup && it?.header !== undefined)
          ctx.trace?.scheduled(it.bytes, it.header.scheduleAt)
      }
      return encodeSendResponse(
        // As the broker answers: a duplicate is status 0 with the message `duplicate`.
        results.map((r, i) =>
          r === undefined
            ? { status: 0, message: duplicate[i] === true ? 'duplicate' : '' }
            : { status: r.status, message: r.message },
        ),
      )
    }
    case RequestCode.CANCEL: {
      authenticate(f, ctx, conn)
      const { ids } = decodeCancelRequest(f.body)
      ctx.checkLease?.()
      ctx.replication?.logs.checkWritable()
      const res = await ctx.store.cancel(ids)
      const repl = ctx.replication
      if (repl !== undefined) {
        // A cancel is a write: under `sync` answered once a slave holds its tombstone durably.
        const seq = repl.delay.cancelled(
          ids.filter((_id, i) => res[i] === true),
          Date.now(),
        )
        try {
          await repl.delay.waitCancelled(seq)
          ctx.checkLease?.()
        } catch (e) {
          // Stored (tombstones written), outcome uncertain: as SEND, never NOT_MASTER after storing.
          // REPLICATION_TIMEOUT makes the SDK resend to the same group (a cancel is idempotent).
          throw storedUnconfirmed(e)
        }
      }
      for (const c of res) ctx.metrics.cancelled.inc({ result: c ? 'cancelled' : 'not_pending' })
      return encodeCancelResponse(res)
    }
    case RequestCode.ADMIN_QUERY: {
      const req = decodeQueryRequest(f.body)
      const answer = ctx.trace
        ? await ctx.trace.query(req, ctx.group)
        : req.op === 'history'
          ? { series: [], truncated: false }
          : { messages: [], events: [] }
      return encodeQueryAnswer(answer)
    }
    case RequestCode.ADMIN_DELAY_DLQ_LIST: {
      authenticate(f, ctx, conn)
      const req = decodeDelayDlqListRequest(f.body)
      return encodeDelayDlqListResponse(ctx.store.listDeadLetters(req.limit, req.afterSequence))
    }
    case RequestCode.ADMIN_DELAY_DLQ_REDRIVE: {
      authenticate(f, ctx, conn)
      const req = decodeDelayDlqRedriveRequest(f.body)
      ctx.checkLease?.()
      ctx.replication?.logs.checkWritable()
      const { count: n, end } = await ctx.store.redriveDeadLetters(req.sequences)
      if (n > 0 && ctx.replication !== undefined) {
        // As SEND: its own records' end, and no answer from a master fenced meanwhile.
        try {
          await ctx.replication.logs.waitReplicated(end)
          ctx.checkLease?.()
        } catch (e) {
          // Stored, outcome uncertain (as the broker's SEND): never NOT_MASTER, which moves the batch.
          throw storedUnconfirmed(e)
        }
      }
      if (n > 0) ctx.log.info({ redriven: n }, 'delay dead letters redriven')
      return encodeCountResponse(n)
    }
    case RequestCode.ADMIN_DELAY_PENDING: {
      authenticate(f, ctx, conn)
      decodeDelayPendingRequest(f.body)
      const buckets = ctx.store.pendingByBucket().map(([start, pending]) => ({ start, pending }))
      return encodeDelayPendingResponse(buckets.sort((a, b) => a.start - b.start))
    }
    case RequestCode.REPL_FETCH:
    case RequestCode.DELAY_REPL_MANIFEST:
    case RequestCode.DELAY_REPL_FILE:
    case RequestCode.DELAY_REPL_CANCELS:
      return handleReplication(f, ctx)
    default:
      throw new QmqError(
        'QMQ_ERR_UNKNOWN_REQUEST',
        `request code ${f.code}${requestCodeName(f.code) ? ` (${requestCodeName(f.code)})` : ''} is not served by a delay server`,
      )
  }
}

/**
 * A slave's requests (docs/replication.md): the cluster secret comes first and is checked (in
 * constant time) before anything else is decoded.
 */
async function handleReplication(f: Frame, ctx: HandlerContext): Promise<ResponseBody> {
  const token = decodeRequestToken(f.body)
  if (ctx.clusterSecret === undefined || !tokenMatches(token, ctx.clusterSecret))
    throw new QmqError('QMQ_ERR_UNAUTHORIZED', 'replication needs the cluster secret')
  const repl = ctx.replication
  if (repl === undefined) throw new QmqError('QMQ_ERR_NOT_MASTER', 'this delay server serves no slaves')
  switch (f.code) {
    case RequestCode.REPL_FETCH: {
      const req = decodeFetchRequest(f.body)
      if (req.log !== ReplicatedLog.MESSAGE)
        throw new QmqError('QMQ_ERR_INVALID_ARGUMENT', 'a delay server replicates its message log only')
      return encodeFetchResponse(await repl.logs.fetch(req))
    }
    case RequestCode.DELAY_REPL_MANIFEST:
      return encodeManifestResponse(repl.delay.manifest(decodeManifestRequest(f.body)))
    case RequestCode.DELAY_REPL_FILE:
      return encodeFileResponse(await repl.delay.file(decodeFileRequest(f.body)))
    default:
      return encodeCancelsResponse(await repl.delay.cancels(decodeCancelsRequest(f.body)))
  }
}

/**
 * A SEND whose records were refused after their write, whose refusal markers no slave confirmed:
 * QMQ_ERR_REPLICATION_TIMEOUT (resend to the same group with the same ids), as for stored records.
 */
function refusalUnconfirmed(err: unknown): QmqError {
  const cause = toQmqError(err)
  return new QmqError(
    'QMQ_ERR_REPLICATION_TIMEOUT',
    `refused by this master after its write, but the refusal was not confirmed by a slave (${cause.message}); resend to the same group with the same ids`,
    { cause },
  )
}
