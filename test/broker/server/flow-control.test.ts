import { connect } from 'node:net'
import t from 'tap'
import { RequestCode } from '../../../src/common/protocol/codes'
import { decodePullResponse, encodePullRequest } from '../../../src/common/protocol/commands'
import { encodeFrame, FrameDecoder } from '../../../src/common/protocol/frame'
import { RawClient } from '../../helpers/raw-client'
import { ack, message, pull, pullRequest, sendOk } from './ops'
import { startBroker } from './start-broker'

t.test(
  'flow control - a consumer that stops reading does not stall producers or other consumers',
  async (t) => {
    const b = await startBroker(t, { writeHighWaterBytes: 64 * 1024 })
    const producer = await RawClient.connect(b.port)
    t.teardown(() => producer.destroy())
    const big = Buffer.alloc(64 * 1024, 0x62)
    for (let i = 0; i < 200; i += 20) {
      await sendOk(
        producer,
        Array.from({ length: 20 }, (_, j) => message('big', `b${i + j}`, big)),
      )
    }

    // The slow consumer asks for everything and reads nothing.
    const slow = connect({ port: b.port, host: '127.0.0.1' })
    t.teardown(() => slow.destroy())
    await new Promise((r) => slow.once('connect', r))
    slow.pause()
    const pulls = 40
    for (let i = 1; i <= pulls; i++) {
      const body = encodePullRequest(
        pullRequest({ subject: 'big', group: 'slow', consumerId: 'slow', maxMessages: 5 }),
      )
      slow.write(encodeFrame({ code: RequestCode.PULL, flags: 0, status: 0, requestId: i }, body))
    }
    await new Promise((r) => setTimeout(r, 200))

    // Everyone else is served meanwhile.
    const other = await RawClient.connect(b.port)
    t.teardown(() => other.destroy())
    await sendOk(
      producer,
      Array.from({ length: 50 }, (_, i) => message('small', `s${i}`)),
    )
    const got = await pull(other, { subject: 'small', group: 'g', consumerId: 'o' })
    t.equal(got.length, 50, 'another consumer is served')
    await ack(other, { subject: 'small', group: 'g', consumerId: 'o', sequences: got.map((m) => m.sequence) })
    const fast = await pull(other, { subject: 'big', group: 'fast', consumerId: 'f', maxMessages: 200 })
    t.ok(fast.length > 0, 'the same subject is served to another group')

    // The slow one resumes reading and gets every answer, nothing lost or doubled.
    const decoder = new FrameDecoder()
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
    t.equal(ids.size, 200, 'all 200 messages reached the slow consumer once')
  },
)

t.test('flow control - requests beyond the in-flight cap wait for a free slot', async (t) => {
  const b = await startBroker(t, { maxInFlightPerConnection: 2 })
  const c = await RawClient.connect(b.port)
  t.teardown(() => c.destroy())
  const started = Date.now()
  const polls = [1, 2].map((i) =>
    c.request(
      RequestCode.PULL,
      encodePullRequest(pullRequest({ subject: 'idle', group: 'g', consumerId: `c${i}`, timeoutMs: 300 })),
    ),
  )
  const ping = await c.request(RequestCode.PING)
  const waited = Date.now() - started
  t.equal(ping.status, 0)
  t.ok(waited >= 250, `the PING was read only once a long poll (300 ms) had finished: ${waited} ms`)
  await Promise.all(polls)
})
