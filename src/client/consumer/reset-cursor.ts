import { QmqError } from '../../common/errors'
import type { MetaClient } from '../../common/meta/meta-client'
import type { GroupInfo } from '../../common/meta/types'
import { encodeResetCursorRequest, type ResetPositionValue } from '../../common/protocol/admin'
import { RequestCode } from '../../common/protocol/codes'
import type { Frame } from '../../common/protocol/frame'
import { validateGroup, validateSubject } from '../../common/names'
import { type StartFrom, startPosition } from './start-from'

/**
 * Moves a consumer group's cursor on every alive broker group of a subject's route
 * (`consumer.resetCursor()`; `qmq reset-cursor`): one ADMIN_RESET_CURSOR each, carrying the brokers'
 * admin token (QMQ_ERR_UNAUTHORIZED without it when they have one). The broker finds the position of a
 * time by a binary search of the group's consume log on stored time (file-message-store.ts). Messages
 * already handed out stay in flight (their holders ack or their leases end); the group's consumers get
 * the messages from the new position on their next PULL. Resolves with the broker groups reset, in
 * route order; rejects at the first broker group that refuses or cannot be asked (those before it are
 * reset: call again, a reset is idempotent).
 */
export interface ResetCursorDeps {
  meta: Pick<MetaClient, 'listGroups' | 'getSubject'>
  /** One request to a server (the SDK's connection pool, the CLI's admin connections). */
  request: (address: string, code: number, body: Buffer) => Promise<Frame>
  token: string | undefined
}

/** Alive broker groups (kind 'broker'), optionally only those of a subject's route. */
export async function aliveBrokerGroups(
  meta: Pick<MetaClient, 'listGroups' | 'getSubject'>,
  subject?: string,
): Promise<GroupInfo[]> {
  const groups = (await meta.listGroups()).filter((g) => g.kind === 'broker' && g.alive && g.address !== '')
  if (subject === undefined) return groups
  let route: string[]
  try {
    route = (await meta.getSubject(subject)).groups
  } catch (err) {
    if (err instanceof QmqError && err.code === 'QMQ_ERR_NOT_FOUND') return []
    throw err
  }
  return groups.filter((g) => route.includes(g.name))
}

export async function resetCursor(
  deps: ResetCursorDeps,
  subject: string,
  group: string,
  to: StartFrom,
): Promise<string[]> {
  validateSubject(subject)
  validateGroup(group)
  const { start, startTime } = startPosition(to, 'resetCursor position')
  const brokers = await aliveBrokerGroups(deps.meta, subject)
  if (brokers.length === 0) throw new QmqError('QMQ_ERR_NOT_FOUND', `no alive broker group serves ${subject}`)
  const body = encodeResetCursorRequest({
    subject,
    group,
    // ADMIN_RESET_CURSOR's positions have PULL's start values (src/common/protocol/admin.ts).
    position: start as ResetPositionValue,
    timeMs: startTime,
    token: deps.token,
  })
  for (const b of brokers) await deps.request(b.address, RequestCode.ADMIN_RESET_CURSOR, body)
  return brokers.map((b) => b.name)
}
