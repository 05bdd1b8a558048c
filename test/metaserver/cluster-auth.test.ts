import { connect } from 'node:net'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { Broker } from '../../src/broker/broker'
import { silentLogger } from '../../src/common/logger'
import { MetaClient } from '../../src/common/meta/meta-client'
import { DelayServer } from '../../src/delay/delay-server'
import { Metaserver } from '../../src/metaserver/main'
import { startBroker } from '../broker/server/start-broker'
import { CLUSTER_SECRET } from './helpers'

/**
 * Defect 1 of issue 12: POST /meta/heartbeat is how a group's address gets into every route, so only
 * servers holding the cluster secret may send it; JSON endpoints take only application/json; a body far
 * over the limit gets a complete 413 answer, not a reset connection.
 */

async function start(t: Test, extra: Record<string, unknown> = {}) {
  const server = new Metaserver(
    { port: 0, dataDir: t.testdir(), clusterSecret: CLUSTER_SECRET, minGroupsPerSubject: 1, ...extra },
    { logger: silentLogger },
  )
  await server.start()
  const servers = new MetaClient({ url: server.url, clusterSecret: CLUSTER_SECRET })
  const anyone = new MetaClient({ url: server.url })
  t.teardown(async () => {
    await servers.close()
    await anyone.close()
    await server.close()
  })
  return { server, servers, anyone }
}

interface Answer {
  status: number
  body: { code?: string; message?: string }
}

async function post(
  url: string,
  body: unknown,
  headers: Record<string, string> = { 'content-type': 'application/json' },
): Promise<Answer> {
  const res = await request(`${url}/meta/heartbeat`, {
    method: 'POST',
    body: typeof body === 'string' ? body : JSON.stringify(body),
    headers,
  })
  return { status: res.statusCode, body: JSON.parse(await res.body.text()) }
}

const legit = { group: 'bg1', kind: 'broker', role: 'master', address: '127.0.0.1:1111' } as const

t.test('metaserver - heartbeats without the cluster secret change no route', async (t) => {
  const { server, servers, anyone } = await start(t)
  await servers.heartbeat(legit)
  const before = await anyone.route({ subject: 'orders', kind: 'producer' })
  t.same(
    before.groups.map((g) => [g.name, g.address]),
    [['bg1', '127.0.0.1:1111']],
  )

  const attempts: [string, Record<string, unknown>, Record<string, string>][] = [
    ['another address for an existing group', { ...legit, address: '10.6.6.6:20881' }, {}],
    ['a made-up group', { ...legit, group: 'evil', address: '10.6.6.6:20881' }, {}],
    ['an offline heartbeat', { ...legit, state: 'offline' }, {}],
    ['a wrong secret', { ...legit, address: '10.6.6.6:1' }, { 'qmq-cluster-secret': `${CLUSTER_SECRET}x` }],
    [
      'the secret as a bearer token',
      { ...legit, address: '10.6.6.6:2' },
      { authorization: `Bearer ${CLUSTER_SECRET}` },
    ],
  ]
  for (const [what, body, headers] of attempts) {
    const r = await post(server.url, body, { 'content-type': 'application/json', ...headers })
    t.equal(r.status, 401, `${what}: 401`)
    t.equal(r.body.code, 'QMQ_ERR_UNAUTHORIZED', `${what}: code`)
  }

  const after = await anyone.route({ subject: 'orders', kind: 'producer' })
  t.same(after.groups, before.groups, 'the route is unchanged')
  t.same(
    (await anyone.listGroups()).map((g) => [g.name, g.address, g.alive]),
    [['bg1', '127.0.0.1:1111', true]],
    'no new group, the address is unchanged, the group is still alive',
  )
  const fresh = await anyone.route({ subject: 'fresh', kind: 'producer' })
  t.same(
    fresh.groups.map((g) => g.name),
    ['bg1'],
    'a new subject goes to the real group only',
  )

  // The MetaClient without the secret gets the typed error.
  await t.rejects(anyone.heartbeat({ ...legit, address: '10.6.6.6:3' }), { code: 'QMQ_ERR_UNAUTHORIZED' })
  // The holder of the secret can still move its group (a restarted broker on another port).
  await servers.heartbeat({ ...legit, address: '127.0.0.1:2222' })
  t.same(
    (await anyone.route({ subject: 'orders', kind: 'producer' })).groups.map((g) => g.address),
    ['127.0.0.1:2222'],
  )
})

t.test('metaserver - JSON endpoints refuse other content types with 415', async (t) => {
  const { server, anyone } = await start(t)
  const secret = { 'qmq-cluster-secret': CLUSTER_SECRET }
  const cases: [string, Record<string, string>][] = [
    ['text/plain', { 'content-type': 'text/plain', ...secret }],
    ['form', { 'content-type': 'application/x-www-form-urlencoded', ...secret }],
    ['no content type', { ...secret }],
    ['json-looking', { 'content-type': 'application/jsonp', ...secret }],
  ]
  for (const [what, headers] of cases) {
    const r = await post(server.url, legit, headers)
    t.equal(r.status, 415, `${what}: 415`)
    t.equal(r.body.code, 'QMQ_ERR_UNSUPPORTED_MEDIA_TYPE', `${what}: code`)
  }
  const res = await request(`${server.url}/meta/client/heartbeat`, {
    method: 'POST',
    body: JSON.stringify({ clientId: 'c1', kind: 'producer', subscriptions: [] }),
    headers: { 'content-type': 'text/plain' },
  })
  t.equal(res.statusCode, 415, 'client heartbeat: 415')
  await res.body.dump()
  t.same(await anyone.listGroups(), [], 'nothing was registered')
  t.same(await anyone.listConsumers(), [], 'no client was registered')

  const ok = await post(server.url, legit, { 'content-type': 'Application/JSON; charset=utf-8', ...secret })
  t.equal(ok.status, 200, 'a media type with parameters, in any case, is JSON')
})

/** One HTTP/1.1 request on a fresh socket, then its answer read to the end; a reset rejects. */
function rawRequest(
  port: number,
  head: string,
  body: Buffer,
): Promise<{ status: number; headers: Record<string, string>; body: string }> {
  return new Promise((resolve, reject) => {
    const sock = connect(port, '127.0.0.1')
    const chunks: Buffer[] = []
    sock.on('data', (c: Buffer) => chunks.push(c))
    sock.on('error', reject)
    sock.on('end', () => {
      const all = Buffer.concat(chunks)
      const split = all.indexOf('\r\n\r\n')
      if (split < 0) return reject(new Error(`no complete answer head in ${all.length} bytes`))
      const [statusLine, ...lines] = all.subarray(0, split).toString('latin1').split('\r\n')
      const headers: Record<string, string> = {}
      for (const l of lines) {
        const i = l.indexOf(':')
        headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim()
      }
      const rest = all.subarray(split + 4)
      if (rest.length !== Number(headers['content-length']))
        return reject(
          new Error(`answer body is ${rest.length} bytes, content-length ${headers['content-length']}`),
        )
      resolve({ status: Number(statusLine?.split(' ')[1]), headers, body: rest.toString('utf8') })
    })
    // Written in 64 KiB pieces, yielding between them, as a network delivers it: the server sees the
    // body arrive while it answers (one big write would mostly sit in kernel buffers already).
    sock.on('connect', async () => {
      sock.write(head)
      for (let o = 0; o < body.length && !sock.destroyed; o += 64 * 1024) {
        if (!sock.write(body.subarray(o, o + 64 * 1024))) await new Promise((r) => sock.once('drain', r))
        await new Promise((r) => setImmediate(r))
      }
      sock.end()
    })
  })
}

t.test('metaserver - a 10 MB body gets a complete 413 every time, never a reset', async (t) => {
  const { server } = await start(t)
  const big = Buffer.alloc(10 * 1024 * 1024, 0x20)
  for (let i = 0; i < 5; i++) {
    for (const path of ['/meta/heartbeat', '/meta/client/heartbeat']) {
      const head =
        `POST ${path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n` +
        `qmq-cluster-secret: ${CLUSTER_SECRET}\r\ncontent-length: ${big.length}\r\n\r\n`
      const r = await rawRequest(server.port, head, big)
      t.equal(r.status, 413, `${path} #${i}: 413`)
      t.equal(r.headers.connection, 'close', `${path} #${i}: connection: close`)
      t.equal(JSON.parse(r.body).code, 'QMQ_ERR_BODY_TOO_LARGE', `${path} #${i}: code`)
    }
  }
  // Chunked, with no content-length: refused while streaming, answered whole as well.
  const chunked = Buffer.concat([
    Buffer.from(`${big.length.toString(16)}\r\n`),
    big,
    Buffer.from('\r\n0\r\n\r\n'),
  ])
  for (let i = 0; i < 3; i++) {
    const head =
      'POST /meta/heartbeat HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n' +
      `qmq-cluster-secret: ${CLUSTER_SECRET}\r\ntransfer-encoding: chunked\r\n\r\n`
    const r = await rawRequest(server.port, head, chunked)
    t.equal(r.status, 413, `chunked #${i}: 413`)
    t.equal(JSON.parse(r.body).code, 'QMQ_ERR_BODY_TOO_LARGE')
  }
  // And an unauthenticated 10 MB heartbeat: refused (401) after its body is drained, also whole.
  const head =
    'POST /meta/heartbeat HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n' +
    `content-length: ${big.length}\r\n\r\n`
  const r = await rawRequest(server.port, head, big)
  t.equal(r.status, 401)
  t.equal(JSON.parse(r.body).code, 'QMQ_ERR_UNAUTHORIZED')
})

t.test('metaserver - refuses to start without a cluster secret', async (t) => {
  t.throws(() => new Metaserver({ port: 0, dataDir: t.testdir() }, { logger: silentLogger }), {
    code: 'QMQ_ERR_CONFIG_INVALID',
    message: /QMQ_CLUSTER_SECRET.*--cluster-secret-file/s,
  })
  t.throws(
    () => new Metaserver({ port: 0, dataDir: t.testdir(), clusterSecret: 'short' }, { logger: silentLogger }),
    { code: 'QMQ_ERR_CONFIG_INVALID', message: /clusterSecret/ },
  )
})

async function until<T>(what: string, fn: () => Promise<T | undefined>, ms = 10_000): Promise<T> {
  const end = Date.now() + ms
  for (;;) {
    const v = await fn()
    if (v !== undefined) return v
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

t.test('metaserver - brokers and delay servers register with the secret, not without', async (t) => {
  const { server, anyone } = await start(t)
  const good = await startBroker(t, { group: 'good', metaserver: server.url, clusterSecret: CLUSTER_SECRET })
  const bad = await startBroker(t, {
    group: 'bad',
    metaserver: server.url,
    clusterSecret: `wrong-${CLUSTER_SECRET}`,
    httpPort: 0,
  })
  let delay: DelayServer | undefined
  t.teardown(() => delay?.close())
  delay = new DelayServer(
    {
      group: 'delay-1',
      port: 0,
      dataDir: t.testdir(),
      metaserver: server.url,
      clusterSecret: CLUSTER_SECRET,
    },
    { logger: silentLogger },
  )
  await delay.start()

  await until('good and delay-1 alive', async () => {
    const alive = (await anyone.listGroups()).filter((g) => g.alive).map((g) => g.name)
    return alive.includes('good') && alive.includes('delay-1') ? true : undefined
  })
  t.equal((await anyone.listGroups()).find((g) => g.name === 'good')?.address, good.broker.addresses.address)
  // The broker with the wrong secret says why in its /health, and never becomes a group.
  const health = await until('the refused heartbeat in /health', async () => {
    const res = await fetch(`http://${bad.broker.addresses.httpAddress}/health`)
    const body = (await res.json()) as { metaserver: { lastError?: string } }
    return body.metaserver.lastError === undefined ? undefined : body.metaserver.lastError
  })
  t.match(health, /wrong cluster secret/)
  t.notOk(
    (await anyone.listGroups()).some((g) => g.name === 'bad'),
    'the group with the wrong secret is not registered',
  )

  // Without a secret, a broker or delay server with a metaserver does not start at all.
  t.throws(() => new Broker({ metaserver: server.url, dataDir: t.testdir() }, { logger: silentLogger }), {
    code: 'QMQ_ERR_CONFIG_INVALID',
    message: /QMQ_CLUSTER_SECRET/,
  })
  t.throws(
    () => new DelayServer({ metaserver: server.url, dataDir: t.testdir() }, { logger: silentLogger }),
    {
      code: 'QMQ_ERR_CONFIG_INVALID',
      message: /QMQ_CLUSTER_SECRET/,
    },
  )
})
