import t, { type Test } from 'tap'
import { type AppCredential, CLUSTER_APP, hashToken } from '../../../src/common/auth/credentials'
import { ERROR_CODES } from '../../../src/common/error-codes'
import { encodeAuthRequest, MAX_AUTH_BODY_BYTES } from '../../../src/common/protocol/auth'
import { RequestCode } from '../../../src/common/protocol/codes'
import { decodeSendResponse, encodeSendRequest } from '../../../src/common/protocol/commands'
import { encodeFrameHeader } from '../../../src/common/protocol/frame'
import { encodeRecord } from '../../../src/common/record'
import { message } from '../../broker/server/ops'
import { startBroker } from '../../broker/server/start-broker'
import { prng } from '../../helpers/messages'
import { RawClient } from '../../helpers/raw-client'

/**
 * Fuzz of the authentication handshake (AUTH, protocol/auth.ts) on a broker with auth on: truncated,
 * oversized, random and replayed credentials are refused with QMQ_ERR_UNAUTHORIZED, never crash the
 * server, never authenticate; the server keeps serving well-behaved clients throughout.
 */
const UNAUTHORIZED = ERROR_CODES.QMQ_ERR_UNAUTHORIZED.status
const SECRET = 'fuzz-cluster-secret-0123456789'
const TOKEN = 'qmq_fuzz-token-of-the-app-0123456789abcdefghij'

async function setup(t: Test) {
  let apps: AppCredential[] = [
    { appCode: 'app', tokenHashes: [hashToken(TOKEN)], grants: [{ action: 'produce', subject: '*' }] },
  ]
  const started = await startBroker(
    t,
    { auth: true, authRefreshMs: 100, clusterSecret: SECRET, maxFrameBytes: 64 * 1024 },
    { credentials: { credentials: async () => ({ apps }) } },
  )
  const setApps = (next: AppCredential[]) => {
    apps = next
  }
  const clients: RawClient[] = []
  const connect = async () => {
    const c = await RawClient.connect(started.port)
    clients.push(c)
    return c
  }
  t.teardown(() => Promise.all(clients.map((c) => c.destroy())))
  return { ...started, setApps, connect }
}

async function sendStatus(c: RawClient, subject = 'fuzz.ok'): Promise<number> {
  const res = await c.request(
    RequestCode.SEND,
    encodeSendRequest([encodeRecord(message(subject, `m-${Math.random()}`))]),
  )
  if (res.status !== 0) return res.status
  return decodeSendResponse(res.body)[0]?.status ?? -1
}

t.test('auth fuzz - truncated AUTH bodies are refused and the connection is closed', async (t) => {
  const s = await setup(t)
  const body = encodeAuthRequest({ appCode: 'app', token: TOKEN })
  for (let n = 0; n < body.length; n++) {
    const c = await s.connect()
    const res = await c.request(RequestCode.AUTH, body.subarray(0, n))
    if (res.status !== UNAUTHORIZED) t.fail(`prefix of ${n} bytes answered ${res.status}`)
    await c.closed // shut down after a refused AUTH
  }
  t.pass(`${body.length} truncations refused`)
  const ok = await s.connect()
  t.equal((await ok.request(RequestCode.AUTH, body)).status, 0, 'the whole body authenticates')
  t.equal(await sendStatus(ok), 0)
})

t.test('auth fuzz - oversized fields and bodies are refused before their bytes are read', async (t) => {
  const s = await setup(t)
  const cases: [string, Buffer][] = [
    ['appCode length 65535', Buffer.concat([Buffer.from([0xff, 0xff]), Buffer.alloc(16, 0x61)])],
    [
      'token length 65535',
      Buffer.concat([Buffer.from([0, 3]), Buffer.from('app'), Buffer.from([0xff, 0xff]), Buffer.alloc(8)]),
    ],
    ['body above the AUTH maximum', Buffer.alloc(MAX_AUTH_BODY_BYTES + 1, 0x41)],
    [
      'appCode of 65 bytes',
      Buffer.concat([Buffer.from([0, 65]), Buffer.alloc(65, 0x61), Buffer.from([0, 4]), Buffer.from('abcd')]),
    ],
    [
      'bytes after the fields',
      Buffer.concat([encodeAuthRequest({ appCode: 'app', token: TOKEN }), Buffer.from([0])]),
    ],
  ]
  for (const [what, body] of cases) {
    const c = await s.connect()
    t.equal((await c.request(RequestCode.AUTH, body)).status, UNAUTHORIZED, what)
  }
  // Beyond the frame limit the connection loop closes the stream before buffering it.
  const big = await s.connect()
  big.writeRaw(encodeFrameHeader({ code: RequestCode.AUTH, flags: 0, status: 0, requestId: 1 }, 1024 * 1024))
  await big.closed
  t.pass('a frame over maxFrameBytes closes the connection')
})

t.test('auth fuzz - random AUTH bodies never authenticate', async (t) => {
  const s = await setup(t)
  const rand = prng(18)
  const valid = encodeAuthRequest({ appCode: 'app', token: TOKEN })
  let refused = 0
  for (let i = 0; i < 150; i++) {
    const kind = rand()
    let body: Buffer
    if (kind < 0.4) {
      body = Buffer.alloc(Math.floor(rand() * 200))
      for (let j = 0; j < body.length; j++) body[j] = Math.floor(rand() * 256)
    } else {
      // The valid body with one to three bytes flipped (lengths, appCode or token).
      body = Buffer.from(valid)
      const flips = 1 + Math.floor(rand() * 3)
      for (let f = 0; f < flips; f++) {
        const at = Math.floor(rand() * body.length)
        body[at] = (body[at] as number) ^ (1 + Math.floor(rand() * 255))
      }
    }
    const c = await s.connect()
    const res = await c.request(RequestCode.AUTH, body)
    if (res.status === 0) t.fail(`body ${body.toString('hex')} authenticated`)
    else refused++
    c.destroy()
  }
  t.equal(refused, 150, 'every random or corrupted credential refused')
  const ok = await s.connect()
  t.equal((await ok.request(RequestCode.AUTH, valid)).status, 0, 'the server still serves a good client')
})

t.test(
  'auth fuzz - replayed credentials: twice on a connection, after revocation, under another app',
  async (t) => {
    const s = await setup(t)
    const good = encodeAuthRequest({ appCode: 'app', token: TOKEN })
    const c = await s.connect()
    t.equal((await c.request(RequestCode.AUTH, good)).status, 0)
    t.equal(
      (await c.request(RequestCode.AUTH, good)).status,
      UNAUTHORIZED,
      'a second AUTH on a connection is refused',
    )
    t.equal(await sendStatus(c), 0, 'the connection keeps its first identity')

    const other = await s.connect()
    t.equal(
      (await other.request(RequestCode.AUTH, encodeAuthRequest({ appCode: CLUSTER_APP, token: TOKEN })))
        .status,
      UNAUTHORIZED,
      "an app's token replayed as the cluster's",
    )

    // Byte by byte: the handshake does not depend on chunking.
    const slow = await s.connect()
    const frame = Buffer.concat([
      encodeFrameHeader({ code: RequestCode.AUTH, flags: 0, status: 0, requestId: 999 }, good.length),
      good,
    ])
    for (const b of frame) {
      slow.writeRaw(Buffer.from([b]))
      await new Promise((r) => setImmediate(r))
    }
    t.equal(await sendStatus(slow), 0, 'an AUTH frame written one byte at a time authenticates')

    s.setApps([])
    await new Promise((r) => setTimeout(r, 400))
    const replay = await s.connect()
    t.equal(
      (await replay.request(RequestCode.AUTH, good)).status,
      UNAUTHORIZED,
      'a revoked token replayed is refused',
    )
    t.equal(await sendStatus(c), UNAUTHORIZED, 'and the connection that used it is refused from then on')
  },
)
