import { execFile } from 'node:child_process'
import path from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'
import { ManualClock } from '../../src/common/clock'
import { crc32c } from '../../src/common/crc32c'
import { ERROR_CODES } from '../../src/common/error-codes'
import { silentLogger } from '../../src/common/logger'
import { RequestCode } from '../../src/common/protocol/codes'
import { decodeCountResponse } from '../../src/common/protocol/commands'
import {
  decodeDelayDlqListRequest,
  decodeDelayDlqListResponse,
  decodeDelayDlqRedriveRequest,
  encodeDelayDlqListRequest,
  encodeDelayDlqRedriveRequest,
} from '../../src/common/protocol/delay-admin'
import { encodeRecord } from '../../src/common/record'
import { DelayServer } from '../../src/delay/delay-server'
import { Metaserver } from '../../src/metaserver/main'
import { StaticRouteProvider } from '../../src/delay/dispatch/sender'
import { RawClient } from '../helpers/raw-client'
import { DELAY_TEST_SECRET, delayed, send, T0, waitFor } from './helpers/delay-helpers'
import { FakeBroker } from './helpers/fake-broker'
import { delayDir } from './helpers/start-delay'

/** Due messages a broker refuses for good are parked as dead letters; the rest keep flowing. */

const QMQ_BIN = path.join(__dirname, '..', '..', 'bin', 'qmq.js')
const TOO_LARGE = ERROR_CODES.QMQ_ERR_MESSAGE_TOO_LARGE.status

/** A record whose subject the SDK would refuse to encode: same length, bytes replaced, CRC fixed. */
function withSubject(record: Buffer, subject: string): Buffer {
  const at = 32 + record.readUInt16BE(28)
  record.write(subject, at, 'utf8')
  record.writeUInt32BE(crc32c(record.subarray(8)), 4)
  return record
}

async function list(c: RawClient) {
  const res = await c.request(
    RequestCode.ADMIN_DELAY_DLQ_LIST,
    encodeDelayDlqListRequest({ limit: 100, afterSequence: -1, token: DELAY_TEST_SECRET }),
  )
  if (res.status !== 0) throw new Error(`ADMIN_DELAY_DLQ_LIST failed: ${res.message}`)
  return decodeDelayDlqListResponse(res.body)
}

t.test(
  'delay - a record the broker refuses for good is parked; later due messages keep flowing',
  async (t) => {
    const { dir, closers } = delayDir(t)
    const broker = await new FakeBroker().start()
    closers.push(() => broker.stop())
    // The broker's size limit is 2,000 bytes: larger records are refused with a non-retriable status.
    let refusals = 0
    broker.refuse = (_id, bytes) => {
      if (bytes <= 2_000) return 0
      refusals++
      return TOO_LARGE
    }
    const clock = new ManualClock(T0)
    const start = async () => {
      const server = new DelayServer(
        {
          port: 0,
          dataDir: dir,
          bucketMinutes: 1,
          loadAheadMs: 10_000,
          tickMs: 5,
          checkpointIntervalMs: 50,
          retryInitialMs: 10_000,
          clusterSecret: DELAY_TEST_SECRET,
        },
        {
          clock,
          logger: silentLogger,
          routes: new StaticRouteProvider([{ name: 'b1', address: broker.address, state: 'rw' }]),
        },
      )
      await server.start()
      const client = await RawClient.connect(server.port)
      const close = async () => {
        await client.close()
        await server.close()
      }
      closers.push(close)
      return { server, client, close }
    }
    const a = await start()
    const big = encodeRecord({
      id: 'big',
      subject: 'order.created',
      createdAt: T0,
      scheduleAt: T0 + 1_000,
      tags: [],
      properties: new Map(),
      body: 'x'.repeat(3_000),
    })
    const res = await send(a.client, [
      delayed('a1', T0 + 1_000),
      big,
      ...[2, 3, 4, 5].map((i) => delayed(`a${i}`, T0 + 4_000 + i * 100)),
      withSubject(delayed('bad-subject', T0 + 1_000, 'order_created'), 'order created'),
    ])
    t.same(
      res.map((r) => r.status),
      [0, 0, 0, 0, 0, 0, ERROR_CODES.QMQ_ERR_SUBJECT_INVALID.status],
      'an invalid subject is refused on SEND, as the broker would',
    )
    clock.set(T0 + 2_000)
    await waitFor(() => broker.uniqueIds().has('a1'), 5_000, 'a1')
    await waitFor(() => refusals === 1, 5_000, 'big refused')
    // Due after the refusal, same subject: not held back behind it.
    clock.set(T0 + 6_000)
    await waitFor(() => broker.uniqueIds().size === 5, 5_000, 'the later messages of the subject')
    t.same([...broker.uniqueIds()].sort(), ['a1', 'a2', 'a3', 'a4', 'a5'])
    await waitFor(() => a.server.store.stats().pending === 0, 5_000, 'nothing left pending')
    t.equal(a.server.dispatcher.backlog, 0, 'nothing waiting for a retry')
    const parked = await list(a.client)
    t.same(
      parked.map((d) => ({
        sequence: d.sequence,
        status: d.status,
        id: d.record.id,
        scheduleAt: d.record.scheduleAt,
      })),
      [{ sequence: 1, status: TOO_LARGE, id: 'big', scheduleAt: T0 + 1_000 }],
      'the refused record is a dead letter of the delay group',
    )
    t.match(await a.server.registry.metrics(), /qmq_delay_dead_lettered_total\S* 1/)

    // Persisted: still there after a restart.
    await a.close()
    const b = await start()
    t.same(
      (await list(b.client)).map((d) => d.record.id),
      ['big'],
      'kept across a restart',
    )
    // The broker's limit is raised: redrive.
    broker.refuse = undefined
    const r = await b.client.request(
      RequestCode.ADMIN_DELAY_DLQ_REDRIVE,
      encodeDelayDlqRedriveRequest({ sequences: [1], token: DELAY_TEST_SECRET }),
    )
    t.equal(r.status, 0, r.message)
    t.equal(decodeCountResponse(r.body), 1)
    await waitFor(() => broker.uniqueIds().has('big'), 5_000, 'the redriven message')
    t.same(await list(b.client), [], 'no dead letters left')
    await b.close()
    const c = await start()
    t.same(await list(c.client), [], 'none after a restart either')
  },
)

t.test('delay - qmq delay-dlq list and redrive', async (t) => {
  const { dir, closers } = delayDir(t)
  const metaserver = new Metaserver(
    {
      port: 0,
      dataDir: path.join(dir, 'meta'),
      heartbeatIntervalMs: 200,
      heartbeatTimeoutMs: 1_500,
      clusterSecret: DELAY_TEST_SECRET,
    },
    { logger: silentLogger },
  )
  await metaserver.start()
  closers.push(() => metaserver.close())
  const broker = await new FakeBroker().start()
  closers.push(() => broker.stop())
  broker.refuse = (id) => (id.startsWith('bad') ? TOO_LARGE : 0)
  const server = new DelayServer(
    {
      group: 'delay-cli',
      port: 0,
      dataDir: path.join(dir, 'delay'),
      metaserver: `${metaserver.url}/meta/address`,
      clusterSecret: DELAY_TEST_SECRET,
      bucketMinutes: 1,
      tickMs: 5,
      checkpointIntervalMs: 50,
    },
    {
      logger: silentLogger,
      routes: new StaticRouteProvider([{ name: 'b1', address: broker.address, state: 'rw' }]),
    },
  )
  await server.start()
  closers.push(() => server.close())
  const client = await RawClient.connect(server.port)
  closers.push(() => client.close())
  const now = Date.now()
  await send(client, [delayed('bad1', now + 50), delayed('bad2', now + 50), delayed('good', now + 50)])
  await waitFor(
    () => broker.uniqueIds().has('good') && server.store.deadLetters.size === 2,
    5_000,
    'dispatch',
  )
  const qmqWith = async (secret: string | undefined, ...args: string[]) => {
    const env = { ...process.env }
    delete env.QMQ_CLUSTER_SECRET
    if (secret !== undefined) env.QMQ_CLUSTER_SECRET = secret
    const { stdout } = await promisify(execFile)(
      process.execPath,
      [QMQ_BIN, ...args, '--metaserver', metaserver.url],
      { encoding: 'utf8', env },
    )
    return stdout
  }
  const qmq = (...args: string[]) => qmqWith(DELAY_TEST_SECRET, ...args)
  // Without QMQ_CLUSTER_SECRET, or with a wrong one: refused by the delay server, nothing redriven.
  for (const secret of [undefined, 'a-wrong-cluster-secret-000000']) {
    await t.rejects(qmqWith(secret, 'delay-dlq', 'list', '--group', 'delay-cli'), {
      code: 1,
      stderr: /QMQ_ERR_UNAUTHORIZED/,
    })
    await t.rejects(qmqWith(secret, 'delay-dlq', 'redrive', '--group', 'delay-cli', '--all'), {
      code: 1,
      stderr: /QMQ_ERR_UNAUTHORIZED/,
    })
  }
  t.equal(server.store.deadLetters.size, 2, 'nothing redriven without the secret')
  const listed = JSON.parse(await qmq('delay-dlq', 'list', '--group', 'delay-cli', '--json')) as {
    sequence: number
    id: string
    error: string
  }[]
  t.same(
    listed.map((d) => ({ sequence: d.sequence, id: d.id, error: d.error })),
    [
      { sequence: 1, id: 'bad1', error: 'QMQ_ERR_MESSAGE_TOO_LARGE' },
      { sequence: 2, id: 'bad2', error: 'QMQ_ERR_MESSAGE_TOO_LARGE' },
    ],
  )
  broker.refuse = undefined
  t.same(JSON.parse(await qmq('delay-dlq', 'redrive', '--group', 'delay-cli', '--sequence', '2', '--json')), {
    redriven: 1,
  })
  await waitFor(() => broker.uniqueIds().has('bad2'), 5_000, 'bad2 redriven')
  t.same(JSON.parse(await qmq('delay-dlq', 'redrive', '--group', 'delay-cli', '--all', '--json')), {
    redriven: 1,
  })
  await waitFor(() => broker.uniqueIds().has('bad1'), 5_000, 'bad1 redriven')
  t.match(await qmq('delay-dlq', 'list', '--group', 'delay-cli'), /no dead letters/)
  await t.rejects(qmq('delay-dlq', 'redrive', '--group', 'delay-cli'), {
    code: 2,
    stderr: /--sequence or --all/,
  })
})

t.test('delay - dead-letter admin codecs check their input', async (t) => {
  t.throws(() => decodeDelayDlqListRequest(encodeDelayDlqListRequest({ limit: 0, afterSequence: -1 })), {
    code: 'QMQ_ERR_INVALID_ARGUMENT',
  })
  t.throws(() => decodeDelayDlqListRequest(encodeDelayDlqListRequest({ limit: 5, afterSequence: -2 })), {
    code: 'QMQ_ERR_INVALID_ARGUMENT',
  })
  t.same(decodeDelayDlqRedriveRequest(encodeDelayDlqRedriveRequest({ sequences: [3, 9] })), {
    sequences: [3, 9],
    token: '',
  })
  t.same(decodeDelayDlqRedriveRequest(encodeDelayDlqRedriveRequest({})), { sequences: undefined, token: '' })
  // (the leading 0, 0: an empty token field)
  t.throws(() => decodeDelayDlqRedriveRequest(Buffer.from([0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7])), {
    code: 'QMQ_ERR_INVALID_ARGUMENT',
  })
  t.throws(() => decodeDelayDlqRedriveRequest(Buffer.from([0, 0, 2, 0, 0, 0, 0])), {
    code: 'QMQ_ERR_PAYLOAD_MALFORMED',
  })
})
