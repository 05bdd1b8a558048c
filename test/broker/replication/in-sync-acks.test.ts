import type { Test } from 'tap'
import t from 'tap'
import { Broker } from '../../../src/broker/broker'
import type { FileMessageStore } from '../../../src/broker/store/file-message-store'
import { silentLogger } from '../../../src/common/logger'
import { RequestCode } from '../../../src/common/protocol/codes'
import {
  decodeFetchResponse,
  encodeFetchRequest,
  type FetchResponse,
  type ReplicatedLogValue,
} from '../../../src/common/protocol/replication'
import { RawClient } from '../../helpers/raw-client'
import { replicationTestBroker, tempDir } from '../../helpers/replication'
import { message, send } from '../server/ops'

/**
 * Under `sync` a SEND is acknowledged only once every slave the master counts (and reports) in sync
 * holds it: the metaserver promotes one of those, so an acknowledgement from a slave outside that set
 * (or from one member while another lacks the SEND) would not survive the promotion. The slaves here
 * are this test speaking REPL_FETCH, so it decides what each claims to hold.
 */

const SECRET = 'replication-in-sync-acks-test-secret'

const BASE = replicationTestBroker(SECRET, {
  replication: 'sync',
})

function freshDir(t: Test): string {
  return tempDir(t, 'qmq-repl-insync-')
}

async function fetchAt(
  c: RawClient,
  slaveId: string,
  log: ReplicatedLogValue,
  offset: number,
  acked?: number,
): Promise<FetchResponse> {
  const body = await c.call(
    RequestCode.REPL_FETCH,
    encodeFetchRequest({
      token: SECRET,
      slaveId,
      log,
      offset,
      maxBytes: 1024 * 1024,
      waitMs: 0,
      epoch: 0,
      acked,
    }),
  )
  return decodeFetchResponse(body)
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

t.test('in-sync acks - a slave that was not in sync cannot alone acknowledge a SEND', async (t) => {
  const broker = new Broker({ ...BASE, flush: 'sync', dataDir: freshDir(t) }, { logger: silentLogger })
  const { port } = await broker.start()
  t.teardown(() => broker.close())
  const end = () => (broker.messageStore as FileMessageStore).mlog.log.endOffset
  const inSync = () => {
    const h = broker.replicationStatus()
    return 'slaves' in h ? h.slaves.filter((s) => s.inSync).map((s) => s.id) : []
  }

  const a = await RawClient.connect(port)
  const b = await RawClient.connect(port)
  const producer = await RawClient.connect(port)
  t.teardown(() => a.close())
  t.teardown(() => b.close())
  t.teardown(() => producer.close())

  // A registers holding everything: it is in sync. A first SEND is acknowledged once A holds it.
  await fetchAt(a, 'a:1', 0, 0)
  await fetchAt(a, 'a:1', 1, 0)
  const first = send(producer, [message('s', 'first', Buffer.alloc(200, 1))])
  let e1 = 0
  while (e1 === 0) {
    await sleep(5)
    e1 = end()
  }
  await fetchAt(a, 'a:1', 0, e1)
  t.same(await first, [{ status: 0, message: '' }], 'acknowledged once the in-sync slave holds it')

  // B joins late: it holds nothing yet, so it is not in sync (it lacks an acknowledged SEND).
  await fetchAt(b, 'b:1', 0, 0)
  await fetchAt(b, 'b:1', 1, 0)
  t.same(inSync(), ['a:1'], 'only A is in sync (and reported so)')

  // A pauses. A second SEND is written; B copies it and acknowledges it (and everything before).
  const second = send(producer, [message('s', 'second', Buffer.alloc(200, 2))])
  let secondDone = false
  void second.then(() => {
    secondDone = true
  })
  while (end() === e1) await sleep(5)
  const e2 = end()
  await fetchAt(b, 'b:1', 0, e2)
  await sleep(300)
  t.notOk(secondDone, "B's acknowledgement alone does not acknowledge the SEND: in-sync A lacks it")
  t.same(inSync().sort(), ['a:1', 'b:1'], 'B, holding everything acknowledged, is in sync now')

  // A holds it too: every in-sync slave does.
  await fetchAt(a, 'a:1', 0, e2)
  t.same(await second, [{ status: 0, message: '' }], 'acknowledged once every in-sync slave holds it')
})

t.test('in-sync acks - a slave that stops fetching drops out and no longer holds SENDs back', async (t) => {
  const broker = new Broker(
    { ...BASE, flush: 'sync', dataDir: freshDir(t), replicationInSyncLagMs: 400 },
    { logger: silentLogger },
  )
  const { port } = await broker.start()
  t.teardown(() => broker.close())
  const end = () => (broker.messageStore as FileMessageStore).mlog.log.endOffset
  const a = await RawClient.connect(port)
  const b = await RawClient.connect(port)
  const producer = await RawClient.connect(port)
  t.teardown(() => a.close())
  t.teardown(() => b.close())
  t.teardown(() => producer.close())
  for (const [c, id] of [
    [a, 'a:1'],
    [b, 'b:1'],
  ] as const) {
    await fetchAt(c, id, 0, 0)
    await fetchAt(c, id, 1, 0)
  }
  const started = Date.now()
  const sent = send(producer, [message('s', 'one', Buffer.alloc(200, 1))])
  while (end() === 0) await sleep(5)
  await fetchAt(b, 'b:1', 0, end())
  // A never acknowledges (gone): once it is out of sync (400 ms), B alone holds every in-sync copy.
  t.same(await sent, [{ status: 0, message: '' }], 'acknowledged after A dropped out of sync')
  t.ok(Date.now() - started >= 300, 'not before A dropped out')
})
