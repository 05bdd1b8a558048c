import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { MessageProducerProvider } from '../../src/client'
import type { Broker } from '../../src/broker/broker'
import type { RouteGroup } from '../../src/common/meta/types'
import { isQmqError } from '../../src/common/errors'
import { RequestCode } from '../../src/common/protocol/codes'
import type { Frame } from '../../src/common/protocol/frame'
import { decodeRecord } from '../../src/common/record'
import { pullOpts } from '../broker/store/helpers'
import { startCluster } from '../helpers/cluster'
import { type AnswerProxy, startAnswerProxy } from './helpers/answer-proxy'
import { type FakeBroker, FakeMetaserver } from './helpers/fake-cluster'

/**
 * Producer retries and repeated sends over two real broker groups (real stores, real dedupe), each
 * reached through a proxy that can hold SEND answers past the producer's request timeout. Routes come
 * from a stand-in metaserver that names the proxies' addresses.
 */
type T = { teardown: (fn: () => unknown) => void }

/** Every message id stored for `subject` on `broker` (read from its store, earliest first). */
async function storedIds(broker: Broker, subject: string): Promise<string[]> {
  const ids: string[] = []
  const reader = `audit-${Math.random().toString(36).slice(2)}`
  for (;;) {
    const got = await broker.messageStore.pull(
      pullOpts(subject, 'audit', reader, { broadcast: true, maxMessages: 10_000 }),
    )
    if (got.length === 0) return ids
    for (const m of got) ids.push(decodeRecord(m.record).id)
  }
}

async function setup(t: T, holdMs: (group: string, answer: Frame) => number, producerOpts = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'qmq-dup-'))
  const cluster = await startCluster({ dir, brokers: 2 })
  const proxies: AnswerProxy[] = []
  const groups: { running: boolean; routeGroup: RouteGroup }[] = []
  for (const b of cluster.brokers) {
    const name = b.options.group
    const proxy = await startAnswerProxy(b.addresses.address, (f) => holdMs(name, f))
    proxies.push(proxy)
    groups.push({ running: true, routeGroup: { name, address: proxy.address, state: 'rw' as const } })
  }
  const meta = await new FakeMetaserver(() => groups as unknown as FakeBroker[]).start()
  const producer = new MessageProducerProvider({
    appCode: 'dup-test',
    metaServer: meta.url,
    requestTimeoutMs: 1_000,
    sendTimeoutMs: 10_000,
    ...producerOpts,
  })
  await producer.init()
  t.teardown(async () => {
    await producer.close()
    for (const p of proxies) await p.close()
    await meta.stop()
    await cluster.close()
    rmSync(dir, { recursive: true, force: true })
  })
  const stored = async (subject: string): Promise<Map<string, string[]>> => {
    const where = new Map<string, string[]>()
    for (const b of cluster.brokers) {
      for (const id of await storedIds(b, subject)) where.set(id, [...(where.get(id) ?? []), b.options.group])
    }
    return where
  }
  return { cluster, proxies, groups, producer, stored }
}

/** Holds the first SEND answer of whichever group gets one first for `ms`; records which group. */
function holdFirstSend(ms: number) {
  const state = { group: undefined as string | undefined }
  const hold = (group: string, f: Frame): number => {
    if (f.code !== RequestCode.SEND || state.group !== undefined) return 0
    state.group = group
    return ms
  }
  return { state, hold }
}

t.test(
  'producer duplicates - a SEND answer held past the timeout: the retry goes to the same group, stored once',
  async (t) => {
    const first = holdFirstSend(3_000)
    const { proxies, producer, stored } = await setup(t, first.hold)
    const m = producer.generateMessage('dup.timeout').setBody('once')
    const r = await producer.sendMessage(m)
    t.equal(r.group, first.state.group, 'stored by (and answered from) the group it was first sent to')
    for (const p of proxies) await p.released()
    const where = await stored('dup.timeout')
    t.same([...where.entries()], [[m.getMessageId(), [first.state.group]]], 'one copy across all groups')
  },
)

t.test('producer duplicates - the same Message sent twice is stored once', async (t) => {
  const { producer, stored } = await setup(t, () => 0)
  const m = producer.generateMessage('dup.twice').setBody('twice')
  const r1 = await producer.sendMessage(m)
  const r2 = await producer.sendMessage(m)
  t.same(r2, r1, 'the second send resolves with the first result')
  const r3 = await producer.sendMessages([m])
  t.same(r3, [{ status: 'fulfilled', value: r1 }])
  const where = await stored('dup.twice')
  t.same([...where.entries()], [[m.getMessageId(), [r1.group]]])
})

t.test(
  'producer duplicates - a Message that failed on a timeout and is sent again goes to the same group',
  async (t) => {
    const first = holdFirstSend(4_000)
    const { proxies, producer, stored } = await setup(t, first.hold, {
      maxAttempts: 1,
      sendTimeoutMs: 1_500,
    })
    const m = producer.generateMessage('dup.again').setBody('again')
    const err = await producer.sendMessage(m).catch((e: unknown) => e)
    t.ok(isQmqError(err, 'QMQ_ERR_TIMEOUT'), `first send timed out (${(err as Error).message})`)
    const r = await producer.sendMessage(m)
    t.equal(r.group, first.state.group, 'sent again to the group that may hold it')
    for (const p of proxies) await p.released()
    const where = await stored('dup.again')
    t.same([...where.entries()], [[m.getMessageId(), [first.state.group]]], 'one copy across all groups')
  },
)

t.test(
  'producer duplicates - the window that remains: the group closes the connection before answering',
  async (t) => {
    const first = holdFirstSend(60_000)
    const { cluster, proxies, producer, stored } = await setup(t, first.hold, { requestTimeoutMs: 3_000 })
    const m = producer.generateMessage('dup.closed').setBody('closed')
    const sending = producer.sendMessage(m)
    const end = Date.now() + 10_000
    while (!proxies.some((p) => p.held === 1)) {
      if (Date.now() > end) throw new Error('no SEND answer held')
      await new Promise((r) => setTimeout(r, 5))
    }
    const i = cluster.brokers.findIndex((b) => b.options.group === first.state.group)
    await proxies[i]?.close() // the connection closes unanswered, and the group is unreachable from now on
    const r = await sending
    t.not(r.group, first.state.group, 'failed over to the other group')
    const where = await stored('dup.closed')
    t.same(
      where.get(m.getMessageId())?.sort(),
      ['broker-a', 'broker-b'],
      'stored by both groups: the documented window (docs/client.md, Duplicates 1)',
    )
  },
)

t.test('producer duplicates - a group that stops answering is left once the route drops it', async (t) => {
  let silent: string | undefined
  const { groups, producer, stored } = await setup(
    t,
    (group, f) => {
      if (f.code !== RequestCode.SEND) return 0
      silent ??= group
      return group === silent ? 60_000 : 0
    },
    { routeRefreshMs: 60_000, requestTimeoutMs: 1_000, sendTimeoutMs: 15_000, maxAttempts: 10 },
  )
  const m = producer.generateMessage('dup.dropped').setBody('dropped')
  const sending = producer.sendMessage(m)
  const end = Date.now() + 10_000
  while (silent === undefined) {
    if (Date.now() > end) throw new Error('no SEND answer held')
    await new Promise((r) => setTimeout(r, 5))
  }
  // The metaserver no longer lists the silent group (as when its heartbeats stop).
  const g = groups.find((x) => x.routeGroup.name === silent)
  if (g !== undefined) g.running = false
  const r = await sending
  t.not(r.group, silent, 'failed over once the route no longer had the group')
  const where = await stored('dup.dropped')
  t.same(where.get(m.getMessageId())?.sort(), ['broker-a', 'broker-b'], 'the silent group had stored it too')
})
