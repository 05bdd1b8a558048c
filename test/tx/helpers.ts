import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import { Pool } from 'pg'
import {
  type ConsumedMessage,
  MessageConsumerProvider,
  MessageProducerProvider,
  type OutboxOptions,
  postgresProvider,
  sqliteProvider,
  type TransactionProvider,
} from '../../src/client'
import { type Cluster, startCluster } from '../helpers/cluster'
import { type Postgres, startPostgres } from '../helpers/postgres'

type T = { teardown: (fn: () => unknown) => void }

export type Dialect = 'sqlite' | 'postgres'

export async function until(cond: () => boolean | Promise<boolean>, ms = 15_000, what = 'condition') {
  const end = Date.now() + ms
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`${what} not met in ${ms} ms`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

let pgServer: Promise<Postgres> | undefined

/** One PostgreSQL per test file (started on first use); call stopSharedPostgres() in a top-level teardown. */
export function sharedPostgres(): Promise<Postgres> {
  pgServer ??= startPostgres()
  return pgServer
}

export async function stopSharedPostgres(): Promise<void> {
  if (pgServer !== undefined) await (await pgServer).close()
  pgServer = undefined
}

let seq = 0

/** A database of a dialect with fresh tables (orders, outbox, processed) for one test. */
export interface TestDb {
  dialect: Dialect
  // biome-ignore lint/suspicious/noExplicitAny: the handle type differs by dialect
  provider: TransactionProvider<any>
  /** The CLI's --db. */
  url: string
  orders: string
  /** A statement with `?` placeholders on its own connection. */
  sql(text: string, params?: (string | number | Buffer | null)[]): Promise<Record<string, unknown>[]>
  /** A statement in a transaction handle of the provider. */
  txSql(tx: object, text: string, params?: (string | number | null)[]): Promise<unknown>
  pg?: Postgres
  pool?: Pool
  sqlite?: Database.Database
}

export async function openDb(t: T, dialect: Dialect): Promise<TestDb> {
  const n = ++seq
  const names = { outboxTable: `outbox_${n}`, processedTable: `processed_${n}` }
  const orders = `orders_${n}`
  if (dialect === 'sqlite') {
    const dir = mkdtempSync(join(tmpdir(), 'qmq-tx-sqlite-'))
    const file = join(dir, 'app.db')
    const db = new Database(file, { timeout: 10_000 })
    db.pragma('journal_mode = WAL')
    const provider = sqliteProvider(db, names)
    await provider.migrate()
    db.exec(`CREATE TABLE ${orders} (id TEXT PRIMARY KEY)`)
    t.teardown(() => {
      db.close()
      rmSync(dir, { recursive: true, force: true })
    })
    return {
      dialect,
      provider,
      url: `sqlite:${file}`,
      orders,
      sqlite: db,
      sql: (text, params = []) => provider.query(undefined, text, params),
      txSql: (tx, text, params = []) => provider.query(tx as never, text, params),
    }
  }
  const pg = await sharedPostgres()
  const pool = new Pool({ connectionString: pg.url, max: 10 })
  pool.on('error', () => {}) // idle clients lost while the server is stopped on purpose
  const provider = postgresProvider(pool, names)
  await provider.migrate()
  await pool.query(`CREATE TABLE ${orders} (id text PRIMARY KEY)`)
  t.teardown(() => pool.end())
  return {
    dialect,
    provider,
    url: pg.url,
    orders,
    pg,
    pool,
    sql: (text, params = []) => provider.query(undefined, text, params),
    txSql: (tx, text, params = []) => provider.query(tx as never, text, params),
  }
}

export async function openCluster(t: T, delay = false): Promise<Cluster> {
  const dir = mkdtempSync(join(tmpdir(), 'qmq-tx-'))
  const cluster = await startCluster({ dir, delay })
  t.teardown(async () => {
    await cluster.close()
    rmSync(dir, { recursive: true, force: true })
  })
  return cluster
}

export async function openProducer(
  t: T,
  cluster: Cluster,
  db?: TestDb,
  outbox: Partial<OutboxOptions> = {},
): Promise<MessageProducerProvider> {
  const producer = new MessageProducerProvider({ appCode: 'tx-test', metaServer: cluster.metaUrl })
  await producer.init()
  if (db !== undefined) producer.setTransactionProvider(db.provider, { watchdogIntervalMs: 100, ...outbox })
  t.teardown(() => producer.close())
  return producer
}

/** Every message of `subject` the consumer group sees: id -> deliveries. */
export async function collect(
  t: T,
  cluster: Cluster,
  subject: string,
  handler?: (m: ConsumedMessage) => unknown,
): Promise<{ seen: Map<string, ConsumedMessage[]>; consumer: MessageConsumerProvider }> {
  const seen = new Map<string, ConsumedMessage[]>()
  const consumer = new MessageConsumerProvider({
    appCode: 'tx-test',
    metaServer: cluster.metaUrl,
    pullTimeoutMs: 300,
  })
  consumer.addListener(
    subject,
    'g',
    async (m) => {
      const list = seen.get(m.getMessageId()) ?? []
      list.push(m)
      seen.set(m.getMessageId(), list)
      if (handler) await handler(m)
    },
    { startFrom: 'earliest' },
  )
  await consumer.start()
  t.teardown(() => consumer.close())
  return { seen, consumer }
}

export async function outboxRows(db: TestDb): Promise<number> {
  const r = await db.sql(`SELECT count(*) AS n FROM ${db.provider.outboxTable}`)
  return Number(r[0]?.n)
}
