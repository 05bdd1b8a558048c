import { connect } from 'node:net'
import { Readable } from 'node:stream'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { silentLogger } from '../../src/common/logger'
import { MetaClient } from '../../src/common/meta/meta-client'
import { Metaserver } from '../../src/metaserver/main'
import { CLUSTER_SECRET } from './helpers'

async function start(t: Test, extra: Record<string, unknown> = {}) {
  const server = new Metaserver(
    { port: 0, dataDir: t.testdir(), maxBodyBytes: 4096, clusterSecret: CLUSTER_SECRET, ...extra },
    { logger: silentLogger },
  )
  await server.start()
  t.teardown(() => server.close())
  return server
}

interface Raw {
  status: number
  body: { code?: string; status?: number; message?: string; retriable?: boolean }
}

async function raw(
  base: string,
  method: 'GET' | 'POST' | 'PUT' | 'DELETE',
  path: string,
  body?: string | Readable,
  headers: Record<string, string> = {},
): Promise<Raw> {
  const res = await request(`${base}${path}`, {
    method,
    body,
    headers: { 'content-type': 'application/json', 'qmq-cluster-secret': CLUSTER_SECRET, ...headers },
  })
  const text = await res.body.text()
  return { status: res.statusCode, body: JSON.parse(text) }
}

const heartbeat = { group: 'g1', kind: 'broker', role: 'master', address: '127.0.0.1:20881' }

t.test('metaserver - malformed requests get documented errors', async (t) => {
  const s = await start(t)
  const post = (path: string, body: string) => raw(s.url, 'POST', path, body)

  let r = await post('/meta/heartbeat', '{"group": ')
  t.equal(r.status, 400)
  t.match(r.body, { code: 'QMQ_ERR_JSON_INVALID', status: 202, retriable: false, message: /not valid JSON/ })
  r = await post('/meta/heartbeat', '[1,2]')
  t.match(r, { status: 400, body: { code: 'QMQ_ERR_JSON_INVALID', message: /JSON object/ } })
  r = await post('/meta/heartbeat', '')
  t.match(r, { status: 400, body: { code: 'QMQ_ERR_JSON_INVALID', message: /empty/ } })

  r = await post('/meta/heartbeat', JSON.stringify({ ...heartbeat, group: undefined }))
  t.match(r, { status: 400, body: { code: 'QMQ_ERR_GROUP_INVALID', message: /group/ } })
  r = await post('/meta/heartbeat', JSON.stringify({ ...heartbeat, kind: undefined }))
  t.match(r, {
    status: 400,
    body: { code: 'QMQ_ERR_INVALID_ARGUMENT', message: /kind must be one of 'broker', 'delay'/ },
  })
  r = await post('/meta/heartbeat', JSON.stringify({ ...heartbeat, role: 'boss' }))
  t.match(r, { status: 400, body: { code: 'QMQ_ERR_INVALID_ARGUMENT', message: /role .*"boss"/ } })
  r = await post('/meta/heartbeat', JSON.stringify({ ...heartbeat, address: 'localhost' }))
  t.match(r, {
    status: 400,
    body: { code: 'QMQ_ERR_INVALID_ARGUMENT', message: /address must be "host:port"/ },
  })
  r = await post('/meta/heartbeat', JSON.stringify({ ...heartbeat, address: 'h:70000' }))
  t.match(r, { status: 400, body: { code: 'QMQ_ERR_INVALID_ARGUMENT', message: /port from 1 to 65535/ } })
  r = await post('/meta/heartbeat', JSON.stringify({ ...heartbeat, load: { backlog: -1 } }))
  t.match(r, {
    status: 400,
    body: { code: 'QMQ_ERR_INVALID_ARGUMENT', message: /load.backlog must be a number >= 0/ },
  })
  r = await post('/meta/heartbeat', JSON.stringify({ ...heartbeat, group: 'has space' }))
  t.match(r, { status: 400, body: { code: 'QMQ_ERR_GROUP_INVALID' } })

  // a group name cannot change kind
  t.equal((await post('/meta/heartbeat', JSON.stringify(heartbeat))).status, 200)
  r = await post('/meta/heartbeat', JSON.stringify({ ...heartbeat, kind: 'delay' }))
  t.match(r, {
    status: 409,
    body: { code: 'QMQ_ERR_GROUP_CONFLICT', message: /registered as a broker group/ },
  })

  // route queries
  r = await raw(s.url, 'GET', '/meta/route?kind=producer')
  t.match(r, { status: 400, body: { code: 'QMQ_ERR_SUBJECT_INVALID' } })
  r = await raw(s.url, 'GET', '/meta/route?subject=a&kind=reader')
  t.match(r, { status: 400, body: { code: 'QMQ_ERR_INVALID_ARGUMENT', message: /kind must be one of/ } })
  r = await raw(s.url, 'GET', '/meta/route?subject=a&kind=consumer')
  t.match(r, {
    status: 400,
    body: { code: 'QMQ_ERR_INVALID_ARGUMENT', message: /group .* required for consumers/ },
  })
  r = await raw(s.url, 'GET', `/meta/route?subject=${'x'.repeat(300)}&kind=producer`)
  t.match(r, { status: 400, body: { code: 'QMQ_ERR_SUBJECT_INVALID', message: /maximum is 200/ } })

  // client heartbeats
  r = await post(
    '/meta/client/heartbeat',
    JSON.stringify({ clientId: 'c', kind: 'consumer', subscriptions: [{ subject: 's' }] }),
  )
  t.match(r, {
    status: 400,
    body: { code: 'QMQ_ERR_INVALID_ARGUMENT', message: /subscriptions\[0\].consumerGroup is required/ },
  })
  r = await post(
    '/meta/client/heartbeat',
    JSON.stringify({ clientId: 'c', kind: 'consumer', subscriptions: 's' }),
  )
  t.match(r, {
    status: 400,
    body: { code: 'QMQ_ERR_INVALID_ARGUMENT', message: /subscriptions must be an array/ },
  })
  r = await post('/meta/client/heartbeat', JSON.stringify({ kind: 'producer', subscriptions: [] }))
  t.match(r, { status: 400, body: { code: 'QMQ_ERR_CONSUMER_ID_INVALID' } })

  // unknown things
  r = await raw(s.url, 'GET', '/nope')
  t.match(r, { status: 404, body: { code: 'QMQ_ERR_NOT_FOUND', message: /no such endpoint/ } })
  r = await raw(s.url, 'DELETE', '/meta/route?subject=a&kind=producer')
  t.match(r, { status: 405, body: { code: 'QMQ_ERR_METHOD_NOT_ALLOWED' } })
  r = await raw(s.url, 'GET', '/admin/groups/missing')
  t.match(r, { status: 404, body: { code: 'QMQ_ERR_NOT_FOUND', message: /unknown group "missing"/ } })
  r = await raw(s.url, 'GET', '/admin/subjects/missing')
  t.match(r, { status: 404, body: { code: 'QMQ_ERR_NOT_FOUND', message: /no route/ } })
  r = await raw(s.url, 'GET', '/admin/subjects/%E0%A4%A')
  t.match(r, { status: 400, body: { code: 'QMQ_ERR_INVALID_ARGUMENT' } })

  // the server still serves after all that
  t.equal((await raw(s.url, 'GET', '/meta/route?subject=ok&kind=producer')).status, 200)
})

t.test('metaserver - bodies over maxBodyBytes get 413, dropped not buffered', async (t) => {
  const s = await start(t)
  const big = JSON.stringify({ ...heartbeat, pad: 'x'.repeat(10_000) })
  let r = await raw(s.url, 'POST', '/meta/heartbeat', big)
  t.match(r, { status: 413, body: { code: 'QMQ_ERR_BODY_TOO_LARGE', message: /maximum is 4096/ } })
  // chunked, no content-length: refused while streaming
  async function* chunks(): AsyncIterable<Buffer> {
    for (let i = 0; i < 100; i++) yield Buffer.alloc(1024, 0x20)
  }
  r = await raw(s.url, 'POST', '/meta/client/heartbeat', Readable.from(chunks()))
  t.match(r, { status: 413, body: { code: 'QMQ_ERR_BODY_TOO_LARGE', message: /over 4096 bytes/ } })
  t.equal((await raw(s.url, 'POST', '/meta/heartbeat', JSON.stringify(heartbeat))).status, 200)
})

t.test('metaserver - admin writes require the configured token', async (t) => {
  const s = await start(t, { adminToken: 's3cret' })
  const ok = new MetaClient({ url: s.url, adminToken: 's3cret' })
  const wrong = new MetaClient({ url: s.url, adminToken: 'guess' })
  const none = new MetaClient({ url: s.url, clusterSecret: CLUSTER_SECRET })
  t.teardown(async () => {
    await ok.close()
    await wrong.close()
    await none.close()
  })
  await none.heartbeat({ group: 'g1', kind: 'broker', role: 'master', address: '127.0.0.1:1' })
  await none.heartbeat({ group: 'g2', kind: 'broker', role: 'master', address: '127.0.0.1:2' })
  await none.route({ subject: 's', kind: 'producer' })

  await t.rejects(none.setReadOnly({ group: 'g1', readOnly: true }), {
    code: 'QMQ_ERR_UNAUTHORIZED',
    retriable: false,
    message: /missing "Authorization: Bearer/,
  })
  await t.rejects(wrong.setReadOnly({ group: 'g1', readOnly: true }), {
    code: 'QMQ_ERR_UNAUTHORIZED',
    message: /wrong admin token/,
  })
  await t.rejects(wrong.extendSubject('s', 'g2'), { code: 'QMQ_ERR_UNAUTHORIZED' })
  let r = await raw(s.url, 'POST', '/admin/readonly', JSON.stringify({ group: 'g1', readOnly: true }), {
    authorization: 'Basic czNjcmV0',
  })
  t.equal(r.status, 401)
  t.same(await none.listReadOnly(), [], 'nothing changed')

  // the token works, and reads are open
  t.same(
    (await ok.setReadOnly({ group: 'g1', readOnly: true })).map((x) => x.group),
    ['g1'],
  )
  t.equal((await none.listReadOnly()).length, 1)
  t.equal((await none.listGroups()).length, 2)
  t.ok(await none.listSubjects())
  await t.rejects(ok.setReadOnly({ group: 'nope', readOnly: true }), { code: 'QMQ_ERR_NOT_FOUND' })
  r = await raw(s.url, 'POST', '/admin/readonly', JSON.stringify({ group: 'g1' }), {
    authorization: 'Bearer s3cret',
  })
  t.match(r, {
    status: 400,
    body: { code: 'QMQ_ERR_INVALID_ARGUMENT', message: /readOnly must be true or false/ },
  })
})

t.test('metaserver - without a configured token admin writes are refused', async (t) => {
  const s = await start(t)
  const c = new MetaClient({ url: s.url, adminToken: 'anything', clusterSecret: CLUSTER_SECRET })
  t.teardown(() => c.close())
  await c.heartbeat({ group: 'g1', kind: 'broker', role: 'master', address: '127.0.0.1:1' })
  await t.rejects(c.setReadOnly({ group: 'g1', readOnly: true }), {
    code: 'QMQ_ERR_UNAUTHORIZED',
    message: /configure adminToken/,
  })
})

t.test('metaserver - a client that leaves mid-body does not hurt the others', async (t) => {
  const s = await start(t)
  const sock = connect(s.port, '127.0.0.1')
  await new Promise<void>((resolve) => sock.once('connect', () => resolve()))
  sock.write(
    `POST /meta/heartbeat HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nqmq-cluster-secret: ${CLUSTER_SECRET}\r\ncontent-length: 100\r\n\r\n{"gro`,
  )
  await new Promise((resolve) => setTimeout(resolve, 50))
  sock.destroy()
  const r = await raw(s.url, 'POST', '/meta/heartbeat', JSON.stringify(heartbeat))
  t.equal(r.status, 200)
})
