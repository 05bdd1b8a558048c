import { RequestCode } from '../../../src/common/protocol/codes'
import {
  decodeFetchResponse,
  encodeFetchRequest,
  type FetchResponse,
} from '../../../src/common/protocol/replication'
import {
  type CancelsResponse,
  decodeCancelsResponse,
  decodeManifestResponse,
  encodeCancelsRequest,
  encodeManifestRequest,
} from '../../../src/delay/replication/wire'
import type { RawClient } from '../../helpers/raw-client'
import { DELAY_TEST_SECRET } from './delay-helpers'

/**
 * A delay slave played by a test speaking the replication requests itself (not a test file), so the
 * test decides what the slave holds and acknowledges.
 */

export async function fetch(
  c: RawClient,
  slaveId: string,
  offset: number,
  acked?: number,
): Promise<FetchResponse> {
  const body = await c.call(
    RequestCode.REPL_FETCH,
    encodeFetchRequest({
      token: DELAY_TEST_SECRET,
      slaveId,
      log: 0,
      offset,
      maxBytes: 1024 * 1024,
      waitMs: 0,
      epoch: 0,
      acked,
    }),
  )
  return decodeFetchResponse(body)
}

export async function adopt(c: RawClient, slaveId: string): Promise<void> {
  decodeManifestResponse(
    await c.call(
      RequestCode.DELAY_REPL_MANIFEST,
      encodeManifestRequest({ token: DELAY_TEST_SECRET, slaveId, adopted: 0 }),
    ),
  )
}

export async function cancels(
  c: RawClient,
  slaveId: string,
  runId: string,
  after: number,
): Promise<CancelsResponse> {
  return decodeCancelsResponse(
    await c.call(
      RequestCode.DELAY_REPL_CANCELS,
      encodeCancelsRequest({ token: DELAY_TEST_SECRET, slaveId, runId, after, snapshot: false, waitMs: 0 }),
    ),
  )
}

/** A slave that holds everything: the message log, a checkpoint, every cancel. Returns the run id. */
export async function catchUp(c: RawClient, slaveId: string, end: number): Promise<string> {
  await fetch(c, slaveId, end)
  await adopt(c, slaveId)
  const snap = await cancels(c, slaveId, '', 0)
  await cancels(c, slaveId, snap.runId, snap.seq)
  return snap.runId
}
