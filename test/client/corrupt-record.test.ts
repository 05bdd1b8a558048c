import { readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { MessageConsumerProvider } from '../../src/client'
import { openMessageStore } from '../../src/broker/store'
import { RequestCode } from '../../src/common/protocol/codes'
import {
  decodeAckRequest,
  decodeNackRequest,
  decodePullRequest,
  encodeCountResponse,
  encodePullResponse,
} from '../../src/common/protocol/commands'
import { encodeRecord } from '../../src/common/record'
import { startBroker } from '../broker/server/start-broker'
import { rec } from '../broker/store/helpers'
import { type FakeBroker, FakeMetaserver } from './helpers/fake-cluster'
import { startFrameServer } from './helpers/frame-server'

/**
 * Issue 12, defect 3: a record damaged on disk after the checkpoint (recovery does not look at it
 * again) must not be served, and a bad record in a PULL answer must not crash the application or
 * take the rest of the answer with it.
 */

async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms
  while (!cond()) {
    if (Date.now() > end) throw new Error(`${what}: not met in ${ms} ms`)
    await new Promise((r) => setTimeout(r, 10))
  }
}

/** Unhandled rejections while the test runs (the defect crashed the application with one). */
function watchUnhandled(t: Test): unknown[] {
  const seen: unknown[] = []
  const onReject = (err: unknown) => seen.push(err)
  process.on('unhandledRejection', onReject)
  t.teardown(() => {
    process.off('unhandledRejection', onReject)
  })
  return seen
}

/** A metaserver stand-in routing every subject to one broker at `address()`. */
async function metaFor(t: Test, address: () => string): Promise<string> {
  const group = {
    running: true,
    get routeGroup() {
      return { name: 'broker-a', address: address(), state: 'rw' }
    },
  }
  const meta = await new FakeMetaserver(() => [group as unknown as FakeBroker]).start()
  t.teardown(() => meta.stop())
  return meta.url
}

t.test(
  'corrupt record - a record damaged on disk after the checkpoint is skipped, the rest consumed',
  async (t) => {
    const unhandled = watchUnhandled(t)
    const dir = t.testdir()
    const store = await openMessageStore({ dataDir: dir })
    await store.append(Array.from({ length: 5 }, (_, i) => rec('rot', { body: `rot-body-${i}-xxxxxxxx` })))
    await store.close() // checkpoint: recovery will not verify these records again
    const mdir = join(dir, 'messagelog')
    const file = join(mdir, readdirSync(mdir).filter((f) => f.endsWith('.log'))[0] as string)
    const bytes = readFileSync(file)
    const at = bytes.indexOf('rot-body-2-')
    t.ok(at > 0, 'found the record on disk')
    bytes[at + 12] = (bytes[at + 12] as number) ^ 0x55 // bit rot inside the body
    writeFileSync(file, bytes)

    const { broker, port } = await startBroker(t, { dataDir: dir })
    const metaUrl = await metaFor(t, () => `127.0.0.1:${port}`)
    const consumer = new MessageConsumerProvider({ appCode: 'c', metaServer: metaUrl, pullTimeoutMs: 200 })
    t.teardown(() => consumer.close())
    const viaListener: string[] = []
    consumer.addListener(
      'rot',
      'listener',
      (m) => {
        viaListener.push(String(m.getBody()))
      },
      { startFrom: 'earliest' },
    )
    await consumer.start()
    const pc = consumer.getOrCreatePullConsumer('rot', 'puller', { startFrom: 'earliest' })
    const viaPull: string[] = []
    for (let i = 0; i < 20 && viaPull.length < 4; i++) {
      for (const m of await pc.pull(10, 300)) {
        viaPull.push(String(m.getBody()))
        await m.ack()
      }
    }
    await until(() => viaListener.length >= 4, 5_000, 'the listener got the intact messages')
    const intact = [0, 1, 3, 4].map((i) => `rot-body-${i}-xxxxxxxx`)
    t.same(viaPull.sort(), intact, 'pull API: every intact message, not the damaged one')
    t.same(viaListener.sort(), intact, 'listener: every intact message, not the damaged one')
    const metric = await broker.registry.getSingleMetric('qmq_store_corrupt_records_total')?.get()
    t.equal(metric?.values[0]?.value, 1, 'counted once, though two groups read it')
    await until(
      () => broker.messageStore.backlog('rot').every((b) => b.inFlight === 0 && b.pending === 0),
      5_000,
      'nothing stranded: the damaged sequence does not block either group',
    )
    t.same(unhandled, [], 'no unhandled rejection')
  },
)

t.test('corrupt record - the SDK isolates one bad record of a PULL answer and nacks it', async (t) => {
  const unhandled = watchUnhandled(t)
  const answer = () => {
    const records = [0, 1, 2].map((i) =>
      encodeRecord({
        id: `bad-${i}`,
        subject: 'bad',
        createdAt: Date.now(),
        tags: [],
        properties: new Map(),
        body: `bad-body-${i}`,
      }),
    )
    const r1 = records[1] as Buffer
    r1[r1.length - 2] = (r1[r1.length - 2] as number) ^ 0xff // CRC mismatch in the middle record
    return Buffer.concat(
      encodePullResponse(records.map((record, i) => ({ sequence: 10 + i, deliveryCount: 1, record }))),
    )
  }
  const nacked: number[] = []
  const acked: number[] = []
  const served = new Set<string>()
  const server = await startFrameServer((frame, reply) => {
    switch (frame.code) {
      case RequestCode.PULL: {
        const req = decodePullRequest(frame.body)
        if (!served.has(req.group)) {
          served.add(req.group)
          reply(0, answer())
        } else setTimeout(() => reply(0, Buffer.concat(encodePullResponse([]))), Math.min(req.timeoutMs, 50))
        return
      }
      case RequestCode.NACK: {
        const req = decodeNackRequest(frame.body)
        nacked.push(...req.sequences)
        reply(0, encodeCountResponse(req.sequences.length))
        return
      }
      case RequestCode.ACK: {
        const req = decodeAckRequest(frame.body)
        acked.push(...req.sequences)
        reply(0, encodeCountResponse(req.sequences.length))
        return
      }
      default:
        reply(0)
    }
  })
  t.teardown(() => server.close())
  const metaUrl = await metaFor(t, () => server.address)
  const consumer = new MessageConsumerProvider({ appCode: 'c', metaServer: metaUrl, pullTimeoutMs: 100 })
  t.teardown(() => consumer.close())

  const pc = consumer.getOrCreatePullConsumer('bad', 'puller')
  let got: string[] = []
  for (let i = 0; i < 20 && got.length === 0; i++)
    got = (await pc.pull(10, 200)).map((m) => String(m.getBody()))
  t.same(got, ['bad-body-0', 'bad-body-2'], 'pull API: the good records of the answer')
  await until(() => nacked.includes(11), 5_000, 'the bad record is nacked')

  const handled: string[] = []
  consumer.addListener('bad', 'listener', (m) => {
    handled.push(String(m.getBody()))
  })
  await consumer.start()
  await until(() => handled.length >= 2 && nacked.length >= 2, 5_000, 'listener handled the good records')
  t.same(handled, ['bad-body-0', 'bad-body-2'], 'listener: the good records of the answer')
  t.same(nacked, [11, 11], 'each consumer nacked the bad record once')
  await until(() => acked.length >= 2, 5_000, 'the listener acked its good records')
  t.same(unhandled, [], 'no unhandled rejection')
})

t.test(
  'corrupt record - a PULL answer with broken framing is dropped without an unhandled rejection',
  async (t) => {
    const unhandled = watchUnhandled(t)
    let pulls = 0
    const good = encodeRecord({
      id: 'after',
      subject: 'frm',
      createdAt: Date.now(),
      tags: [],
      properties: new Map(),
      body: 'after-body',
    })
    const server = await startFrameServer((frame, reply) => {
      if (frame.code !== RequestCode.PULL) return reply(0)
      pulls++
      if (pulls === 1) {
        const broken = Buffer.concat(encodePullResponse([{ sequence: 1, deliveryCount: 1, record: good }]))
        broken.writeUInt32BE(0xffff, 4 + 10) // the record's length points past the answer
        reply(0, broken)
      } else if (pulls === 2)
        reply(0, Buffer.concat(encodePullResponse([{ sequence: 2, deliveryCount: 1, record: good }])))
      else setTimeout(() => reply(0, Buffer.concat(encodePullResponse([]))), 50)
    })
    t.teardown(() => server.close())
    const metaUrl = await metaFor(t, () => server.address)
    const consumer = new MessageConsumerProvider({ appCode: 'c', metaServer: metaUrl, pullTimeoutMs: 100 })
    t.teardown(() => consumer.close())
    const pc = consumer.getOrCreatePullConsumer('frm', 'puller')
    const got: number[] = []
    for (let i = 0; i < 20 && got.length === 0; i++)
      for (const m of await pc.pull(10, 200)) got.push(m.sequence)
    t.same(got, [2], 'the next answer is taken as usual')
    // Let any rejection of the dropped answer surface before checking.
    await new Promise((r) => setTimeout(r, 50))
    t.same(unhandled, [], 'no unhandled rejection')
  },
)
