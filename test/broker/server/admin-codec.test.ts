import t from 'tap'
import {
  decodeBacklogRequest,
  decodeBacklogResponse,
  decodeDlqListRequest,
  decodeDlqListResponse,
  decodeDlqRedriveRequest,
  decodeForgetGroupRequest,
  decodeResetCursorRequest,
  decodeSubjectsResponse,
  encodeBacklogRequest,
  encodeBacklogResponse,
  encodeDlqListRequest,
  encodeDlqListResponse,
  encodeDlqRedriveRequest,
  encodeForgetGroupRequest,
  encodeResetCursorRequest,
  encodeSubjectsResponse,
  ResetPosition,
} from '../../../src/common/protocol/admin'
import { encodeRecord } from '../../../src/common/record'
import { message } from './ops'

t.test('admin codec - every request and answer round-trips', async (t) => {
  t.same(decodeSubjectsResponse(encodeSubjectsResponse(['a', 'b.c'])), ['a', 'b.c'])
  t.same(decodeBacklogRequest(encodeBacklogRequest({})), { subject: undefined, group: undefined })
  t.same(decodeBacklogRequest(encodeBacklogRequest({ subject: 's', group: 'g' })), {
    subject: 's',
    group: 'g',
  })
  const entry = {
    subject: 's',
    group: 'g',
    pending: 1,
    inFlight: 2,
    retrying: 3,
    deadLettered: 4,
    maxSequence: 2 ** 40,
    cursor: 7,
    waiting: 8,
    keysBlocked: 9,
    oldestBlockedMs: 10,
  }
  t.same(decodeBacklogResponse(encodeBacklogResponse([entry])), [entry])
  // An answer from a broker from before ordered messages (no second table) reads as it did.
  const old = encodeBacklogResponse([entry]).subarray(0, -24)
  const { waiting: _w, keysBlocked: _k, oldestBlockedMs: _o, ...before } = entry
  t.same(decodeBacklogResponse(old), [before])
  const reset = {
    subject: 's',
    group: 'g',
    position: ResetPosition.TIMESTAMP,
    timeMs: 1_700_000_000_000,
    token: 'sésame',
  }
  t.same(decodeResetCursorRequest(encodeResetCursorRequest(reset)), reset)
  const { token: _, ...noToken } = reset
  t.same(
    decodeResetCursorRequest(encodeResetCursorRequest(noToken)),
    { ...noToken, token: '' },
    'no token = ""',
  )
  // A request from before tokens (it ends after timeMs) still decodes.
  const legacy = encodeResetCursorRequest(noToken)
  t.same(decodeResetCursorRequest(legacy.subarray(0, legacy.length - 2)), { ...noToken, token: '' })
  const list = { subject: 's', group: 'g', limit: 50, afterSequence: -1 }
  t.same(decodeDlqListRequest(encodeDlqListRequest(list)), list)
  const rec = encodeRecord(message('s', 'dead'))
  const parts = encodeDlqListResponse([{ sequence: 9, deliveryCount: 17, deadAt: 123, record: rec }])
  const decoded = decodeDlqListResponse(Buffer.concat(parts))
  t.equal(decoded[0]?.record.id, 'dead')
  t.equal(decoded[0]?.deliveryCount, 17)
  t.same(decodeDlqRedriveRequest(encodeDlqRedriveRequest({ subject: 's', group: 'g' })), {
    subject: 's',
    group: 'g',
    sequences: undefined,
    token: '',
  })
  t.same(
    decodeDlqRedriveRequest(
      encodeDlqRedriveRequest({ subject: 's', group: 'g', sequences: [1, 5], token: 'k' }),
    ),
    {
      subject: 's',
      group: 'g',
      sequences: [1, 5],
      token: 'k',
    },
  )
})

t.test('admin codec - ADMIN_FORGET_GROUP round trip and bad names', async (t) => {
  const req = { subject: 's.x', group: 'g', token: 'k' }
  t.same(decodeForgetGroupRequest(encodeForgetGroupRequest(req)), req)
  t.same(decodeForgetGroupRequest(encodeForgetGroupRequest({ subject: 's', group: 'g' })), {
    subject: 's',
    group: 'g',
    token: '',
  })
  t.throws(() => decodeForgetGroupRequest(encodeForgetGroupRequest({ subject: 's', group: 'a/b' })), {
    code: 'QMQ_ERR_GROUP_INVALID',
  })
})

t.test('admin codec - bad requests get stable codes', async (t) => {
  t.throws(() => decodeBacklogRequest(Buffer.from([0, 3, 0x61])), { code: 'QMQ_ERR_PAYLOAD_MALFORMED' })
  t.throws(() => decodeBacklogRequest(encodeBacklogRequest({ subject: 'a b' })), {
    code: 'QMQ_ERR_SUBJECT_INVALID',
  })
  t.throws(
    () =>
      decodeDlqListRequest(encodeDlqListRequest({ subject: 's', group: 'g', limit: 0, afterSequence: -1 })),
    {
      code: 'QMQ_ERR_INVALID_ARGUMENT',
    },
  )
  const badPos = encodeResetCursorRequest({
    subject: 's',
    group: 'g',
    position: ResetPosition.EARLIEST,
    timeMs: 0,
  })
  badPos[6] = 9
  t.throws(() => decodeResetCursorRequest(badPos), { code: 'QMQ_ERR_INVALID_ARGUMENT' })
  const extra = Buffer.concat([encodeBacklogRequest({}), Buffer.from([1])])
  t.throws(() => decodeBacklogRequest(extra), { code: 'QMQ_ERR_PAYLOAD_MALFORMED' })
})
