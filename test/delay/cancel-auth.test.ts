import t, { type Test } from 'tap'
import { ManualClock } from '../../src/common/clock'
import { ERROR_CODES } from '../../src/common/error-codes'
import { QmqError } from '../../src/common/errors'
import { createLogger } from '../../src/common/logger'
import { RequestCode } from '../../src/common/protocol/codes'
import {
  decodeCancelRequest,
  decodeCancelResponse,
  decodeCountResponse,
  encodeCancelRequest,
} from '../../src/common/protocol/commands'
import {
  decodeDelayDlqListRequest,
  decodeDelayDlqListResponse,
  decodeDelayDlqRedriveRequest,
  encodeDelayDlqListRequest,
  encodeDelayDlqRedriveRequest,
} from '../../src/common/protocol/delay-admin'
import { DelayServer } from '../../src/delay/delay-server'
import type { Sender } from '../../src/delay/dispatch/sender'
import { RawClient } from '../helpers/raw-client'
import { delayed, send, T0, waitFor } from './helpers/delay-helpers'
import { delayDir } from './helpers/start-delay'

/**
 * CANCEL and the delay group's dead-letter requests are authenticated with the cluster secret: a
 * request without it, or with a wrong one, is refused (QMQ_ERR_UNAUTHORIZED), changes nothing, is
 * counted and logged with the remote address (never with a secret).
 */
const SECRET = 'delay-auth-test-secret-0123456789'
const WRONG = 'not-the-delay-secret-9876543210'
const UNAUTHORIZED = ERROR_CODES.QMQ_ERR_UNAUTHORIZED.status

/** A broker that refuses the record 'bad' for good (it is parked as a dead letter) and takes the rest. */
class RefusingSender implements Sender {
  readonly delivered: string[] = []
  async send(_subject: string, records: readonly Buffer[]): Promise<(QmqError | undefined)[]> {
    return records.map((r) => {
      const id = r.toString('utf8', 32, 32 + r.readUInt16BE(28))
      if (id === 'bad') return new QmqError('QMQ_ERR_MESSAGE_TOO_LARGE', 'too large (test)')
      this.delivered.push(id)
      return undefined
    })
  }
  async close(): Promise<void> {}
}

async function startServer(
  t: Test,
  clusterSecret: string | undefined,
): Promise<{ server: DelayServer; client: RawClient; lines: string[]; clock: ManualClock }> {
  const { dir, closers } = delayDir(t)
  const lines: string[] = []
  const clock = new ManualClock(T0)
  const server = new DelayServer(
    {
      port: 0,
      dataDir: dir,
      bucketMinutes: 1,
      loadAheadMs: 10_000,
      tickMs: 5,
      checkpointIntervalMs: 50,
      ...(clusterSecret === undefined ? {} : { clusterSecret }),
    },
    {
      clock,
      logger: createLogger({ level: 'info', env: false, destination: { write: (l) => lines.push(l) } }),
      sender: new RefusingSender(),
      routes: { groups: async () => [] },
    },
  )
  await server.start()
  const client = await RawClient.connect(server.port)
  closers.push(async () => {
    await client.close()
    await server.close()
  })
  return { server, client, lines, clock }
}

t.test('delay - CANCEL and the dead-letter requests need the cluster secret', async (t) => {
  const { server, client, lines, clock } = await startServer(t, SECRET)
  const statuses = await send(client, [delayed('keep', T0 + 60_000), delayed('bad', T0 + 1_000)])
  t.same(
    statuses.map((s) => s.status),
    [0, 0],
  )
  clock.set(T0 + 2_000)
  await waitFor(() => server.store.listDeadLetters(10).length === 1, 5_000, 'bad parked')

  // CANCEL: without a token, with a wrong one: refused, nothing cancelled.
  for (const token of [undefined, '', WRONG]) {
    const res = await client.request(RequestCode.CANCEL, encodeCancelRequest(['keep'], token))
    t.equal(res.status, UNAUTHORIZED, `CANCEL with token ${JSON.stringify(token)} is refused`)
  }
  t.equal(server.store.stats().pending, 1, 'the message is still pending')

  // The dead letters: neither listed nor redriven without the secret.
  for (const token of [undefined, WRONG]) {
    const l = await client.request(
      RequestCode.ADMIN_DELAY_DLQ_LIST,
      encodeDelayDlqListRequest({ limit: 10, afterSequence: -1, token }),
    )
    t.equal(l.status, UNAUTHORIZED, 'ADMIN_DELAY_DLQ_LIST refused')
    t.equal(l.body.length > 0 && l.message.includes('bad'), false, 'and nothing of a dead letter in it')
    const r = await client.request(
      RequestCode.ADMIN_DELAY_DLQ_REDRIVE,
      encodeDelayDlqRedriveRequest({ token }),
    )
    t.equal(r.status, UNAUTHORIZED, 'ADMIN_DELAY_DLQ_REDRIVE refused')
  }
  t.equal(server.store.listDeadLetters(10).length, 1, 'the dead letter is still parked')

  // With the secret: served.
  const l = await client.request(
    RequestCode.ADMIN_DELAY_DLQ_LIST,
    encodeDelayDlqListRequest({ limit: 10, afterSequence: -1, token: SECRET }),
  )
  t.equal(l.status, 0, l.message)
  t.same(
    decodeDelayDlqListResponse(l.body).map((d) => d.record.id),
    ['bad'],
  )
  const c = await client.request(RequestCode.CANCEL, encodeCancelRequest(['keep'], SECRET))
  t.equal(c.status, 0, c.message)
  t.same(decodeCancelResponse(c.body), [true], 'cancelled with the secret')
  const r = await client.request(
    RequestCode.ADMIN_DELAY_DLQ_REDRIVE,
    encodeDelayDlqRedriveRequest({ sequences: [1], token: SECRET }),
  )
  t.equal(r.status, 0, r.message)
  t.equal(decodeCountResponse(r.body), 1, 'redriven with the secret')

  const metrics = await server.registry.metrics()
  t.match(metrics, /qmq_delay_unauthorized_requests_total\{[^}]*request="CANCEL"[^}]*\} 3/)
  t.match(metrics, /qmq_delay_unauthorized_requests_total\{[^}]*request="ADMIN_DELAY_DLQ_LIST"[^}]*\} 2/)
  t.match(metrics, /qmq_delay_unauthorized_requests_total\{[^}]*request="ADMIN_DELAY_DLQ_REDRIVE"[^}]*\} 2/)
  const refused = lines.filter((l) => /unauthorized|refused/i.test(l) && l.includes('"request"'))
  t.equal(refused.length, 7, 'each refusal is logged')
  t.ok(
    refused.every((l) => l.includes(`127.0.0.1:`)),
    'with the remote address',
  )
  t.notOk(
    lines.some((l) => l.includes(SECRET) || l.includes(WRONG)),
    'and never a secret, right or wrong',
  )
})

t.test('delay - without a cluster secret configured, CANCEL is refused', async (t) => {
  const { server, client } = await startServer(t, undefined)
  t.same(
    (await send(client, [delayed('keep', T0 + 60_000)])).map((s) => s.status),
    [0],
  )
  for (const token of [undefined, SECRET]) {
    const res = await client.request(RequestCode.CANCEL, encodeCancelRequest(['keep'], token))
    t.equal(res.status, UNAUTHORIZED)
    t.match(res.message, /no cluster secret/)
  }
  const l = await client.request(
    RequestCode.ADMIN_DELAY_DLQ_LIST,
    encodeDelayDlqListRequest({ limit: 10, afterSequence: -1, token: SECRET }),
  )
  t.equal(l.status, UNAUTHORIZED)
  t.equal(server.store.stats().pending, 1, 'nothing cancelled')
})

t.test('delay - the token field of CANCEL and the dead-letter requests', async (t) => {
  t.same(decodeCancelRequest(encodeCancelRequest(['a', 'bb'], SECRET)), { token: SECRET, ids: ['a', 'bb'] })
  t.same(decodeCancelRequest(encodeCancelRequest(['a'])), { token: '', ids: ['a'] })
  t.same(
    decodeDelayDlqListRequest(encodeDelayDlqListRequest({ limit: 3, afterSequence: 7, token: SECRET })),
    {
      limit: 3,
      afterSequence: 7,
      token: SECRET,
    },
  )
  t.same(decodeDelayDlqRedriveRequest(encodeDelayDlqRedriveRequest({ sequences: [2], token: SECRET })), {
    sequences: [2],
    token: SECRET,
  })
  // A token longer than any secret is refused before its bytes are read or decoded.
  const long = 'x'.repeat(1025)
  t.throws(() => encodeCancelRequest(['a'], long), { code: 'QMQ_ERR_INVALID_ARGUMENT' })
  const lying = Buffer.alloc(6)
  lying.writeUInt16BE(60_000, 0)
  for (const decode of [decodeCancelRequest, decodeDelayDlqListRequest, decodeDelayDlqRedriveRequest]) {
    t.throws(() => decode(lying), { code: 'QMQ_ERR_PAYLOAD_MALFORMED' }, 'a token length beyond the limit')
  }
  // Every strict prefix of a request fails to decode.
  const full = encodeCancelRequest(['a', 'bb'], SECRET)
  for (let n = 0; n < full.length; n++) {
    t.throws(() => decodeCancelRequest(full.subarray(0, n)), { code: /QMQ_ERR_/ })
  }
})
