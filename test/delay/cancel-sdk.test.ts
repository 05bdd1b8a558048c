import { execFile } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'
import { type Message, MessageConsumerProvider, MessageProducerProvider, QmqConsumer } from '../../src/client'
import { startCluster } from '../helpers/cluster'
import { CLUSTER_SECRET } from '../metaserver/helpers'
import { waitFor } from './helpers/delay-helpers'

const QMQ_BIN = join(__dirname, '..', '..', 'bin', 'qmq.js')

/** producer.cancel(messageId) and `qmq cancel <id>` against a real cluster (in process). */
t.test('delay - cancel from the SDK and the CLI', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'qmq-cancel-'))
  const cluster = await startCluster({ dir, brokers: 1, delay: true })
  // CANCEL is authenticated with the cluster secret: the producer option clusterSecret.
  const producer = new MessageProducerProvider({ clusterSecret: CLUSTER_SECRET })
  producer.setAppCode('cancel')
  producer.setMetaServer(cluster.metaUrl)
  const withoutSecret = new MessageProducerProvider({ appCode: 'cancel', metaServer: cluster.metaUrl })
  const wrongSecret = new MessageProducerProvider({
    appCode: 'cancel',
    metaServer: cluster.metaUrl,
    clusterSecret: 'not-the-cluster-secret-000000',
  })
  const consumer = new MessageConsumerProvider({
    appCode: 'cancel',
    metaServer: cluster.metaUrl,
    pullTimeoutMs: 200,
    heartbeatIntervalMs: 500,
  })
  t.teardown(async () => {
    await consumer.close()
    await producer.close()
    await withoutSecret.close()
    await wrongSecret.close()
    await cluster.close()
    rmSync(dir, { recursive: true, force: true })
  })
  await t.rejects(producer.cancel('x'), { code: 'QMQ_ERR_NOT_INITIALIZED' })
  await producer.init()
  const received: string[] = []
  class Listener {
    @QmqConsumer({ subject: 'cancel.me', consumerGroup: 'g' })
    onMessage(message: Message): void {
      received.push(message.getMessageId())
    }
  }
  consumer.register(new Listener())
  await consumer.start()

  // The messages to cancel are due long after the test (a loaded machine can take seconds per qmq
  // run): a cancel must find them pending. `kept` is due soon and must arrive.
  const sent = async (inMs: number) => {
    const m = producer.generateMessage('cancel.me').setDelayTime(new Date(Date.now() + inMs))
    await producer.sendMessage(m)
    return m.getMessageId()
  }
  const [bySdk, byCli, kept] = [await sent(600_000), await sent(600_000), await sent(15_000)]
  await withoutSecret.init()
  await wrongSecret.init()
  await t.rejects(withoutSecret.cancel(bySdk), { code: 'QMQ_ERR_UNAUTHORIZED' }, 'no clusterSecret option')
  await t.rejects(wrongSecret.cancel(bySdk), { code: 'QMQ_ERR_UNAUTHORIZED' }, 'a wrong clusterSecret')
  t.equal(await producer.cancel(bySdk), true, 'the SDK cancels a pending message')
  t.equal(await producer.cancel(bySdk), false, 'a second cancel finds nothing pending')
  t.equal(await producer.cancel('no-such-message'), false)
  const qmqCancel = (env: NodeJS.ProcessEnv, id: string, ...flags: string[]) =>
    promisify(execFile)(
      process.execPath,
      [QMQ_BIN, 'cancel', id, '--json', '--metaserver', cluster.metaUrl, ...flags],
      { encoding: 'utf8', env },
    )
  const noSecret = { ...process.env }
  delete noSecret.QMQ_CLUSTER_SECRET
  const { stdout } = await qmqCancel({ ...noSecret, QMQ_CLUSTER_SECRET: CLUSTER_SECRET }, byCli)
  t.same(JSON.parse(stdout), [{ id: byCli, cancelled: true }], 'qmq cancel <id> with QMQ_CLUSTER_SECRET')
  // Refused without the secret (kept is then delivered: nothing was cancelled).
  await t.rejects(
    qmqCancel(noSecret, kept),
    { code: 1, stderr: /QMQ_ERR_UNAUTHORIZED/ },
    'qmq cancel without the secret',
  )
  await t.rejects(
    qmqCancel(noSecret, kept, '--cluster-secret', CLUSTER_SECRET),
    { code: 2, stderr: /--cluster-secret-file/ },
    'never a flag with the secret',
  )
  await waitFor(() => received.includes(kept), 30_000, 'the message not cancelled')
  await new Promise((r) => setTimeout(r, 500))
  t.same(received, [kept], 'cancelled messages are never delivered')
})
