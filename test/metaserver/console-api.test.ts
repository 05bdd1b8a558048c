import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { ERROR_CODES } from '../../src/common/error-codes'
import { CLUSTER_SECRET_HEADER } from '../../src/common/meta/types'
import { RequestCode } from '../../src/common/protocol/codes'
import { decodeDelayPendingResponse, encodeDelayPendingRequest } from '../../src/common/protocol/delay-admin'
import { parseResetTarget } from '../../src/metaserver/console/api'
import { startCluster } from '../helpers/cluster'
import { RawClient } from '../helpers/raw-client'
import { CLUSTER_SECRET } from './helpers'

/**
 * The console's HTTP endpoints (docs/console.md) without a browser: admin writes need the token in
 * the Authorization header (a token in the query string is not one), bad bodies are refused with
 * precise codes, the page's files carry their types and security headers, and the delay server's
 * ADMIN_DELAY_PENDING needs the cluster secret.
 */
const TOKEN = 'console-api-token-0123456789'

t.test('console api - admin writes, refusals, files, delay pending', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'qmq-console-api-'))
  const cluster = await startCluster({ dir, brokers: 1, delay: true, metaserver: { adminToken: TOKEN } })
  t.teardown(async () => {
    await cluster.close()
    rmSync(dir, { recursive: true, force: true })
  })
  const base = `${cluster.metaserver.url}/console`
  await cluster.metaserver.service.route('api.orders', 'producer')
  const post = async (path: string, body: unknown, headers: Record<string, string> = {}) => {
    const r = await fetch(`${base}/api/${path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers },
      body: JSON.stringify(body),
    })
    return {
      status: r.status,
      body: (await r.json()) as { code?: string; message?: string } & Record<string, unknown>,
    }
  }
  const reset = { subject: 'api.orders', group: 'g1', to: 'earliest' }

  const none = await post('reset-cursor', reset)
  t.equal(none.status, 401)
  t.equal(none.body.code, 'QMQ_ERR_UNAUTHORIZED')
  const inUrl = await post(`reset-cursor?token=${TOKEN}&authorization=Bearer%20${TOKEN}`, reset)
  t.equal(inUrl.status, 401, 'a token in the query string is not accepted')
  const wrong = await post('reset-cursor', reset, { authorization: 'Bearer nope-nope-nope' })
  t.equal(wrong.status, 401)
  t.match(wrong.body.message, /wrong admin token/)
  const ok = await post('reset-cursor', reset, { authorization: `Bearer ${TOKEN}` })
  t.equal(ok.status, 200, JSON.stringify(ok.body))
  t.same(ok.body.brokerGroups, ['broker-a'])
  t.equal(ok.body.position, 'EARLIEST')

  const auth = { authorization: `Bearer ${TOKEN}` }
  const badTo = await post('reset-cursor', { ...reset, to: 'yesterday-ish' }, auth)
  t.equal(badTo.status, 400)
  t.equal(badTo.body.code, 'QMQ_ERR_INVALID_ARGUMENT')
  const badSubject = await post('reset-cursor', { ...reset, subject: '' }, auth)
  t.equal(badSubject.status, 400, 'an empty subject')
  const noRoute = await post('reset-cursor', { ...reset, subject: 'api.unknown' }, auth)
  t.equal(noRoute.body.code, 'QMQ_ERR_NOT_FOUND', 'a subject without a route')
  const redriveNoSeq = await post('redrive', { subject: 'api.orders', group: 'g1' }, auth)
  t.equal(redriveNoSeq.status, 400)
  t.match(redriveNoSeq.body.message, /sequences/)
  const redriveNoBroker = await post('redrive', { subject: 'api.orders', group: 'g1', sequences: [1] }, auth)
  t.match(redriveNoBroker.body.message, /brokerGroup is required/)
  const redriveAll = await post('redrive', { subject: 'api.orders', group: 'g1', all: true }, auth)
  t.equal(redriveAll.status, 200)
  t.same(redriveAll.body, { redriven: 0 })
  const notJson = await fetch(`${base}/api/redrive`, { method: 'POST', headers: auth, body: 'x' })
  t.equal(notJson.status, 415, 'a body that is not JSON')
  await notJson.arrayBuffer()
  const getWrite = await fetch(`${base}/api/redrive`)
  t.equal(getWrite.status, 405)
  await getWrite.arrayBuffer()

  const page = await fetch(`${base}/groups`)
  t.equal(page.headers.get('content-type'), 'text/html; charset=utf-8', 'app paths serve the page')
  t.match(page.headers.get('content-security-policy') ?? '', /default-src 'none'/)
  t.equal(page.headers.get('x-frame-options'), 'DENY')
  t.match(await page.text(), /<script src="\/console\/app.js">/)
  const js = await fetch(`${base}/app.js`)
  t.equal(js.headers.get('content-type'), 'text/javascript; charset=utf-8')
  await js.arrayBuffer()
  const missing = await fetch(`${base}/nope.js`)
  t.equal(missing.status, 404)
  await missing.arrayBuffer()
  const paging = await fetch(`${base}/api/subjects?limit=100000`)
  t.equal(paging.status, 400, 'a page larger than 500 rows is refused')
  await paging.arrayBuffer()

  // The delay server's pending-by-bucket request needs the cluster secret, as its other admin requests.
  const delay = cluster.delay!
  const client = await RawClient.connect(Number(delay.address.split(':').pop()))
  t.teardown(() => client.close())
  const refused = await client.request(RequestCode.ADMIN_DELAY_PENDING, encodeDelayPendingRequest(undefined))
  t.equal(refused.status, ERROR_CODES.QMQ_ERR_UNAUTHORIZED.status, 'refused without the secret')
  const served = await client.request(
    RequestCode.ADMIN_DELAY_PENDING,
    encodeDelayPendingRequest(CLUSTER_SECRET),
  )
  t.equal(served.status, 0, served.message)
  t.same(decodeDelayPendingResponse(served.body), [], 'nothing pending yet')
  const groups = await fetch(`${base}/api/delay-groups`)
  t.match(await groups.json(), { groups: [{ name: 'delay-1', alive: true, pending: 0, buckets: [] }] })
})

t.test('console api - a broker group that does not answer is named; the others are shown', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'qmq-console-api-'))
  const cluster = await startCluster({ dir, brokers: 1 })
  t.teardown(async () => {
    await cluster.close()
    rmSync(dir, { recursive: true, force: true })
  })
  await cluster.brokers[0]!.messageStore.resetCursor('api.orders', 'g1', { kind: 'earliest' })
  // A group that registers with an address nobody listens on (alive until its heartbeats stop).
  const hb = await fetch(`${cluster.metaserver.url}/meta/heartbeat`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', [CLUSTER_SECRET_HEADER]: CLUSTER_SECRET },
    body: JSON.stringify({ group: 'broker-z', kind: 'broker', role: 'master', address: '127.0.0.1:1' }),
  })
  t.equal(hb.status, 200)
  await hb.arrayBuffer()
  const r = await fetch(`${cluster.metaserver.url}/console/api/consumer-groups?fresh=1`)
  t.equal(r.status, 200)
  const body = (await r.json()) as { total: number; errors: { group: string; code: string }[] }
  t.equal(body.total, 1, 'the answering broker group counted')
  t.same(
    body.errors.map((e) => e.group),
    ['broker-z'],
    `the silent one named (${body.errors.map((e) => e.code).join()})`,
  )
})

t.test('console api - admin writes are refused when the metaserver has no admin token', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'qmq-console-api-'))
  const cluster = await startCluster({ dir, brokers: 1 })
  t.teardown(async () => {
    await cluster.close()
    rmSync(dir, { recursive: true, force: true })
  })
  const r = await fetch(`${cluster.metaserver.url}/console/api/reset-cursor`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: 'Bearer anything-at-all' },
    body: JSON.stringify({ subject: 'a.b', group: 'g', to: 'latest' }),
  })
  t.equal(r.status, 401)
  t.match(((await r.json()) as { message: string }).message, /admin writes are disabled/)
})

t.test('console api - reset targets', async (t) => {
  t.same(parseResetTarget('earliest'), { position: 1, timeMs: 0 })
  t.same(parseResetTarget('latest'), { position: 0, timeMs: 0 })
  t.same(parseResetTarget('2026-11-21T10:00:00Z'), {
    position: 2,
    timeMs: Date.parse('2026-11-21T10:00:00Z'),
  })
  t.same(parseResetTarget(1_700_000_000_000), { position: 2, timeMs: 1_700_000_000_000 })
  t.same(parseResetTarget('1700000000000'), { position: 2, timeMs: 1_700_000_000_000 })
  for (const bad of ['soon', -5, {}, null, 1.5])
    t.throws(() => parseResetTarget(bad), { code: 'QMQ_ERR_INVALID_ARGUMENT' }, JSON.stringify(bad))
})
