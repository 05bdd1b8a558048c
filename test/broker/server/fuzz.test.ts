import { connect } from 'node:net'
import t from 'tap'
import { RequestCode } from '../../../src/common/protocol/codes'
import { encodePullRequest, encodeSendRequest } from '../../../src/common/protocol/commands'
import { encodeFrame, encodeFrameHeader } from '../../../src/common/protocol/frame'
import { encodeRecord } from '../../../src/common/record'
import { prng } from '../../helpers/messages'
import { RawClient } from '../../helpers/raw-client'
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
