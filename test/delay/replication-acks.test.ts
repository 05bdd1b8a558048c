import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import type { Test } from 'tap'
import t from 'tap'
import { silentLogger } from '../../src/common/logger'
import { type DelayOptions, DelayServer } from '../../src/delay/delay-server'
import { RawClient } from '../helpers/raw-client'
import { catchUp, cancels, fetch } from './helpers/fake-slave'
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
