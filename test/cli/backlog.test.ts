import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import t from 'tap'
import { MessageConsumerProvider, MessageProducerProvider } from '../../src/client'
import { QMQ_BIN } from '../../src/cli/child-service'
import { backlogSummary } from '../../src/cli/commands/admin'
import { startCluster } from '../helpers/cluster'
import { testDir } from '../helpers/testdir'

// Issue 19 item 10: `qmq backlog` tells an empty consumer group from one holding messages, over a real
// cluster: group `done` consumed everything, group `busy` holds 3 ready, 1 in flight, 1 retrying and
// 1 dead letter.

const SUBJECT = 'backlog.orders'

t.test('qmq backlog - empty groups and groups holding messages', async (t) => {
  const cluster = await startCluster({ dir: testDir(t), brokers: 1 })
  t.teardown(() => cluster.close())
  await cluster.waitAlive('broker', 1)
  const producer = new MessageProducerProvider({ appCode: 'p', metaServer: cluster.metaUrl })
  t.teardown(() => producer.close())
  await producer.init()
  for (let i = 0; i < 6; i++)
    await producer.sendMessage(producer.generateMessage(SUBJECT).setProperty('i', i))

  const consumer = new MessageConsumerProvider({ appCode: 'c', metaServer: cluster.metaUrl })
  t.teardown(() => consumer.close())
  const done = consumer.getOrCreatePullConsumer(SUBJECT, 'done', { startFrom: 'earliest' })
  for (let n = 0; n < 6; ) {
    const got = await done.pull(6 - n, 2_000)
    for (const m of got) await m.ack()
    n += got.length
  }
  const busy = consumer.getOrCreatePullConsumer(SUBJECT, 'busy', { startFrom: 'earliest' })
  const held = []
  while (held.length < 3) held.push(...(await busy.pull(3 - held.length, 2_000)))
  await held[0]?.nack({ retryAfterMs: 600_000 })
  await held[1]?.nack({ deadLetter: true })
  // held[2] stays in flight.

  const qmq = async (...args: string[]) =>
    (
      await promisify(execFile)(process.execPath, [QMQ_BIN, ...args, '--metaserver', cluster.metaUrl], {
        timeout: 60_000,
      })
    ).stdout

  // The acks of `done` and the nacks reach the broker in the background: ask until they did.
  let text = ''
  for (let i = 0; i < 20; i++) {
    text = await qmq('backlog', SUBJECT)
    if (/done on backlog\.orders: empty/.test(text) && /1 dead/.test(text)) break
    await new Promise((r) => setTimeout(r, 250))
  }
  t.match(text, /STATE/, 'a table with a state column')
  t.match(text, /\n\s*broker-a\s+backlog\.orders\s+done\s+empty\s/, 'the caught-up group is empty')
  t.match(text, /\n\s*broker-a\s+backlog\.orders\s+busy\s+holding\s/, 'the other holds messages')
  t.match(text, /^done on backlog\.orders: empty$/m)
  t.match(text, /^busy on backlog\.orders: 3 ready, 1 in flight, 1 retrying, 1 dead$/m)

  const rows = JSON.parse(await qmq('backlog', SUBJECT, 'busy', '--json')) as {
    group: string
    empty: boolean
    pending: number
  }[]
  t.match(rows, [{ group: 'busy', empty: false, pending: 3 }])
  t.equal(rows.length, 1, 'only the group asked for')

  t.match(
    await qmq('backlog', SUBJECT, 'nobody'),
    /no broker group knows consumer group nobody on backlog\.orders/,
    'a group no broker knows is not reported as empty',
  )
})

t.test('backlogSummary - words for the counts over broker groups', async (t) => {
  const row = { subject: 's', group: 'g', maxSequence: 0, cursor: 0 }
  const zero = { pending: 0, inFlight: 0, retrying: 0, deadLettered: 0 }
  t.equal(backlogSummary([]), 'empty')
  t.equal(
    backlogSummary([
      { ...row, ...zero },
      { ...row, ...zero },
    ]),
    'empty',
  )
  t.equal(
    backlogSummary([
      { ...row, ...zero, pending: 2, inFlight: 3, retrying: 1 },
      { ...row, ...zero, inFlight: 1, deadLettered: 4 },
    ]),
    '2 ready, 3 in flight, 1 retrying, 4 dead',
  )
  t.equal(backlogSummary([{ ...row, ...zero, inFlight: 2, retrying: 2 }]), '2 retrying')
})
