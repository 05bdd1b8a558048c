import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import t from 'tap'
import { silentLogger } from '../../src/common/logger'
import { MetaClient } from '../../src/common/meta/meta-client'
import { Metaserver } from '../../src/metaserver/main'
import { CLUSTER_SECRET } from './helpers'

async function listen(server: Server): Promise<string> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`
}

/** A port nothing listens on: bind, note the port, close. */
async function deadUrl(): Promise<string> {
  const s = createServer()
  const url = await listen(s)
  await new Promise<void>((resolve) => s.close(() => resolve()))
  return url
}

t.test('meta-client - a refused connection is QMQ_ERR_METASERVER_UNAVAILABLE, retriable', async (t) => {
  const c = new MetaClient({ url: await deadUrl(), timeoutMs: 1_000 })
  t.teardown(() => c.close())
  await t.rejects(c.route({ subject: 's', kind: 'producer' }), {
    code: 'QMQ_ERR_METASERVER_UNAVAILABLE',
    retriable: true,
  })
})

t.test('meta-client - a metaserver that never answers fails within timeoutMs', async (t) => {
  const hang = createServer(() => {
    // never answers
  })
  const url = await listen(hang)
  t.teardown(() => {
    hang.closeAllConnections()
    hang.close()
  })
  const c = new MetaClient({ url, timeoutMs: 200 })
  t.teardown(() => c.close())
  const started = Date.now()
  await t.rejects(c.getAddresses(), { code: 'QMQ_ERR_METASERVER_UNAVAILABLE', retriable: true })
  t.ok(Date.now() - started < 5_000, 'bounded, does not hang')
})

t.test('meta-client - answers over maxResponseBytes and non-JSON answers are refused', async (t) => {
  const s = createServer((req, res) => {
    if (req.url === '/health') {
      res.setHeader('content-type', 'application/json')
      res.end(JSON.stringify({ status: 'ok', pad: 'x'.repeat(100_000) }))
    } else if (req.url === '/meta/address') {
      res.end('<html>proxy error</html>')
    } else {
      res.statusCode = 418
      res.end('teapot')
    }
  })
  const url = await listen(s)
  t.teardown(() => s.close())
  const c = new MetaClient({ url, maxResponseBytes: 10_000 })
  t.teardown(() => c.close())
  await t.rejects(c.health(), { code: 'QMQ_ERR_METASERVER_UNAVAILABLE', message: /larger than 10000 bytes/ })
  await t.rejects(c.getAddresses(), { code: 'QMQ_ERR_METASERVER_UNAVAILABLE', message: /not JSON/ })
  await t.rejects(c.listGroups(), { code: 'QMQ_ERR_INVALID_ARGUMENT', message: /HTTP 418/ })
})

t.test('meta-client - discovery URL, then failover between metaservers', async (t) => {
  const real = new Metaserver(
    { port: 0, dataDir: t.testdir(), clusterSecret: CLUSTER_SECRET },
    { logger: silentLogger },
  )
  await real.start()
  t.teardown(() => real.close())
  const dead = await deadUrl()
  // A discovery metaserver that advertises a dead one first, then the real one.
  const discovery = new Metaserver(
    { port: 0, dataDir: t.testdir(), clusterSecret: CLUSTER_SECRET, advertisedAddresses: [dead, real.url] },
    { logger: silentLogger },
  )
  await discovery.start()
  t.teardown(() => discovery.close())

  const c = new MetaClient({
    url: `${discovery.url}/meta/address`,
    timeoutMs: 1_000,
    clusterSecret: CLUSTER_SECRET,
  })
  t.teardown(() => c.close())
  await c.heartbeat({ group: 'g1', kind: 'broker', role: 'master', address: '127.0.0.1:20881' })
  t.same(c.knownAddresses, [dead, real.url])
  const route = await c.route({ subject: 's', kind: 'producer' })
  t.same(
    route.groups.map((g) => g.name),
    ['g1'],
  )
  t.equal((await real.service.listGroups()).length, 1, 'the heartbeat reached the real metaserver')
  t.equal((await discovery.service.listGroups()).length, 0)
})

t.test(
  'meta-client - several comma-separated URLs: the first contact has no single point of failure',
  async (t) => {
    const real = new Metaserver(
      { port: 0, dataDir: t.testdir(), clusterSecret: CLUSTER_SECRET },
      { logger: silentLogger },
    )
    await real.start()
    t.teardown(() => real.close())
    const dead = await deadUrl()
    // discovery URLs: the first is down, the second answers (the list holds the real metaserver)
    const d = new MetaClient({
      url: `${dead}/meta/address, ${real.url}/meta/address`,
      timeoutMs: 1_000,
      clusterSecret: CLUSTER_SECRET,
    })
    t.teardown(() => d.close())
    await d.heartbeat({ group: 'g1', kind: 'broker', role: 'master', address: '127.0.0.1:20881' })
    t.same(d.knownAddresses, [real.url], 'learnt from the second discovery URL')
    // base URLs: the first is down, calls go to the second
    const b = new MetaClient({ url: `${dead},${real.url}`, timeoutMs: 1_000 })
    t.teardown(() => b.close())
    t.same(
      (await b.route({ subject: 's', kind: 'producer' })).groups.map((g) => g.name),
      ['g1'],
    )
    t.throws(() => new MetaClient({ url: `${dead},${real.url}/meta/address` }), {
      code: 'QMQ_ERR_INVALID_ARGUMENT',
    })
  },
)

t.test('meta-client - error answers become QmqErrors with their code', async (t) => {
  const m = new Metaserver(
    { port: 0, dataDir: t.testdir(), clusterSecret: CLUSTER_SECRET },
    { logger: silentLogger },
  )
  await m.start()
  t.teardown(() => m.close())
  const c = new MetaClient({ url: m.url })
  t.teardown(() => c.close())
  await t.rejects(c.route({ subject: 's', kind: 'producer' }), {
    code: 'QMQ_ERR_NO_ROUTE',
    retriable: true,
    status: 200,
  })
  await t.rejects(c.getGroup('x'), { code: 'QMQ_ERR_NOT_FOUND', retriable: false })
  await c.close()
  await t.rejects(c.health(), { code: 'QMQ_ERR_CLIENT_CLOSED' })
  t.throws(() => new MetaClient({ url: 'ftp://x' }), { code: 'QMQ_ERR_INVALID_ARGUMENT' })
})
