import { RequestCode } from '../../../src/common/protocol/codes'
import {
  decodeCountResponse,
  decodePullResponse,
  decodeSendResponse,
  encodeAckRequest,
  encodeHeartbeatRequest,
  encodeNackRequest,
  encodePullRequest,
  encodeSendRequest,
  type PulledMessage,
  type PullRequest,
  type SendResult,
  StartPosition,
} from '../../../src/common/protocol/commands'
import { encodeRecord, type MessageRecord } from '../../../src/common/record'
import type { RawClient } from '../../helpers/raw-client'

/** Typed wrappers over RawClient for the data-path requests (test side only). */
export function message(
  subject: string,
  id: string,
  body: string | Buffer = id,
  tags: string[] = [],
): MessageRecord {
  return { id, subject, createdAt: Date.now(), tags, properties: new Map(), body }
}

export async function send(c: RawClient, messages: readonly MessageRecord[]): Promise<SendResult[]> {
  return decodeSendResponse(
    await c.call(RequestCode.SEND, encodeSendRequest(messages.map((m) => encodeRecord(m)))),
  )
}

/** Sends and throws unless every record was stored. */
export async function sendOk(c: RawClient, messages: readonly MessageRecord[]): Promise<void> {
  const results = await send(c, messages)
  const bad = results.filter((r) => r.status !== 0)
  if (bad.length > 0) throw new Error(`send failed: ${JSON.stringify(bad[0])}`)
}

export function pullRequest(
  p: Partial<PullRequest> & { subject: string; group: string; consumerId: string },
): PullRequest {
  return {
    maxMessages: 100,
    maxBytes: 0,
    timeoutMs: 0,
    broadcast: false,
    atMostOnce: false,
    tagsAll: false,
    start: StartPosition.EARLIEST,
    startTime: 0,
    tags: [],
    ...p,
  }
}

export async function pull(
  c: RawClient,
  p: Partial<PullRequest> & { subject: string; group: string; consumerId: string },
): Promise<PulledMessage[]> {
  return decodePullResponse(await c.call(RequestCode.PULL, encodePullRequest(pullRequest(p))))
}

export async function ack(
  c: RawClient,
  a: { subject: string; group: string; consumerId: string; sequences: number[]; broadcast?: boolean },
): Promise<number> {
  return decodeCountResponse(await c.call(RequestCode.ACK, encodeAckRequest({ broadcast: false, ...a })))
}

export async function nack(
  c: RawClient,
  n: {
    subject: string
    group: string
    consumerId: string
    sequences: number[]
    retryAfterMs?: number
    deadLetter?: boolean
  },
): Promise<number> {
  return decodeCountResponse(
    await c.call(
      RequestCode.NACK,
      encodeNackRequest({ broadcast: false, retryAfterMs: 0, deadLetter: false, ...n }),
    ),
  )
}

export async function heartbeat(
  c: RawClient,
  consumerId: string,
  subject: string,
  group: string,
): Promise<void> {
  await c.call(
    RequestCode.HEARTBEAT,
    encodeHeartbeatRequest({ consumerId, subscriptions: [{ subject, group, broadcast: false }] }),
  )
}
