import t from 'tap'
import { ConsumedMessage } from '../../src/client/consumer/consumed-message'
import { readPullAnswer } from '../../src/client/consumer/pull-decode'
import { isQmqError } from '../../src/common/errors'
import { encodePullResponse } from '../../src/common/protocol/commands'
import { encodeRecord, type MessageRecord, type RecordHeader } from '../../src/common/record'

function record(i: number, extra: Partial<MessageRecord> = {}): MessageRecord {
  return {
    id: `id-${i}`,
    subject: 'qmq.lazy',
    createdAt: 1_700_000_000_000 + i,
    tags: ['t1'],
    properties: new Map([
      ['k', `v${i}`],
      ['n', String(i)],
    ]),
    body: Buffer.from(`body-${i}`),
    ...extra,
  }
}

function answer(records: MessageRecord[]): Buffer {
  return Buffer.concat(
    encodePullResponse(
      records.map((r, i) => ({ sequence: 2 ** 40 + i, deliveryCount: i + 1, record: encodeRecord(r) })),
    ),
  )
}

function codeOf(fn: () => unknown): string {
  try {
    fn()
  } catch (e) {
    return isQmqError(e) ? e.code : String(e)
  }
  return 'no error'
}

type Entry = { sequence: number; deliveryCount: number; header: RecordHeader; bytes: Buffer }

function read(body: Buffer): Entry[] {
  const out: Entry[] = []
  readPullAnswer(
    body,
    (sequence, deliveryCount, header, bytes) => out.push({ sequence, deliveryCount, header, bytes }),
    (sequence) => {
      throw new Error(`unexpected bad record ${sequence}`)
    },
  )
  return out
}

t.test('pull decode - entries in order with sequences, delivery counts and headers', async (t) => {
  const entries = read(answer([record(0), record(1), record(2, { scheduleAt: 1_700_000_999_000 })]))
  t.same(
    entries.map((e) => [e.sequence, e.deliveryCount, e.header.id, e.header.subject]),
    [
      [2 ** 40, 1, 'id-0', 'qmq.lazy'],
      [2 ** 40 + 1, 2, 'id-1', 'qmq.lazy'],
      [2 ** 40 + 2, 3, 'id-2', 'qmq.lazy'],
    ],
  )
  t.equal(read(answer([])).length, 0)
})

t.test('pull decode - one bad record is reported on its own; the others are handed on', async (t) => {
  const body = answer([record(0), record(1), record(2)])
  const second = 4 + 3 * 10 + encodeRecord(record(0)).length // offset of the second record
  body[second + 50] = (body[second + 50] as number) ^ 0xff // inside it: CRC mismatch
  const seen: number[] = []
  const bad: [number, number, string][] = []
  const n = readPullAnswer(
    body,
    (s) => seen.push(s),
    (s, dc, err) => bad.push([s, dc, err.code]),
  )
  t.equal(n, 2)
  t.same(seen, [2 ** 40, 2 ** 40 + 2])
  t.same(bad, [[2 ** 40 + 1, 2, 'QMQ_ERR_CRC_MISMATCH']])
})

t.test('pull decode - broken framing fails the whole answer before any record is handed on', async (t) => {
  const none = () => {}
  const cut = answer([record(0)]).subarray(0, 40)
  t.equal(
    codeOf(() => readPullAnswer(cut, none, none)),
    'QMQ_ERR_PAYLOAD_MALFORMED',
  )
  const extra = Buffer.concat([answer([record(0)]), Buffer.from([0])])
  t.equal(
    codeOf(() => readPullAnswer(extra, none, none)),
    'QMQ_ERR_PAYLOAD_MALFORMED',
  )
  const long = answer([record(0), record(1)])
  long.writeUInt32BE(0xffff, 4 + 2 * 10) // first record's length field points past the answer
  const seen: number[] = []
  t.equal(
    codeOf(() => readPullAnswer(long, (s) => seen.push(s), none)),
    'QMQ_ERR_PAYLOAD_MALFORMED',
  )
  t.same(seen, [])
})

t.test('pull decode - a consumed message decodes properties and body when asked', async (t) => {
  const body = answer([record(7, { scheduleAt: 1_700_000_999_000 }), record(8, { body: 'text body' })])
  const [a, b] = read(body).map(
    (e) => new ConsumedMessage(e.sequence, e.deliveryCount, e.header, e.bytes, undefined, 'bg', 'cg'),
  ) as [ConsumedMessage, ConsumedMessage]
  t.equal(a.getMessageId(), 'id-7')
  t.same(a.getTags(), ['t1'])
  t.equal(a.getDeliveryCount(), 1)
  t.equal(a.sequence, 2 ** 40)
  t.equal(a.getScheduleReceiveTime()?.getTime(), 1_700_000_999_000)
  t.equal(b.getScheduleReceiveTime(), undefined)
  t.equal(a.getStringProperty('k'), 'v7')
  t.equal(a.getIntProperty('n'), 7)
  t.same([...a.getProperties().keys()], ['k', 'n'])
  const bodyA = a.getBody()
  t.equal(bodyA?.toString(), 'body-7')
  t.equal(b.getStringBody(), 'text body')
  t.equal(b.toJSON().messageId, 'id-8')
  body.fill(0) // a decoded binary body is a copy: it does not hold (or change with) the answer's bytes
  t.equal(bodyA?.toString(), 'body-7')
  t.equal(a.getStringBody(), 'body-7')
  t.equal(a.getStringProperty('k'), 'v7')
})
