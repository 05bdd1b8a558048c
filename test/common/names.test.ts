import t from 'tap'
import { QmqConsumer } from '../../src/client/consumer/decorators'
import { MessageConsumerProvider } from '../../src/client/consumer/consumer-provider'
import { MessageProducerProvider } from '../../src/client/producer/producer'
import { crc32c } from '../../src/common/crc32c'
import { ERROR_CODES } from '../../src/common/error-codes'
import { silentLogger } from '../../src/common/logger'
import {
  deadLetterSubject,
  parseDeadLetterSubject,
  validateConsumerId,
  validateGroup,
  validateSubject,
} from '../../src/common/names'
import { RequestCode } from '../../src/common/protocol/codes'
import { decodeSendResponse, encodePullRequest, encodeSendRequest } from '../../src/common/protocol/commands'
import { encodeRecord, type MessageRecord } from '../../src/common/record'
import { DelayServer } from '../../src/delay/delay-server'
import { pullRequest, send } from '../broker/server/ops'
import { startBroker } from '../broker/server/start-broker'
import { FakeSender, send as delaySend, T0 } from '../delay/helpers/delay-helpers'
import { RawClient } from '../helpers/raw-client'

/**
 * Defect 6 of issue 12: `%DEAD_RETRY%x%y%z` was both (x%y, z) and (x, y%z). User subjects and consumer
 * groups may no longer hold '%', so a dead-letter name splits at its one '%' after the prefix; every
 * entry point of a user name refuses '%' with the name's own code.
 */

/** A record whose subject has a '%': encoded with a stand-in, then patched and resealed (CRC32C). */
function recordWithSubject(subject: string, base: Omit<MessageRecord, 'subject'>): Buffer {
  const standIn = subject.replaceAll('%', '_')
  const bytes = encodeRecord({ ...base, subject: standIn })
  const at = bytes.indexOf(Buffer.from(standIn))
  bytes.write(subject, at, 'utf8')
  bytes.writeUInt32BE(crc32c(bytes.subarray(8)), 4)
  return bytes
}

t.test('names - user subjects and consumer groups refuse %; dead-letter names parse back', async (t) => {
  t.throws(() => validateSubject('order%paid'), {
    code: 'QMQ_ERR_SUBJECT_INVALID',
    message: /'%'.*dead-letter/,
  })
  t.throws(() => validateGroup('bill%ing'), { code: 'QMQ_ERR_GROUP_INVALID', message: /'%'/ })
  t.throws(() => validateSubject('%DEAD_RETRY%order%billing'), { code: 'QMQ_ERR_SUBJECT_INVALID' })
  t.equal(validateSubject('order.paid'), 'order.paid')
  t.equal(validateConsumerId('host%1'), 'host%1', 'consumer ids are not part of dead-letter names')

  const name = deadLetterSubject('order.paid', 'billing')
  t.equal(name, '%DEAD_RETRY%order.paid%billing')
  t.same(parseDeadLetterSubject(name), { subject: 'order.paid', group: 'billing' })
  t.throws(() => deadLetterSubject('x%y', 'z'), { code: 'QMQ_ERR_SUBJECT_INVALID' })
  t.throws(() => deadLetterSubject('x', 'y%z'), { code: 'QMQ_ERR_GROUP_INVALID' })
  for (const bad of [
    '%DEAD_RETRY%x%y%z',
    '%DEAD_RETRY%x',
    '%DEAD_RETRY%%g',
    '%DEAD_RETRY%x%',
    'x%y',
    '%DEAD_RETRY%a b%g',
  ])
    t.equal(parseDeadLetterSubject(bad), undefined, `${bad} is not a dead-letter name`)
})

t.test('names - the SDK refuses % in subjects and consumer groups', async (t) => {
  const producer = new MessageProducerProvider({
    appCode: 'app',
    metaServer: 'http://127.0.0.1:1/meta/address',
  })
  const consumer = new MessageConsumerProvider({
    appCode: 'app',
    metaServer: 'http://127.0.0.1:1/meta/address',
  })
  t.teardown(async () => {
    await producer.close()
    await consumer.close()
  })
  t.throws(() => producer.generateMessage('x%y'), { code: 'QMQ_ERR_SUBJECT_INVALID' })
  t.throws(() => QmqConsumer({ subject: 'x%y', consumerGroup: 'g' }), { code: 'QMQ_ERR_SUBJECT_INVALID' })
  t.throws(() => QmqConsumer({ subject: 'x', consumerGroup: 'y%z' }), { code: 'QMQ_ERR_GROUP_INVALID' })
  t.throws(() => consumer.getOrCreatePullConsumer('x%y', 'g'), { code: 'QMQ_ERR_SUBJECT_INVALID' })
  t.throws(() => consumer.getOrCreatePullConsumer('x', 'y%z'), { code: 'QMQ_ERR_GROUP_INVALID' })
})

t.test('names - the broker refuses % in SEND subjects and PULL subjects and groups', async (t) => {
  const b = await startBroker(t)
  const c = await RawClient.connect(b.port)
  t.teardown(() => c.destroy())
  const base = { id: 'm1', createdAt: Date.now(), tags: [], properties: new Map<string, string>(), body: 'b' }
  const res = await c.call(RequestCode.SEND, encodeSendRequest([recordWithSubject('x%y', base)]))
  const [result] = decodeSendResponse(res)
  t.equal(result?.status, ERROR_CODES.QMQ_ERR_SUBJECT_INVALID.status, 'SEND of x%y: SUBJECT_INVALID')
  t.match(result?.message, /'%'/)
  t.same(
    (await send(c, [{ ...base, id: 'm2', subject: 'x' }])).map((r) => r.status),
    [0],
    'a plain subject still goes in',
  )
  const pull = pullRequest({ subject: 'x%y', group: 'g', consumerId: 'c1', maxMessages: 1 })
  t.equal(
    (await c.request(RequestCode.PULL, encodePullRequest(pull))).status,
    ERROR_CODES.QMQ_ERR_SUBJECT_INVALID.status,
    'PULL of x%y: SUBJECT_INVALID',
  )
  t.equal(
    (await c.request(RequestCode.PULL, encodePullRequest({ ...pull, subject: 'x', group: 'y%z' }))).status,
    ERROR_CODES.QMQ_ERR_GROUP_INVALID.status,
    'PULL by group y%z: GROUP_INVALID',
  )
})

t.test('names - the delay server refuses % in SEND subjects', async (t) => {
  let server: DelayServer | undefined
  let c: RawClient | undefined
  // Registered before t.testdir(): teardowns run in order, and the server writes on close.
  t.teardown(async () => {
    c?.destroy()
    await server?.close()
  })
  server = new DelayServer(
    { port: 0, dataDir: t.testdir(), bucketMinutes: 1 },
    { logger: silentLogger, sender: new FakeSender(), routes: { groups: async () => [] } },
  )
  await server.start()
  c = await RawClient.connect(server.port)
  const base = {
    createdAt: T0,
    scheduleAt: Date.now() + 3_600_000,
    tags: [],
    properties: new Map<string, string>(),
  }
  const results = await delaySend(c, [
    recordWithSubject('x%y', { ...base, id: 'd1' }),
    encodeRecord({ ...base, id: 'd2', subject: 'x' }),
  ])
  t.same(
    results.map((r) => r.status),
    [ERROR_CODES.QMQ_ERR_SUBJECT_INVALID.status, 0],
  )
  t.equal(server.store.stats().pending, 1, 'only the valid one is scheduled')
})
