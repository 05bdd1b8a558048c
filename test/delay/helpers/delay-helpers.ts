import type { QmqError } from '../../../src/common/errors'
import { QmqError as Err } from '../../../src/common/errors'
import {
  decodeCancelResponse,
  decodeSendResponse,
  encodeCancelRequest,
  encodeSendRequest,
} from '../../../src/common/protocol/commands'
import { RequestCode } from '../../../src/common/protocol/codes'
import { decodeRecord, encodeRecord } from '../../../src/common/record'
import type { Sender } from '../../../src/delay/dispatch/sender'
import type { RawClient } from '../../helpers/raw-client'

/** Helpers of the delay server tests (not a test file). */

export const T0 = 1_800_000_000_000 // aligned to the minute and the hour

/** The cluster secret of the test delay servers (CANCEL and the dead-letter requests carry it). */
export const DELAY_TEST_SECRET = 'delay-test-cluster-secret-0123456789'

export function delayed(id: string, scheduleAt: number | undefined, subject = 'order.created'): Buffer {
  return encodeRecord({
    id,
    subject,
    createdAt: T0,
    scheduleAt,
    tags: ['t1'],
    properties: new Map([['k', 'v']]),
    body: `body of ${id}`,
  })
}

export interface Delivered {
  id: string
  subject: string
  scheduleAt: number | undefined
}

/** A Sender that records what it is given; `down` makes every send fail like a dead broker. */
export class FakeSender implements Sender {
  delivered: Delivered[] = []
  attempts = 0
  down = false
  async send(_subject: string, records: readonly Buffer[]): Promise<(QmqError | undefined)[]> {
    this.attempts++
    if (this.down) throw new Err('QMQ_ERR_CONNECTION', 'broker down (test)')
    for (const r of records) {
      const m = decodeRecord(r)
      this.delivered.push({ id: m.id, subject: m.subject, scheduleAt: m.scheduleAt })
    }
    return records.map(() => undefined)
  }
  async close(): Promise<void> {}
  ids(): string[] {
    return this.delivered.map((d) => d.id)
  }
}

export async function waitFor(cond: () => boolean, timeoutMs = 5_000, what = 'condition'): Promise<void> {
  const until = Date.now() + timeoutMs
  while (!cond()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 5))
  }
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** SEND and decode per-record statuses. */
export async function send(
  client: RawClient,
  records: Buffer[],
): Promise<{ status: number; message: string }[]> {
  const res = await client.request(RequestCode.SEND, encodeSendRequest(records))
  if (res.status !== 0) throw new Error(`SEND failed with status ${res.status}: ${res.message}`)
  return decodeSendResponse(res.body)
}

export async function cancel(client: RawClient, ids: string[]): Promise<boolean[]> {
  const res = await client.request(RequestCode.CANCEL, encodeCancelRequest(ids, DELAY_TEST_SECRET))
  if (res.status !== 0) throw new Error(`CANCEL failed with status ${res.status}: ${res.message}`)
  return decodeCancelResponse(res.body)
}
