import t, { type Test } from 'tap'
import { request } from 'undici'
import { CLUSTER_APP } from '../../src/common/auth/credentials'
import { MetaClient } from '../../src/common/meta/meta-client'
import { APP_CODE_HEADER, APP_TOKEN_HEADER, CLUSTER_SECRET_HEADER } from '../../src/common/meta/types'
import { CLUSTER_SECRET, hb, startWithClient } from './helpers'

/**
 * With `auth` on, the metaserver's client endpoints (GET /meta/route, POST /meta/client/heartbeat)
 * answer only a request with an application credential that grants the subject, or the cluster secret
 * (servers): before, they answered anyone. With `auth` off they stay open (a dev cluster).
 */

const REFRESH_MS = 100

async function cluster(t: Test, auth = true) {
  const { server, client } = await startWithClient(t, {
    extra: { auth, authRefreshMs: REFRESH_MS, minGroupsPerSubject: 1 },
  })
  await client.heartbeat(hb('bg1', 1111))
  const producer = await client.createApp('orders-producer', [{ action: 'produce', subject: 'orders.*' }])
  const consumer = await client.createApp('orders-consumer', [
    { action: 'consume', subject: 'orders.*', group: 'billing' },
  ])
  const operator = await client.createApp('ops', [{ action: 'admin', subject: '*' }])
  return { server, client, producer, consumer, operator }
}

interface Answer {
  status: number
  code: string | undefined
}

function creds(appCode: string, token: string): Record<string, string> {
  return { [APP_CODE_HEADER]: appCode, [APP_TOKEN_HEADER]: token }
}

async function route(url: string, query: string, headers: Record<string, string> = {}): Promise<Answer> {
  const res = await request(`${url}/meta/route?${query}`, { headers })
  const body = (await res.body.json()) as { code?: string }
  return { status: res.statusCode, code: body.code }
}

async function beat(url: string, body: unknown, headers: Record<string, string> = {}): Promise<Answer> {
  const res = await request(`${url}/meta/client/heartbeat`, {
    method: 'POST',
    body: JSON.stringify(body),
    headers: { 'content-type': 'application/json', ...headers },
  })
  const answer = (await res.body.json()) as { code?: string }
  return { status: res.statusCode, code: answer.code }
}

const consumerBeat = (appCode: string, group = 'billing') => ({
  clientId: 'c-1',
  appCode,
  kind: 'consumer',
  subscriptions: [{ subject: 'orders.created', consumerGroup: group }],
  includeRoutes: true,
})

t.test('metaserver auth - a route lookup needs a credential and a grant on the subject', async (t) => {
  const c = await cluster(t)
  const url = c.server.url
  const produce = 'subject=orders.created&kind=producer'
  const consume = 'subject=orders.created&kind=consumer&group=billing'
  t.same(await route(url, produce), { status: 401, code: 'QMQ_ERR_UNAUTHORIZED' }, 'no credential')
  t.same(
    await route(url, produce, creds('orders-producer', c.consumer.token)),
    { status: 401, code: 'QMQ_ERR_UNAUTHORIZED' },
    'a wrong token',
  )
  t.same(
    await route(url, produce, creds('nobody', c.producer.token)),
    { status: 401, code: 'QMQ_ERR_UNAUTHORIZED' },
    'an unknown app',
  )
  t.same(
    await route(url, produce, { [CLUSTER_SECRET_HEADER]: `${CLUSTER_SECRET}x` }),
    { status: 401, code: 'QMQ_ERR_UNAUTHORIZED' },
    'a wrong cluster secret',
  )
  t.equal((await route(url, produce, creds('orders-producer', c.producer.token))).status, 200, 'producer')
  t.same(
    await route(url, 'subject=payments.created&kind=producer', creds('orders-producer', c.producer.token)),
    { status: 403, code: 'QMQ_ERR_FORBIDDEN' },
    'a subject without a produce grant',
  )
  t.same(
    await route(
      url,
      'subject=orders.created&kind=delay-producer',
      creds('orders-consumer', c.consumer.token),
    ),
    { status: 403, code: 'QMQ_ERR_FORBIDDEN' },
    'a consume grant does not allow producing',
  )
  t.equal((await route(url, consume, creds('orders-consumer', c.consumer.token))).status, 200, 'consumer')
  t.same(
    await route(
      url,
      'subject=orders.created&kind=consumer&group=audit',
      creds('orders-consumer', c.consumer.token),
    ),
    { status: 403, code: 'QMQ_ERR_FORBIDDEN' },
    'another consumer group',
  )
  t.equal(
    (
      await route(
        url,
        'subject=%25DEAD_RETRY%25orders.created%25billing&kind=consumer&group=billing',
        creds('orders-consumer', c.consumer.token),
      )
    ).status,
    200,
    "a dead-letter subject follows its group's grant",
  )
  t.equal((await route(url, consume, creds('ops', c.operator.token))).status, 200, 'an admin grant')
  t.equal((await route(url, produce, { [CLUSTER_SECRET_HEADER]: CLUSTER_SECRET })).status, 200, 'a server')
  t.equal(
    (await route(url, produce, creds(CLUSTER_APP, CLUSTER_SECRET))).status,
    200,
    'the cluster app with the secret (the CLI)',
  )

  // The typed client: with the app's credential it gets the route, without it the stable code.
  const sdk = new MetaClient({ url, auth: { appCode: 'orders-producer', token: c.producer.token } })
  const anon = new MetaClient({ url })
  // A delay server's route lookups (its MetaClient has the cluster secret).
  const server = new MetaClient({ url, clusterSecret: CLUSTER_SECRET })
  t.teardown(async () => {
    await sdk.close()
    await anon.close()
    await server.close()
  })
  t.equal((await server.route({ subject: 'payments.x', kind: 'producer' })).groups.length, 1)
  t.same(
    (await sdk.route({ subject: 'orders.created', kind: 'producer' })).groups.map((g) => g.name),
    ['bg1'],
  )
  await t.rejects(anon.route({ subject: 'orders.created', kind: 'producer' }), {
    code: 'QMQ_ERR_UNAUTHORIZED',
  })
})

t.test('metaserver auth - a client heartbeat needs a credential granting every subscription', async (t) => {
  const c = await cluster(t)
  const url = c.server.url
  const consumer = creds('orders-consumer', c.consumer.token)
  t.same(await beat(url, consumerBeat('orders-consumer')), { status: 401, code: 'QMQ_ERR_UNAUTHORIZED' })
  t.same(
    await beat(url, consumerBeat('orders-consumer'), creds('orders-consumer', 'qmq_wrong')),
    { status: 401, code: 'QMQ_ERR_UNAUTHORIZED' },
    'a wrong token',
  )
  t.equal((await beat(url, consumerBeat('orders-consumer'), consumer)).status, 200, 'its own subscription')
  t.same(
    await beat(url, consumerBeat('orders-consumer', 'audit'), consumer),
    { status: 403, code: 'QMQ_ERR_FORBIDDEN' },
    'a group it has no grant for',
  )
  t.same(
    await beat(url, consumerBeat('orders-producer'), consumer),
    { status: 403, code: 'QMQ_ERR_FORBIDDEN' },
    'under another app name',
  )
  t.same(
    (await c.client.listConsumers({ subject: 'orders.created' })).map((x) => [x.appCode, x.consumerGroup]),
    [['orders-consumer', 'billing']],
    'only the accepted heartbeat is listed',
  )
  t.equal(
    (await beat(url, consumerBeat('orders-consumer'), { [CLUSTER_SECRET_HEADER]: CLUSTER_SECRET })).status,
    200,
    'the cluster secret',
  )
})

t.test('metaserver auth - a new app works at once; a revoked grant stops within the refresh', async (t) => {
  const c = await cluster(t)
  const url = c.server.url
  const produce = 'subject=orders.created&kind=producer'
  const fresh = await c.client.createApp('fresh', [{ action: 'produce', subject: 'orders.*' }])
  t.equal((await route(url, produce, creds('fresh', fresh.token))).status, 200, 'created a moment ago')
  const rotated = await c.client.rotateApp('fresh')
  t.equal((await route(url, produce, creds('fresh', rotated.token))).status, 200, 'rotated a moment ago')
  await c.client.revokeApp('fresh', { action: 'produce', subject: 'orders.*' })
  await new Promise((r) => setTimeout(r, REFRESH_MS * 4))
  t.same(await route(url, produce, creds('fresh', rotated.token)), { status: 403, code: 'QMQ_ERR_FORBIDDEN' })
})

t.test('metaserver auth - off (the default): route lookups and client heartbeats stay open', async (t) => {
  const c = await cluster(t, false)
  t.equal((await route(c.server.url, 'subject=orders.created&kind=producer')).status, 200)
  t.equal((await beat(c.server.url, consumerBeat('anyone'))).status, 200)
})
