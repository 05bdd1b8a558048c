import t from 'tap'
import { isQmqError } from '../../../src/common/errors'
import {
  decodeHeartbeatRequest,
  decodeHeartbeatResponse,
  encodeHeartbeatRequest,
  encodeHeartbeatResponse,
  type HeartbeatRequest,
} from '../../../src/common/protocol/commands'

t.test(
  'heartbeat codec - held sequences per subscription; without the list it is the old layout',
  async (t) => {
    const hb: HeartbeatRequest = {
      consumerId: 'c@1',
      subscriptions: [
        { subject: 's', group: 'g', broadcast: false, sequences: [3, 2 ** 40, 7] },
        { subject: 's2', group: 'g', broadcast: false, sequences: [] },
        { subject: 'b', group: 'g', broadcast: true },
      ],
    }
    t.same(decodeHeartbeatRequest(encodeHeartbeatRequest(hb)), hb)
    // An old client's body (no HELD flag): str16 consumerId, u16 count, (str16, str16, u8 flags).
    const old = Buffer.from([0, 1, 0x63, 0, 1, 0, 1, 0x73, 0, 1, 0x67, 0])
    t.same(decodeHeartbeatRequest(old), {
      consumerId: 'c',
      subscriptions: [{ subject: 's', group: 'g', broadcast: false }],
    })
    const unknown = Buffer.from(old)
    unknown[unknown.length - 1] = 0x80
    try {
      decodeHeartbeatRequest(unknown)
      t.fail('unknown flag accepted')
    } catch (e) {
      t.equal(isQmqError(e) ? e.code : String(e), 'QMQ_ERR_PAYLOAD_MALFORMED')
    }
    // A held list longer than the bytes left is refused before allocating.
    const held = encodeHeartbeatRequest({
      consumerId: 'c',
      subscriptions: [{ subject: 's', group: 'g', broadcast: false, sequences: [1] }],
    })
    held.writeUInt32BE(0x10000000, held.length - 12)
    try {
      decodeHeartbeatRequest(held)
      t.fail('oversized count accepted')
    } catch (e) {
      t.equal(isQmqError(e) ? e.code : String(e), 'QMQ_ERR_PAYLOAD_MALFORMED')
    }
  },
)

t.test(
  'heartbeat codec - the answer carries extended and leaseMs; an old broker answers empty',
  async (t) => {
    t.same(decodeHeartbeatResponse(encodeHeartbeatResponse({ extended: 4, leaseMs: 30_000 })), {
      extended: 4,
      leaseMs: 30_000,
    })
    t.same(decodeHeartbeatResponse(Buffer.alloc(0)), { extended: 0, leaseMs: 0 })
  },
)
