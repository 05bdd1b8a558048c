import type { Test } from 'tap'
import t from 'tap'
import { Broker } from '../../../src/broker/broker'
import type { FileMessageStore } from '../../../src/broker/store/file-message-store'
import { MessageProducerProvider } from '../../../src/client'
import { ERROR_CODES } from '../../../src/common/error-codes'
import { silentLogger } from '../../../src/common/logger'
import { RequestCode } from '../../../src/common/protocol/codes'
import {
  decodeFetchResponse,
  encodeFetchRequest,
  type ReplicatedLogValue,
} from '../../../src/common/protocol/replication'
import { decodeRecord } from '../../../src/common/record'
import { RawClient } from '../../helpers/raw-client'
import {
  holdsLease,
  replicationTestBroker,
  startReplicationMetaserver,
  tempDir,
  waitUntil,
} from '../../helpers/replication'
import { message, send } from '../server/ops'
import { pullOpts } from '../store/helpers'

/**
 * A SEND the master stored but could not confirm (its slave stopped acknowledging: the wait for it
 * timed out) is answered QMQ_ERR_REPLICATION_TIMEOUT: the SDK resends it to the same group with the
 * same ids, never to the subject's other group, so the message is stored by one group only.
 */

const SECRET = 'stored-unconfirmed-cluster-secret'
const TOKEN = 'stored-unconfirmed-admin-token'

const BASE = replicationTestBroker(SECRET, {
  heartbeatIntervalMs: 100,
  replicationAckTimeoutMs: 300,
})

function freshDir(t: Test): string {
  return tempDir(t, 'qmq-stored-unconfirmed-')
}

function until(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  return waitUntil(what, cond, timeoutMs, 10)
}

/** A hand-driven slave's REPL_FETCH, claiming `offset` as its durable end. */
async function fetchAt(c: RawClient, log: ReplicatedLogValue, offset: number): Promise<void> {
  const body = await c.call(
    RequestCode.REPL_FETCH,
    encodeFetchRequest({
      token: SECRET,
      slaveId: 'test-slave:1',
      log,
      offset,
      maxBytes: 1024 * 1024,
      waitMs: 0,
      epoch: 0,
      acked: offset,
    }),
  )
  decodeFetchResponse(body)
}

/** Every message id `broker` stored for `subject`. */
async function storedIds(broker: Broker, subject: string): Promise<string[]> {
  const ids: string[] = []
  for (;;) {
    const got = await broker.messageStore.pull(
      pullOpts(subject, 'audit', 'audit-reader', { broadcast: true, maxMessages: 10_000 }),
    )
    if (got.length === 0) return ids
    for (const m of got) ids.push(decodeRecord(m.record).id)
  }
}

t.test(
  'stored unconfirmed - the SDK resends to the group that stored the batch, not to another',
  async (t) => {
    const { meta, admin } = await startReplicationMetaserver(t, {
      dataDir: freshDir(t),
      clusterSecret: SECRET,
      adminToken: TOKEN,
      heartbeatTimeoutMs: 5_000,
    })
    // g1: a sync master whose only slave is this test (it stops fetching); g2: an unreplicated group.
    const g1 = new Broker(
      { ...BASE, dataDir: freshDir(t), group: 'g1', replication: 'sync', metaserver: meta.url },
      { logger: silentLogger },
    )
    const g2 = new Broker(
      { ...BASE, dataDir: freshDir(t), group: 'g2', metaserver: meta.url },
      { logger: silentLogger },
    )
    t.teardown(() => Promise.all([g1.close(), g2.close()]))
    const { port } = await g1.start()
    await g2.start()
    const slave = await RawClient.connect(port)
    t.teardown(() => slave.close())
    await fetchAt(slave, 0, 0)
    await fetchAt(slave, 1, 0)
    await until('both groups routed', async () => {
      const groups = await Promise.all(['g1', 'g2'].map((g) => admin.getGroup(g).catch(() => undefined)))
      return groups.every((g) => g?.alive === true)
    })

    const producer = new MessageProducerProvider({
      appCode: 'stored-unconfirmed-test',
      metaServer: meta.url,
      requestTimeoutMs: 5_000,
      sendTimeoutMs: 20_000,
      maxAttempts: 100,
    })
    await producer.init()
    t.teardown(() => producer.close())
    const codes: string[] = []
    producer.events.on('retry', (e) => codes.push(e.code))

    // Separate batches, spread over both groups, until one is sent to g1 first: stored there, unconfirmed.
    const messages: ReturnType<typeof producer.generateMessage>[] = []
    const sending: Promise<{ group: string }>[] = []
    const deadline = Date.now() + 10_000
    while (!codes.includes('QMQ_ERR_REPLICATION_TIMEOUT')) {
      if (Date.now() > deadline)
        throw new Error(`no SEND stored by g1 unconfirmed (retries: ${codes.join()})`)
      const m = producer.generateMessage('orders').setBody(`m${messages.length}`)
      messages.push(m)
      sending.push(producer.sendMessage(m))
      await new Promise((r) => setTimeout(r, 100))
    }
    // Let the resends go a round or two, then the slave holds everything: g1 confirms its copies.
    await new Promise((r) => setTimeout(r, 700))
    const mlog = () => (g1.messageStore as FileMessageStore).mlog.log.endOffset
    const alog = () => (g1.messageStore as FileMessageStore).alog.log.endOffset
    let acking = true
    const acker = (async () => {
      while (acking) {
        await fetchAt(slave, 0, mlog()).catch(() => {})
        await fetchAt(slave, 1, alog()).catch(() => {})
        await new Promise((r) => setTimeout(r, 20))
      }
    })()
    t.teardown(async () => {
      acking = false
      await acker
    })
    const results = await Promise.all(sending)
    acking = false
    await acker

    const where = new Map<string, string[]>()
    for (const [name, b] of [
      ['g1', g1],
      ['g2', g2],
    ] as const) {
      for (const id of await storedIds(b, 'orders')) where.set(id, [...(where.get(id) ?? []), name])
    }
    t.ok(
      results.some((r) => r.group === 'g1'),
      'some messages were sent to g1 first',
    )
    for (let i = 0; i < messages.length; i++) {
      const id = messages[i]?.getMessageId() as string
      t.same(where.get(id), [results[i]?.group], `message ${i} stored once, by the group that answered it`)
    }
  },
)

t.test(
  'stored unconfirmed - a lease lost while a SEND waited for its slave is not answered NOT_MASTER',
  async (t) => {
    // A lease of 500 ms (heartbeatTimeoutMs / 2): it runs out once the metaserver is gone.
    const { meta, admin } = await startReplicationMetaserver(t, {
      dataDir: freshDir(t),
      clusterSecret: SECRET,
      adminToken: TOKEN,
      heartbeatTimeoutMs: 1_000,
    })
    const g1 = new Broker(
      {
        ...BASE,
        dataDir: freshDir(t),
        group: 'g1',
        replication: 'sync',
        metaserver: meta.url,
        replicationAckTimeoutMs: 10_000,
      },
      { logger: silentLogger },
    )
    t.teardown(() => g1.close())
    const { port } = await g1.start()
    const slave = await RawClient.connect(port)
    t.teardown(() => slave.close())
    await fetchAt(slave, 0, 0)
    await fetchAt(slave, 1, 0)
    const producer = await RawClient.connect(port)
    t.teardown(() => producer.close())
    await until(
      'g1 routed (its lease held)',
      async () => (await admin.getGroup('g1').catch(() => undefined))?.alive === true,
    )

    const mlog = () => (g1.messageStore as FileMessageStore).mlog.log.endOffset
    const before = mlog()
    const answer = send(producer, [message('lease', 'stored-then-lease-lost')])
    await until('the SEND stored', () => mlog() > before)
    await meta.close() // no heartbeat is answered any more: the lease runs out
    await until('the lease ran out', () => !holdsLease(g1))
    await fetchAt(slave, 0, mlog()) // the slave now holds the records: the wait ends, the lease is gone
    const [r] = await answer
    t.equal(r?.status, ERROR_CODES.QMQ_ERR_REPLICATION_TIMEOUT.status, `stored, unconfirmed: ${r?.message}`)
    t.not(r?.status, ERROR_CODES.QMQ_ERR_NOT_MASTER.status, 'never NOT_MASTER after storing')
  },
)
