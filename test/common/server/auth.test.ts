import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { Broker } from '../../../src/broker/broker'
import { MessageConsumerProvider } from '../../../src/client/consumer/consumer-provider'
import { MessageProducerProvider } from '../../../src/client/producer/producer'
import { Connection } from '../../../src/client/transport/connection'
import { CLUSTER_APP } from '../../../src/common/auth/credentials'
import { silentLogger } from '../../../src/common/logger'
import { MetaClient } from '../../../src/common/meta/meta-client'
import { encodeBacklogRequest, encodeDlqListRequest } from '../../../src/common/protocol/admin'
import type { AuthRequest } from '../../../src/common/protocol/auth'
import { RequestCode } from '../../../src/common/protocol/codes'
import {
  decodeSendResponse,
  encodeAckRequest,
  encodeCancelRequest,
  encodeHeartbeatRequest,
  encodePullRequest,
  encodeSendRequest,
} from '../../../src/common/protocol/commands'
import { encodeDelayDlqListRequest } from '../../../src/common/protocol/delay-admin'
import { encodeRecord } from '../../../src/common/record'
import { DelayServer } from '../../../src/delay/delay-server'
import { Metaserver } from '../../../src/metaserver/main'
import { message, pullRequest } from '../../broker/server/ops'
import { CLUSTER_SECRET, TOKEN } from '../../metaserver/helpers'

/**
 * Application authentication and permissions on every TCP port, over real sockets: a metaserver with
 * apps, a broker and a delay server with `auth` on. A client without a credential, with a wrong or
 * revoked one, or without the permission is refused for produce, consume, ack, admin and cancel.
 */
const REFRESH_MS = 150

async function cluster(t: Test) {
  // Not t.testdir(): that is removed before teardowns run, and the delay server syncs on close.
  const dir = mkdtempSync(join(tmpdir(), 'qmq-auth-'))
  const meta = new Metaserver(
    {
      port: 0,
      dataDir: join(dir, 'meta'),
      adminToken: TOKEN,
      clusterSecret: CLUSTER_SECRET,
      // Route lookups and client heartbeats need the app's credential too.
      auth: true,
      authRefreshMs: REFRESH_MS,
    },
    { logger: silentLogger },
  )
  await meta.start()
  const admin = new MetaClient({ url: meta.url, adminToken: TOKEN })
  const producer = await admin.createApp('orders-producer', [{ action: 'produce', subject: 'orders.*' }])
  const consumer = await admin.createApp('orders-consumer', [
    { action: 'consume', subject: 'orders.*', group: 'billing' },
  ])
  const operator = await admin.createApp('ops', [{ action: 'admin', subject: '*' }])
  const common = {
    metaserver: meta.url,
    clusterSecret: CLUSTER_SECRET,
    auth: true,
    authRefreshMs: REFRESH_MS,
    port: 0,
    httpPort: -1,
  }
  const broker = new Broker(
    { ...common, heartbeatIntervalMs: 200, dataDir: join(dir, 'broker') },
    { logger: silentLogger },
  )
  const { port } = await broker.start()
  const delay = new DelayServer(
    { ...common, group: 'delay-1', dataDir: join(dir, 'delay'), brokers: `b1=127.0.0.1:${port}` },
    { logger: silentLogger },
  )
  await delay.start()
  // Closed in order: the delay server stops dispatching before the broker and the metaserver go.
  t.teardown(async () => {
    await delay.close()
    await broker.close()
    await admin.close()
    await meta.close()
    rmSync(dir, { recursive: true, force: true })
  })
  return {
    meta,
    admin,
    broker,
    port,
    delay,
    delayPort: delay.port,
    producer,
    consumer,
    operator,
    registry: broker.registry,
  }
}

function conn(t: Test, port: number, auth?: AuthRequest): Connection {
  const c = new Connection({
    address: `127.0.0.1:${port}`,
    requestTimeoutMs: 5_000,
    reconnectInitialMs: 10,
    reconnectMaxMs: 50,
    ...(auth !== undefined ? { auth } : {}),
  })
  t.teardown(() => c.close())
  return c
}

/** 'ok' or the error code of a request. */
async function call(c: Connection, code: number, body: Buffer | Buffer[]): Promise<string> {
  try {
    await c.request(code, body)
    return 'ok'
  } catch (err) {
    return (err as { code?: string }).code ?? String(err)
  }
}

/** The status of each record of a SEND ('ok' or the code name). */
async function send(c: Connection, subjects: string[], scheduleAt?: number): Promise<string[] | string> {
  try {
    const f = await c.request(
      RequestCode.SEND,
      encodeSendRequest(
        subjects.map((s, i) => encodeRecord({ ...message(s, `${s}-${i}-${Math.random()}`), scheduleAt })),
      ),
    )
    return decodeSendResponse(f.body).map((r) =>
      r.status === 0 ? 'ok' : r.message.includes('may not') ? 'QMQ_ERR_FORBIDDEN' : String(r.status),
    )
  } catch (err) {
    return (err as { code?: string }).code ?? String(err)
  }
}

const pullBody = (subject: string, group: string) =>
  encodePullRequest(pullRequest({ subject, group, consumerId: 'c1' }))
const ackBody = (subject: string, group: string) =>
  encodeAckRequest({ subject, group, consumerId: 'c1', broadcast: false, sequences: [0] })

async function eventually(fn: () => Promise<boolean>, ms = 5_000): Promise<boolean> {
  const until = Date.now() + ms
  while (Date.now() < until) {
    if (await fn()) return true
    await new Promise((r) => setTimeout(r, 50))
  }
  return false
}

t.test('auth - broker: no, wrong, revoked credentials and missing permissions are refused', async (t) => {
  const c = await cluster(t)
  const anon = conn(t, c.port)
  t.equal(await call(anon, RequestCode.PING, Buffer.alloc(0)), 'ok', 'PING stays open (liveness probes)')
  t.equal(await send(anon, ['orders.created']), 'QMQ_ERR_UNAUTHORIZED', 'produce without a credential')
  t.equal(
    await call(anon, RequestCode.PULL, pullBody('orders.created', 'billing')),
    'QMQ_ERR_UNAUTHORIZED',
    'consume',
  )
  t.equal(
    await call(anon, RequestCode.ACK, ackBody('orders.created', 'billing')),
    'QMQ_ERR_UNAUTHORIZED',
    'ack',
  )
  t.equal(await call(anon, RequestCode.ADMIN_SUBJECTS, Buffer.alloc(0)), 'QMQ_ERR_UNAUTHORIZED', 'admin')

  const wrong = conn(t, c.port, { appCode: 'orders-producer', token: 'qmq_not-the-token' })
  t.equal(await send(wrong, ['orders.created']), 'QMQ_ERR_UNAUTHORIZED', 'a wrong token')
  const unknown = conn(t, c.port, { appCode: 'nobody', token: c.producer.token })
  t.equal(await send(unknown, ['orders.created']), 'QMQ_ERR_UNAUTHORIZED', 'a token under another appCode')

  const prod = conn(t, c.port, { appCode: 'orders-producer', token: c.producer.token })
  t.same(
    await send(prod, ['orders.created', 'payments.done']),
    ['ok', 'QMQ_ERR_FORBIDDEN'],
    'per-subject produce',
  )
  t.equal(
    await call(prod, RequestCode.PULL, pullBody('orders.created', 'billing')),
    'QMQ_ERR_FORBIDDEN',
    'no consume grant',
  )
  t.equal(
    await call(prod, RequestCode.ADMIN_SUBJECTS, Buffer.alloc(0)),
    'QMQ_ERR_FORBIDDEN',
    'no admin grant',
  )

  const cons = conn(t, c.port, { appCode: 'orders-consumer', token: c.consumer.token })
  t.equal(
    await call(cons, RequestCode.PULL, pullBody('orders.created', 'billing')),
    'ok',
    'consume with its group',
  )
  t.equal(
    await call(cons, RequestCode.PULL, pullBody('orders.created', 'other')),
    'QMQ_ERR_FORBIDDEN',
    'another group',
  )
  t.equal(
    await call(cons, RequestCode.ACK, ackBody('orders.created', 'other')),
    'QMQ_ERR_FORBIDDEN',
    'ack of another group',
  )
  t.equal(
    await call(
      cons,
      RequestCode.HEARTBEAT,
      encodeHeartbeatRequest({
        consumerId: 'c1',
        subscriptions: [{ subject: 'orders.created', group: 'other', sequences: [], broadcast: false }],
      }),
    ),
    'QMQ_ERR_FORBIDDEN',
    'heartbeat of another group',
  )
  t.same(await send(cons, ['orders.created']), ['QMQ_ERR_FORBIDDEN'], 'no produce grant')

  const ops = conn(t, c.port, { appCode: 'ops', token: c.operator.token })
  t.equal(await call(ops, RequestCode.ADMIN_SUBJECTS, Buffer.alloc(0)), 'ok', 'admin grant')
  t.equal(await call(ops, RequestCode.ADMIN_BACKLOG, encodeBacklogRequest({})), 'ok')
  t.equal(
    await call(
      cons,
      RequestCode.ADMIN_DLQ_LIST,
      encodeDlqListRequest({ subject: 'orders.created', group: 'billing', limit: 10, afterSequence: -1 }),
    ),
    'QMQ_ERR_FORBIDDEN',
    'dead-letter listing is an admin request',
  )

  const server = conn(t, c.port, { appCode: CLUSTER_APP, token: CLUSTER_SECRET })
  t.same(
    await send(server, ['payments.done']),
    ['ok'],
    'a server of the cluster (cluster secret) may do everything',
  )
  const fakeServer = conn(t, c.port, { appCode: CLUSTER_APP, token: 'not-the-cluster-secret-at-all' })
  t.equal(await send(fakeServer, ['payments.done']), 'QMQ_ERR_UNAUTHORIZED')

  // Revocation: a rotated token stops working on the open connection within the refresh interval.
  await c.admin.rotateApp('orders-producer')
  t.ok(
    await eventually(async () => (await send(prod, ['orders.created'])) === 'QMQ_ERR_UNAUTHORIZED'),
    'the old token is refused on an open connection after rotation',
  )
  await c.admin.revokeApp('orders-consumer', { action: 'consume', subject: 'orders.*', group: 'billing' })
  t.ok(
    await eventually(
      async () =>
        (await call(cons, RequestCode.PULL, pullBody('orders.created', 'billing'))) === 'QMQ_ERR_FORBIDDEN',
    ),
    'a revoked grant is refused within seconds',
  )
  await c.admin.deleteApp('ops')
  t.ok(
    await eventually(
      async () => (await call(ops, RequestCode.ADMIN_SUBJECTS, Buffer.alloc(0))) === 'QMQ_ERR_UNAUTHORIZED',
    ),
    'a deleted app is refused',
  )

  const metrics = await c.registry.metrics()
  t.match(metrics, /qmq_broker_auth_refused_total\{result="unauthorized",request="SEND",reason="no_auth"/)
  t.match(metrics, /qmq_broker_auth_refused_total\{result="forbidden",request="PULL",reason="no_grant"/)
  t.notMatch(metrics, new RegExp(c.producer.token.slice(4, 20)), 'no token in the metrics')
})

t.test(
  'auth - delay server: produce, cancel and its admin requests need a credential and a grant',
  async (t) => {
    const c = await cluster(t)
    const anon = conn(t, c.delayPort)
    const later = Date.now() + 3_600_000
    t.equal(await send(anon, ['orders.later'], later), 'QMQ_ERR_UNAUTHORIZED', 'produce without a credential')
    t.equal(
      await call(anon, RequestCode.CANCEL, encodeCancelRequest(['x'], CLUSTER_SECRET)),
      'QMQ_ERR_UNAUTHORIZED',
      'cancel',
    )
    const prod = conn(t, c.delayPort, { appCode: 'orders-producer', token: c.producer.token })
    t.same(
      await send(prod, ['orders.later', 'payments.later'], later),
      ['ok', 'QMQ_ERR_FORBIDDEN'],
      'per-subject produce',
    )
    t.equal(
      await call(prod, RequestCode.CANCEL, encodeCancelRequest(['x'])),
      'QMQ_ERR_UNAUTHORIZED',
      'cancel needs admin or the cluster secret',
    )
    t.equal(
      await call(
        prod,
        RequestCode.ADMIN_DELAY_DLQ_LIST,
        encodeDelayDlqListRequest({ limit: 10, afterSequence: -1 }),
      ),
      'QMQ_ERR_UNAUTHORIZED',
      'delay dead letters likewise',
    )
    const ops = conn(t, c.delayPort, { appCode: 'ops', token: c.operator.token })
    t.equal(await call(ops, RequestCode.CANCEL, encodeCancelRequest(['x'])), 'ok', 'an admin app may cancel')
    const wrong = conn(t, c.delayPort, { appCode: 'ops', token: c.producer.token })
    t.equal(
      await call(wrong, RequestCode.CANCEL, encodeCancelRequest(['x'])),
      'QMQ_ERR_UNAUTHORIZED',
      'a wrong token',
    )
  },
)

t.test(
  'auth - the delay server delivers due messages to a broker with auth on (cluster secret)',
  async (t) => {
    const c = await cluster(t)
    const prod = conn(t, c.delayPort, { appCode: 'orders-producer', token: c.producer.token })
    const m = { ...message('orders.due', 'due-1'), scheduleAt: Date.now() + 50 }
    const f = await prod.request(RequestCode.SEND, encodeSendRequest([encodeRecord(m)]))
    t.same(decodeSendResponse(f.body), [{ status: 0, message: '' }])
    const cons = conn(t, c.port, { appCode: CLUSTER_APP, token: CLUSTER_SECRET })
    t.ok(
      await eventually(async () => {
        const r = await cons.request(RequestCode.PULL, pullBody('orders.due', 'g'))
        return r.body.length > 4
      }),
      'the due message reached the broker',
    )
  },
)

t.test('auth - the SDK producer sends with its appCode and token; without one it is refused', async (t) => {
  const c = await cluster(t)
  // The broker registers with the metaserver before producers can get a route.
  await eventually(async () => (await c.admin.listGroups()).some((g) => g.kind === 'broker' && g.alive))
  const withToken = new MessageProducerProvider({
    appCode: 'orders-producer',
    metaServer: c.meta.url,
    token: c.producer.token,
  })
  await withToken.init()
  const without = new MessageProducerProvider({
    appCode: 'orders-producer',
    metaServer: c.meta.url,
    maxAttempts: 1,
  })
  await without.init()
  t.teardown(async () => {
    await withToken.close()
    await without.close()
  })
  const sent = await withToken.sendMessage(withToken.generateMessage('orders.sdk'))
  t.ok(sent, 'sent with the token')
  await t.rejects(
    withToken.sendMessage(withToken.generateMessage('payments.sdk')),
    { code: 'QMQ_ERR_FORBIDDEN' },
    'a subject without a grant',
  )
  await t.rejects(
    without.sendMessage(without.generateMessage('orders.sdk')),
    { code: 'QMQ_ERR_UNAUTHORIZED' },
    'no token',
  )
})

t.test(
  'auth - SDK producer and consumer work end to end with auth on everywhere (metaserver included)',
  async (t) => {
    const c = await cluster(t)
    await eventually(async () => (await c.admin.listGroups()).some((g) => g.kind === 'broker' && g.alive))
    const producer = new MessageProducerProvider({
      appCode: 'orders-producer',
      metaServer: c.meta.url,
      token: c.producer.token,
    })
    await producer.init()
    const consumer = new MessageConsumerProvider({
      appCode: 'orders-consumer',
      metaServer: c.meta.url,
      token: c.consumer.token,
      pullTimeoutMs: 200,
    })
    const got: string[] = []
    consumer.addListener('orders.e2e', 'billing', (m) => {
      got.push(m.getStringProperty('n') ?? '')
    })
    await consumer.start()
    t.teardown(async () => {
      await consumer.close()
      await producer.close()
    })
    for (let i = 0; i < 20; i++)
      await producer.sendMessage(producer.generateMessage('orders.e2e').setProperty('n', `m${i}`))
    t.ok(await eventually(async () => got.length >= 20, 10_000), 'every message consumed')
    t.same(new Set(got).size, 20)
    // The consumer's heartbeats reached the metaserver under its own app.
    t.ok(
      await eventually(async () =>
        (await c.admin.listConsumers({ subject: 'orders.e2e' })).some(
          (x) => x.appCode === 'orders-consumer' && x.consumerGroup === 'billing',
        ),
      ),
      'the consumer is listed under its app',
    )
  },
)
