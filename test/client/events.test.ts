import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { MessageProducerProvider } from '../../src/client'
import type { ClientEventMap } from '../../src/client/events'
import { startCluster } from '../helpers/cluster'

/** Issue 19 item 10: the providers' instrumentation events, over a real local cluster. */

async function until(cond: () => boolean, ms = 8_000, what = 'condition'): Promise<void> {
  const end = Date.now() + ms
  while (!cond()) {
    if (Date.now() > end) throw new Error(`${what} not met in ${ms} ms`)
    await new Promise((r) => setTimeout(r, 10))
  }
}

t.test('events: connect, disconnect and retry of a producer whose broker goes away', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'qmq-events-'))
  const cluster = await startCluster({ dir, brokers: 2 })
  const producer = new MessageProducerProvider({
    appCode: 'app',
    metaServer: cluster.metaUrl,
    sendTimeoutMs: 2_000,
    routeRefreshMs: 200,
  })
  t.teardown(async () => {
    await producer.close()
    await cluster.close()
    rmSync(dir, { recursive: true, force: true })
  })
  const seen: { name: keyof ClientEventMap; ev: Record<string, unknown> }[] = []
  for (const name of ['connect', 'disconnect', 'retry', 'routeChange'] as const) {
    producer.events.on(name, (ev: Record<string, unknown>) => seen.push({ name, ev }))
  }
  producer.events.on('connect', () => {
    throw new Error('a throwing listener must not break the client')
  })
  await producer.init()
  await producer.sendMessage(producer.generateMessage('events.x'))
  const connects = seen.filter((s) => s.name === 'connect')
  t.ok(connects.length >= 1, 'connect emitted')
  t.match(connects[0]?.ev, { address: /:\d+$/ })
  // One broker group goes away: the metaserver drops it from the route and the refreshed route differs.
  const [first, ...rest] = cluster.brokers
  await first?.close()
  await until(() => seen.some((s) => s.name === 'routeChange'), 15_000, 'routeChange emitted')
  // Then the others: the producer sees the disconnects, and the next send retries.
  for (const b of rest) await b.close()
  await until(() => seen.some((s) => s.name === 'disconnect'), 8_000, 'disconnect emitted')
  t.match(seen.find((s) => s.name === 'disconnect')?.ev, { address: /:\d+$/, code: /^QMQ_ERR_/ })
  await producer.sendMessage(producer.generateMessage('events.x')).catch(() => {})
  t.ok(
    seen.some((s) => s.name === 'retry' && s.ev.subject === 'events.x'),
    'retry emitted for the failing send',
  )
  t.match(seen.find((s) => s.name === 'routeChange')?.ev, { kind: 'producer', subject: 'events.x' })
})
