import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import t from 'tap'
import { ERROR_CODES } from '../../src/common/error-codes'
import { silentLogger } from '../../src/common/logger'
import { RequestCode } from '../../src/common/protocol/codes'
import { DelayServer } from '../../src/delay/delay-server'
import { encodeCancelRequest, encodeSendRequest } from '../../src/common/protocol/commands'
import { RawClient } from '../helpers/raw-client'
import { holdsLease, startReplicationMetaserver } from '../helpers/replication'
import { DELAY_TEST_SECRET, delayed, FakeSender, send, sleep } from './helpers/delay-helpers'
import { adopt, cancels, fetch } from './helpers/fake-slave'
import { until } from './helpers/replication-helpers'

/**
 * The rule of every replicated write: QMQ_ERR_NOT_MASTER only before storing (the SDK then sends to
 * the group's new master); after storing, any failure is QMQ_ERR_REPLICATION_TIMEOUT (the SDK resends
 * to the same group). Here a CANCEL is stored, waits for its slave, and the master's lease runs out
 * meanwhile (the metaserver is gone): the answer must not be NOT_MASTER.
 */

const SLAVE = 'hand-slave:1'
const errorStatus = (code: keyof typeof ERROR_CODES): number => ERROR_CODES[code].status

t.test(
  'delay CANCEL - a cancel stored before the lease ran out is answered REPLICATION_TIMEOUT',
  async (t) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qmq-delay-cancel-lease-'))
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
    const { meta } = await startReplicationMetaserver(t, {
      dataDir: path.join(dir, 'meta'),
      clusterSecret: DELAY_TEST_SECRET,
      adminToken: 'admin-token-cancel-lease',
      heartbeatTimeoutMs: 1_000,
    })
    const m = new DelayServer(
      {
        port: 0,
        group: 'dc',
        metaserver: meta.url,
        clusterSecret: DELAY_TEST_SECRET,
        bucketMinutes: 1,
        checkpointIntervalMs: 600_000,
        replication: 'sync',
        replicationInSyncLagMs: 60_000,
        replicationAckTimeoutMs: 20_000,
        dataDir: path.join(dir, 'master'),
      },
      { logger: silentLogger, sender: new FakeSender(), routes: { groups: async () => [] } },
    )
    t.teardown(() => m.close())
    await m.start()
    await until('registered as master', () => m.currentRole === 'master')
    const slave = await RawClient.connect(m.port)
    const producer = await RawClient.connect(m.port)
    const probe = await RawClient.connect(m.port)
    t.teardown(() => slave.close())
    t.teardown(() => producer.close())
    t.teardown(() => probe.close())

    // The hand-driven slave holds everything: the message log, a checkpoint, every cancel.
    const start = await fetch(slave, SLAVE, 0)
    await fetch(slave, SLAVE, start.end)
    await adopt(slave, SLAVE)
    const snap = await cancels(slave, SLAVE, '', 0)
    const runId = snap.runId
    await cancels(slave, SLAVE, runId, snap.seq)

    // A pending message, acknowledged by the slave.
    const sent = send(producer, [delayed('c1', Date.now() + 3_600_000)])
    let end = start.end
    while (end === start.end) {
      await sleep(5)
      end = (await fetch(slave, SLAVE, 0)).end
    }
    await fetch(slave, SLAVE, end, end)
    t.same(await sent, [{ status: 0, message: '' }], 'the SEND is acknowledged')

    // The CANCEL is stored and waits for the slave's acknowledgement of its tombstone.
    const cancelled = producer.request(RequestCode.CANCEL, encodeCancelRequest(['c1'], DELAY_TEST_SECRET))
    let seq = snap.seq
    while (seq === snap.seq) {
      await sleep(5)
      seq = (await cancels(slave, SLAVE, runId, snap.seq)).seq
    }
    // Meanwhile the master loses its metaserver, and with it its lease.
    await meta.close()
    // Its lease (half the metaserver's 1 s heartbeat timeout) runs out: the check every write makes
    // before storing refuses from then on.
    await until('the lease ran out', () => !holdsLease(m), 10_000)
    const refused = await probe.request(
      RequestCode.SEND,
      encodeSendRequest([delayed('probe', Date.now() + 3_600_000)]),
    )
    t.equal(refused.status, errorStatus('QMQ_ERR_NOT_MASTER'), 'a new SEND is refused before storing')
    // The slave acknowledges the tombstone: the CANCEL's wait ends, after its lease ran out.
    await cancels(slave, SLAVE, runId, seq)
    const res = await cancelled
    t.equal(
      res.status,
      errorStatus('QMQ_ERR_REPLICATION_TIMEOUT'),
      'stored: REPLICATION_TIMEOUT (resent to the same group), never NOT_MASTER',
    )
  },
)
