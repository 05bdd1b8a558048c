import { copyFileSync, readFileSync, writeFileSync } from 'node:fs'
import { request as httpsRequest } from 'node:https'
import { connect as netConnect } from 'node:net'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { Connection } from '../../../src/client/transport/connection'
import { silentLogger } from '../../../src/common/logger'
import { MetaClient } from '../../../src/common/meta/meta-client'
import { RequestCode } from '../../../src/common/protocol/codes'
import type { ClientTlsOptions } from '../../../src/common/tls'
import { DelayServer } from '../../../src/delay/delay-server'
import { Metaserver } from '../../../src/metaserver/main'
import { startBroker } from '../../broker/server/start-broker'
import { makeCa, opensslAvailable } from '../../helpers/certs'
import { CLUSTER_SECRET } from '../../metaserver/helpers'
import { testDir } from '../../helpers/testdir'

/**
 * TLS on every listener, over real sockets with certificates made by `openssl` in the test dir: the
 * broker's TCP port (the shared connection loop: the delay server's port is the same TcpServer), its
 * HTTPS port, the metaserver; client certificates (mTLS); a certificate reload while connections are
 * open.
 */
t.ok(opensslAvailable(), 'the openssl command is on this machine')

function client(t: Test, port: number, tls?: ClientTlsOptions): Connection {
  const c = new Connection({
    address: `127.0.0.1:${port}`,
    requestTimeoutMs: 5_000,
    connectTimeoutMs: 5_000,
    reconnectInitialMs: 10,
    reconnectMaxMs: 20,
    ...(tls !== undefined ? { tls } : {}),
  })
  t.teardown(() => c.close())
  return c
}

async function ping(c: Connection): Promise<string> {
  try {
    await c.request(RequestCode.PING, Buffer.alloc(0))
    return 'ok'
  } catch (err) {
    return (err as { code?: string }).code ?? String(err)
  }
}

function httpsGet(
  port: number,
  path: string,
  tls: ClientTlsOptions,
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest({ host: '127.0.0.1', port, path, ...tls, agent: false }, (res) => {
      let body = ''
      res.on('data', (d: Buffer) => {
        body += d.toString()
      })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
    })
    req.on('error', reject)
    req.end()
  })
}

t.test(
  'tls - broker TCP and HTTPS ports speak TLS; plain TCP and untrusted certificates are refused',
  async (t) => {
    const dir = testDir(t)
    const ca = makeCa(dir)
    const leaf = ca.issue('broker')
    const { broker, port } = await startBroker(t, {
      dataDir: join(dir, 'data'),
      tlsCertFile: leaf.cert,
      tlsKeyFile: leaf.key,
      httpPort: 0,
    })
    const trusted = { ca: readFileSync(ca.cert) }
    t.equal(await ping(client(t, port, trusted)), 'ok', 'a client trusting the CA talks qmq frames over TLS')
    t.equal(await ping(client(t, port, {})), 'QMQ_ERR_CONNECTION', 'default trust does not know the test CA')

    // A plain-TCP client's frame is not a TLS ClientHello: the server drops the connection.
    const closed = await new Promise<string>((resolve) => {
      const s = netConnect({ host: '127.0.0.1', port }, () => {
        s.write(Buffer.alloc(64, 0x51))
      })
      s.on('data', () => {})
      s.on('error', () => resolve('error'))
      s.on('close', () => resolve('closed'))
    })
    t.ok(closed === 'closed' || closed === 'error', 'plain TCP gets no qmq answer')

    const httpPort = broker.addresses.httpPort as number
    const health = await httpsGet(httpPort, '/health', trusted)
    t.equal(health.status, 200, 'the HTTP port is HTTPS with the same certificate')
    t.equal(JSON.parse(health.body).status, 'ok')
  },
)

t.test(
  'tls - mTLS: a client without a certificate signed by the CA is refused at the handshake',
  async (t) => {
    const dir = testDir(t)
    const ca = makeCa(dir)
    const other = makeCa(dir, 'other-ca')
    const leaf = ca.issue('broker')
    const app = ca.issue('app')
    const stranger = other.issue('stranger')
    const { port } = await startBroker(t, {
      dataDir: join(dir, 'data'),
      tlsCertFile: leaf.cert,
      tlsKeyFile: leaf.key,
      tlsCaFile: ca.cert,
      tlsRequireClientCert: true,
    })
    const caPem = readFileSync(ca.cert)
    t.equal(
      await ping(client(t, port, { ca: caPem, cert: readFileSync(app.cert), key: readFileSync(app.key) })),
      'ok',
      'with a client certificate of the CA',
    )
    t.not(await ping(client(t, port, { ca: caPem })), 'ok', 'without a client certificate: refused')
    t.not(
      await ping(
        client(t, port, { ca: caPem, cert: readFileSync(stranger.cert), key: readFileSync(stranger.key) }),
      ),
      'ok',
      'with a certificate of another CA: refused',
    )
  },
)

t.test('tls - certificates are reloaded while connections stay open', async (t) => {
  const dir = testDir(t)
  const ca1 = makeCa(dir, 'ca1')
  const ca2 = makeCa(dir, 'ca2')
  const first = ca1.issue('first')
  const second = ca2.issue('second')
  const certFile = join(dir, 'live.crt')
  const keyFile = join(dir, 'live.key')
  copyFileSync(first.cert, certFile)
  copyFileSync(first.key, keyFile)
  const { port } = await startBroker(t, {
    dataDir: join(dir, 'data'),
    tlsCertFile: certFile,
    tlsKeyFile: keyFile,
  })
  const both = { ca: Buffer.concat([readFileSync(ca1.cert), readFileSync(ca2.cert)]) }
  const open = client(t, port, both)
  t.equal(await ping(open), 'ok', 'connected with the first certificate')

  // Rotate: new certificate of another CA, written in place (as cert-manager or certbot would).
  copyFileSync(second.key, keyFile)
  copyFileSync(second.cert, certFile)
  let served = ''
  for (let i = 0; i < 100 && served !== 'ok'; i++) {
    await new Promise((r) => setTimeout(r, 100))
    served = await ping(client(t, port, { ca: readFileSync(ca2.cert) }))
  }
  t.equal(served, 'ok', 'a new connection gets the new certificate (file watch)')
  t.equal(await ping(open), 'ok', 'the connection opened before the reload still works')
  t.not(
    await ping(client(t, port, { ca: readFileSync(ca1.cert) })),
    'ok',
    'a client trusting only the old CA no longer connects',
  )

  // A broken file (half written, wrong key) is not applied: the last good certificate stays.
  writeFileSync(certFile, 'not a certificate')
  await new Promise((r) => setTimeout(r, 2_500))
  t.equal(
    await ping(client(t, port, { ca: readFileSync(ca2.cert) })),
    'ok',
    'an unreadable certificate file leaves the previous one in use',
  )
})

t.test('tls - the metaserver serves HTTPS; MetaClient and heartbeats go over it', async (t) => {
  const dir = testDir(t)
  const ca = makeCa(dir)
  const leaf = ca.issue('meta')
  const meta = new Metaserver(
    {
      port: 0,
      dataDir: join(dir, 'meta'),
      clusterSecret: CLUSTER_SECRET,
      tlsCertFile: leaf.cert,
      tlsKeyFile: leaf.key,
    },
    { logger: silentLogger },
  )
  await meta.start()
  t.teardown(() => meta.close())
  t.match(meta.url, /^https:\/\/127\.0\.0\.1:\d+$/)
  const mc = new MetaClient({
    url: meta.url,
    clusterSecret: CLUSTER_SECRET,
    tls: { ca: readFileSync(ca.cert) },
  })
  t.teardown(() => mc.close())
  const res = await mc.heartbeat({ group: 'g1', kind: 'broker', role: 'master', address: '127.0.0.1:1' })
  t.ok(res.heartbeatIntervalMs > 0, 'a heartbeat over HTTPS')
  const untrusting = new MetaClient({ url: meta.url, timeoutMs: 2_000 })
  t.teardown(() => untrusting.close())
  await t.rejects(
    untrusting.health(),
    { code: 'QMQ_ERR_METASERVER_UNAVAILABLE' },
    'an untrusted certificate is refused',
  )
})

t.test('tls - the delay server TCP port speaks TLS; a plain client is refused', async (t) => {
  const dir = testDir(t)
  const ca = makeCa(dir)
  const leaf = ca.issue('delay')
  const delay = new DelayServer(
    { port: 0, httpPort: -1, dataDir: join(dir, 'delay'), tlsCertFile: leaf.cert, tlsKeyFile: leaf.key },
    { logger: silentLogger },
  )
  await delay.start()
  t.teardown(() => delay.close())
  t.equal(await ping(client(t, delay.port, { ca: readFileSync(ca.cert) })), 'ok', 'PING over TLS')
  t.not(await ping(client(t, delay.port)), 'ok', 'plain TCP is refused')
})
