import { hostname } from 'node:os'
import { createServer as createHttpServer } from 'node:http'
import { type AddressInfo, createServer, type Socket } from 'node:net'
import t from 'tap'
import { isQmqError, type QmqError } from '../../src/common/errors'
import { MessageProducerProvider } from '../../src/client/producer/producer'
import { type Message, TimeUnit } from '../../src/client/producer/message'
import { RequestCode } from '../../src/common/protocol/codes'
import { decodeSendRequest, encodeSendResponse } from '../../src/common/protocol/commands'
import { encodeFrame, FLAG_RESPONSE, FrameDecoder } from '../../src/common/protocol/frame'
import { decodeRecord, type MessageRecord } from '../../src/common/record'
import { type FakeBroker, FakeMetaserver, startFakeCluster } from './helpers/fake-cluster'

async function setup(t: { teardown: (fn: () => unknown) => void }, extra: Record<string, unknown> = {}) {
  const cluster = await startFakeCluster()
  const producer = new MessageProducerProvider({
    appCode: 'test-app',
    metaServer: cluster.meta.url,
    ...extra,
  })
  await producer.init()
  t.teardown(async () => {
    await producer.close()
    await cluster.close()
  })
  return { cluster, producer }
}

t.test('producer - QMQ usage: generateMessage, setProperty, sendMessage with a listener', async (t) => {
  const { cluster, producer } = await setup(t)
  const message = producer.generateMessage('qmq_subject')
  message.setProperty('key', 'value')
  message
    .setProperty('n', 42)
    .setProperty('big', 2n ** 60n)
    .setProperty('flag', true)
  message.setProperty('when', new Date(1_700_000_000_000))
  message.addTag('vip').setBody('hello')
  const outcome = await new Promise<string>((resolve) => {
    void producer.sendMessage(message, {
      onSuccess: (m: Message) => resolve(`ok ${m.getMessageId()}`),
      onFailed: (_m: Message, e: QmqError) => resolve(`failed ${e.code}`),
    })
  })
  t.equal(outcome, `ok ${message.getMessageId()}`)
  const stored = [...cluster.a.stored('qmq_subject'), ...cluster.b.stored('qmq_subject')]
  t.equal(stored.length, 1)
  const r = stored[0]
  t.equal(r?.properties.get('key'), 'value')
  t.equal(r?.properties.get('n'), '42')
  t.equal(r?.properties.get('big'), String(2n ** 60n))
  t.equal(r?.properties.get('qmq_appCode'), 'test-app')
  t.same(r?.tags, ['vip'])
  t.equal(r?.body, 'hello')
})

t.test('producer - sendMessage returns a promise with the storing group', async (t) => {
  const { producer } = await setup(t)
  const m = producer.generateMessage('s1')
  const r = await producer.sendMessage(m)
  t.equal(r.messageId, m.getMessageId())
  t.match(r.group, /^broker-[ab]$/)
})

t.test('producer - batches many messages into few SEND requests, spread over groups', async (t) => {
  const { cluster, producer } = await setup(t, { batchSize: 50 })
  const sends = Array.from({ length: 1000 }, (_, i) =>
    producer.sendMessage(producer.generateMessage('bulk').setBody(Buffer.alloc(100, i))),
  )
  await Promise.all(sends)
  t.equal(cluster.a.stored('bulk').length + cluster.b.stored('bulk').length, 1000)
  t.ok(cluster.a.sendRequests + cluster.b.sendRequests <= 25, 'at most 1000/50 (+slack) requests')
  t.ok(cluster.a.stored('bulk').length > 0 && cluster.b.stored('bulk').length > 0, 'both groups used')
})

t.test('producer - a full send queue makes sendMessage wait for room, first come first served', async (t) => {
  const { cluster, producer } = await setup(t, { maxQueueSize: 5, lingerMs: 20 })
  let most = 0
  const order: number[] = []
  const sends = Array.from({ length: 23 }, (_, i) => {
    const r = producer.sendMessage(producer.generateMessage('q').setProperty('i', i))
    most = Math.max(most, producer.queueSize)
    void r.then(() => order.push(i))
    return r
  })
  t.equal(producer.queueSize, 5, 'five admitted')
  t.equal(producer.waitingCount, 18, 'the rest wait')
  const results = await Promise.all(sends)
  t.equal(results.length, 23, 'every send succeeded')
  t.equal(most, 5, 'never more than maxQueueSize admitted')
  t.same(
    order,
    order.slice().sort((a, b) => a - b),
    'settled in the order sent',
  )
  t.equal(cluster.a.stored('q').length + cluster.b.stored('q').length, 23)
  t.equal(producer.waitingCount, 0)
})

t.test('producer - a message that waits for room past its deadline fails with QUEUE_FULL', async (t) => {
  const { cluster, producer } = await setup(t, {
    maxQueueSize: 1,
    sendTimeoutMs: 200,
    firstLookupTimeoutMs: 1_500,
  })
  await cluster.meta.stop() // the first route lookup of a new subject now takes firstLookupTimeoutMs
  const first = producer.sendMessage(producer.generateMessage('q.full')).catch((e: unknown) => e)
  const err = await producer.sendMessage(producer.generateMessage('q.full')).catch((e: unknown) => e)
  t.ok(isQmqError(err, 'QMQ_ERR_SEND_QUEUE_FULL'), `got ${(err as Error).message}`)
  t.match((err as Error).message, /waited 200 ms .*maxQueueSize 1/)
  t.ok(isQmqError(await first, 'QMQ_ERR_METASERVER_UNAVAILABLE'), 'the admitted one fails on its own')
})

t.test('producer - a stopped group: sends fail over to the other and none is lost', async (t) => {
  const { cluster, producer } = await setup(t, { reconnectInitialMs: 1000 })
  await producer.sendMessage(producer.generateMessage('fo')) // routes cached with both groups
  await cluster.b.stop()
  const all = await Promise.all(
    Array.from({ length: 200 }, () => producer.sendMessage(producer.generateMessage('fo'))),
  )
  t.ok(all.every((r) => r.group === 'broker-a'))
  t.equal(cluster.a.stored('fo').length + cluster.b.stored('fo').length, 201)
})

t.test('producer - retriable refusals go to another group; non-retriable ones fail at once', async (t) => {
  const { cluster, producer } = await setup(t)
  cluster.a.sendStatus = 24 // BUSY (retriable)
  const results = await Promise.all(
    Array.from({ length: 20 }, () => producer.sendMessage(producer.generateMessage('r'))),
  )
  t.ok(results.every((r) => r.group === 'broker-b'))
  cluster.a.sendStatus = 19 // INVALID_ARGUMENT (not retriable)
  cluster.b.sendStatus = 19
  await t.rejects(producer.sendMessage(producer.generateMessage('r')), { code: 'QMQ_ERR_INVALID_ARGUMENT' })
})

t.test('producer - every group failing: bounded by maxAttempts, and the breaker opens', async (t) => {
  const { cluster, producer } = await setup(t, {
    maxAttempts: 3,
    circuitFailureThreshold: 2,
    circuitOpenMs: 60_000,
  })
  cluster.a.sendStatus = 24
  cluster.b.sendStatus = 24
  const err = await producer.sendMessage(producer.generateMessage('cb')).catch((e: unknown) => e)
  t.ok(isQmqError(err))
  t.match((err as Error).message, /after 3 attempt/)
  // the breakers of both groups are open now (status errors count as failures only in transport;
  // stop both brokers to trip them)
  await cluster.a.stop()
  await cluster.b.stop()
  for (let i = 0; i < 3; i++) await producer.sendMessage(producer.generateMessage('cb')).catch(() => {})
  const open = await producer.sendMessage(producer.generateMessage('cb')).catch((e: unknown) => e)
  t.ok(isQmqError(open, 'QMQ_ERR_CIRCUIT_OPEN'), `got ${(open as Error).message}`)
})

t.test('producer - delayed messages go to a delay group', async (t) => {
  const { cluster, producer } = await setup(t)
  const m = producer.generateMessage('qmq_delay_subject')
  m.setProperty('key', 'value')
  m.setDelayTime(600, TimeUnit.MILLISECONDS)
  const sentAt = Date.now()
  const r = await producer.sendMessage(m)
  t.equal(r.group, 'delay-1')
  t.equal(cluster.a.stored('qmq_delay_subject').length, 0)
  // Polled, not a fixed sleep: on a loaded machine the delay group may hand it over late.
  const end = Date.now() + 10_000
  while (cluster.a.stored('qmq_delay_subject').length === 0 && Date.now() < end)
    await new Promise((res) => setTimeout(res, 10))
  const arrivedAfter = Date.now() - sentAt
  t.equal(cluster.a.stored('qmq_delay_subject').length, 1, `handed to the broker after ${arrivedAfter} ms`)
  t.ok(arrivedAfter >= 600 - 50, 'not before its delay')
  const d = producer.generateMessage('qmq_delay_subject').setDelayTime(new Date(Date.now() + 100))
  t.equal((await producer.sendMessage(d)).group, 'delay-1', 'a short delay goes to the delay group too')
  const p = producer.generateMessage('qmq_delay_subject').setDelayTime(new Date(Date.now() - 1))
  t.match((await producer.sendMessage(p)).group, /^broker-/, 'a time already past is real-time')
})

t.test(
  'producer - listeners: room is made before onSuccess; a throwing listener harms nothing',
  async (t) => {
    const { producer } = await setup(t, { maxQueueSize: 5 })
    const total = 40
    let ok = 0
    let failed = 0
    let sent = 0
    await new Promise<void>((resolve) => {
      const listener = {
        onSuccess(): void {
          if (++ok + failed === total) resolve()
          else if (sent < total) send()
          if (ok % 3 === 0) throw new Error('listener bug')
        },
        onFailed(_m: Message, e: QmqError): void {
          failed++
          t.fail(`unexpected failure ${e.code}`)
          if (ok + failed === total) resolve()
        },
      }
      const send = (): void => {
        sent++
        void producer.sendMessage(producer.generateMessage('qmq_listener').setBody(`m${sent}`), listener)
      }
      for (let i = 0; i < 5; i++) send()
    })
    t.equal(ok, total, 'every send from inside onSuccess found room (maxQueueSize 5)')
    t.equal(producer.queueSize, 0)
    await producer.close()
    const refused = await new Promise<string>((resolve) => {
      const r = producer.sendMessage(producer.generateMessage('qmq_listener'), {
        onSuccess: () => resolve('ok'),
        onFailed: (_m, e) => resolve(e.code),
      })
      t.ok(r instanceof Promise, 'the ignored promise of a refused send is still returned')
    })
    t.equal(refused, 'QMQ_ERR_CLIENT_CLOSED')
  },
)

t.test('producer - the delay lane carries several subjects; each result names its own', async (t) => {
  const { producer } = await setup(t)
  const sends = ['qmq_delay_a', 'qmq_delay_b', 'qmq_delay_a'].map((s) =>
    producer.sendMessage(producer.generateMessage(s).setDelayTime(10, TimeUnit.SECONDS)),
  )
  const results = await Promise.all(sends)
  t.same(
    results.map((r) => [r.subject, r.group]),
    [
      ['qmq_delay_a', 'delay-1'],
      ['qmq_delay_b', 'delay-1'],
      ['qmq_delay_a', 'delay-1'],
    ],
  )
  t.equal(producer.queueSize, 0)
})

t.test('producer - invalid input fails fast with typed errors', async (t) => {
  const { producer } = await setup(t)
  t.throws(() => producer.generateMessage('bad subject'), { code: 'QMQ_ERR_SUBJECT_INVALID' })
  const m = producer.generateMessage('ok')
  t.throws(() => m.setProperty('qmq_times', 1), { code: 'QMQ_ERR_PROPERTY_INVALID' })
  t.throws(() => m.setDelayTime(-1, TimeUnit.SECONDS), { code: 'QMQ_ERR_SCHEDULE_INVALID' })
  for (let i = 0; i < 10; i++) m.addTag(`t${i}`)
  t.throws(() => m.addTag('t10'), { code: 'QMQ_ERR_TOO_MANY_TAGS' })
  const big = producer.generateMessage('ok').setBody(Buffer.alloc(5 * 1024 * 1024))
  await t.rejects(producer.sendMessage(big), { code: 'QMQ_ERR_MESSAGE_TOO_LARGE' })
})

t.test('producer - not initialized, and closed', async (t) => {
  const p = new MessageProducerProvider()
  await t.rejects(p.sendMessage(p.generateMessage('x')), { code: 'QMQ_ERR_NOT_INITIALIZED' })
  await t.rejects(p.init(), { code: 'QMQ_ERR_CONFIG_INVALID' })
  const q = new MessageProducerProvider({ checkMetaServerOnInit: false })
  q.setAppCode('app')
  q.setMetaServer('http://127.0.0.1:1/meta/address')
  await q.init()
  await q.close()
  await t.rejects(q.sendMessage(q.generateMessage('x')), { code: 'QMQ_ERR_CLIENT_CLOSED' })
  await t.rejects(new MessageProducerProvider({ batchSise: 3 } as never).init(), {
    code: 'QMQ_ERR_CONFIG_INVALID',
    message: /did you mean batchSize/,
  })
})

t.test('producer - init() fails fast, naming the URL, when the metaserver does not answer', async (t) => {
  const down = 'http://127.0.0.1:1/meta/address'
  const p = new MessageProducerProvider({ appCode: 'app', metaServer: down })
  const err = await p.init().catch((e: unknown) => e)
  t.ok(isQmqError(err, 'QMQ_ERR_METASERVER_UNAVAILABLE'), String(err))
  t.match((err as Error).message, down)
  t.match((err as Error).message, /ECONNREFUSED|connect/i, 'with the cause')
  await t.rejects(p.sendMessage(p.generateMessage('x')), { code: 'QMQ_ERR_NOT_INITIALIZED' })
  // a server that is not a metaserver
  const web = createHttpServer((_req, res) => res.writeHead(404).end('not here'))
  await new Promise<void>((resolve) => web.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => web.close(() => resolve())))
  const addr = web.address() as AddressInfo
  const wrong = `http://127.0.0.1:${addr.port}/meta/address`
  const w = new MessageProducerProvider({ appCode: 'app', metaServer: wrong })
  await t.rejects(w.init(), { code: 'QMQ_ERR_METASERVER_UNAVAILABLE', message: wrong })
  // it comes up later: init() may be called again
  const cluster = await startFakeCluster()
  t.teardown(() => cluster.close())
  const late = new MessageProducerProvider({ appCode: 'app', metaServer: cluster.meta.url })
  t.teardown(() => late.close())
  await late.init()
  t.match((await late.sendMessage(late.generateMessage('x'))).group, /^broker-/)
})

t.test('producer - close() flushes queued messages before closing', async (t) => {
  const cluster = await startFakeCluster()
  t.teardown(() => cluster.close())
  const producer = new MessageProducerProvider({ appCode: 'a', metaServer: cluster.meta.url, lingerMs: 200 })
  await producer.init()
  const ps = Array.from({ length: 30 }, () => producer.sendMessage(producer.generateMessage('flush')))
  await producer.close()
  t.equal(producer.queueSize, 0)
  const res = await Promise.all(ps)
  t.equal(res.length, 30)
  t.equal(cluster.a.stored('flush').length + cluster.b.stored('flush').length, 30)
})

t.test(
  'producer - metaserver down: cached routes keep working; a new subject fails within the bound',
  async (t) => {
    const { cluster, producer } = await setup(t, { firstLookupTimeoutMs: 300, metaTimeoutMs: 200 })
    await producer.sendMessage(producer.generateMessage('known'))
    await cluster.meta.stop()
    await producer.sendMessage(producer.generateMessage('known'))
    const started = Date.now()
    const err = await producer.sendMessage(producer.generateMessage('unknown')).catch((e: unknown) => e)
    t.ok(isQmqError(err, 'QMQ_ERR_METASERVER_UNAVAILABLE'), String(err))
    t.match((err as Error).message, /subject unknown/)
    t.ok(Date.now() - started < 5_000, 'bounded')
  },
)

t.test('producer - changing a message after sendMessage changes nothing that is sent', async (t) => {
  const { cluster, producer } = await setup(t, { lingerMs: 50 })
  const body = Buffer.from('original body')
  const m = producer.generateMessage('mut').setProperty('k', 'v1').addTag('t1').setBody(body)
  const sent = producer.sendMessage(m)
  // still queued (lingerMs): change everything the user can reach
  m.setProperty('k', 'v2').setProperty('extra', 'x').addTag('t2').setDelayTime(1, TimeUnit.HOURS)
  body.fill(0x7a)
  m.setBody('another body')
  await sent
  const stored = [...cluster.a.stored('mut'), ...cluster.b.stored('mut')]
  t.equal(stored.length, 1)
  const r = stored[0] as MessageRecord
  t.equal(r.properties.get('k'), 'v1')
  t.notOk(r.properties.has('extra'))
  t.same(r.tags, ['t1'])
  t.equal(r.scheduleAt, undefined)
  t.same(r.body, Buffer.from('original body'))
})

/**
 * A one-group broker that refuses every other record of its first SEND with BUSY (retriable) and
 * stores everything else: the producer must resend just the refused subset, intact.
 */
async function partialRefusalBroker(t: { teardown: (fn: () => unknown) => void }) {
  const stored: MessageRecord[] = []
  const requestSizes: number[] = []
  const sockets = new Set<Socket>()
  const server = createServer((socket) => {
    sockets.add(socket)
    socket.on('error', () => {})
    const decoder = new FrameDecoder()
    socket.on('data', (chunk) => {
      for (const f of decoder.push(chunk)) {
        if (f.code !== RequestCode.SEND) continue
        const items = decodeSendRequest(Buffer.from(f.body))
        const first = requestSizes.length === 0
        requestSizes.push(items.length)
        const results = items.map((item, i) => {
          if (item.error) return { status: item.error.status, message: item.error.message }
          if (first && i % 2 === 1) return { status: 24, message: 'busy' }
          stored.push(decodeRecord(item.bytes))
          return { status: 0, message: '' }
        })
        const head = { flags: FLAG_RESPONSE, code: f.code, status: 0, requestId: f.requestId }
        socket.write(encodeFrame(head, encodeSendResponse(results)))
      }
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const a = server.address()
  if (a === null || typeof a === 'string') throw new Error('no address')
  const group = {
    name: 'partial',
    routeGroup: { name: 'partial', address: `127.0.0.1:${a.port}`, state: 'rw' },
    running: true,
  }
  const meta = await new FakeMetaserver(() => [group as unknown as FakeBroker]).start()
  t.teardown(async () => {
    for (const s of sockets) s.destroy()
    await new Promise<void>((resolve) => server.close(() => resolve()))
    await meta.stop()
  })
  return { stored, requestSizes, metaUrl: meta.url }
}

t.test('producer - a batch partly refused: only the refused records go again, intact', async (t) => {
  const broker = await partialRefusalBroker(t)
  const producer = new MessageProducerProvider({ appCode: 'p', metaServer: broker.metaUrl, lingerMs: 20 })
  await producer.init()
  t.teardown(() => producer.close())
  const messages = Array.from({ length: 10 }, (_, i) =>
    producer
      .generateMessage('part')
      .setProperty('i', i)
      .setBody(Buffer.alloc(300 + i, i)),
  )
  const results = await Promise.all(messages.map((m) => producer.sendMessage(m)))
  t.same(
    results.map((r) => r.messageId),
    messages.map((m) => m.getMessageId()),
  )
  t.same(broker.requestSizes, [10, 5], 'one batch, then the 5 refused records')
  t.equal(broker.stored.length, 10)
  const byId = new Map(broker.stored.map((r) => [r.id, r]))
  messages.forEach((m, i) => {
    const r = byId.get(m.getMessageId())
    t.equal(r?.properties.get('i'), String(i))
    t.same(r?.body, Buffer.alloc(300 + i, i))
  })
})

t.test("producer - generated messages share the SDK properties, never one another's changes", async (t) => {
  const { cluster, producer } = await setup(t)
  const m1 = producer.generateMessage('shared')
  const m2 = producer.generateMessage('shared')
  m1.setProperty('a', '1')
  m1.removeProperty('qmq_appCode')
  t.notOk(m2.hasProperty('a'))
  t.equal(m2.getStringProperty('qmq_appCode'), 'test-app')
  const m3 = producer.generateMessage('shared')
  t.same(
    [...m3.getProperties()],
    [
      ['qmq_appCode', 'test-app'],
      ['qmq_host', hostname()],
    ],
  )
  await Promise.all([m1, m2, m3].map((m) => producer.sendMessage(m)))
  const stored = new Map(
    [...cluster.a.stored('shared'), ...cluster.b.stored('shared')].map((r) => [r.id, r.properties]),
  )
  t.same(
    [...(stored.get(m1.getMessageId()) ?? [])],
    [
      ['qmq_host', hostname()],
      ['a', '1'],
    ],
  )
  t.same(
    [...(stored.get(m2.getMessageId()) ?? [])],
    [
      ['qmq_appCode', 'test-app'],
      ['qmq_host', hostname()],
    ],
  )
})
