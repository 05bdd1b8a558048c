import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import type { Test } from 'tap'
import t from 'tap'
import { type FsIo, nodeFsIo } from '../../src/broker/store/fs-io'
import { codeForStatus } from '../../src/common/error-codes'
import { silentLogger } from '../../src/common/logger'
import { RequestCode } from '../../src/common/protocol/codes'
import { decodeSendResponse, encodeSendRequest } from '../../src/common/protocol/commands'
import { DelayServer } from '../../src/delay/delay-server'
import { bucketFileName } from '../../src/delay/store/bucket'
import { RawClient } from '../helpers/raw-client'
import { DELAY_TEST_SECRET, delayed, FakeSender } from './helpers/delay-helpers'
import { catchUp } from './helpers/fake-slave'
import { fdPath } from './helpers/start-delay'

/**
 * Under `sync`, a SEND whose records were all refused after their write (their refusal markers were
 * written) but whose markers no slave confirmed is answered QMQ_ERR_REPLICATION_TIMEOUT (outcome
 * uncertain: the SDK resends to the same group), not a definite refusal: a slave promoted without the
 * marker would schedule the record, and a producer told "refused" may send it elsewhere (twice).
 */
/**
 * A delay master under `sync` with one slave that caught up and then stopped fetching (nothing written
 * after this is confirmed), and a producer connection. `io`: the store's file I/O (fault injection).
 */
async function stalledSyncMaster(t: Test, io?: FsIo): Promise<{ dataDir: string; producer: RawClient }> {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'qmq-delay-refusal-sync-'))
  const dataDir = path.join(root, 'master')
  const m = new DelayServer(
    {
      port: 0,
      dataDir,
      clusterSecret: DELAY_TEST_SECRET,
      bucketMinutes: 1,
      checkpointIntervalMs: 600_000,
      replication: 'sync',
      replicationInSyncLagMs: 60_000,
      replicationAckTimeoutMs: 300,
    },
    {
      logger: silentLogger,
      sender: new FakeSender(),
      routes: { groups: async () => [] },
      ...(io !== undefined ? { io } : {}),
    },
  )
  t.teardown(async () => {
    await m.close()
    fs.rmSync(root, { recursive: true, force: true })
  })
  await m.start()
  const slave = await RawClient.connect(m.port)
  const producer = await RawClient.connect(m.port)
  t.teardown(() => slave.close())
  t.teardown(() => producer.close())
  await catchUp(slave, 's:1', 0)
  return { dataDir, producer }
}

t.test('delay refusal - unconfirmed refusal markers under sync answer outcome uncertain', async (t) => {
  // An in-sync slave that then stops fetching: nothing written after this is confirmed.
  const { dataDir, producer } = await stalledSyncMaster(t)
  const due = Date.now() + 3_600_000
  fs.mkdirSync(path.join(dataDir, 'schedule', bucketFileName(Math.floor(due / 60_000) * 60_000, '.sched')))
  const res = await producer.request(RequestCode.SEND, encodeSendRequest([delayed('gone', due)]))
  const answer = res.status === 0 ? decodeSendResponse(res.body) : res.message
  t.equal(codeForStatus(res.status), 'QMQ_ERR_REPLICATION_TIMEOUT', `answered ${JSON.stringify(answer)}`)
})

t.test('delay refusal - after a refusal marker, a failed write is answered its own error', async (t) => {
  // Regression: once any refusal marker had been written, every failed SEND waited for that marker to
  // be replicated as if its own record had been refused after its write: a plain write failure was
  // answered QMQ_ERR_REPLICATION_TIMEOUT (the marker unconfirmed) instead of its own code.
  let failWrites = false
  const io: FsIo = {
    ...nodeFsIo,
    writev: (fd, buffers, position) =>
      failWrites && /\/message\/\d+\.log$/.test(fdPath(fd))
        ? Promise.reject(
            Object.assign(new Error('ENOSPC: no space left on device (injected)'), { code: 'ENOSPC' }),
          )
        : nodeFsIo.writev(fd, buffers, position),
  }
  // An in-sync slave that then stops fetching: the refusal marker written next stays unconfirmed.
  const { dataDir, producer } = await stalledSyncMaster(t, io)
  const code = async (id: string, due: number) => {
    const res = await producer.request(RequestCode.SEND, encodeSendRequest([delayed(id, due)]))
    if (res.status !== 0) return codeForStatus(res.status)
    const [r] = decodeSendResponse(res.body)
    return r?.status === 0 ? 'stored' : codeForStatus(r?.status ?? -1)
  }
  const refusedDue = Date.now() + 3_600_000
  const bucket = path.join(
    dataDir,
    'schedule',
    bucketFileName(Math.floor(refusedDue / 60_000) * 60_000, '.sched'),
  )
  fs.mkdirSync(bucket)
  t.equal(await code('gone', refusedDue), 'QMQ_ERR_REPLICATION_TIMEOUT', 'a refusal marker was written')
  fs.rmdirSync(bucket)
  failWrites = true
  t.equal(
    await code('lost', Date.now() + 7_200_000),
    'QMQ_ERR_DISK_FULL',
    "the failed write is answered its own error, not the earlier marker's replication",
  )
  failWrites = false
})
