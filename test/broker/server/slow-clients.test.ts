import { connect } from 'node:net'
import t from 'tap'
import { ERROR_CODES } from '../../../src/common/error-codes'
import type { Registry } from '../../../src/common/metrics'
import { RequestCode } from '../../../src/common/protocol/codes'
import { decodePullResponse, encodePullRequest } from '../../../src/common/protocol/commands'
import { encodeFrame, encodeFrameHeader, FrameDecoder } from '../../../src/common/protocol/frame'
import { RawClient } from '../../helpers/raw-client'
import { settleWithin } from '../../helpers/settle'
import { ack, message, pull, pullRequest, sendOk } from './ops'
import { startBroker } from './start-broker'

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

async function metricValue(registry: Registry, name: string, labels: Record<string, string> = {}) {
  const m = registry.getSingleMetric(name)
  if (m === undefined) throw new Error(`no metric ${name}`)
  const got = await m.get()
  let sum = 0
  for (const v of got.values) {
    if (Object.entries(labels).every(([k, want]) => v.labels[k] === want)) sum += v.value
  }
  return sum
}

/** Polls `cond` every 25 ms until it holds or `ms` passed; returns whether it held. */
async function until(cond: () => boolean | Promise<boolean>, ms = 10_000): Promise<boolean> {
  const end = Date.now() + ms
  while (Date.now() < end) {
    if (await cond()) return true
    await sleep(25)
  }
  return cond()
}

t.test('slow clients - a frame trickled a byte at a time is closed at the frame deadline', async (t) => {
  const b = await startBroker(t, { frameTimeoutMs: 600, idleTimeoutMs: 120_000 })
  const c = await RawClient.connect(b.port)
  t.teardown(() => c.destroy())
  t.equal((await c.request(RequestCode.PING)).status, 0, 'one complete frame first')
  // 318 bytes at one byte per 100 ms: it would take 32 s to complete; every byte resets an idle timer.
  const frame = encodeFrame({ code: RequestCode.PING, flags: 0, status: 0, requestId: 99 }, Buffer.alloc(300))
  let sent = 0
  const timer = setInterval(() => {
    if (!c.isClosed && sent < frame.length) c.writeRaw(frame.subarray(sent, ++sent))
  }, 100)
  t.teardown(() => clearInterval(timer))
  const outcome = await settleWithin(
    c.closed.then(() => 'closed'),
    10_000,
    'open',
  )
  clearInterval(timer)
  t.equal(outcome, 'closed', 'closed by the broker')
  t.ok(sent < frame.length, `closed mid-frame (${sent} of ${frame.length} bytes sent)`)
  t.equal(c.unsolicited[0]?.status, ERROR_CODES.QMQ_ERR_FRAME_TIMEOUT.status, 'told why')
  t.equal(
    await metricValue(b.broker.registry, 'qmq_broker_connections_closed_total', { reason: 'frame_timeout' }),
    1,
    'counted',
  )
})

t.test('slow clients - partial frames stay within the server-wide budget', async (t) => {
  const budget = 1024 * 1024
  const b = await startBroker(t, {
    maxFrameBytes: 256 * 1024,
    maxMessageBytes: 200 * 1024,
    maxPartialFrameBytes: budget,
    frameTimeoutMs: 120_000,
    idleTimeoutMs: 120_000,
  })
  // Twelve clients each hold 200 KiB of a 256 KiB frame (2.4 MB in all) and never finish it.
  const attackers: RawClient[] = []
  t.teardown(() => {
    for (const a of attackers) a.destroy()
  })
  const held = 200 * 1024
  for (let i = 0; i < 12; i++) {
    const a = await RawClient.connect(b.port)
    attackers.push(a)
    t.equal((await a.request(RequestCode.PING)).status, 0)
    a.writeRaw(
      encodeFrameHeader({ code: RequestCode.SEND, flags: 0, status: 0, requestId: 7 }, 256 * 1024 - 18),
    )
    a.writeRaw(Buffer.alloc(held - 18, 1))
    // Let the broker read it before the next one starts (so "oldest" is well defined).
    await until(
      async () => a.isClosed || (await metricValue(b.broker.registry, 'qmq_broker_partial_frame_bytes')) > 0,
    )
    await sleep(20)
  }
  const fits = Math.floor(budget / held)
  t.ok(
    await until(() => attackers.filter((a) => a.isClosed).length >= attackers.length - fits),
    'the oldest partial frames were closed',
  )
  const partial = await metricValue(b.broker.registry, 'qmq_broker_partial_frame_bytes')
  t.ok(partial <= budget, `partial-frame bytes ${partial} <= budget ${budget}`)
  const closed = attackers.filter((a) => a.isClosed)
  t.ok(
    closed.every((a) => a.unsolicited[0]?.status === ERROR_CODES.QMQ_ERR_FRAME_BUDGET.status),
    'each was told why',
  )
  t.equal(
    await metricValue(b.broker.registry, 'qmq_broker_connections_closed_total', { reason: 'frame_budget' }),
    closed.length,
    'counted',
  )

  // A well-behaved client, large frames included, keeps working.
  const good = await RawClient.connect(b.port)
  t.teardown(() => good.destroy())
  const big = Buffer.alloc(150 * 1024, 0x61)
  for (let i = 0; i < 5; i++) await sendOk(good, [message('s', `big-${i}`, big)])
  await sendOk(
    good,
    Array.from({ length: 50 }, (_, i) => message('s', `m-${i}`)),
  )
  const got = await pull(good, { subject: 's', group: 'g', consumerId: 'c', maxMessages: 100 })
  t.equal(got.length, 55, 'everything consumed')
  t.equal(
    await ack(good, { subject: 's', group: 'g', consumerId: 'c', sequences: got.map((m) => m.sequence) }),
    55,
  )
  t.notOk(good.isClosed, 'the well-behaved client is still connected')
  t.ok(
    (await metricValue(b.broker.registry, 'qmq_broker_partial_frame_bytes')) <= budget,
    'still within the budget',
  )
})

t.test('slow clients - PULL answers stop at the write high-water mark', async (t) => {
  const highWater = 64 * 1024
  const maxPullBytes = 512 * 1024
  const b = await startBroker(t, {
    writeHighWaterBytes: highWater,
    maxPullBytes,
    maxMessageBytes: 128 * 1024,
  })
  const producer = await RawClient.connect(b.port)
  t.teardown(() => producer.destroy())
  const body = Buffer.alloc(64 * 1024, 0x62)
  const total = 300 // 19 MB: far more than the kernel's socket buffers hold
  for (let i = 0; i < total; i += 20) {
    await sendOk(
      producer,
      Array.from({ length: 20 }, (_, j) => message('big', `b${i + j}`, body)),
    )
  }

  // A consumer pipelines 60 PULLs in one write and reads none of the answers.
  const slow = connect({ port: b.port, host: '127.0.0.1' })
  t.teardown(() => slow.destroy())
  await new Promise((r) => slow.once('connect', r))
  slow.pause()
  const pulls = 60
  const frames: Buffer[] = []
  for (let i = 1; i <= pulls; i++) {
    const req = encodePullRequest(
      pullRequest({ subject: 'big', group: 'g', consumerId: 'slow', maxMessages: 5 }),
    )
    frames.push(encodeFrame({ code: RequestCode.PULL, flags: 0, status: 0, requestId: i }, req))
  }
  slow.write(Buffer.concat(frames))

  // The broker's unsent answers for it never exceed the mark by more than one PULL answer.
  const bound = highWater + maxPullBytes + 64 * 1024
  let peak = 0
  const end = Date.now() + 2_000
  while (Date.now() < end) {
    peak = Math.max(peak, await metricValue(b.broker.registry, 'qmq_broker_write_buffer_bytes'))
    await sleep(20)
  }
  t.ok(peak > 0, 'answers are waiting to be sent')
  t.ok(peak <= bound, `unsent answer bytes peaked at ${peak} <= ${bound}`)

  // Once it reads, every answer arrives and every message once.
  const decoder = new FrameDecoder({ maxFrameBytes: 16 * 1024 * 1024 })
  const ids = new Set<string>()
  let answers = 0
  await new Promise<void>((resolve) => {
    slow.on('data', (chunk: Buffer) => {
      for (const f of decoder.push(chunk)) {
        answers++
        for (const m of decodePullResponse(f.body)) ids.add(m.record.id)
        if (answers === pulls) resolve()
      }
    })
    slow.resume()
  })
  t.equal(ids.size, total, 'all messages reached the slow consumer once')
})

t.test('slow clients - a long poll on a connection over its high-water mark waits its turn', async (t) => {
  const b = await startBroker(t, {
    writeHighWaterBytes: 16 * 1024,
    maxPullBytes: 256 * 1024,
    maxMessageBytes: 128 * 1024,
  })
  const producer = await RawClient.connect(b.port)
  const fast = await RawClient.connect(b.port)
  t.teardown(() => {
    producer.destroy()
    fast.destroy()
  })
  const body = Buffer.alloc(64 * 1024, 0x63)
  for (let i = 0; i < 200; i += 20) {
    await sendOk(
      producer,
      Array.from({ length: 20 }, (_, j) => message('fill', `f${i + j}`, body)),
    )
  }
  // The slow consumer: a long poll on 'lp' first, then PULLs whose answers it does not read.
  const slow = connect({ port: b.port, host: '127.0.0.1' })
  t.teardown(() => slow.destroy())
  await new Promise((r) => slow.once('connect', r))
  slow.pause()
  const lp = encodePullRequest(
    pullRequest({ subject: 'lp', group: 'gs', consumerId: 'slow', maxMessages: 100, timeoutMs: 20_000 }),
  )
  const frames = [encodeFrame({ code: RequestCode.PULL, flags: 0, status: 0, requestId: 1 }, lp)]
  for (let i = 2; i <= 41; i++) {
    const req = encodePullRequest(
      pullRequest({ subject: 'fill', group: 'g', consumerId: 'slow', maxMessages: 5 }),
    )
    frames.push(encodeFrame({ code: RequestCode.PULL, flags: 0, status: 0, requestId: i }, req))
  }
  slow.write(Buffer.concat(frames))
  t.ok(
    await until(
      async () => (await metricValue(b.broker.registry, 'qmq_broker_write_buffer_bytes')) > 16 * 1024,
    ),
    'the slow connection is over its mark',
  )
  const fastPoll = pull(fast, {
    subject: 'lp',
    group: 'gf',
    consumerId: 'fast',
    maxMessages: 100,
    timeoutMs: 10_000,
  })
  await sleep(100)
  await sendOk(
    producer,
    Array.from({ length: 10 }, (_, i) => message('lp', `lp-${i}`)),
  )
  t.equal((await fastPoll).length, 10, 'the other group is served at once')
  const handedToSlow = () =>
    metricValue(b.broker.registry, 'qmq_broker_in_flight_messages', { subject: 'lp', group: 'gs' })
  t.equal(await handedToSlow(), 0, 'nothing handed to the blocked connection')

  // It reads again: its long poll is woken once the buffer drains and gets the 10 messages, well before
  // its 20 s poll timeout.
  const decoder = new FrameDecoder({ maxFrameBytes: 16 * 1024 * 1024 })
  const lpAnswer = new Promise<number>((resolve) => {
    slow.on('data', (chunk: Buffer) => {
      for (const f of decoder.push(chunk)) {
        if (f.requestId === 1) resolve(decodePullResponse(f.body).length)
      }
    })
  })
  slow.resume()
  const got = await settleWithin(lpAnswer, 15_000, -1)
  t.equal(got, 10, 'the long poll got the messages once its connection drained')
})

t.test('slow clients - slow-loris clients cannot hold every connection slot', async (t) => {
  const b = await startBroker(t, { maxConnections: 8, frameTimeoutMs: 500, idleTimeoutMs: 120_000 })
  const loris: RawClient[] = []
  let stop = false
  t.teardown(() => {
    stop = true
    for (const c of loris) c.destroy()
  })
  for (let i = 0; i < 8; i++) {
    const c = await RawClient.connect(b.port)
    loris.push(c)
    t.equal((await c.request(RequestCode.PING)).status, 0)
  }
  // Each trickles one byte every 100 ms of a frame it never finishes; none reconnects.
  const frame = encodeFrame({ code: RequestCode.PING, flags: 0, status: 0, requestId: 9 }, Buffer.alloc(1000))
  const trickle = loris.map(async (c) => {
    for (let i = 0; i < frame.length && !c.isClosed && !stop; i++) {
      c.writeRaw(frame.subarray(i, i + 1))
      await sleep(100)
    }
  })
  // A newcomer gets a slot once the slow ones reach their frame deadline.
  let served = false
  const end = Date.now() + 10_000
  while (!served && Date.now() < end) {
    try {
      const c = await RawClient.connect(b.port)
      served = (await c.request(RequestCode.PING)).status === 0
      c.destroy()
    } catch {
      await sleep(100)
    }
  }
  t.ok(served, 'a new client is served')
  t.ok(await until(() => loris.every((c) => c.isClosed)), 'every slow-loris client was closed')
  stop = true
  await Promise.all(trickle)
})
