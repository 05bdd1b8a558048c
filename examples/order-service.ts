/**
 * An order service with transactional messages: each order is inserted and its `order.created`
 * message sent in ONE database transaction (the message leaves only if the order is committed), and
 * a billing consumer makes one invoice per order however often a message is delivered
 * (IdempotentChecker: the invoice and the "processed" record commit together).
 *
 * Run against a local cluster (`npm start` in another terminal):
 *   npx tsx examples/order-service.ts                                  (SQLite file ./orders.db)
 *   DB=postgres://postgres@127.0.0.1:5432/postgres npx tsx examples/order-service.ts   (needs `pg`)
 * QMQ_META defaults to http://127.0.0.1:8080/meta/address.
 * In your application, import from 'qmq' instead of '../src/client'.
 */
import {
  IdempotentChecker,
  MessageConsumerProvider,
  MessageProducerProvider,
  postgresProvider,
  sqliteProvider,
  type TransactionProvider,
} from '../src/client'

const metaServer = process.env.QMQ_META ?? 'http://127.0.0.1:8080/meta/address'
const dbUrl = process.env.DB ?? 'sqlite:orders.db'

/** The provider over the database of DB. */
async function openDatabase(): Promise<{
  provider: TransactionProvider<object>
  close: () => Promise<void>
}> {
  if (dbUrl.startsWith('postgres')) {
    const { Pool } = await import('pg')
    const pool = new Pool({ connectionString: dbUrl })
    return { provider: postgresProvider(pool), close: () => pool.end() }
  }
  const Database = (await import('better-sqlite3')).default
  const db = new Database(dbUrl.slice('sqlite:'.length), { timeout: 5_000 })
  db.pragma('journal_mode = WAL')
  return {
    provider: sqliteProvider(db),
    close: async () => {
      db.close()
    },
  }
}

async function main(): Promise<void> {
  const { provider, close } = await openDatabase()
  // provider.query(tx, sql, params): `?` placeholders on both databases. With your own driver, use
  // `tx` directly: the pg client (PostgreSQL) or the Database (SQLite) running the transaction.
  const run = (tx: object, sql: string, params: (string | number)[]) => provider.query(tx, sql, params)
  // The outbox and processed tables (docs/transactions.md shows the SQL), then the app's own tables.
  await provider.migrate()
  await provider.transaction(async (tx) => {
    await run(tx, 'CREATE TABLE IF NOT EXISTS orders (id text PRIMARY KEY, total integer NOT NULL)', [])
    await run(
      tx,
      'CREATE TABLE IF NOT EXISTS invoices (order_id text PRIMARY KEY, amount integer NOT NULL)',
      [],
    )
  })

  const producer = new MessageProducerProvider({ appCode: 'order-service', metaServer })
  await producer.init()
  producer.setTransactionProvider(provider)

  // Billing: one invoice per order, even when order.created is delivered twice.
  const checker = new IdempotentChecker(provider)
  const consumer = new MessageConsumerProvider({ appCode: 'billing', metaServer })
  let billed = 0
  consumer.addListener(
    'order.created',
    'billing',
    checker.wrap('billing', async (message, tx) => {
      const orderId = message.getStringProperty('orderId') ?? ''
      const total = message.getIntProperty('total') ?? 0
      await run(tx, 'INSERT INTO invoices (order_id, amount) VALUES (?, ?)', [orderId, total])
      billed++
      console.log(`billing: invoiced ${orderId} (${total})`)
    }),
  )
  await consumer.start()

  const runId = Date.now().toString(36)
  const orders = [
    { id: `${runId}-1`, total: 120 },
    { id: `${runId}-2`, total: -5 }, // refused: rolled back, its message never sent
    { id: `${runId}-3`, total: 42 },
  ]
  for (const order of orders) {
    try {
      await provider.transaction(async (tx) => {
        await run(tx, 'INSERT INTO orders (id, total) VALUES (?, ?)', [order.id, order.total])
        const message = producer.generateMessage('order.created')
        message.setProperty('orderId', order.id).setProperty('total', order.total)
        await producer.sendMessage(message) // written to the outbox in this transaction
        if (order.total < 0) throw new Error(`order ${order.id}: total must be positive`)
      })
      console.log(`orders: ${order.id} committed; order.created sent after COMMIT`)
    } catch (err) {
      console.log(`orders: ${(err as Error).message}; rolled back, nothing sent`)
    }
  }

  const deadline = Date.now() + 15_000
  while (billed < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100))
  console.log(billed === 2 ? 'done: 2 orders, 2 invoices' : `timed out: ${billed} invoices`)
  await consumer.close()
  await producer.close()
  checker.close()
  await close()
  process.exitCode = billed === 2 ? 0 : 1
}

void main()
