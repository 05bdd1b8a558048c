import t, { type Test } from 'tap'
import { isQmqError } from '../../../src/common/errors'
import { decodeSendRequest, encodeSendRequest } from '../../../src/common/protocol/commands'
import { encodeRecord, type MessageRecord } from '../../../src/common/record'
import { decodeSend } from '../../../src/broker/server/send-decoder'

function rec(over: Partial<MessageRecord> = {}): Buffer {
  return encodeRecord({
    id: 'id-1',
    subject: 'orders',
    createdAt: 1_700_000_000_123,
    tags: [],
    properties: new Map([['k', 'v']]),
    body: 'hello',
    ...over,
  })
}

function body(records: Buffer[]): Buffer {
  return Buffer.concat(encodeSendRequest(records))
}

/** decodeSend must say exactly what the reference decoder says, record by record. */
function sameAsReference(t: Test, b: Buffer, limits = {}): void {
  const ref = decodeSendRequest(b, limits)
  const got = decodeSend(b, limits)
  t.equal(got.count, ref.length, 'count')
  let j = 0
  for (let i = 0; i < ref.length; i++) {
    const r = ref[i]
    if (r?.header === undefined || r.error !== undefined) {
      t.equal(got.errors?.[i]?.code, r?.error?.code ?? 'QMQ_ERR_RECORD_MALFORMED', `record ${i} error code`)
      t.equal(got.errors?.[i]?.message, r?.error?.message, `record ${i} error message`)
      continue
    }
    t.equal(got.errors?.[i], undefined, `record ${i} has no error`)
    const input = got.inputs[j++]
    t.ok(input?.bytes.equals(r.bytes), `record ${i} bytes`)
    const h = input?.header
    t.same(
      h && {
        length: h.length,
        flags: h.flags,
        createdAt: h.createdAt,
        scheduleAt: h.scheduleAt,
        id: h.id,
        subject: h.subject,
        tags: h.tags,
        orderKey: h.orderKey,
        propertiesOffset: h.propertiesOffset,
      },
      r.header,
      `record ${i} header`,
    )
  }
  t.equal(j, got.inputs.length, 'no extra inputs')
}

t.test('send decoder - same headers as readRecordHeader for common and unusual records', async (t) => {
  const bad = rec({ id: 'crc' })
  bad.writeUInt8((bad.at(-1) ?? 0) ^ 0xff, bad.length - 1)
  sameAsReference(
    t,
    body([
      rec(),
      rec({ id: 'id-2' }),
      rec({ id: 'd', scheduleAt: 1_800_000_000_000 }),
      rec({ subject: 'payments' }),
      rec({ subject: 'orders', tags: ['a', 'b'] }),
      bad,
      rec({ subject: 'zürich.événements', id: 'ünï' }),
      rec({ subject: 'zürich.événements', id: 'x', body: Buffer.from([1, 2, 3]) }),
      rec({ subject: 'orders', body: undefined }),
    ]),
  )
})

t.test('send decoder - records over the size limit fail alone', async (t) => {
  sameAsReference(t, body([rec(), rec({ body: Buffer.alloc(2000) }), rec()]), { maxMessageBytes: 1000 })
})

t.test('send decoder - records with the same subject bytes share one subject string', async (t) => {
  const got = decodeSend(body([rec(), rec({ id: 'b' }), rec({ subject: 'other' }), rec({ id: 'c' })]), {})
  t.equal(got.inputs.length, 4)
  t.equal(got.inputs[0]?.header.subject, 'orders')
  t.equal(got.inputs[2]?.header.subject, 'other')
  t.equal(got.inputs[3]?.header.subject, 'orders')
})

t.test('send decoder - a malformed body throws what decodeSendRequest throws', async (t) => {
  const good = body([rec(), rec()])
  const cases: [string, Buffer][] = [
    ['too short', Buffer.alloc(2)],
    ['count beyond the body', Buffer.from([0, 0, 0, 5])],
    ['trailing bytes', Buffer.concat([good, Buffer.from([1, 2, 3])])],
    ['cut record', good.subarray(0, good.length - 10)],
    [
      'length field past the end',
      (() => {
        const b = Buffer.from(good)
        b.writeUInt32BE(1_000_000, 4)
        return b
      })(),
    ],
  ]
  for (const [name, b] of cases) {
    let expected: unknown
    try {
      decodeSendRequest(b)
    } catch (err) {
      expected = err
    }
    t.ok(isQmqError(expected), `${name}: the reference throws`)
    t.throws(
      () => decodeSend(b, {}),
      { code: (expected as { code: string }).code, message: (expected as Error).message },
      name,
    )
  }
})

t.test('send decoder - an empty SEND', async (t) => {
  const got = decodeSend(body([]), {})
  t.equal(got.count, 0)
  t.same(got.inputs, [])
  t.equal(got.errors, undefined)
})
