import t from 'tap'
import { ERROR_CODES } from '../../../src/common/errors'
import { RequestCode } from '../../../src/common/protocol/codes'
import {
  decodeBacklogResponse,
  decodeDlqListResponse,
  decodeSubjectsResponse,
  encodeBacklogRequest,
  encodeDlqListRequest,
  encodeDlqRedriveRequest,
  encodeForgetGroupRequest,
  encodeResetCursorRequest,
  ResetPosition,
} from '../../../src/common/protocol/admin'
import { decodeCountResponse } from '../../../src/common/protocol/commands'
import { RawClient } from '../../helpers/raw-client'
import { ack, heartbeat, message, nack, pull, sendOk } from './ops'
import { startBroker } from './start-broker'

t.test(
  'semantics - a consumer that vanishes hands its unacked messages to another once its lease ends',
  async (t) => {
    const leaseMs = 1_000
    const b = await startBroker(t, { leaseMs })
    const gone = await RawClient.connect(b.port)
    const other = await RawClient.connect(b.port)
    t.teardown(() => other.destroy())
    await sendOk(
      other,
      Array.from({ length: 10 }, (_, i) => message('s', `m${i}`)),
    )
    const held = await pull(gone, { subject: 's', group: 'g', consumerId: 'gone' })
    t.equal(held.length, 10)
    await ack(gone, {
      subject: 's',
      group: 'g',
      consumerId: 'gone',
      sequences: [held[0]?.sequence as number],
    })
    gone.destroy()
    const vanishedAt = Date.now()
    const taken: string[] = []
    while (taken.length < 9 && Date.now() - vanishedAt < leaseMs + 15_000) {
      const msgs = await pull(other, { subject: 's', group: 'g', consumerId: 'other', timeoutMs: 500 })
      for (const m of msgs) taken.push(m.record.id)
    }
    const elapsed = Date.now() - vanishedAt
    t.same(
      taken.sort(),
      held
        .slice(1)
        .map((m) => m.record.id)
        .sort(),
      'the unacked ones, not the acked one',
    )
    // Typically within leaseMs + 1 s; the bound is generous for a loaded machine (messages kept
    // held far past their lease still fail it).
    t.ok(elapsed <= leaseMs + 5_000, `handed over after ${elapsed} ms`)
  },
)

t.test('semantics - HEARTBEAT keeps leases of a slow consumer alive', async (t) => {
  // Heartbeats every 200 ms for two leases: a loaded machine would have to stall this loop for a
  // whole lease (1.5 s) to make it fail while heartbeats work.
  const leaseMs = 1_500
  const b = await startBroker(t, { leaseMs })
  const slow = await RawClient.connect(b.port)
  const other = await RawClient.connect(b.port)
  t.teardown(() => {
    slow.destroy()
    other.destroy()
  })
  await sendOk(other, [message('s', 'x')])
  const [m] = await pull(slow, { subject: 's', group: 'g', consumerId: 'slow' })
  const pulledAt = Date.now()
  while (Date.now() - pulledAt < 2 * leaseMs) {
    await new Promise((r) => setTimeout(r, 200))
    await heartbeat(slow, 'slow', 's', 'g')
  }
  t.same(
    await pull(other, { subject: 's', group: 'g', consumerId: 'other' }),
    [],
    'still held by the slow one',
  )
  t.equal(
    await ack(slow, { subject: 's', group: 'g', consumerId: 'slow', sequences: [m?.sequence as number] }),
    1,
  )
})

t.test('semantics - dead letter after maxRetries, listed, then redriven with the same id', async (t) => {
  const b = await startBroker(t, { maxRetries: 3 })
  const c = await RawClient.connect(b.port)
  t.teardown(() => c.destroy())
  await sendOk(c, [message('pay', 'poison'), message('pay', 'fine')])
  let deliveries = 0
  for (let i = 0; i < 10; i++) {
    const msgs = await pull(c, { subject: 'pay', group: 'g', consumerId: 'c', timeoutMs: 500 })
    for (const m of msgs) {
      if (m.record.id === 'fine')
        await ack(c, { subject: 'pay', group: 'g', consumerId: 'c', sequences: [m.sequence] })
      else {
        deliveries++
        t.equal(m.deliveryCount, deliveries, 'delivery count grows')
        await nack(c, {
          subject: 'pay',
          group: 'g',
          consumerId: 'c',
          sequences: [m.sequence],
          retryAfterMs: 1,
        })
      }
    }
    if (msgs.length === 0 && deliveries > 0) break
  }
  t.ok(deliveries >= 3 && deliveries <= 4, `delivered ${deliveries} times, then dead-lettered`)
  const dlq = decodeDlqListResponse(
    await c.call(
      RequestCode.ADMIN_DLQ_LIST,
      encodeDlqListRequest({ subject: 'pay', group: 'g', limit: 10, afterSequence: -1 }),
    ),
  )
  t.equal(dlq.length, 1)
  t.equal(dlq[0]?.record.id, 'poison')
  const backlog = decodeBacklogResponse(
    await c.call(RequestCode.ADMIN_BACKLOG, encodeBacklogRequest({ subject: 'pay', group: 'g' })),
  )
  t.equal(backlog[0]?.deadLettered, 1)
  const redriven = decodeCountResponse(
    await c.call(RequestCode.ADMIN_DLQ_REDRIVE, encodeDlqRedriveRequest({ subject: 'pay', group: 'g' })),
  )
  t.equal(redriven, 1)
  const back = await pull(c, { subject: 'pay', group: 'g', consumerId: 'c', timeoutMs: 2_000 })
  t.equal(back[0]?.record.id, 'poison', 'same id')
  t.equal(back[0]?.deliveryCount, 1, 'fresh delivery count')
})

t.test('semantics - NACK with DEAD_LETTER dead-letters at once', async (t) => {
  const b = await startBroker(t)
  const c = await RawClient.connect(b.port)
  t.teardown(() => c.destroy())
  await sendOk(c, [message('s', 'bad')])
  const [m] = await pull(c, { subject: 's', group: 'g', consumerId: 'c' })
  t.equal(
    await nack(c, {
      subject: 's',
      group: 'g',
      consumerId: 'c',
      sequences: [m?.sequence as number],
      deadLetter: true,
    }),
    1,
  )
  const dlq = decodeDlqListResponse(
    await c.call(
      RequestCode.ADMIN_DLQ_LIST,
      encodeDlqListRequest({ subject: 's', group: 'g', limit: 10, afterSequence: -1 }),
    ),
  )
  t.equal(dlq[0]?.record.id, 'bad')
})

t.test('semantics - broadcast: every consumer id gets every message', async (t) => {
  const b = await startBroker(t)
  const c = await RawClient.connect(b.port)
  t.teardown(() => c.destroy())
  await sendOk(c, [message('cfg', 'v1'), message('cfg', 'v2')])
  for (const id of ['host-a', 'host-b', 'host-c']) {
    const got = await pull(c, { subject: 'cfg', group: 'cache', consumerId: id, broadcast: true })
    t.same(
      got.map((m) => m.record.id),
      ['v1', 'v2'],
      `${id} gets all`,
    )
    await ack(c, {
      subject: 'cfg',
      group: 'cache',
      consumerId: id,
      sequences: got.map((m) => m.sequence),
      broadcast: true,
    })
  }
  await sendOk(c, [message('cfg', 'v3')])
  const again = await pull(c, { subject: 'cfg', group: 'cache', consumerId: 'host-a', broadcast: true })
  t.same(
    again.map((m) => m.record.id),
    ['v3'],
    'the instance name keeps its position',
  )
})

t.test('semantics - tag filters, any-of and all-of', async (t) => {
  const b = await startBroker(t)
  const c = await RawClient.connect(b.port)
  t.teardown(() => c.destroy())
  await sendOk(c, [
    message('t', 'red', 'x', ['red']),
    message('t', 'blue', 'x', ['blue']),
    message('t', 'red-big', 'x', ['red', 'big']),
    message('t', 'none', 'x', []),
  ])
  const any = await pull(c, { subject: 't', group: 'any', consumerId: 'c', tags: ['red', 'blue'] })
  t.same(
    any.map((m) => m.record.id),
    ['red', 'blue', 'red-big'],
  )
  const all = await pull(c, {
    subject: 't',
    group: 'all',
    consumerId: 'c',
    tags: ['red', 'big'],
    tagsAll: true,
  })
  t.same(
    all.map((m) => m.record.id),
    ['red-big'],
  )
})

t.test('semantics - at-most-once: never redelivered', async (t) => {
  const b = await startBroker(t, { leaseMs: 300 })
  const c = await RawClient.connect(b.port)
  t.teardown(() => c.destroy())
  await sendOk(c, [message('s', 'once')])
  const got = await pull(c, { subject: 's', group: 'g', consumerId: 'c', atMostOnce: true })
  t.equal(got.length, 1)
  const later = await pull(c, {
    subject: 's',
    group: 'g',
    consumerId: 'other',
    atMostOnce: true,
    timeoutMs: 700,
  })
  t.same(later, [])
})

t.test('semantics - admin: subjects, backlog and cursor reset', async (t) => {
  const b = await startBroker(t)
  const c = await RawClient.connect(b.port)
  t.teardown(() => c.destroy())
  await sendOk(
    c,
    Array.from({ length: 4 }, (_, i) => message('a1', `m${i}`)),
  )
  const got = await pull(c, { subject: 'a1', group: 'g', consumerId: 'c', maxMessages: 4 })
  await ack(c, { subject: 'a1', group: 'g', consumerId: 'c', sequences: got.map((m) => m.sequence) })
  t.ok(decodeSubjectsResponse(await c.call(RequestCode.ADMIN_SUBJECTS)).includes('a1'))
  let backlog = decodeBacklogResponse(
    await c.call(RequestCode.ADMIN_BACKLOG, encodeBacklogRequest({ subject: 'a1' })),
  )
  t.equal(backlog[0]?.pending, 0)
  await c.call(
    RequestCode.ADMIN_RESET_CURSOR,
    encodeResetCursorRequest({ subject: 'a1', group: 'g', position: ResetPosition.EARLIEST, timeMs: 0 }),
  )
  backlog = decodeBacklogResponse(
    await c.call(RequestCode.ADMIN_BACKLOG, encodeBacklogRequest({ subject: 'a1', group: 'g' })),
  )
  t.equal(backlog[0]?.pending, 4, 'backtracked')
  const replay = await pull(c, { subject: 'a1', group: 'g', consumerId: 'c', maxMessages: 10 })
  t.same(
    replay.map((m) => m.record.id),
    ['m0', 'm1', 'm2', 'm3'],
  )
})

t.test('semantics - a consumer that reconnects with the same id first gets back what it holds', async (t) => {
  const b = await startBroker(t)
  const first = await RawClient.connect(b.port)
  await sendOk(
    first,
    Array.from({ length: 5 }, (_, i) => message('s', `m${i}`)),
  )
  const held = await pull(first, { subject: 's', group: 'g', consumerId: 'stable', maxMessages: 3 })
  t.equal(held.length, 3)
  first.destroy()
  const again = await RawClient.connect(b.port)
  t.teardown(() => again.destroy())
  const back = await pull(again, { subject: 's', group: 'g', consumerId: 'stable', maxMessages: 3 })
  t.same(
    back.map((m) => m.record.id),
    held.map((m) => m.record.id),
    'the held ones come back first',
  )
})

t.test('semantics - with an adminToken, cursor resets and redrives need it; reads do not', async (t) => {
  const b = await startBroker(t, { adminToken: 'open sesame' })
  const c = await RawClient.connect(b.port)
  t.teardown(() => c.destroy())
  await sendOk(c, [message('tok', 'm0')])
  const got = await pull(c, { subject: 'tok', group: 'g', consumerId: 'c', maxMessages: 1 })
  await ack(c, { subject: 'tok', group: 'g', consumerId: 'c', sequences: got.map((m) => m.sequence) })
  const resetBody = (token?: string) =>
    encodeResetCursorRequest({
      subject: 'tok',
      group: 'g',
      position: ResetPosition.EARLIEST,
      timeMs: 0,
      token,
    })
  const unauthorized = ERROR_CODES.QMQ_ERR_UNAUTHORIZED.status
  const none = await c.request(RequestCode.ADMIN_RESET_CURSOR, resetBody())
  t.equal(none.status, unauthorized, 'no token: refused')
  t.match(none.message, /admin token/)
  const wrong = await c.request(RequestCode.ADMIN_RESET_CURSOR, resetBody('open sesame!'))
  t.equal(wrong.status, unauthorized, 'wrong token: refused')
  const redrive = await c.request(
    RequestCode.ADMIN_DLQ_REDRIVE,
    encodeDlqRedriveRequest({ subject: 'tok', group: 'g' }),
  )
  t.equal(redrive.status, unauthorized, 'a redrive without the token: refused')
  t.equal(
    decodeBacklogResponse(
      await c.call(RequestCode.ADMIN_BACKLOG, encodeBacklogRequest({ subject: 'tok', group: 'g' })),
    )[0]?.cursor,
    1,
    'reads need no token; the refused reset changed nothing',
  )
  await c.call(RequestCode.ADMIN_RESET_CURSOR, resetBody('open sesame'))
  t.equal(
    decodeBacklogResponse(
      await c.call(RequestCode.ADMIN_BACKLOG, encodeBacklogRequest({ subject: 'tok', group: 'g' })),
    )[0]?.cursor,
    0,
    'with the token the reset is done',
  )
  t.equal(
    decodeCountResponse(
      await c.call(
        RequestCode.ADMIN_DLQ_REDRIVE,
        encodeDlqRedriveRequest({ subject: 'tok', group: 'g', token: 'open sesame' }),
      ),
    ),
    0,
    'and so is a redrive',
  )
})

t.test('semantics - admin: forget a consumer group (token, refused while active)', async (t) => {
  const b = await startBroker(t, { adminToken: 'tk', leaseMs: 1000 })
  const c = await RawClient.connect(b.port)
  t.teardown(() => c.destroy())
  await sendOk(c, [message('fg', 'm0'), message('fg', 'm1')])
  await pull(c, { subject: 'fg', group: 'old', consumerId: 'c', maxMessages: 1 })
  const forget = (token?: string) =>
    c.request(
      RequestCode.ADMIN_FORGET_GROUP,
      encodeForgetGroupRequest({ subject: 'fg', group: 'old', token }),
    )
  t.equal((await forget()).status, ERROR_CODES.QMQ_ERR_UNAUTHORIZED.status, 'the token is required')
  const busy = await forget('tk')
  t.equal(busy.status, ERROR_CODES.QMQ_ERR_GROUP_ACTIVE.status, 'refused while its consumer holds a lease')
  t.match(busy.message, /active consumer/)
  // The lease ends (no heartbeat): the broker's sweep hands the message back, then the group can go.
  await new Promise((r) => setTimeout(r, 1600))
  const done = await forget('tk')
  t.equal(done.status, 0)
  t.equal(decodeCountResponse(done.body), 1, 'forgotten')
  t.equal(decodeCountResponse((await forget('tk')).body), 0, 'nothing left to forget')
  t.same(
    decodeBacklogResponse(await c.call(RequestCode.ADMIN_BACKLOG, encodeBacklogRequest({ subject: 'fg' }))),
    [],
    'no group left on the subject',
  )
})
