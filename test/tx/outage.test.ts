import t from 'tap'
import { collect, openCluster, openDb, openProducer, outboxRows, stopSharedPostgres, until } from './helpers'

/**
 * The database down for a while: transactions run in a loop while PostgreSQL is stopped and started
 * again. Whatever happened to each transaction (committed, failed, or its COMMIT cut off), a message
 * is delivered if and only if its order row exists, and the outbox ends empty.
 */
t.teardown(stopSharedPostgres)

t.test(
  'outage postgres - the server going away during a transaction fails it, not the process',
  async (t) => {
    const db = await openDb(t, 'postgres')
    const pg = db.pg
    if (pg === undefined) throw new Error('no postgres')
    const err = await db.provider
      .transaction(async (tx) => {
        await db.txSql(tx, `INSERT INTO ${db.orders} (id) VALUES (?)`, ['o-gone'])
        // The connection is checked out and idle when the server shuts down.
        await pg.stop()
        await db.txSql(tx, `INSERT INTO ${db.orders} (id) VALUES (?)`, ['o-gone-2'])
      })
      .catch((e: unknown) => e)
    t.ok(err instanceof Error, `the transaction rejected (${(err as Error).message})`)
    await pg.start()
    const rows = await db.sql(`SELECT count(*) AS n FROM ${db.orders}`)
    t.equal(Number(rows[0]?.n), 0, 'nothing of it was committed')
  },
)

t.test('outage postgres - the database down for a while loses nothing and sends nothing extra', async (t) => {
  const cluster = await openCluster(t)
  const db = await openDb(t, 'postgres')
  const pg = db.pg
  if (pg === undefined) throw new Error('no postgres')
  const producer = await openProducer(t, cluster, db, { watchdogIntervalMs: 100, watchdogMinAgeMs: 300 })
  const { seen } = await collect(t, cluster, 'order.outage')
  let committed = 0
  let failed = 0
  let stop = false
  let n = 0
  const loop = (async () => {
    while (!stop) {
      const id = `o-${n++}`
      try {
        await db.provider.transaction(async (tx) => {
          await db.txSql(tx, `INSERT INTO ${db.orders} (id) VALUES (?)`, [id])
          await producer.sendMessage(producer.generateMessage('order.outage').setProperty('order', id))
        })
        committed++
      } catch {
        failed++
        await new Promise((r) => setTimeout(r, 20))
      }
    }
  })()
  await until(() => committed >= 30, 20_000, '30 commits before the outage')
  await pg.stop()
  const failedBefore = failed
  await until(() => failed > failedBefore + 3, 20_000, 'transactions failing while the database is down')
  await new Promise((r) => setTimeout(r, 500))
  await pg.start()
  const after = committed
  await until(() => committed >= after + 30, 30_000, '30 commits after the restart')
  stop = true
  await loop
  t.comment(`${committed} committed, ${failed} failed`)
  await until(async () => (await outboxRows(db).catch(() => -1)) === 0, 20_000, 'outbox drained')
  const orders = (await db.sql(`SELECT id FROM ${db.orders}`)).map((r) => String(r.id)).sort()
  t.ok(orders.length >= committed, 'every transaction that resolved has its order')
  const ordersOf = () =>
    [...new Set([...seen.values()].map((list) => list[0]?.getStringProperty('order') ?? ''))].sort()
  await until(() => ordersOf().length >= orders.length, 20_000, 'a message for every order')
  t.same(ordersOf(), orders, 'a message was delivered for exactly the orders that exist')
})
