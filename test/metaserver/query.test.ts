import { execFile } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { hostname, tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'
import { Connection } from '../../src/client/transport/connection'
import { MessageConsumerProvider, MessageProducerProvider } from '../../src/client'
import { encodeDlqRedriveRequest } from '../../src/common/protocol/admin'
import { RequestCode } from '../../src/common/protocol/codes'
import type { ListResult, MessageResult } from '../../src/common/protocol/query'
import { formatMessage } from '../../src/cli/commands/message'
import { startCluster } from '../helpers/cluster'

const execFileAsync = promisify(execFile)

/**
 * Message query, lifecycle trace and history over a real local cluster (metaserver + 2 broker
 * groups, the SDK producing and consuming), through the metaserver's HTTP API (docs/query.md),
 * before and after a broker restart.
 */
async function until<T>(f: () => Promise<T | undefined>, what: string, ms = 15_000): Promise<T> {
  const end = Date.now() + ms
  for (;;) {
    const v = await f()
    if (v !== undefined) return v
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 100))
  }
}

t.test(
  'query - by id, key and time, trace and history through the metaserver, across a broker restart',
  async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'qmq-query-'))
    const cluster = await startCluster({
      dir,
      brokers: 2,
      broker: { maxRetries: 2, retryBaseMs: 20, retryMaxMs: 50 },
    })
    const producer = new MessageProducerProvider({ appCode: 'shop', metaServer: cluster.metaUrl })
    await producer.init()
    const consumer = new MessageConsumerProvider({
      appCode: 'billing-app',
      metaServer: cluster.metaUrl,
      pullTimeoutMs: 300,
      heartbeatIntervalMs: 300,
    })
    t.teardown(async () => {
      await consumer.close()
      await producer.close()
      await cluster.close()
      rmSync(dir, { recursive: true, force: true })
    })

    const ids: string[] = []
    const byKey = new Map<string, string[]>()
    for (let i = 0; i < 30; i++) {
      const m = producer.generateMessage('order.paid')
      m.setKeys(`order-${i % 10}`, `n-${i}`)
      m.setProperty('i', i)
      await producer.sendMessage(m)
      ids.push(m.getMessageId())
      byKey.set(`order-${i % 10}`, [...(byKey.get(`order-${i % 10}`) ?? []), m.getMessageId()])
    }
    const poison = producer.generateMessage('order.paid')
    poison.setKeys('poison')
    await producer.sendMessage(poison)
    const poisonId = poison.getMessageId()
    let acked = 0
    consumer.addListener(
      'order.paid',
      'billing',
      (m) => {
        if (m.getMessageId() === poisonId) throw new Error('cannot handle this one')
        acked++
      },
      { startFrom: 'earliest' },
    )
    await consumer.start()
    await until(async () => (acked >= 30 ? true : undefined), '30 acks')

    const first = ids[0] as string
    const one = await until(async () => {
      const r = await cluster.meta.getMessage(first)
      return r.events.some((e) => e.type === 'acked') ? r : undefined
    }, 'the ack in the trace')
    t.equal(one.found, true)
    t.same(one.errors, [])
    t.equal(one.messages.length, 1)
    const m = one.messages[0]
    t.match(m, {
      id: first,
      subject: 'order.paid',
      appCode: 'shop',
      host: hostname(),
      keys: ['order-0', 'n-0'],
    })
    t.equal(m?.properties?.i, '0')
    t.match(m?.consumers, [{ consumerGroup: 'billing', state: 'acked', deliveryCount: 1 }])
    t.same(
      one.events.map((e) => e.type),
      ['sent', 'stored', 'delivered', 'acked'],
    )
    t.match(one.events[0], { appCode: 'shop', host: hostname() })
    t.match(one.events[2], { consumerGroup: 'billing', deliveryCount: 1, server: m?.server })
    t.type(one.events[2]?.consumer, 'string')
    t.match(formatMessage(one), /delivered .*group billing .*delivery #1/)
    // The CLI, as a process: the timeline and --json.
    const cli = (args: string[]) =>
      execFileAsync(process.execPath, [
        join(__dirname, '../../bin/qmq.js'),
        ...args,
        '--metaserver',
        cluster.metaUrl,
      ])
    const text = await cli(['message', first])
    t.match(text.stdout, /timeline:\n.*sent .*app shop/s)
    t.match(text.stdout, /acked/)
    const json = JSON.parse((await cli(['message', first, '--json'])).stdout) as MessageResult
    t.same(
      json.events.map((e) => e.type),
      ['sent', 'stored', 'delivered', 'acked'],
    )
    await t.rejects(cli(['message', 'no-such-id']), { code: 1 }, 'exit 1 when not found')
    const keyed = await cli(['messages', '--key', 'order-3', '--json'])
    t.equal((JSON.parse(keyed.stdout) as { messages: unknown[] }).messages.length, 3)

    // The poison message: nacked, then dead after maxRetries; an operator redrives it.
    const dead = await until(async () => {
      const r = await cluster.meta.getMessage(poisonId, 'order.paid')
      return r.messages[0]?.consumers?.[0]?.state === 'dead' ? r : undefined
    }, 'the dead letter')
    t.same(
      dead.events.map((e) => e.type),
      ['sent', 'stored', 'delivered', 'nacked', 'delivered', 'nacked', 'dead'],
    )
    const holder = cluster.brokers.find((b) => b.options.group === dead.messages[0]?.server)
    const conn = new Connection({ address: holder?.addresses.address ?? '' })
    await conn.request(
      RequestCode.ADMIN_DLQ_REDRIVE,
      encodeDlqRedriveRequest({
        subject: 'order.paid',
        group: 'billing',
        sequences: [dead.messages[0]?.sequence ?? -1],
      }),
    )
    await conn.close()
    const redriven = await until(async () => {
      const r = await cluster.meta.getMessage(poisonId)
      return r.events.some((e) => e.type === 'redriven') ? r : undefined
    }, 'the redrive in the trace')
    t.ok(
      redriven.events.findIndex((e) => e.type === 'redriven') >
        redriven.events.findIndex((e) => e.type === 'dead'),
    )

    // By key (newest first, over both broker groups) and by subject and time, paged.
    const k = await cluster.meta.listMessages({ key: 'order-3' })
    t.same(
      k.messages.map((x) => x.id).sort(),
      [...(byKey.get('order-3') ?? [])].sort(),
      'by key: every message with it',
    )
    t.ok(
      k.messages.every((x, i) => i === 0 || (k.messages[i - 1]?.storedAt ?? 0) >= x.storedAt),
      'newest first',
    )
    const seen: string[] = []
    let cursor: string | undefined
    let pages = 0
    do {
      const page = await cluster.meta.listMessages({
        subject: 'order.paid',
        limit: 7,
        ...(cursor ? { cursor } : {}),
      })
      t.ok(page.messages.length <= 7)
      seen.push(...page.messages.map((x) => x.id))
      cursor = page.nextCursor
      pages++
    } while (cursor !== undefined && pages < 20)
    t.same([...seen].sort(), [...ids, poisonId].sort(), 'every message once over the pages')
    t.equal(new Set(seen).size, seen.length, 'no message twice')
    t.ok(pages >= 5)

    // History: per-minute counts summed over the broker groups.
    // A broker group that does not answer in time is reported in `errors` (the sum is then partial): on a
    // loaded machine, ask again a few times; the answer used must have no errors.
    const sum = async (group: string, f: 'produced' | 'delivered' | 'acked' | 'nacked' | 'dead') => {
      let h = await cluster.meta.history({ subject: 'order.paid', consumerGroup: group })
      for (let i = 0; i < 3 && h.errors.length > 0; i++)
        h = await cluster.meta.history({ subject: 'order.paid', consumerGroup: group })
      t.same(h.errors, [], `history of ${group || 'every group'}: every broker group answered`)
      return h.series.flatMap((s) => s.points).reduce((n, p) => n + p[f], 0)
    }
    t.equal(await sum('', 'produced'), 31)
    t.equal(await sum('billing', 'acked'), 30)
    t.ok((await sum('billing', 'dead')) >= 1)

    // A broker restart: index, trace and history come back from disk.
    const server = m?.server
    const broker = cluster.brokers.find((b) => b.options.group === server)
    await consumer.close()
    await broker?.restart()
    await cluster.waitAlive('broker', 2)
    const again = await until(async () => {
      const r: MessageResult = await cluster.meta.getMessage(first)
      return r.errors.length === 0 && r.found ? r : undefined
    }, 'the message after the restart')
    t.same(
      again.events.map((e) => e.type),
      ['sent', 'stored', 'delivered', 'acked'],
      'the trace survives a restart',
    )
    t.match(again.messages[0]?.consumers, [{ consumerGroup: 'billing', state: 'acked' }])
    t.equal(await sum('', 'produced'), 31, 'history survives a restart')
    t.equal((await cluster.meta.listMessages({ key: 'order-3' })).messages.length, 3)

    // Bad requests get 400 with a stable code.
    await t.rejects(cluster.meta.listMessages({}), { code: 'QMQ_ERR_INVALID_ARGUMENT' })
    await t.rejects(cluster.meta.listMessages({ subject: 'order.paid', limit: 501 }), {
      code: 'QMQ_ERR_INVALID_ARGUMENT',
    })
    const missing = await cluster.meta.getMessage('no-such-id')
    t.equal(missing.found, false)
  },
)

t.test(
  'query - a delayed message: scheduled and dispatched by the delay group, then delivered',
  async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'qmq-query-delay-'))
    const cluster = await startCluster({ dir, brokers: 1, delay: true })
    const producer = new MessageProducerProvider({ appCode: 'shop', metaServer: cluster.metaUrl })
    await producer.init()
    const consumer = new MessageConsumerProvider({
      appCode: 'billing-app',
      metaServer: cluster.metaUrl,
      pullTimeoutMs: 300,
      heartbeatIntervalMs: 300,
    })
    t.teardown(async () => {
      await consumer.close()
      await producer.close()
      await cluster.close()
      rmSync(dir, { recursive: true, force: true })
    })
    let got = 0
    consumer.addListener(
      'order.later',
      'billing',
      () => {
        got++
      },
      { startFrom: 'earliest' },
    )
    await consumer.start()
    const m = producer.generateMessage('order.later')
    m.setDelayTime(new Date(Date.now() + 800))
    await producer.sendMessage(m)
    const id = m.getMessageId()
    const pending = await cluster.meta.getMessage(id)
    t.match(pending.events, [{ type: 'scheduled', server: 'delay-1', subject: 'order.later' }])
    t.ok((pending.events[0]?.scheduleAt ?? 0) > Date.now() - 1000)
    await until(async () => (got > 0 ? true : undefined), 'the delivery')
    const r = await until(async () => {
      const a = await cluster.meta.getMessage(id)
      return a.events.some((e) => e.type === 'acked') ? a : undefined
    }, 'the ack')
    t.same(
      r.events.map((e) => e.type).filter((x) => x !== 'sent'),
      ['scheduled', 'dispatched', 'stored', 'delivered', 'acked'],
    )
    t.equal(r.messages[0]?.server, 'broker-a')
    const h = await cluster.meta.history({ subject: 'order.later', server: 'delay-1' })
    const pts = h.series.flatMap((s) => s.points)
    t.equal(
      pts.reduce((n, p) => n + p.produced, 0),
      1,
      'delay group: scheduled',
    )
    t.equal(
      pts.reduce((n, p) => n + p.delivered, 0),
      1,
      'delay group: dispatched',
    )
  },
)

t.test(
  'query - with an admin token configured, bodies and properties only to requests carrying it',
  async (t) => {
    const TOKEN = 'query-admin-token-0123456789'
    const dir = mkdtempSync(join(tmpdir(), 'qmq-query-token-'))
    const cluster = await startCluster({ dir, brokers: 1, metaserver: { adminToken: TOKEN } })
    const producer = new MessageProducerProvider({ appCode: 'shop', metaServer: cluster.metaUrl })
    await producer.init()
    t.teardown(async () => {
      await producer.close()
      await cluster.close()
      rmSync(dir, { recursive: true, force: true })
    })
    const m = producer.generateMessage('card.charged')
    m.setKeys('invoice-42')
    m.setProperty('pan', '4111-secret')
    m.setBody('the secret body')
    await producer.sendMessage(m)
    const id = m.getMessageId()
    const base = cluster.metaserver.url
    const get = async (path: string, headers: Record<string, string> = {}) => {
      const r = await fetch(`${base}${path}`, { headers })
      return { status: r.status, body: (await r.json()) as MessageResult & ListResult }
    }
    const bearer = { authorization: `Bearer ${TOKEN}` }
    const paths = [
      `/admin/messages/${encodeURIComponent(id)}`,
      '/admin/messages?key=invoice-42',
      '/admin/messages?subject=card.charged',
    ]
    for (const path of paths) {
      const open = await get(path)
      t.equal(open.status, 200, `${path}: answered without the token`)
      const v = open.body.messages[0]
      t.match(v, { id, keys: ['invoice-42'], bodyBytes: 15, bodyWithheld: true }, `${path}: metadata`)
      t.equal(v?.body, undefined, `${path}: no body without the token`)
      t.equal(v?.properties, undefined, `${path}: no properties without the token`)
      t.notMatch(JSON.stringify(open.body), /secret/, `${path}: nothing of them anywhere`)
      const full = await get(path, bearer)
      // Lists carry properties; the body comes with the message by id (docs/query.md).
      t.match(full.body.messages[0], {
        id,
        properties: { pan: '4111-secret' },
        ...(path === paths[0] ? { body: 'the secret body' } : {}),
      })
      t.equal(full.body.messages[0]?.bodyWithheld, undefined, `${path}: the body with the token`)
      const wrong = await get(path, { authorization: 'Bearer not-the-token-000000' })
      t.match(
        wrong,
        { status: 401, body: { code: 'QMQ_ERR_UNAUTHORIZED' } },
        `${path}: a wrong token is refused`,
      )
    }
    const trace = await get(paths[0] as string)
    t.ok(
      trace.body.events.some((e) => e.type === 'stored'),
      'the trace stays visible without the token',
    )
    // The CLI sends the token it has (--token / QMQ_ADMIN_TOKEN).
    const cli = (args: string[], env: Record<string, string> = {}) =>
      execFileAsync(
        process.execPath,
        [join(__dirname, '../../bin/qmq.js'), ...args, '--metaserver', cluster.metaUrl],
        { env: { ...process.env, QMQ_ADMIN_TOKEN: '', ...env } },
      )
    const withheld = await cli(['message', id])
    t.match(withheld.stdout, /body withheld/, 'the CLI says the body was withheld')
    const withheldJson = JSON.parse((await cli(['message', id, '--json'])).stdout) as MessageResult
    t.equal(withheldJson.messages[0]?.bodyWithheld, true)
    const shown = JSON.parse(
      (await cli(['message', id, '--json'], { QMQ_ADMIN_TOKEN: TOKEN })).stdout,
    ) as MessageResult
    t.equal(shown.messages[0]?.body, 'the secret body', 'the CLI with QMQ_ADMIN_TOKEN gets the body')
    const keyed = JSON.parse(
      (await cli(['messages', '--key', 'invoice-42', '--json', '--token', TOKEN])).stdout,
    ) as ListResult
    t.match(keyed.messages[0]?.properties, { pan: '4111-secret' }, 'and with --token')
  },
)

t.test('query - without an admin token configured, bodies stay open reads', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'qmq-query-notoken-'))
  const cluster = await startCluster({ dir, brokers: 1 })
  const producer = new MessageProducerProvider({ appCode: 'shop', metaServer: cluster.metaUrl })
  await producer.init()
  t.teardown(async () => {
    await producer.close()
    await cluster.close()
    rmSync(dir, { recursive: true, force: true })
  })
  const m = producer.generateMessage('dev.notes')
  m.setBody('plain')
  await producer.sendMessage(m)
  const r = await fetch(`${cluster.metaserver.url}/admin/messages/${encodeURIComponent(m.getMessageId())}`)
  const a = (await r.json()) as MessageResult
  t.match(a.messages[0], { body: 'plain' })
  t.equal(a.messages[0]?.bodyWithheld, undefined)
})

t.test('query - after retention removed a segment on a real broker', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'qmq-query-retention-'))
  const cluster = await startCluster({
    dir,
    brokers: 1,
    broker: {
      segmentBytes: 16 * 1024,
      retentionBytes: 40 * 1024,
      retentionCheckIntervalMs: 50,
      indexSegmentBytes: 4096,
    },
  })
  const producer = new MessageProducerProvider({ appCode: 'shop', metaServer: cluster.metaUrl })
  await producer.init()
  t.teardown(async () => {
    await producer.close()
    await cluster.close()
    rmSync(dir, { recursive: true, force: true })
  })
  const ids: string[] = []
  for (let i = 0; i < 120; i++) {
    const m = producer.generateMessage('logs.big')
    m.setKeys(`k-${i}`)
    m.setBody('x'.repeat(1000))
    await producer.sendMessage(m)
    ids.push(m.getMessageId())
    if (i % 20 === 19) await new Promise((r) => setTimeout(r, 20)) // segment mtimes apart
  }
  const first = ids[0] as string
  const last = ids[ids.length - 1] as string
  await until(
    async () => ((await cluster.meta.getMessage(first)).found ? undefined : true),
    'retention of the first',
  )
  t.equal((await cluster.meta.getMessage(last)).found, true, 'the newest is still found')
  t.same((await cluster.meta.listMessages({ key: 'k-0' })).messages, [], 'its key finds nothing')
  t.equal((await cluster.meta.listMessages({ key: 'k-119' })).messages.length, 1)
  const listed = await cluster.meta.listMessages({ subject: 'logs.big', limit: 500 })
  t.ok(
    listed.messages.length < 120 && listed.messages.length > 0,
    `time query lists what is left (${listed.messages.length})`,
  )
  t.equal(listed.messages[0]?.id, last)
})
