import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import type { Test } from 'tap'
import t from 'tap'
import { silentLogger } from '../../src/common/logger'
import { RequestCode } from '../../src/common/protocol/codes'
import {
  decodeFetchResponse,
  encodeFetchRequest,
  type FetchResponse,
} from '../../src/common/protocol/replication'
import { type DelayOptions, DelayServer } from '../../src/delay/delay-server'
import {
  type CancelsResponse,
  decodeCancelsResponse,
  decodeManifestResponse,
  encodeCancelsRequest,
  encodeManifestRequest,
} from '../../src/delay/replication/wire'
import { RawClient } from '../helpers/raw-client'
import { cancel, DELAY_TEST_SECRET, delayed, FakeSender, send, sleep } from './helpers/delay-helpers'

/**
 * A delay master under `sync` answers a SEND or a CANCEL once every slave it counts (and reports) in
 * sync holds it: a slave that has not adopted a checkpoint yet (before its first mirror round) is not
 * a promotion candidate, and promotion ranks candidates by their message logs, not their cancels. The
 * slaves here are this test speaking the replication requests, so it decides what each holds.
 */

function master(t: Test): DelayServer {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qmq-delay-acks-'))
  const opts: Partial<DelayOptions> = {
    port: 0,
    clusterSecret: DELAY_TEST_SECRET,
    bucketMinutes: 1,
    checkpointIntervalMs: 600_000,
    replication: 'sync',
    replicationInSyncLagMs: 60_000,
    replicationAckTimeoutMs: 10_000,
    dataDir: path.join(dir, 'master'),
  }
  const s = new DelayServer(opts, {
    logger: silentLogger,
    sender: new FakeSender(),
    routes: { groups: async () => [] },
  })
  t.teardown(async () => {
    await s.close()
    fs.rmSync(dir, { recursive: true, force: true })
  })
  return s
}

async function fetch(c: RawClient, slaveId: string, offset: number, acked?: number): Promise<FetchResponse> {
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

async function adopt(c: RawClient, slaveId: string): Promise<void> {
  decodeManifestResponse(
    await c.call(
      RequestCode.DELAY_REPL_MANIFEST,
      encodeManifestRequest({ token: DELAY_TEST_SECRET, slaveId, adopted: 0 }),
    ),
  )
}

async function cancels(
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
async function catchUp(c: RawClient, slaveId: string, end: number): Promise<string> {
  await fetch(c, slaveId, end)
  await adopt(c, slaveId)
  const snap = await cancels(c, slaveId, '', 0)
  await cancels(c, slaveId, snap.runId, snap.seq)
  return snap.runId
}

t.test('delay sync acks - a slave before its first mirror round cannot alone acknowledge', async (t) => {
  const m = master(t)
  await m.start()
  const a = await RawClient.connect(m.port)
  const b = await RawClient.connect(m.port)
  const producer = await RawClient.connect(m.port)
  t.teardown(() => a.close())
  t.teardown(() => b.close())
  t.teardown(() => producer.close())

  const runId = await catchUp(a, 'a:1', 0)
  // B copies the message log only (no checkpoint adopted yet): not in sync.
  const start = await fetch(b, 'b:1', 0)

  // A pauses. B acknowledges a SEND's records: the SEND stays unanswered.
  let sendDone = false
  const sent = send(producer, [delayed('m1', Date.now() + 3_600_000)])
  void sent.then(() => {
    sendDone = true
  })
  let end = start.end
  while (end === start.end) {
    await sleep(5)
    end = (await fetch(b, 'b:1', 0)).end
  }
  await fetch(b, 'b:1', end)
  await sleep(300)
  t.notOk(sendDone, 'a slave without a checkpoint does not acknowledge a SEND')
  await fetch(a, 'a:1', end)
  t.same(await sent, [{ status: 0, message: '' }], 'acknowledged once the in-sync slave holds it')

  // B catches up fully (in sync too). A CANCEL that B holds and A does not stays unanswered.
  await catchUp(b, 'b:1', end)
  let cancelDone = false
  const cancelled = cancel(producer, ['m1'])
  void cancelled.then(() => {
    cancelDone = true
  })
  let seq = 0
  while (seq === 0) {
    await sleep(5)
    seq = (await cancels(b, 'b:1', runId, 0)).seq
  }
  await cancels(b, 'b:1', runId, seq)
  await sleep(300)
  t.notOk(cancelDone, "one in-sync slave's acknowledgement does not answer a CANCEL another lacks")
  await cancels(a, 'a:1', runId, seq)
  t.same(await cancelled, [true], 'answered once every in-sync slave holds it')
})
