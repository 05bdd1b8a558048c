import { request as httpRequest } from 'node:http'
import t from 'tap'
import type { Grant } from '../../src/common/auth/grants'
import { hashToken } from '../../src/common/auth/credentials'
import { CLUSTER_SECRET_HEADER } from '../../src/common/meta/types'
import { CLUSTER_SECRET, freshLocation, STORE_KINDS, startWithClient, TOKEN } from './helpers'

/**
 * `qmq auth grant`, `revoke` and `rotate` read an app, change it and write it back. Before, two changes
 * of one app at once (on one metaserver, or on two sharing a PostgreSQL store) could both read the same
 * row and the second write dropped the first one's change. Each write now only applies to the version
 * it read (compare-and-set) and the change is redone on the new row otherwise.
 */

const N = 12

/**
 * POST whose headers go out at once and whose body only once `gate` resolves: the metaserver has read
 * the app (it does before reading the body) and waits, so changes sent this way all read one version.
 */
function slowPost(
  url: string,
  path: string,
  body: unknown,
  headers: Record<string, string>,
  gate: Promise<void>,
) {
  const payload = Buffer.from(JSON.stringify(body))
  return new Promise<number>((resolve, reject) => {
    const req = httpRequest(`${url}${path}`, {
      method: 'POST',
      headers: { ...headers, 'content-type': 'application/json', 'content-length': String(payload.length) },
    })
    req.on('response', (res) => {
      res.resume()
      res.on('end', () => resolve(res.statusCode ?? 0))
    })
    req.on('error', reject)
    req.flushHeaders()
    void gate.then(() => req.end(payload))
  })
}

for (const kind of STORE_KINDS) {
  t.test(`app changes [${kind}] - grants whose bodies arrive together all stick`, async (t) => {
    const { server, client } = await startWithClient(t, { kind })
    await client.createApp('orders', [])
    let open = () => {}
    const gate = new Promise<void>((r) => {
      open = r
    })
    const statuses = Array.from({ length: 4 }, (_, i) =>
      slowPost(
        server.url,
        '/admin/apps/orders/grant',
        { action: 'produce', subject: `slow${i}` },
        { authorization: `Bearer ${TOKEN}` },
        gate,
      ),
    )
    // Every request has reached the handler (which reads the app) before any body is sent.
    await new Promise((r) => setTimeout(r, 300))
    open()
    t.same(await Promise.all(statuses), [200, 200, 200, 200])
    const app = (await client.listApps()).find((a) => a.appCode === 'orders')
    t.same(
      app?.grants.map((g) => g.subject).sort(),
      ['slow0', 'slow1', 'slow2', 'slow3'],
      'no grant was lost',
    )
  })

  t.test(`app changes [${kind}] - concurrent grants on one app all stick`, async (t) => {
    const location = await freshLocation(t, kind)
    const one = await startWithClient(t, { location })
    // Two metaservers on a shared store; one metaserver (SQLite's only process) takes them all.
    const two = kind === 'postgres' ? await startWithClient(t, { location }) : one
    const clients = [one.client, two.client]
    await one.client.createApp('billing', [])
    const grants: Grant[] = Array.from({ length: N }, (_, i) => ({ action: 'produce', subject: `s${i}` }))
    const answers = await Promise.all(grants.map((g, i) => clients[i % 2]!.grantApp('billing', g)))
    t.equal(answers.length, N, 'every grant answered')
    const app = (await one.client.listApps()).find((a) => a.appCode === 'billing')
    t.same(app?.grants.map((g) => g.subject).sort(), grants.map((g) => g.subject).sort(), 'no grant was lost')
  })

  t.test(`app changes [${kind}] - grants, revokes and a rotation at once: none lost`, async (t) => {
    const location = await freshLocation(t, kind)
    const one = await startWithClient(t, { location })
    const two = kind === 'postgres' ? await startWithClient(t, { location }) : one
    const keep: Grant[] = Array.from({ length: 4 }, (_, i) => ({ action: 'produce', subject: `keep${i}` }))
    const drop: Grant[] = Array.from({ length: 4 }, (_, i) => ({ action: 'produce', subject: `drop${i}` }))
    await one.client.createApp('audit', drop)
    const add: Grant[] = Array.from({ length: 4 }, (_, i) => ({ action: 'admin', subject: `add${i}` }))
    const [rotated] = await Promise.all([
      two.client.rotateApp('audit'),
      ...drop.map((g, i) => (i % 2 === 0 ? one : two).client.revokeApp('audit', g)),
      ...[...keep, ...add].map((g, i) => (i % 2 === 0 ? two : one).client.grantApp('audit', g)),
    ])
    const app = (await one.client.listApps()).find((a) => a.appCode === 'audit')
    t.same(
      app?.grants.map((g) => g.subject).sort(),
      [...keep, ...add].map((g) => g.subject).sort(),
      'every grant added, every revoked one gone',
    )
    t.equal(app?.tokens, 1, 'the rotation replaced the token')
    // The stored hash is the rotated token's: /meta/credentials (cluster secret) lists it.
    const creds = await fetch(`${one.server.url}/meta/credentials`, {
      headers: { [CLUSTER_SECRET_HEADER]: CLUSTER_SECRET },
    })
    const body = (await creds.json()) as { apps: { appCode: string; tokenHashes: string[] }[] }
    t.same(body.apps.find((a) => a.appCode === 'audit')?.tokenHashes, [hashToken(rotated.token)])
  })
}
