import { connect } from 'node:net'
import t from 'tap'
import { RequestCode } from '../../../src/common/protocol/codes'
import { encodePullRequest, encodeSendRequest } from '../../../src/common/protocol/commands'
import { encodeFrame, encodeFrameHeader } from '../../../src/common/protocol/frame'
import { encodeRecord } from '../../../src/common/record'
import { prng } from '../../helpers/messages'
import { RawClient } from '../../helpers/raw-client'
import { settleWithin } from '../../helpers/settle'
import { ack, message, pull, pullRequest, sendOk } from './ops'
import { startBroker } from './start-broker'

const SEED = Number(process.env.QMQ_FUZZ_SEED ?? 20240611)

/** One hostile connection: writes something nasty, sometimes waits for an answer, then goes away. */
async function hostile(port: number, rand: () => number): Promise<void> {
  const socket = connect({ port, host: '127.0.0.1' })
  socket.on('error', () => {})
  socket.on('data', () => {})
  await new Promise<void>((resolve) => {
    socket.once('connect', () => resolve())
    socket.once('close', () => resolve())
  })
  const kind = Math.floor(rand() * 7)
  const bytes = (n: number) => Buffer.from(Array.from({ length: n }, () => Math.floor(rand() * 256)))
  const code = Math.floor(rand() * 30)
  let payload: Buffer
  switch (kind) {
    case 0: // pure noise
      payload = bytes(1 + Math.floor(rand() * 3000))
      break
    case 1: // a valid header with a random body for a random request code
      payload = encodeFrame({ code, flags: 0, status: 0, requestId: 1 }, bytes(Math.floor(rand() * 500)))
      break
    case 2: {
      // a well-formed SEND whose records are damaged somewhere
      const rec = encodeRecord(message('fuzz', `f${rand()}`))
      const parts = encodeSendRequest([rec])
      const body = Buffer.concat(parts)
      const at = 4 + Math.floor(rand() * rec.length)
      body[at] = (body[at] ?? 0) ^ (1 + Math.floor(rand() * 255))
      payload = encodeFrame({ code: RequestCode.SEND, flags: 0, status: 0, requestId: 2 }, body)
      break
    }
    case 3: // a frame cut in the middle, then the connection drops
      payload = encodeFrame(
        { code: RequestCode.PING, flags: 0, status: 0, requestId: 3 },
        bytes(200),
      ).subarray(0, 5 + Math.floor(rand() * 150))
      break
    case 4: // a header announcing a huge frame
      payload = encodeFrameHeader({ code: RequestCode.SEND, flags: 0, status: 0, requestId: 4 }, 0x7fffffff)
      break
    case 5: {
      // a PULL with random field values
      const req = encodePullRequest(
        pullRequest({ subject: 'fuzz', group: 'g', consumerId: 'x', timeoutMs: 50 }),
      )
      for (let i = 0; i < 3; i++) req[Math.floor(rand() * req.length)] = Math.floor(rand() * 256)
      payload = encodeFrame(
        { code: RequestCode.PULL, flags: Math.floor(rand() * 4), status: 0, requestId: 5 },
        req,
      )
      break
    }
    default: // valid frames with random versions and flags
      payload = encodeFrame(
        {
          code,
          flags: Math.floor(rand() * 8),
          status: Math.floor(rand() * 500),
          requestId: 6,
          version: Math.floor(rand() * 3),
        },
        bytes(Math.floor(rand() * 64)),
      )
  }
  // Sometimes one byte at a time, sometimes all at once.
  if (rand() < 0.2 && payload.length < 200) {
    for (const b of payload) {
      if (socket.destroyed) break
      socket.write(Buffer.from([b]))
    }
  } else if (!socket.destroyed) socket.write(payload)
  await new Promise((r) => setTimeout(r, Math.floor(rand() * 30)))
  socket.destroy()
}

t.test('fuzz - random and truncated frames never disturb a well-behaved client', async (t) => {
  const b = await startBroker(t, { firstFrameTimeoutMs: 500, maxFrameBytes: 1024 * 1024 })
  const rand = prng(SEED)
  let stop = false
  let attacks = 0
  const attackers = Array.from({ length: 4 }, async () => {
    while (!stop) {
      await hostile(b.port, rand)
      attacks++
    }
  })

  const producer = await RawClient.connect(b.port)
  const consumer = await RawClient.connect(b.port)
  t.teardown(() => {
    producer.destroy()
    consumer.destroy()
  })
  const total = 6000
  const expected = new Set<string>()
  const received = new Map<string, number>()
  const consume = (async () => {
    while (received.size < total) {
      const msgs = await pull(consumer, {
        subject: 'good',
        group: 'g',
        consumerId: 'c1',
        maxMessages: 200,
        timeoutMs: 200,
      })
      for (const m of msgs) received.set(m.record.id, (received.get(m.record.id) ?? 0) + 1)
      if (msgs.length > 0)
        await ack(consumer, {
          subject: 'good',
          group: 'g',
          consumerId: 'c1',
          sequences: msgs.map((m) => m.sequence),
        })
    }
  })()
  for (let i = 0; i < total; i += 100) {
    const batch = Array.from({ length: 100 }, (_, j) => message('good', `m-${i + j}`))
    for (const m of batch) expected.add(m.id)
    await sendOk(producer, batch)
    await new Promise((r) => setTimeout(r, 30))
  }
  await consume
  stop = true
  await Promise.all(attackers)
  t.ok(attacks > 20, `hostile connections: ${attacks}`)
  t.equal(received.size, total, 'every message consumed')
  t.ok(
    [...received.values()].every((n) => n === 1),
    'none twice',
  )
  t.same([...received.keys()].sort(), [...expected].sort())
  t.equal((await producer.request(RequestCode.PING)).status, 0, 'the broker still serves')
})

/**
 * Slow-loris and partial-frame floods. Documented bound (docs/broker.md): while 24 clients trickle a
 * frame a byte at a time and 24 others each send 15 MiB of a 16 MiB frame and stall (all reconnecting
 * soon after they are closed), with a 32 MiB partial-frame budget the test process (broker and clients)
 * grows by less than 250 MB of RSS; without the budget the stalled frames alone hold 360 MiB.
 */
t.test('fuzz - slow-loris and partial-frame floods never disturb a well-behaved client', async (t) => {
  const budget = 32 * 1024 * 1024
  const b = await startBroker(t, {
    maxConnections: 60,
    frameTimeoutMs: 1_000,
    maxPartialFrameBytes: budget,
    idleTimeoutMs: 60_000,
  })
  const rssBound = 250 * 1024 * 1024
  global.gc?.()
  const baseline = process.memoryUsage().rss
  let peakRss = baseline
  const sampler = setInterval(() => {
    peakRss = Math.max(peakRss, process.memoryUsage().rss)
  }, 50)
  t.teardown(() => clearInterval(sampler))

  // The well-behaved clients connect first. Connecting during the floods is a lottery: maxConnections
  // counts the broker's side of each connection, and that of a client closed by the deadline or the
  // budget stays open up to a second (it is not read any more, so the client's end goes unseen), so
  // 48 reconnecting attackers can hold more than 60 and the broker refuses any new connection.
  const producer = await RawClient.connect(b.port)
  const consumer = await RawClient.connect(b.port)
  t.teardown(() => {
    producer.destroy()
    consumer.destroy()
  })
  for (const c of [producer, consumer]) t.equal((await c.request(RequestCode.PING)).status, 0)

  let stop = false
  // Slow-loris connections the broker closed while they were still trickling (by the frame deadline,
  // or by the budget when floods made their partial frames the oldest: either is a close).
  let slowClosed = 0
  const open = new Set<RawClient>()
  t.teardown(() => {
    stop = true
    for (const c of open) c.destroy()
  })
  const attacker = async (flood: boolean) => {
    const ping = encodeFrame({ code: RequestCode.PING, flags: 0, status: 0, requestId: 1 }, Buffer.alloc(0))
    const chunk = Buffer.alloc(1024 * 1024, 0x41)
    const frameBytes = 16 * 1024 * 1024 - 1024
    while (!stop) {
      let c: RawClient
      try {
        c = await RawClient.connect(b.port)
      } catch {
        await new Promise((r) => setTimeout(r, 50))
        continue
      }
      open.add(c)
      c.writeRaw(ping)
      c.writeRaw(
        encodeFrameHeader({ code: RequestCode.SEND, flags: 0, status: 0, requestId: 2 }, frameBytes - 18),
      )
      if (flood) {
        // 15 MiB of the frame, the same buffer written again and again (no memory on this side).
        for (let i = 0; i < 15 && !c.isClosed; i++) c.writeRaw(chunk)
      } else {
        // One byte every 100 ms.
        while (!c.isClosed && !stop) {
          c.writeRaw(chunk.subarray(0, 1))
          await new Promise((r) => setTimeout(r, 100))
        }
        if (!stop) slowClosed++
      }
      await settleWithin(c.closed, 10_000, undefined)
      c.destroy()
      open.delete(c)
      await new Promise((r) => setTimeout(r, flood ? 500 : 50))
    }
  }
  const attackers = [
    ...Array.from({ length: 24 }, () => attacker(false)),
    ...Array.from({ length: 24 }, () => attacker(true)),
  ]
  const closed = (reason: string) =>
    b.broker.registry
      .getSingleMetric('qmq_broker_connections_closed_total')
      ?.get()
      .then((m) => m.values.find((v) => v.labels.reason === reason)?.value ?? 0)
  // Let the floods reach a steady state before the well-behaved clients start.
  await new Promise((r) => setTimeout(r, 1_500))

  const total = 3000
  const t0 = Date.now()
  const received = new Map<string, number>()
  const consume = (async () => {
    while (received.size < total) {
      const msgs = await pull(consumer, {
        subject: 'good',
        group: 'g',
        consumerId: 'c1',
        maxMessages: 200,
        timeoutMs: 200,
      })
      for (const m of msgs) received.set(m.record.id, (received.get(m.record.id) ?? 0) + 1)
      if (msgs.length > 0)
        await ack(consumer, {
          subject: 'good',
          group: 'g',
          consumerId: 'c1',
          sequences: msgs.map((m) => m.sequence),
        })
    }
  })()
  for (let i = 0; i < total; i += 100) {
    await sendOk(
      producer,
      Array.from({ length: 100 }, (_, j) => message('good', `m-${i + j}`)),
    )
    await new Promise((r) => setTimeout(r, 30))
  }
  await consume
  t.comment(`workload done after ${Date.now() - t0} ms`)
  // Slow-loris clients live at most about a frame deadline: make sure some reached it.
  const deadlineEnd = Date.now() + 5_000
  while (slowClosed === 0 && Date.now() < deadlineEnd) {
    await new Promise((r) => setTimeout(r, 100))
  }
  stop = true
  for (const c of open) c.destroy()
  await Promise.all(attackers)
  clearInterval(sampler)

  t.equal(received.size, total, 'every message consumed')
  t.ok(
    [...received.values()].every((n) => n === 1),
    'none twice',
  )
  t.notOk(producer.isClosed || consumer.isClosed, 'the well-behaved clients were never closed')
  t.ok(slowClosed > 0, `slow-loris clients were closed by the broker (${slowClosed})`)
  t.ok(((await closed('frame_budget')) ?? 0) > 0, 'partial-frame floods were closed by the budget')
  const growth = peakRss - baseline
  t.ok(growth < rssBound, `RSS grew by ${Math.round(growth / 1048576)} MB (bound ${rssBound / 1048576} MB)`)
  t.equal((await producer.request(RequestCode.PING)).status, 0, 'the broker still serves')
})
