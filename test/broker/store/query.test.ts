import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import type { FileMessageStore } from '../../../src/broker/store/file-message-store'
import type { AppendInput } from '../../../src/broker/store/types'
import type { HistoryAnswer, ListAnswer, MessageAnswer } from '../../../src/common/protocol/query'
import { encodeRecord, KEYS_PROPERTY, readRecordHeader } from '../../../src/common/record'
import { open, pullOpts } from './helpers'

function keyed(subject: string, id: string, keys: string[], body = `body of ${id}`): AppendInput {
  const properties = new Map<string, string>([['qmq_appCode', 'shop']])
  if (keys.length > 0) properties.set(KEYS_PROPERTY, keys.join(' '))
  const bytes = encodeRecord({ id, subject, createdAt: Date.now() - 5, tags: [], properties, body })
  return { bytes, header: readRecordHeader(bytes) }
}

const byId = (s: FileMessageStore, id: string) =>
  s.query({ op: 'message', id }, 'broker-a') as Promise<MessageAnswer>
const byKey = (s: FileMessageStore, key: string, subject?: string) =>
  s.query({ op: 'key', key, limit: 50, ...(subject ? { subject } : {}) }, 'broker-a') as Promise<ListAnswer>

t.test(
  'query - by id with consumer state and trace, by key, by time, history; after a restart',
  async (t) => {
    const dir = t.testdir()
    const opts = { indexSegmentBytes: 4096, maxRetries: 2, retryBaseMs: 0, retryJitter: 0 }
    let s = await open(dir, opts)
    const ins: AppendInput[] = []
    for (let i = 0; i < 200; i++) ins.push(keyed('orders', `m-${i}`, [`order-${i % 50}`, `user-${i}`]))
    await s.append(ins)
    await s.append([keyed('other', 'x-1', ['order-7'])])
    const got = await s.pull(pullOpts('orders', 'billing', 'c1', { maxMessages: 3 }))
    t.equal(got.length, 3)
    await s.ack('orders', 'billing', 'c1', [0])
    await s.nack('orders', 'billing', 'c1', [1], { retryAfterMs: 60_000 })
    await s.nack('orders', 'billing', 'c1', [2], { deadLetter: true })
    await s.redriveDeadLetters('orders', 'billing', [2])

    const check = async (label: string) => {
      const a = await byId(s, 'm-0')
      t.equal(a.messages.length, 1, `${label}: found m-0`)
      const m = a.messages[0]
      t.equal(m?.subject, 'orders')
      t.equal(m?.sequence, 0)
      t.equal(m?.appCode, 'shop')
      t.same(m?.keys, ['order-0', 'user-0'])
      t.equal(m?.body, 'body of m-0')
      t.match(m?.consumers, [{ consumerGroup: 'billing', state: 'acked', deliveryCount: 1 }])
      t.same(
        a.events.map((e) => e.type),
        ['sent', 'stored', 'delivered', 'acked'],
        `${label}: m-0 timeline`,
      )
      t.match(a.events[2], { consumerGroup: 'billing', consumer: 'c1', deliveryCount: 1 })
      const one = await byId(s, 'm-1')
      t.match(one.messages[0]?.consumers, [{ consumerGroup: 'billing', state: 'retrying' }])
      t.same(
        one.events.map((e) => e.type),
        ['sent', 'stored', 'delivered', 'nacked'],
      )
      t.ok((one.events[3]?.retryAt ?? 0) > Date.now(), 'nack carries the retry time')
      const two = await byId(s, 'm-2')
      t.same(
        two.events.map((e) => e.type),
        ['sent', 'stored', 'delivered', 'nacked', 'dead', 'redriven'],
      )
      t.match(two.messages[0]?.consumers, [{ state: 'pending' }], 'redriven: ready again')
      t.same((await byId(s, 'nope')).messages, [])
      const k = await byKey(s, 'order-7')
      t.same(
        k.messages.map((m) => m.id),
        ['x-1', 'm-157', 'm-107', 'm-57', 'm-7'],
        `${label}: by key, newest first`,
      )
      t.same(
        (await byKey(s, 'order-7', 'orders')).messages.map((m) => m.id),
        ['m-157', 'm-107', 'm-57', 'm-7'],
      )
      const page1 = (await s.query(
        { op: 'list', subject: 'orders', from: 0, to: Date.now() + 1000, limit: 150 },
        'broker-a',
      )) as ListAnswer
      t.equal(page1.messages.length, 150)
      t.equal(page1.messages[0]?.id, 'm-199', 'newest first')
      const page2 = (await s.query(
        { op: 'list', subject: 'orders', from: 0, to: Date.now() + 1000, limit: 150, beforeSequence: 50 },
        'broker-a',
      )) as ListAnswer
      t.same(page2.messages.map((m) => m.sequence).slice(0, 2), [49, 48])
      t.equal(page2.messages.length, 50)
      const h = (await s.query(
        { op: 'history', from: Date.now() - 3_600_000, to: Date.now() + 60_000 },
        'broker-a',
      )) as HistoryAnswer
      const sum = (
        subject: string,
        group: string,
        f: 'produced' | 'delivered' | 'acked' | 'nacked' | 'dead',
      ) =>
        h.series
          .filter((x) => x.subject === subject && x.consumerGroup === group)
          .flatMap((x) => x.points)
          .reduce((n, p) => n + p[f], 0)
      t.equal(sum('orders', '', 'produced'), 200, `${label}: history produced`)
      t.equal(sum('orders', 'billing', 'delivered'), 3)
      t.equal(sum('orders', 'billing', 'acked'), 1)
      t.equal(sum('orders', 'billing', 'nacked'), 2)
      t.equal(sum('orders', 'billing', 'dead'), 1)
    }
    await check('live')
    await s.index?.sealed() // runs are written in the background
    t.ok(fs.readdirSync(path.join(dir, 'indexrun')).length > 0, 'sealed index segments have runs')
    await s.close()
    s = await open(dir, opts)
    await check('after a restart')
    await s.close()

    // A crash before the index was written, and an index lost altogether: rebuilt from the message log.
    s = await open(dir, opts)
    await s.append([keyed('orders', 'late-1', ['late'])])
    await s.abandon()
    s = await open(dir, opts)
    t.equal((await byId(s, 'late-1')).messages.length, 1, 'indexed after a crash')
    await s.close()
    fs.rmSync(path.join(dir, 'indexlog'), { recursive: true })
    fs.rmSync(path.join(dir, 'indexrun'), { recursive: true })
    s = await open(dir, opts)
    t.equal((await byId(s, 'm-123')).messages.length, 1, 'index rebuilt from scratch')
    t.equal((await byKey(s, 'late')).messages[0]?.id, 'late-1')
    await s.close()
  },
)

t.test('query - retention removes messages and their index segments', async (t) => {
  const dir = t.testdir()
  const s = await open(dir, { indexSegmentBytes: 4096, segmentBytes: 8192, retentionBytes: 16 * 1024 })
  t.teardown(() => s.close())
  const big = 'x'.repeat(700)
  for (let i = 0; i < 60; i++) {
    await s.append([keyed('logs', `r-${i}`, [`k-${i}`], big)])
    // Segment mtimes have ms resolution: old segments must be strictly older than the first kept message.
    if (i % 10 === 9) await new Promise((r) => setTimeout(r, 5))
  }
  const indexSegsBefore = s.index?.log.segments().length ?? 0
  t.equal((await byId(s, 'r-0')).messages.length, 1)
  const deleted = await s.runRetention()
  t.ok(deleted > 0, 'message segments deleted')
  t.same((await byId(s, 'r-0')).messages, [], 'a removed message is not found')
  t.same((await byKey(s, 'k-0')).messages, [])
  t.equal((await byId(s, 'r-59')).messages.length, 1, 'a retained one is')
  const indexSegsAfter = s.index?.log.segments().length ?? 0
  t.ok(indexSegsAfter < indexSegsBefore, `index segments removed (${indexSegsBefore} -> ${indexSegsAfter})`)
  await s.index?.sealed() // runs are written in the background
  const runs = fs.readdirSync(path.join(dir, 'indexrun'))
  t.equal(runs.length, indexSegsAfter - 1, 'one run per sealed index segment left')
})

t.test(
  'query - a message with an order key is found by its business keys (properties follow the order key)',
  async (t) => {
    const s = await open(t.testdir(), {})
    const properties = new Map<string, string>([[KEYS_PROPERTY, 'order-42 user-7']])
    const bytes = encodeRecord({
      id: 'k-1',
      subject: 'orders',
      createdAt: Date.now() - 5,
      tags: ['paid'],
      orderKey: 'order-42',
      properties,
      body: 'keyed',
    })
    await s.append([{ bytes, header: readRecordHeader(bytes) }])
    for (const key of ['order-42', 'user-7']) {
      const a = await byKey(s, key, 'orders')
      t.same(
        a.messages.map((m) => m.id),
        ['k-1'],
        `found by ${key}`,
      )
    }
    await s.close()
  },
)

t.test(
  'query - one batch of many records with business keys, order keys and tags: found by id and by each key after a reopen',
  async (t) => {
    // The index hashes ids and keys from the records' bytes in place (index-log.ts addMessage): ASCII
    // keys split at spaces, a value with non-ASCII bytes through the decoded string, keys longer than
    // the JS/native CRC threshold (48 bytes), order keys and tags before the properties.
    const dir = t.testdir()
    let s = await open(dir, { indexSegmentBytes: 8192 })
    const long = 'L'.repeat(70)
    const keysOf = (i: number): string[] =>
      i % 5 === 0 ? [`grüße-${i}`, `k-${i}`] : i % 7 === 0 ? [`${long}-${i}`] : [`k-${i}`, `shared-${i % 40}`]
    const ins: AppendInput[] = []
    for (let i = 0; i < 300; i++) {
      const properties = new Map<string, string>([['qmq_appCode', 'shop']])
      // Extra spaces around and between keys: no empty key is indexed.
      properties.set(KEYS_PROPERTY, i % 2 === 0 ? keysOf(i).join(' ') : ` ${keysOf(i).join('  ')} `)
      const bytes = encodeRecord({
        id: i % 11 === 0 ? `ïd-${i}` : `id-${i}`,
        subject: 'orders',
        createdAt: Date.now(),
        tags: i % 3 === 0 ? ['red', 'big'] : [],
        ...(i % 4 === 0 ? { orderKey: `customer-${i % 9}` } : {}),
        properties,
        body: `b${i}`,
      })
      ins.push({ bytes, header: readRecordHeader(bytes) })
    }
    await s.append(ins)
    const check = async (label: string) => {
      for (let i = 0; i < 300; i++) {
        const id = i % 11 === 0 ? `ïd-${i}` : `id-${i}`
        const a = await byId(s, id)
        t.equal(a.messages.length, 1, `${label}: ${id} found by id`)
        t.same(a.messages[0]?.keys, keysOf(i), `${label}: ${id} keys`)
        for (const k of keysOf(i)) {
          const l = await byKey(s, k)
          if (!l.messages.some((m) => m.sequence === i)) t.fail(`${label}: ${id} not found by key ${k}`)
        }
      }
      const shared = await byKey(s, 'shared-1')
      const want = [...Array(300).keys()].filter((i) => i % 5 !== 0 && i % 7 !== 0 && i % 40 === 1)
      t.same(
        shared.messages.map((m) => m.sequence).sort((x, y) => x - y),
        want,
        `${label}: a key shared by many records finds each once`,
      )
      t.same((await byKey(s, '')).messages, [], `${label}: no empty key`)
    }
    await check('live')
    await s.close()
    s = await open(dir, { indexSegmentBytes: 8192 })
    await check('reopened')
    await s.close()
  },
)
