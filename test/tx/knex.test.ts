import knexFactory from 'knex'
import t from 'tap'
import { OUTBOX_GROUP } from '../../src/client'
import { knexProvider } from '../../examples/knex-adapter'
import { collect, openCluster, openProducer, sharedPostgres, stopSharedPostgres, until } from './helpers'

/** The Knex example adapter (examples/knex-adapter.ts) on a real PostgreSQL: commit sends, rollback does not. */
t.teardown(stopSharedPostgres)

t.test('knex adapter - a commit sends, a rollback sends nothing', async (t) => {
  const pg = await sharedPostgres()
  const knex = knexFactory({ client: 'pg', connection: pg.url, pool: { min: 0, max: 4 } })
  t.teardown(() => knex.destroy())
  const provider = knexProvider(knex, { outboxTable: 'knex_outbox', processedTable: 'knex_processed' })
  await provider.migrate()
  await knex.schema.createTable('knex_orders', (tb) => tb.text('id').primary())
  const cluster = await openCluster(t)
  const producer = await openProducer(t, cluster)
  producer.setTransactionProvider(provider, { watchdogIntervalMs: 100 })
  const { seen } = await collect(t, cluster, 'order.knex')

  const kept = producer.generateMessage('order.knex')
  await provider.transaction(async (trx) => {
    await trx('knex_orders').insert({ id: 'k-1' })
    const r = await producer.sendMessage(kept)
    t.equal(r.group, OUTBOX_GROUP)
  })
  const dropped = producer.generateMessage('order.knex')
  await provider
    .transaction(async (trx) => {
      await trx('knex_orders').insert({ id: 'k-2' })
      await producer.sendMessage(dropped)
      throw new Error('rolled back')
    })
    .catch(() => {})
  const after = producer.generateMessage('order.knex')
  await producer.sendMessage(after)
  await until(
    () => seen.has(kept.getMessageId()) && seen.has(after.getMessageId()),
    15_000,
    'messages consumed',
  )
  t.notOk(seen.has(dropped.getMessageId()), 'the rolled-back message was never sent')
  t.same(
    (await knex('knex_orders').select('id')).map((r: { id: string }) => r.id),
    ['k-1'],
  )
  await until(
    async () => Number((await knex('knex_outbox').count({ n: '*' }))[0]?.n) === 0,
    5_000,
    'outbox empty',
  )
})
