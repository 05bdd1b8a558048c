import type { Test } from 'tap'
import t from 'tap'
import { QmqError } from '../../../src/common/errors'
import {
  decodeAckRequest,
  decodeCancelRequest,
  decodeCancelResponse,
  decodeCountResponse,
  decodeErrorBody,
  decodeHeartbeatRequest,
  decodeNackRequest,
  decodePullRequest,
  decodePullResponse,
  decodeSendRequest,
  decodeSendResponse,
  encodeAckRequest,
  encodeCancelRequest,
  encodeCancelResponse,
  encodeCountResponse,
  encodeErrorBody,
  encodeHeartbeatRequest,
  encodeNackRequest,
  encodePullRequest,
  encodePullResponse,
  encodeSendRequest,
  encodeSendResponse,
  type PullRequest,
  StartPosition,
} from '../../../src/common/protocol/commands'
import { encodeRecord } from '../../../src/common/record'
import { prng, randomMessage } from '../../helpers/messages'

const pull: PullRequest = {
  subject: 'order.created',
  group: 'billing',
  consumerId: 'host@1',
  maxMessages: 32,
  maxBytes: 1 << 20,
  timeoutMs: 5000,
  broadcast: false,
  atMostOnce: true,
  tagsAll: true,
  start: StartPosition.TIMESTAMP,
  startTime: 1_700_000_000_000,
  tags: ['a', 'b'],
}

/** Every strict prefix of a valid payload must fail with a typed error. */
function everyPrefixFails(t: Test, body: Buffer, decode: (b: Buffer) => unknown, name: string) {
  for (let n = 0; n < body.length; n++) {
    try {
      decode(body.subarray(0, n))
      t.fail(`${name}: prefix of ${n} bytes decoded`)
      return
    } catch (err) {
      if (!(err instanceof QmqError)) {
        t.fail(`${name}: untyped error at ${n}: ${String(err)}`)
        return
      }
    }
  }
  t.pass(`${name}: every truncation is a QmqError`)
}

t.test('commands - SEND request and response round trip; a bad record fails alone', async (t) => {
  const rand = prng(5)
  const records = Array.from({ length: 20 }, () => encodeRecord(randomMessage(rand)))
  const bad = Buffer.from(records[3] as Buffer)
  bad[bad.length - 1] = (bad[bad.length - 1] as number) ^ 1
  records[3] = bad
  const items = decodeSendRequest(Buffer.concat(encodeSendRequest(records)))
  t.equal(items.length, 20)
  t.equal(items[3]?.error?.code, 'QMQ_ERR_CRC_MISMATCH')
  t.equal(items.filter((i) => i.header).length, 19)
  t.ok(items[0]?.bytes.equals(records[0] as Buffer))
  const res = [
    { status: 0, message: '' },
    { status: 10, message: 'crc' },
  ]
  t.same(decodeSendResponse(encodeSendResponse(res)), res)
  everyPrefixFails(t, Buffer.concat(encodeSendRequest(records.slice(0, 2))), decodeSendRequest, 'SEND')
})

t.test(
  'commands - SEND with a lying count or record length is malformed, without allocating it',
  async (t) => {
    const b = Buffer.alloc(8)
    b.writeUInt32BE(0xffffffff, 0)
    t.throws(() => decodeSendRequest(b), { code: 'QMQ_ERR_PAYLOAD_MALFORMED' })
    const one = encodeRecord(randomMessage(prng(1)))
    const lying = Buffer.concat(encodeSendRequest([one]))
    lying.writeUInt32BE(0x7fffffff, 4)
    t.throws(() => decodeSendRequest(lying), { code: 'QMQ_ERR_PAYLOAD_MALFORMED' })
  },
)

t.test('commands - PULL request and response round trip', async (t) => {
  t.same(decodePullRequest(encodePullRequest(pull)), pull)
  everyPrefixFails(t, encodePullRequest(pull), decodePullRequest, 'PULL')
  t.throws(() => decodePullRequest(encodePullRequest({ ...pull, maxMessages: 0 })), {
    code: 'QMQ_ERR_INVALID_ARGUMENT',
  })
  t.throws(() => decodePullRequest(encodePullRequest({ ...pull, subject: 'a b' })), {
    code: 'QMQ_ERR_SUBJECT_INVALID',
  })
  t.throws(() => decodePullRequest(encodePullRequest({ ...pull, group: '' })), {
    code: 'QMQ_ERR_GROUP_INVALID',
  })

  const rand = prng(9)
  const msgs = Array.from({ length: 5 }, () => randomMessage(rand))
  const entries = msgs.map((m, i) => ({
    sequence: 2 ** 40 + i,
    deliveryCount: i + 1,
    record: encodeRecord(m),
  }))
  // Records in separate memory (copied apart): one part each, not copied.
  const apart = entries.map((e) => ({ ...e, record: Buffer.from(e.record) }))
  const parts = encodePullResponse(apart)
  t.equal(parts.length, 6, 'one table buffer, then the stored records as they are')
  t.equal(parts[1], apart[0]?.record, 'records are not copied')
  t.same(Buffer.concat(parts.slice(1)), Buffer.concat(apart.map((e) => e.record)))
  // Records back to back in one buffer (a batch read from the log): one view over all of them,
  // not a copy; a record elsewhere starts a new part.
  const batch = Buffer.concat(entries.map((e) => e.record))
  const views: Buffer[] = []
  for (let at = 0, i = 0; i < entries.length; i++) {
    const n = (entries[i] as { record: Buffer }).record.length
    views.push(batch.subarray(at, at + n))
    at += n
  }
  const adjacent = entries.map((e, i) => ({
    ...e,
    record: i === 3 ? Buffer.from(e.record) : (views[i] as Buffer),
  }))
  const joinedParts = encodePullResponse(adjacent)
  t.equal(joinedParts.length, 4, 'table, records 0-2 as one view, record 3, record 4')
  t.equal(joinedParts[1]?.buffer, batch.buffer, 'the joined view shares the batch memory')
  t.equal(joinedParts[1]?.length, (views[0]?.length ?? 0) + (views[1]?.length ?? 0) + (views[2]?.length ?? 0))
  t.same(decodePullResponse(Buffer.concat(joinedParts)), decodePullResponse(Buffer.concat(parts)))
  const back = decodePullResponse(Buffer.concat(parts))
  t.same(
    back.map((m) => [m.sequence, m.deliveryCount, m.record.id]),
    entries.map((e, i) => [e.sequence, e.deliveryCount, msgs[i]?.id]),
  )
  everyPrefixFails(
    t,
    Buffer.concat(encodePullResponse(entries.slice(0, 2))),
    decodePullResponse,
    'PULL response',
  )
})

t.test('commands - ACK, NACK, HEARTBEAT, CANCEL round trip', async (t) => {
  const ack = { subject: 's', group: 'g', consumerId: 'c', broadcast: true, sequences: [5, 1, 2 ** 50, 3] }
  t.same(decodeAckRequest(encodeAckRequest(ack)), ack)
  everyPrefixFails(t, encodeAckRequest(ack), decodeAckRequest, 'ACK')
  const nack = { ...ack, broadcast: false, deadLetter: true, retryAfterMs: 1500 }
  t.same(decodeNackRequest(encodeNackRequest(nack)), nack)
  everyPrefixFails(t, encodeNackRequest(nack), decodeNackRequest, 'NACK')
  t.equal(decodeCountResponse(encodeCountResponse(17)), 17)
  const hb = { consumerId: 'c', subscriptions: [{ subject: 's', group: 'g', broadcast: false }] }
  t.same(decodeHeartbeatRequest(encodeHeartbeatRequest(hb)), hb)
  const ids = ['a', 'bb', 'ccc']
  t.same(decodeCancelRequest(encodeCancelRequest(ids, 'secret')), { token: 'secret', ids })
  t.same(decodeCancelResponse(encodeCancelResponse([true, false, true])), [true, false, true])
  t.equal(decodeErrorBody(encodeErrorBody('disk full')), 'disk full')
  t.equal(decodeErrorBody(Buffer.from([0, 0])), '', 'a broken error body decodes to an empty message')
  const trailing = Buffer.concat([encodeAckRequest(ack), Buffer.from([0])])
  t.throws(() => decodeAckRequest(trailing), { code: 'QMQ_ERR_PAYLOAD_MALFORMED' })
})
