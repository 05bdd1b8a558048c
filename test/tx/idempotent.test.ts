import t from 'tap'
import {
  type ConsumedMessage,
  IdempotentChecker,
  type IdempotentOutcome,
  MessageConsumerProvider,
  QmqConsumer,
} from '../../src/client'
import {
  collect,
  type Dialect,
  openCluster,
  openDb,
  openProducer,
  stopSharedPostgres,
  until,
} from './helpers'

/** The idempotent consumer on a real SQLite file and a real PostgreSQL, messages through a real cluster. */
t.teardown(stopSharedPostgres)

for (const dialect of ['sqlite', 'postgres'] as Dialect[]) {
  t.test(`idempotent ${dialect} - a redelivered message is applied once`, async (t) => {
    const cluster = await openCluster(t)
    const db = await openDb(t, dialect)
    const producer = await openProducer(t, cluster)
    const checker = new IdempotentChecker(db.provider)
    t.teardown(() => checker.close())
    const outcomes: IdempotentOutcome[] = []
    let lostAcks = 0
    const { seen } = await collect(t, cluster, 'pay', async (m: ConsumedMessage) => {
      outcomes.push(
        await checker.process('billing', m, async (msg, tx) => {
          await db.txSql(tx, `INSERT INTO ${db.orders} (id) VALUES (?)`, [
            msg.getStringProperty('order') ?? '',
          ])
        }),
      )
      // The handler's transaction committed; the ack is "lost" (the handler fails after it): the
      // broker redelivers the message.
      if (m.getDeliveryCount() === 1) {
        lostAcks++
        throw new Error('crashed after commit, before the ack')
      }
    })
    const m = producer.generateMessage('pay').setProperty('order', 'o-7')
    await producer.sendMessage(m)
    await until(() => outcomes.length === 2, 20_000, 'two deliveries')
    t.equal(lostAcks, 1)
    t.same(outcomes, ['applied', 'duplicate'], 'the second delivery was skipped')
    t.equal(seen.get(m.getMessageId())?.length, 2, 'the broker did deliver it twice')
    const rows = await db.sql(`SELECT id FROM ${db.orders}`)
    t.same(
      rows.map((r) => r.id),
      ['o-7'],
      'the business write happened once',
    )
  })

  t.test(
    `idempotent ${dialect} - the addListener option: a failed handler rolls back its writes and its record`,
    async (t) => {
      const cluster = await openCluster(t)
      const db = await openDb(t, dialect)
      const producer = await openProducer(t, cluster)
      const checker = new IdempotentChecker(db.provider, { expireIntervalMs: 0 })
      const deliveries: number[] = []
      const { consumer } = await collect(t, cluster, 'unused.subject')
      consumer.addListener(
        'ship',
        'shipping',
        async (m) => {
          deliveries.push(m.getDeliveryCount())
          const tx = db.provider.current()
          if (tx === undefined) throw new Error('no transaction around the handler')
          await db.txSql(tx, `INSERT INTO ${db.orders} (id) VALUES (?)`, [m.getMessageId()])
          if (m.getDeliveryCount() === 1) throw new Error('fails after its write: rolled back')
        },
        { idempotent: checker, startFrom: 'earliest' },
      )
      const m = producer.generateMessage('ship')
      await producer.sendMessage(m)
      await until(
        async () => {
          const r = await db.sql(`SELECT count(*) AS n FROM ${db.provider.processedTable}`)
          return Number(r[0]?.n) === 1
        },
        20_000,
        'processed record',
      )
      t.same(deliveries, [1, 2], 'the failed first delivery was redelivered and applied')
      const rows = await db.sql(`SELECT id FROM ${db.orders}`)
      t.same(
        rows.map((r) => r.id),
        [m.getMessageId()],
        'only the committed delivery wrote',
      )
    },
  )

  t.test(`idempotent ${dialect} - expire() deletes records older than the retention`, async (t) => {
    const db = await openDb(t, dialect)
    const checker = new IdempotentChecker(db.provider, { retentionMs: 60_000, expireIntervalMs: 0 })
    const now = Date.now()
    await db.sql(
      `INSERT INTO ${db.provider.processedTable} (consumer_group, message_id, processed_at) VALUES (?, ?, ?)`,
      ['g', 'old', now - 120_000],
    )
    await db.sql(
      `INSERT INTO ${db.provider.processedTable} (consumer_group, message_id, processed_at) VALUES (?, ?, ?)`,
      ['g', 'new', now - 1_000],
    )
    await checker.expire(now)
    const rows = await db.sql(`SELECT message_id FROM ${db.provider.processedTable}`)
    t.same(
      rows.map((r) => r.message_id),
      ['new'],
    )
  })
}

t.test(
  'idempotent - the @QmqConsumer option runs the decorated handler in the checker transaction',
  async (t) => {
    const cluster = await openCluster(t)
    const db = await openDb(t, 'sqlite')
    const producer = await openProducer(t, cluster)
    const checker = new IdempotentChecker(db.provider, { expireIntervalMs: 0 })
    const inTx: boolean[] = []
    class Shipping {
      @QmqConsumer({
        subject: 'decorated',
        consumerGroup: 'shipping',
        idempotent: checker,
        startFrom: 'earliest',
      })
      async onMessage(m: ConsumedMessage): Promise<void> {
        const tx = db.provider.current()
        inTx.push(tx !== undefined)
        if (tx !== undefined)
          await db.txSql(tx, `INSERT INTO ${db.orders} (id) VALUES (?)`, [m.getMessageId()])
      }
    }
    const consumer = new MessageConsumerProvider({
      appCode: 'tx-test',
      metaServer: cluster.metaUrl,
      pullTimeoutMs: 300,
    })
    consumer.register(new Shipping())
    await consumer.start()
    t.teardown(() => consumer.close())
    const m = producer.generateMessage('decorated')
    await producer.sendMessage(m)
    await until(
      async () => {
        const r = await db.sql(
          `SELECT count(*) AS n FROM ${db.provider.processedTable} WHERE message_id = ?`,
          [m.getMessageId()],
        )
        return Number(r[0]?.n) === 1
      },
      20_000,
      'processed record',
    )
    t.same(inTx, [true], 'the handler ran once, inside the transaction')
    const rows = await db.sql(`SELECT id FROM ${db.orders}`)
    t.same(
      rows.map((r) => r.id),
      [m.getMessageId()],
    )
  },
)
