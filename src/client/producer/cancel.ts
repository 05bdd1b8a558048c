import { QmqError } from '../../common/errors'
import { decodeCancelResponse, encodeCancelRequest } from '../../common/protocol/commands'
import { RequestCode } from '../../common/protocol/codes'
import { MAX_ID_BYTES } from '../../common/record'
import type { MetaClient } from '../../common/meta/meta-client'
import type { Frame } from '../../common/protocol/frame'

/** At most this many ids per cancel call (one CANCEL request per delay group). */
export const MAX_CANCEL_IDS = 10_000

/**
 * Cancels pending delayed messages by id (`producer.cancel()`; `qmq cancel`): one CANCEL to every
 * alive delay group (a message is in the one that stored it: SendResult.group), answered per id with
 * whether some group held it pending. Resolves once every group made its tombstones durable; rejects
 * when a group cannot be asked (the outcome for that group's messages is then unknown: call again).
 * A message already due and on its way to a broker is not stopped.
 */
export interface CancelDeps {
  meta: Pick<MetaClient, 'listGroups'>
  /** One request to a server (the SDK's connection pool, the CLI's admin connections). */
  request: (address: string, code: number, body: Buffer) => Promise<Frame>
  /**
   * The cluster secret: delay servers refuse CANCEL without it (QMQ_ERR_UNAUTHORIZED). Interim, until
   * issue 18's application credentials replace it.
   */
  token: string | undefined
}

export async function cancelDelayed(deps: CancelDeps, ids: readonly string[]): Promise<boolean[]> {
  if (ids.length === 0) return []
  if (ids.length > MAX_CANCEL_IDS)
    throw new QmqError(
      'QMQ_ERR_INVALID_ARGUMENT',
      `at most ${MAX_CANCEL_IDS} ids per cancel (got ${ids.length})`,
    )
  for (const id of ids) {
    const n = typeof id === 'string' ? Buffer.byteLength(id, 'utf8') : 0
    if (n === 0 || n > MAX_ID_BYTES)
      throw new QmqError(
        'QMQ_ERR_MESSAGE_ID_INVALID',
        `message id must be 1 to ${MAX_ID_BYTES} bytes of UTF-8`,
      )
  }
  const groups = (await deps.meta.listGroups()).filter(
    (g) => g.kind === 'delay' && g.alive && g.address !== '',
  )
  if (groups.length === 0) throw new QmqError('QMQ_ERR_NO_ROUTE', 'no alive delay group to cancel in')
  const body = encodeCancelRequest(ids, deps.token)
  const answers = await Promise.all(
    groups.map(async (g) =>
      decodeCancelResponse((await deps.request(g.address, RequestCode.CANCEL, body)).body),
    ),
  )
  return ids.map((_, i) => answers.some((a) => a[i] === true))
}
