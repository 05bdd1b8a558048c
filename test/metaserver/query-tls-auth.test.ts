import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { get as httpsGet } from 'node:https'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { Broker } from '../../src/broker/broker'
import { Connection } from '../../src/client/transport/connection'
import { CLUSTER_APP } from '../../src/common/auth/credentials'
import { silentLogger } from '../../src/common/logger'
import { MetaClient } from '../../src/common/meta/meta-client'
import { RequestCode } from '../../src/common/protocol/codes'
import { decodeSendResponse, encodeSendRequest } from '../../src/common/protocol/commands'
import type { MessageResult } from '../../src/common/protocol/query'
import { encodeRecord } from '../../src/common/record'
import { Metaserver } from '../../src/metaserver/main'
import { message } from '../broker/server/ops'
import { makeCa } from '../helpers/certs'
import { CLUSTER_SECRET, TOKEN } from './helpers'

/**
 * The metaserver's query fan-out (and the console's) to a broker with TLS and `auth` on: the metaserver connects with the
 * client side of its TLS files and authenticates as the cluster app (before, it spoke plain TCP
 * without AUTH and every broker answer was an error).
 */
function getJson(url: string, ca: Buffer): Promise<{ status: number; body: unknown }> {
  return new Promise((resolve, reject) => {
    httpsGet(url, { ca }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, body: JSON.parse(Buffer.concat(chunks).toString('utf8')) }),
      )
    }).on('error', reject)
  })
}

t.test('query - fan-out to a broker with TLS and auth on', async (t) => {
  // Not t.testdir(): that is removed before teardowns run.
  const dir = mkdtempSync(join(tmpdir(), 'qmq-query-tls-'))
  const ca = makeCa(dir)
  const leaf = ca.issue('server')
  const tls = { tlsCertFile: leaf.cert, tlsKeyFile: leaf.key, tlsCaFile: ca.cert }
  const meta = new Metaserver(
    {
      ...tls,
      port: 0,
      dataDir: join(dir, 'meta'),
      adminToken: TOKEN,
      clusterSecret: CLUSTER_SECRET,
      console: true,
    },
    { logger: silentLogger },
  )
  await meta.start()
  const broker = new Broker(
    {
      ...tls,
      metaserver: meta.url,
      clusterSecret: CLUSTER_SECRET,
      auth: true,
      port: 0,
      httpPort: -1,
      heartbeatIntervalMs: 200,
      dataDir: join(dir, 'broker'),
    },
    { logger: silentLogger },
  )
  const { port } = await broker.start()
  const trust = { ca: readFileSync(ca.cert) }
  const admin = new MetaClient({ url: meta.url, adminToken: TOKEN, tls: trust })
  const c = new Connection({
    address: `127.0.0.1:${port}`,
    requestTimeoutMs: 5_000,
    tls: trust,
    auth: { appCode: CLUSTER_APP, token: CLUSTER_SECRET },
  })
  t.teardown(async () => {
    await c.close()
    await admin.close()
    await broker.close()
    await meta.close()
    rmSync(dir, { recursive: true, force: true })
  })

  const f = await c.request(
    RequestCode.SEND,
    encodeSendRequest([encodeRecord(message('orders.paid', 'tls-auth-1'))]),
  )
  t.same(decodeSendResponse(f.body), [{ status: 0, message: '' }])

  let last: MessageResult | undefined
  const deadline = Date.now() + 10_000
  while (Date.now() < deadline) {
    last = await admin.getMessage('tls-auth-1')
    if (last.found) break
    await new Promise((r) => setTimeout(r, 100))
  }
  t.equal(last?.found, true, 'the broker answered the metaserver over TLS with AUTH')
  t.same(last?.errors, [], 'no broker failed')
  t.match(last?.messages, [{ id: 'tls-auth-1', subject: 'orders.paid' }])

  // The console's fan-out (its own connections) too.
  const groups = await getJson(`${meta.url}/console/api/consumer-groups?fresh=1`, trust.ca)
  t.equal(groups.status, 200)
  t.same((groups.body as { errors: unknown[] }).errors, [], 'the console reached the broker')
})
