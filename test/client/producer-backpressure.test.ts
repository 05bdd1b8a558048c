import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { type Message, MessageProducerProvider, type SendResult } from '../../src/client'
import { decodeRecord } from '../../src/common/record'
import { pullOpts } from '../broker/store/helpers'
import { type Cluster, startCluster } from '../helpers/cluster'

/** Backpressure over a real local cluster (metaserver and two broker groups in this process). */
type T = { teardown: (fn: () => unknown) => void }

async function setup(t: T) {
  const dir = mkdtempSync(join(tmpdir(), 'qmq-bp-'))
  const cluster = await startCluster({ dir, brokers: 2 })
  // Deadlines far beyond the loop's duration on a loaded machine: backpressure is about how the loop
  // waits, not how fast the cluster stores. With the defaults (10 s per message from its call, 5 s per
  // request) 50k messages need 5k/s end to end: on a loaded 2-core machine the loop took 14-19 s and
  // its last messages failed with QMQ_ERR_SEND_QUEUE_FULL / QMQ_ERR_TIMEOUT (a deadline's documented
  // outcomes, docs/client.md), then QMQ_ERR_CIRCUIT_OPEN.
  const producer = new MessageProducerProvider({
    appCode: 'bp-test',
    metaServer: cluster.metaUrl,
    sendTimeoutMs: 150_000,
    requestTimeoutMs: 60_000,
  })
  await producer.init()
  t.teardown(async () => {
    await producer.close()
    await cluster.close()
    rmSync(dir, { recursive: true, force: true })
  })
  return { cluster, producer }
}

/** Distinct message ids stored for `subject`, and the count of copies, over every group. */
async function stored(cluster: Cluster, subject: string): Promise<{ ids: Set<string>; copies: number }> {
  const ids = new Set<string>()
  let copies = 0
  for (const b of cluster.brokers) {
    for (;;) {
      const got = await b.messageStore.pull(
        pullOpts(subject, 'audit', 'audit', { broadcast: true, maxMessages: 10_000 }),
      )
      if (got.length === 0) break
      copies += got.length
      for (const m of got) ids.add(decodeRecord(m.record).id)
    }
  }
  return { ids, copies }
}

t.test('producer backpressure - a 50k send loop without awaits stores all with no error', async (t) => {
  const { cluster, producer } = await setup(t)
  const total = 50_000
  let most = 0
  let failed = 0
  const sends: Promise<SendResult | undefined>[] = []
  for (let i = 0; i < total; i++) {
    sends.push(
      producer.sendMessage(producer.generateMessage('bp.loop').setBody(`message ${i}`)).catch(() => {
        failed++
        return undefined
      }),
    )
    most = Math.max(most, producer.queueSize)
  }
  t.ok(producer.waitingCount > 0, `the loop outran the queue (${producer.waitingCount} waiting)`)
  await Promise.all(sends)
  t.equal(failed, 0, 'no send failed')
  t.ok(most <= 10_000, `admitted messages stayed within maxQueueSize (at most ${most})`)
  t.equal(producer.queueSize + producer.waitingCount, 0)
  const { ids, copies } = await stored(cluster, 'bp.loop')
  t.equal(ids.size, total, 'every message stored')
  t.equal(copies, total, 'each once')
})

t.test('producer backpressure - sendMessages: one outcome per message, in order', async (t) => {
  const { producer } = await setup(t)
  const ok = producer.generateMessage('bp.batch')
  const other = producer.generateMessage('bp.batch')
  const outcomes = await producer.sendMessages([ok, {} as Message, ok, other])
  t.equal(outcomes.length, 4)
  t.match(outcomes[0], { status: 'fulfilled', value: { messageId: ok.getMessageId(), subject: 'bp.batch' } })
  t.match(outcomes[1], { status: 'rejected', reason: { code: 'QMQ_ERR_INVALID_ARGUMENT' } })
  t.same(outcomes[2], outcomes[0], 'the same message twice: one send, one result')
  t.match(outcomes[3], { status: 'fulfilled', value: { messageId: other.getMessageId() } })
})
