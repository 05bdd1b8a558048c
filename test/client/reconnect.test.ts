import t from 'tap'
import { MessageProducerProvider } from '../../src/client'
import { Connection } from '../../src/client/transport/connection'
import type { QmqError } from '../../src/common/errors'
import { startFakeCluster } from './helpers/fake-cluster'
import { startFrameServer } from './helpers/frame-server'

/**
 * How clients come back to a server that was away (a restart, a failover: issue 14): reconnect
 * backoff, route refreshes, attempts. The end-to-end bound is test/broker/replication/client-failover.
 */

async function closedAddress(): Promise<string> {
  const srv = await startFrameServer((f, reply) => reply(0, f.body))
  await srv.close()
  return srv.address
}

/** The wait a fast-failed request reports ("next attempt in N ms"). */
function nextAttemptIn(err: unknown): number {
  const m = /next attempt in (\d+) ms/.exec((err as Error).message)
  if (m === null) throw new Error(`not a fast failure: ${(err as Error).message}`)
  return Number(m[1])
}

/** Makes one real (refused) connect attempt: waits out the backoff, then asks. */
async function refusedAttempt(c: Connection): Promise<QmqError> {
  for (;;) {
    const err = (await c.request(1, Buffer.alloc(0)).catch((e: unknown) => e)) as QmqError
    if (!/next attempt in/.test(err.message)) return err
    await new Promise((r) => setTimeout(r, nextAttemptIn(err) + 5))
  }
}

t.test('reconnect - a backoff earned long ago starts over at the next failure', async (t) => {
  const address = await closedAddress()
  const c = new Connection({ address, reconnectInitialMs: 20, reconnectMaxMs: 400 })
  t.teardown(() => c.close())
  for (let i = 0; i < 7; i++) await refusedAttempt(c) // the backoff grows to its 400 ms cap
  const grown = nextAttemptIn(await c.request(1, Buffer.alloc(0)).catch((e: unknown) => e))
  t.ok(grown > 40, `grown backoff: ${grown} ms`)
  // Left alone longer than the cap (e.g. the group moved to another address meanwhile) ...
  await new Promise((r) => setTimeout(r, grown + 450))
  // ... the address fails again (a promoted broker not listening yet): the next try is soon.
  await refusedAttempt(c)
  const wait = nextAttemptIn(await c.request(1, Buffer.alloc(0)).catch((e: unknown) => e))
  t.ok(wait <= 20, `next attempt in ${wait} ms (the first backoff step, not the grown one)`)
})

t.test('reconnect - resetBackoff() allows the next attempt at once', async (t) => {
  const address = await closedAddress()
  const c = new Connection({ address, reconnectInitialMs: 60_000, reconnectMaxMs: 60_000 })
  t.teardown(() => c.close())
  await refusedAttempt(c)
  await t.rejects(c.request(1, Buffer.alloc(0)), /next attempt in/)
  const srv = await startFrameServer((f, reply) => reply(0, f.body), Number(address.split(':')[1]))
  t.teardown(() => srv.close())
  c.resetBackoff()
  t.equal((await c.request(1, Buffer.from('back'))).body.toString(), 'back')
})

t.test('reconnect - failing sends ask the metaserver for the route a few times a second', async (t) => {
  const cluster = await startFakeCluster()
  const producer = new MessageProducerProvider({
    appCode: 'p',
    metaServer: cluster.meta.url,
    sendTimeoutMs: 1_000,
    maxAttempts: 100,
    batchSize: 1, // many batches failing at once
  })
  await producer.init()
  t.teardown(async () => {
    await producer.close()
    await cluster.close()
  })
  await producer.sendMessage(producer.generateMessage('down')) // the route is cached
  // Both groups are down: every batch fails over and asks for the route again.
  await cluster.a.stop()
  await cluster.b.stop()
  const before = cluster.meta.routeRequests
  const started = Date.now()
  await Promise.all(
    Array.from({ length: 400 }, () => producer.sendMessage(producer.generateMessage('down')).catch(() => {})),
  )
  const asked = cluster.meta.routeRequests - before
  const seconds = (Date.now() - started) / 1000
  t.ok(asked <= Math.ceil(seconds * 5) + 2, `${asked} route lookups in ${seconds.toFixed(1)} s`)
})
