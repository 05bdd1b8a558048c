import { Registry } from 'prom-client'
import t from 'tap'
import { Message, MessageProducerProvider } from '../../src/client'
import { encodeRecord } from '../../src/common/record'
import { collect, type Dialect, openCluster, openDb, outboxRows, stopSharedPostgres, until } from './helpers'

/**
 * The in-process watchdog: rows left behind are resent; a row that cannot be sent is kept, counted
 * and retried, never dropped; the outbox gauges and counters.
 */
t.teardown(stopSharedPostgres)

for (const dialect of ['sqlite', 'postgres'] as Dialect[]) {
  t.test(
    `watchdog ${dialect} - resends rows left behind, keeps a failing row, and reports it in metrics`,
    async (t) => {
      const cluster = await openCluster(t)
      const db = await openDb(t, dialect)
      const { seen } = await collect(t, cluster, 'order.left')
      const old = Date.now() - 120_000
      const left = Message.create('order.left').setProperty('k', 'v')
      const insert = `INSERT INTO ${db.provider.outboxTable} (message_id, subject, record, deliver_at, created_at) VALUES (?, ?, ?, ?, ?)`
      await db.sql(insert, [left.getMessageId(), 'order.left', encodeRecord(left.toRecord()), null, old])
      const bad = encodeRecord(Message.create('order.left').toRecord())
      bad.writeUInt8((bad.at(-1) as number) ^ 0xff, bad.length - 1) // fails its CRC: can never be sent
      await db.sql(insert, ['bad-row', 'order.left', bad, null, old - 1])

      const registry = new Registry()
      const producer = new MessageProducerProvider({
        appCode: 'tx-test',
        metaServer: cluster.metaUrl,
        registry,
      })
      await producer.init()
      producer.setTransactionProvider(db.provider, { watchdogIntervalMs: 50, watchdogMinAgeMs: 1_000 })
      t.teardown(() => producer.close())

      await until(() => seen.has(left.getMessageId()), 15_000, 'the row left behind delivered')
      const value = async (name: string) => {
        const m = (await registry.getMetricsAsJSON()).find((x) => x.name === name)
        return Number((m?.values as { value: number }[] | undefined)?.[0]?.value ?? Number.NaN)
      }
      await until(
        async () => (await value('qmq_outbox_resend_failures_total')) >= 2,
        10_000,
        'failures counted',
      )
      await until(async () => (await outboxRows(db)) === 1, 10_000, 'the good row deleted')
      const kept = await db.sql(`SELECT message_id, attempts, last_error FROM ${db.provider.outboxTable}`)
      t.equal(kept[0]?.message_id, 'bad-row', 'the failing row is kept')
      t.ok(Number(kept[0]?.attempts) >= 2, 'its attempts are counted in the row')
      t.match(String(kept[0]?.last_error), /CRC/i, 'with the last error')
      t.equal(await value('qmq_outbox_resent_messages_total'), 1)
      await until(async () => (await value('qmq_outbox_pending_rows')) === 1, 5_000, 'pending gauge')
      t.ok((await value('qmq_outbox_oldest_row_age_seconds')) >= 100, 'oldest row age')
    },
  )
}
