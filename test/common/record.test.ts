import t from 'tap'
import { crc32c } from '../../src/common/crc32c'
import { QmqError } from '../../src/common/errors'
import {
  decodeRecord,
  encodeRecord,
  FLAG_DELAYED,
  FLAG_ORDER_KEY,
  MAX_TAGS,
  type MessageRecord,
  newRecordPlan,
  planRecord,
  readOrderKey,
  readRecordHeader,
  readRecordRouting,
  RECORD_FIXED_BYTES,
  recordSubjectAt,
  verifyRecord,
  writeRecord,
} from '../../src/common/record'
import { prng, randomMessage } from '../helpers/messages'

/** Re-seals a record after a test edits it, so the CRC passes and the edit itself is what gets checked. */
function reseal(buf: Buffer): Buffer {
  buf.writeUInt32BE(crc32c(buf.subarray(8)), 4)
  return buf
}

function sample(): MessageRecord {
  return {
    id: 'm-1',
    subject: 'order.created',
    createdAt: 1_700_000_000_123,
    scheduleAt: 1_700_000_360_000,
    tags: ['vip', 'cn'],
    properties: new Map([
      ['orderId', '42'],
      ['empty', ''],
    ]),
    body: 'hello',
  }
}

t.test('record - round trip of many random messages', async (t) => {
  const rand = prng(1234)
  for (let i = 0; i < 3000; i++) {
    const m = randomMessage(rand)
    const buf = encodeRecord(m)
    const back = decodeRecord(buf)
    const expectBody = m.body === undefined ? undefined : m.body
    if (
      back.id !== m.id ||
      back.subject !== m.subject ||
      back.createdAt !== m.createdAt ||
      back.scheduleAt !== m.scheduleAt ||
      JSON.stringify(back.tags) !== JSON.stringify(m.tags) ||
      JSON.stringify([...back.properties]) !== JSON.stringify([...m.properties]) ||
      (Buffer.isBuffer(expectBody)
        ? !Buffer.isBuffer(back.body) || !expectBody.equals(back.body)
        : back.body !== expectBody)
    ) {
      t.fail(`message ${i} did not round-trip`)
      return
    }
  }
  t.pass('3000 random messages round-trip')
})

t.test('record - the header is readable without properties or body', async (t) => {
  const buf = encodeRecord(sample())
  const h = readRecordHeader(buf)
  t.equal(h.length, buf.length)
  t.equal(h.subject, 'order.created')
  t.equal(h.id, 'm-1')
  t.same(h.tags, ['vip', 'cn'])
  t.equal(h.scheduleAt, 1_700_000_360_000)
  t.ok(h.flags & FLAG_DELAYED)
  // Corrupt the properties and body region (and reseal): the header still reads, the full decode fails.
  const bad = Buffer.from(buf)
  bad.writeUInt32BE(0xffffffff, h.propertiesOffset)
  reseal(bad)
  t.equal(readRecordHeader(bad).subject, 'order.created')
  t.throws(() => decodeRecord(bad), { code: 'QMQ_ERR_RECORD_MALFORMED' })
})

t.test('record - a record inside a larger buffer decodes at its offset', async (t) => {
  const a = encodeRecord(sample())
  const b = encodeRecord({ ...sample(), id: 'm-2', body: Buffer.from([1, 2, 3]) })
  const all = Buffer.concat([a, b])
  t.equal(verifyRecord(all, a.length), b.length)
  const back = decodeRecord(all, a.length)
  t.equal(back.id, 'm-2')
  t.same(back.body, Buffer.from([1, 2, 3]))
})

t.test('record - malformed input gives its documented code, never an untyped error', async (t) => {
  const good = encodeRecord(sample())
  const cases: [string, Buffer, string][] = []
  cases.push(['truncated', good.subarray(0, good.length - 1), 'QMQ_ERR_RECORD_TRUNCATED'])
  cases.push(['length field cut', good.subarray(0, 3), 'QMQ_ERR_RECORD_TRUNCATED'])
  const flipped = Buffer.from(good)
  flipped[good.length - 2] = (flipped[good.length - 2] as number) ^ 0x10
  cases.push(['flipped bit', flipped, 'QMQ_ERR_CRC_MISMATCH'])
  const tooShort = Buffer.from(good)
  tooShort.writeUInt32BE(10, 0)
  cases.push(['length below minimum', tooShort, 'QMQ_ERR_RECORD_MALFORMED'])
  const tooLong = Buffer.from(good)
  tooLong.writeUInt32BE(0x7fffffff, 0)
  cases.push(['length beyond max message', tooLong, 'QMQ_ERR_MESSAGE_TOO_LARGE'])
  const manyTags = reseal(Buffer.from(good).fill(MAX_TAGS + 1, 10, 11))
  cases.push(['too many tags', manyTags, 'QMQ_ERR_TOO_MANY_TAGS'])
  const longSubject = Buffer.from(good)
  longSubject.writeUInt16BE(5000, 30)
  cases.push(['over-long subject', reseal(longSubject), 'QMQ_ERR_SUBJECT_INVALID'])
  const subjectPastEnd = Buffer.from(good)
  subjectPastEnd.writeUInt16BE(199, 30)
  cases.push(['subject points past the end', reseal(subjectPastEnd), 'QMQ_ERR_RECORD_MALFORMED'])
  const tagPastEnd = Buffer.from(good)
  tagPastEnd.writeUInt16BE(100, RECORD_FIXED_BYTES + 3 + 13)
  cases.push(['tag points past the end', reseal(tagPastEnd), 'QMQ_ERR_RECORD_MALFORMED'])
  const badVersion = reseal(Buffer.from(good).fill(7, 8, 9))
  cases.push(['unknown version', badVersion, 'QMQ_ERR_UNSUPPORTED_RECORD_VERSION'])
  const badFlags = reseal(Buffer.from(good).fill(0x80, 9, 10))
  cases.push(['unknown flags', badFlags, 'QMQ_ERR_RECORD_MALFORMED'])
  const noId = Buffer.from(good)
  noId.writeUInt16BE(0, 28)
  cases.push(['empty id', reseal(noId), 'QMQ_ERR_MESSAGE_ID_INVALID'])
  const h = readRecordHeader(good)
  const propCount = Buffer.from(good)
  propCount.writeUInt16BE(60000, h.propertiesOffset + 4)
  cases.push(['too many properties', reseal(propCount), 'QMQ_ERR_TOO_MANY_PROPERTIES'])
  const propPastEnd = Buffer.from(good)
  propPastEnd.writeUInt16BE(3, h.propertiesOffset + 4)
  cases.push(['property count beyond the block', reseal(propPastEnd), 'QMQ_ERR_RECORD_MALFORMED'])
  for (const [name, buf, code] of cases) {
    try {
      decodeRecord(buf)
      t.fail(`${name}: decoded`)
    } catch (err) {
      t.ok(err instanceof QmqError, `${name}: a QmqError`)
      t.equal((err as QmqError).code, code, name)
    }
  }
})

t.test('record - encoding validates limits', async (t) => {
  t.throws(() => encodeRecord({ ...sample(), tags: Array.from({ length: 11 }, (_, i) => `t${i}`) }), {
    code: 'QMQ_ERR_TOO_MANY_TAGS',
  })
  t.throws(() => encodeRecord({ ...sample(), subject: 'x'.repeat(201) }), { code: 'QMQ_ERR_SUBJECT_INVALID' })
  t.throws(() => encodeRecord({ ...sample(), subject: 'has space' }), { code: 'QMQ_ERR_SUBJECT_INVALID' })
  t.throws(() => encodeRecord({ ...sample(), id: '' }), { code: 'QMQ_ERR_MESSAGE_ID_INVALID' })
  t.throws(() => encodeRecord({ ...sample(), tags: [''] }), { code: 'QMQ_ERR_TAG_INVALID' })
  t.throws(() => encodeRecord({ ...sample(), properties: new Map([['', 'v']]) }), {
    code: 'QMQ_ERR_PROPERTY_INVALID',
  })
  t.throws(() => encodeRecord({ ...sample(), body: Buffer.alloc(2048) }, { maxMessageBytes: 1024 }), {
    code: 'QMQ_ERR_MESSAGE_TOO_LARGE',
  })
  t.throws(() => encodeRecord({ ...sample(), scheduleAt: 1.5 }), { code: 'QMQ_ERR_SCHEDULE_INVALID' })
})

t.test(
  'record - writeRecord at an offset of a larger buffer yields exactly the encodeRecord bytes',
  async (t) => {
    const rand = prng(99)
    const plan = newRecordPlan() // reused across records, as the producer does
    const target = Buffer.alloc(64 * 1024, 0xee)
    let offset = 0
    const written: { offset: number; expected: Buffer }[] = []
    const messages = [sample(), { ...sample(), body: Buffer.from([0, 1, 2, 0xff]), scheduleAt: undefined }]
    for (let i = 0; i < 200; i++) messages.push(randomMessage(rand))
    for (const m of messages) {
      const expected = encodeRecord(m)
      const p = planRecord(m, {}, plan)
      t.equal(p, plan, 'fills the plan it is given')
      if (p.size !== expected.length) {
        t.fail(`plan size ${p.size} != encoded ${expected.length}`)
        return
      }
      if (offset + p.size > target.length) break
      t.equal(writeRecord(p, m, target, offset), expected.length)
      written.push({ offset, expected })
      offset += expected.length + 3 // leave gaps: nothing outside the record may be touched
    }
    t.ok(written.length > 20, `${written.length} records written`)
    let prevEnd = 0
    for (const w of written) {
      t.ok(
        target.subarray(prevEnd, w.offset).every((b) => b === 0xee),
        'bytes between records untouched',
      )
      if (!target.subarray(w.offset, w.offset + w.expected.length).equals(w.expected)) {
        t.fail(`record at ${w.offset} differs from encodeRecord`)
        return
      }
      t.same(decodeRecord(target, w.offset), decodeRecord(w.expected))
      prevEnd = w.offset + w.expected.length
    }
    t.ok(
      target.subarray(prevEnd).every((b) => b === 0xee),
      'bytes after the last record untouched',
    )
  },
)

t.test(
  'record - planRecord validates like encodeRecord; writeRecord refuses a buffer too small',
  async (t) => {
    t.throws(() => planRecord({ ...sample(), subject: '' }), { code: 'QMQ_ERR_SUBJECT_INVALID' })
    // a valid subject is remembered; an invalid one after it is still refused
    planRecord(sample())
    t.throws(() => planRecord({ ...sample(), subject: 'bad subject' }), { code: 'QMQ_ERR_SUBJECT_INVALID' })
    t.throws(() => planRecord({ ...sample(), id: '' }), { code: 'QMQ_ERR_MESSAGE_ID_INVALID' })
    t.throws(() => planRecord({ ...sample(), body: Buffer.alloc(2000) }, { maxMessageBytes: 1024 }), {
      code: 'QMQ_ERR_MESSAGE_TOO_LARGE',
    })
    const m = sample()
    const plan = planRecord(m)
    t.throws(() => writeRecord(plan, m, Buffer.alloc(plan.size + 10), 11), {
      code: 'QMQ_ERR_INVALID_ARGUMENT',
    })
    t.throws(
      () => writeRecord(plan, { ...m, body: Buffer.from('hello, longer') }, Buffer.alloc(plan.size + 100)),
      {
        code: 'QMQ_ERR_INVALID_ARGUMENT',
      },
    )
  },
)

t.test('record - the byte layout is pinned (bytes of the original encoder)', async (t) => {
  t.equal(
    encodeRecord(sample()).toString('hex'),
    '00000062ecd2fe23010702000000018bcfe5687b0000018bcfeae6400003000d6d2d316f726465722e63726561746564' +
      '00037669700002636e0000001c000200076f7264657249640000000234320005656d707479000000000000000568656c6c6f',
  )
  // negative times (two's complement i64), a binary body, no tags or properties
  const m: MessageRecord = {
    id: 'x',
    subject: 's',
    createdAt: -1_234_567_890_123,
    scheduleAt: -5,
    tags: [],
    properties: new Map(),
    body: Buffer.from([1, 2, 3]),
  }
  t.equal(
    encodeRecord(m).toString('hex'),
    '0000002f669b9e6a01030000fffffee08e04fb35fffffffffffffffb00010001787300000002000000000003010203',
  )
})

t.test(
  'record - readRecordRouting answers what readRecordHeader answers, and shares equal subjects',
  async (t) => {
    const rand = prng(77)
    let previous: ReturnType<typeof readRecordRouting> | undefined
    for (let i = 0; i < 2000; i++) {
      const m = randomMessage(rand)
      if (i % 3 === 0) m.tags = []
      const buf = encodeRecord(m)
      const want = readRecordHeader(buf)
      const got = readRecordRouting(buf, {}, previous)
      const fields = (h: typeof want) => [
        h.length,
        h.flags,
        h.createdAt,
        h.scheduleAt,
        h.id,
        h.subject,
        h.tags,
        h.propertiesOffset,
      ]
      if (JSON.stringify(fields(got)) !== JSON.stringify(fields(want))) {
        t.fail(`record ${i} differs`)
        return
      }
      previous = got
    }
    const a = readRecordRouting(encodeRecord({ ...sample(), tags: [] }))
    const b = readRecordRouting(encodeRecord({ ...sample(), id: 'm-2', tags: [] }), {}, a)
    t.equal(b.subject, a.subject)
    const bad = encodeRecord({ ...sample(), tags: [] })
    bad[bad.length - 1] = (bad[bad.length - 1] as number) ^ 1
    t.throws(() => readRecordRouting(bad), { code: 'QMQ_ERR_CRC_MISMATCH' })
  },
)

/** What readRecordHeader (verify false) or recordSubjectAt answers: the subject, or the error thrown. */
function outcome(read: () => string): string {
  try {
    return `subject ${read()}`
  } catch (err) {
    return err instanceof QmqError ? `${err.code}: ${err.message}` : `error ${String(err)}`
  }
}

t.test(
  'record - recordSubjectAt finds the subject readRecordHeader decodes, and fails where it fails',
  async (t) => {
    const rand = prng(4242)
    let damaged = 0
    for (let i = 0; i < 3000; i++) {
      const m = randomMessage(rand)
      if (i % 4 === 0) m.orderKey = `key-${i}é`
      const rec = encodeRecord(m)
      // At an offset inside a larger buffer, with bytes after it (a frame in a chunk).
      const pad = Math.floor(rand() * 40)
      const buf = Buffer.concat([Buffer.alloc(pad, 0xee), rec, Buffer.alloc(Math.floor(rand() * 3), 0xee)])
      const h = readRecordHeader(buf, pad, { verify: false, end: pad + rec.length })
      const at = recordSubjectAt(buf, pad, pad + rec.length)
      if (buf.toString('utf8', at, at + buf.readUInt16BE(pad + 30)) !== h.subject) {
        t.fail(`record ${i}: subject differs`)
        return
      }
      // Damage a byte of the header (length, flags, counts, lengths, id, subject, tags, order key) or
      // cut the bytes short: both readers answer alike (the same subject, or the same error).
      const bad = Buffer.from(buf)
      const o = pad + Math.floor(rand() * h.propertiesOffset)
      bad[o] = i % 2 === 0 ? Math.floor(rand() * 256) : (bad[o] as number) ^ (1 << Math.floor(rand() * 8))
      const end = i % 7 === 0 ? pad + Math.floor(rand() * rec.length) : pad + rec.length
      const want = outcome(() => readRecordHeader(bad, pad, { verify: false, end }).subject)
      const got = outcome(() => {
        const s = recordSubjectAt(bad, pad, end)
        return bad.toString('utf8', s, s + bad.readUInt16BE(pad + 30))
      })
      if (got !== want) {
        t.fail(`record ${i}, byte ${o - pad} damaged, end ${end - pad}: ${got} instead of ${want}`)
        return
      }
      if (!want.startsWith('subject ')) damaged++
    }
    t.ok(damaged > 300, `${damaged} damaged records refused alike`)
  },
)

t.test('record - an order key round-trips; records without one keep their bytes', async (t) => {
  const base: MessageRecord = {
    id: 'id-1',
    subject: 'order.events',
    createdAt: 1_700_000_000_000,
    tags: ['red'],
    properties: new Map([['k', 'v']]),
    body: 'hello',
  }
  const plain = encodeRecord(base)
  t.notOk((plain[9] as number) & FLAG_ORDER_KEY, 'no flag without a key')
  t.equal(readOrderKey(plain), undefined)
  const keyed = encodeRecord({ ...base, orderKey: 'order-42é' })
  t.equal(keyed.length, plain.length + 2 + Buffer.byteLength('order-42é'), 'u16 length + UTF-8 key')
  t.ok((keyed[9] as number) & FLAG_ORDER_KEY)
  t.same(decodeRecord(keyed), { ...base, scheduleAt: undefined, orderKey: 'order-42é' })
  t.equal(readRecordHeader(keyed).orderKey, 'order-42é')
  t.equal(readRecordRouting(keyed).orderKey, 'order-42é', 'the broker routing path reads it too')
  t.equal(readOrderKey(keyed), 'order-42é')
  t.equal(decodeRecord(plain).orderKey, undefined)
  t.throws(() => encodeRecord({ ...base, orderKey: '' }), { code: 'QMQ_ERR_INVALID_ARGUMENT' })
  t.throws(() => encodeRecord({ ...base, orderKey: 'x'.repeat(257) }), { code: 'QMQ_ERR_INVALID_ARGUMENT' })
})
