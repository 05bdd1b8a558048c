import t from 'tap'
import { isQmqError, OUTBOX_GROUP } from '../../src/client'
import {
  collect,
  type Dialect,
  openCluster,
  openDb,
  openProducer,
  outboxRows,
  stopSharedPostgres,
  until,
} from './helpers'

/**
 * Transactional sends through the application's database, on a real SQLite file and a real
 * PostgreSQL, against a real local cluster.
 */
t.teardown(stopSharedPostgres)

for (const dialect of ['sqlite', 'postgres'] as Dialect[]) {
  t.test(
    `outbox ${dialect} - a commit sends the messages with their ids, delayed ones too, and empties the outbox`,
    async (t) => {
      const cluster = await openCluster(t, true)
      const db = await openDb(t, dialect)
      const producer = await openProducer(t, cluster, db)
      const { seen } = await collect(t, cluster, 'order.created')
      const ids: string[] = []
      const dueAt = Date.now() + 1_500
      await db.provider.transaction(async (tx) => {
        await db.txSql(tx, `INSERT INTO ${db.orders} (id) VALUES (?)`, ['o-1'])
        for (let i = 0; i < 3; i++) {
          const m = producer
            .generateMessage('order.created')
            .setProperty('orderId', 'o-1')
            .setProperty('i', i)
          if (i === 2) m.setDelayTime(new Date(dueAt))
          ids.push(m.getMessageId())
          const r = await producer.sendMessage(m)
          t.equal(r.group, OUTBOX_GROUP, 'inside a transaction the message goes to the outbox')
          t.equal(r.messageId, m.getMessageId())
        }
        t.equal(seen.size, 0, 'nothing left the process before COMMIT')
      })
      await until(() => seen.size === 3, 15_000, 'three messages consumed')
      t.same([...seen.keys()].sort(), [...ids].sort(), 'the same message ids')
      const delayed = seen.get(ids[2] as string)?.[0]
      t.equal(delayed?.getScheduleReceiveTime()?.getTime(), dueAt, 'the delayed message kept its delay time')
      t.equal(delayed?.getStringProperty('i'), '2')
      await until(async () => (await outboxRows(db)) === 0, 5_000, 'outbox emptied')
    },
  )

  t.test(`outbox ${dialect} - a rollback sends nothing and leaves no row`, async (t) => {
    const cluster = await openCluster(t)
    const db = await openDb(t, dialect)
    const producer = await openProducer(t, cluster, db)
    const { seen } = await collect(t, cluster, 'order.rb')
    const rolledBack = producer.generateMessage('order.rb')
    const err = await db.provider
      .transaction(async (tx) => {
        await db.txSql(tx, `INSERT INTO ${db.orders} (id) VALUES (?)`, ['o-rb'])
        await producer.sendMessage(rolledBack)
        throw new Error('business rule failed')
      })
      .catch((e: unknown) => e)
    t.match((err as Error).message, 'business rule failed')
    t.equal(await outboxRows(db), 0)
    t.equal((await db.sql(`SELECT count(*) AS n FROM ${db.orders}`))[0]?.n, dialect === 'postgres' ? '0' : 0)
    // A message sent afterwards, outside any transaction, arrives: the rolled-back one never does.
    const after = producer.generateMessage('order.rb')
    const r = await producer.sendMessage(after)
    t.not(r.group, OUTBOX_GROUP, 'outside a transaction the message is sent at once')
    await until(() => seen.has(after.getMessageId()), 15_000, 'the later message consumed')
    t.notOk(seen.has(rolledBack.getMessageId()), 'the rolled-back message was never sent')
  })

  t.test(`outbox ${dialect} - an explicit or attached transaction, and a closed one refused`, async (t) => {
    const cluster = await openCluster(t)
    const db = await openDb(t, dialect)
    const producer = await openProducer(t, cluster, db)
    const { seen } = await collect(t, cluster, 'order.explicit')
    // A handle passed explicitly, from code outside the transaction's async context.
    let handle: object | undefined
    const ready = db.provider.transaction(async (tx) => {
      handle = tx
      await new Promise((r) => setTimeout(r, 50))
    })
    await until(() => handle !== undefined)
    const explicit = producer.generateMessage('order.explicit')
    const w = await producer.sendMessage(explicit, { transaction: handle as object })
    t.equal(w.group, OUTBOX_GROUP)
    await ready
    // A transaction the caller began on a connection of their own, attached.
    const attachedMsg = producer.generateMessage('order.explicit')
    if (dialect === 'postgres') {
      const client = await db.pool?.connect()
      if (client === undefined) throw new Error('no pool')
      await client.query('BEGIN')
      const tx = db.provider.attach(client)
      await tx.run(() => producer.sendMessage(attachedMsg))
      await tx.commit()
      client.release()
    } else {
      // SQLite: the provider's connection is shared with its own queued work: attach() is refused,
      // and the handle of transaction() is passed explicitly instead.
      t.throws(() => db.provider.attach(db.sqlite as object), { code: 'QMQ_ERR_INVALID_ARGUMENT' })
      await db.provider.transaction(async (tx) => {
        await producer.sendMessage(attachedMsg, { transaction: tx })
        t.notOk(seen.has(attachedMsg.getMessageId()), 'not sent before COMMIT')
      })
    }
    await until(() => seen.size === 2, 15_000, 'both consumed')
    t.ok(seen.has(explicit.getMessageId()) && seen.has(attachedMsg.getMessageId()))
    const late = await producer
      .sendMessage(producer.generateMessage('order.explicit'), { transaction: handle as object })
      .catch((e: unknown) => e)
    t.ok(
      isQmqError(late, 'QMQ_ERR_TX_UNKNOWN') || isQmqError(late, 'QMQ_ERR_TX_STATE'),
      'a finished transaction is refused',
    )
  })

  t.test(`outbox ${dialect} - a failed outbox write rolls the transaction back`, async (t) => {
    const cluster = await openCluster(t)
    const db = await openDb(t, dialect)
    const producer = await openProducer(t, cluster, db)
    await db.sql(`DROP TABLE ${db.provider.outboxTable}`)
    const err = await db.provider
      .transaction(async (tx) => {
        await db.txSql(tx, `INSERT INTO ${db.orders} (id) VALUES (?)`, ['o-x'])
        void producer.sendMessage(producer.generateMessage('order.x')).catch(() => {})
      })
      .catch((e: unknown) => e)
    t.ok(
      isQmqError(err, 'QMQ_ERR_OUTBOX_WRITE'),
      `the transaction failed with the write error (${(err as Error).message})`,
    )
    t.equal(
      Number((await db.sql(`SELECT count(*) AS n FROM ${db.orders}`))[0]?.n),
      0,
      'the order was rolled back',
    )
  })
}

t.test('outbox - sendMessage with a transaction but no provider is refused', async (t) => {
  const cluster = await openCluster(t)
  const producer = await openProducer(t, cluster)
  const err = await producer
    .sendMessage(producer.generateMessage('x'), { transaction: {} })
    .catch((e: unknown) => e)
  t.ok(isQmqError(err, 'QMQ_ERR_TX_UNKNOWN'))
})
