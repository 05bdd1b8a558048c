/**
 * Transactional sends (docs/transactions.md): transactions per second on PostgreSQL and SQLite with
 * 1 and 100 messages per transaction, side by side with the same transactions without messages.
 *
 *   node --import tsx bench/tx-outbox.ts [--quick]      (BENCH_SECONDS per case: default 5, quick 1)
 *
 * Each transaction inserts one order row; the transactional cases also send 1 or 100 messages in it
 * (one outbox INSERT each; after COMMIT the producer sends them and deletes their rows). A case runs
 * `CONCURRENCY` transaction loops for BENCH_SECONDS and then waits until every message is stored and
 * the outbox is empty: the rate counts that drain. PostgreSQL 15 runs from test/helpers/postgres.ts
 * (fsync off, synchronous_commit off: the database's own disk cost is left out, the outbox's
 * statements are not); SQLite is a file in WAL mode with its default synchronous setting. The
 * metaserver and two broker groups run in this process (test/helpers/cluster.ts). Prints JSON lines:
 *   { "bench": "tx-outbox", "metric": "postgres 100 msgs/tx", "value": n, "unit": "tx/s" } and the
 *   ratio to the transactions without messages ("... vs none", unit "x").
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import { Pool } from 'pg'
import {
  MessageProducerProvider,
  postgresProvider,
  sqliteProvider,
  type TransactionProvider,
} from '../src/client'
import { startCluster } from '../test/helpers/cluster'
import { startPostgres } from '../test/helpers/postgres'
import { quick, report } from './common'

const SECONDS = Number(process.env.BENCH_SECONDS ?? (quick ? 1 : 5))
const CONCURRENCY = 8
let nextId = 0

async function runCase(
  // biome-ignore lint/suspicious/noExplicitAny: pg client or SQLite database
  provider: TransactionProvider<any>,
  producer: MessageProducerProvider | undefined,
  perTx: number,
  orders: string,
): Promise<number> {
  let txs = 0
  const end = performance.now() + SECONDS * 1000
  const started = performance.now()
  const body = 'x'.repeat(200)
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (performance.now() < end) {
        const id = `o-${nextId++}`
        await provider.transaction(async (tx) => {
          await provider.query(tx, `INSERT INTO ${orders} (id, body) VALUES (?, ?)`, [id, body])
          if (producer === undefined) return
          for (let i = 0; i < perTx; i++) {
            await producer.sendMessage(
              producer.generateMessage('bench.tx').setProperty('order', id).setBody(body),
            )
          }
        })
        txs++
      }
    }),
  )
  // The messages of the last transactions are stored and their rows gone before the clock stops.
  for (;;) {
    const r = await provider.query(undefined, `SELECT count(*) AS n FROM ${provider.outboxTable}`, [])
    if (Number(r[0]?.n) === 0) break
    await new Promise((res) => setTimeout(res, 5))
  }
  return txs / ((performance.now() - started) / 1000)
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'qmq-bench-tx-'))
  const cluster = await startCluster({ dir })
  const pg = await startPostgres()
  const pool = new Pool({ connectionString: pg.url, max: CONCURRENCY })
  const sqlite = new Database(join(dir, 'app.db'), { timeout: 10_000 })
  sqlite.pragma('journal_mode = WAL')
  try {
    const cases: [string, TransactionProvider<object>][] = [
      ['postgres', postgresProvider(pool) as TransactionProvider<object>],
      ['sqlite', sqliteProvider(sqlite) as TransactionProvider<object>],
    ]
    for (const [name, provider] of cases) {
      await provider.migrate()
      await provider.query(undefined, 'CREATE TABLE orders (id text PRIMARY KEY, body text NOT NULL)', [])
      const producer = new MessageProducerProvider({ appCode: 'bench-tx', metaServer: cluster.metaUrl })
      await producer.init()
      producer.setTransactionProvider(provider, { watchdog: false })
      await runCase(provider, producer, 1, 'orders') // warm-up: routes, connections, JIT
      for (const perTx of [1, 100]) {
        const none = await runCase(provider, undefined, perTx, 'orders')
        const withMessages = await runCase(provider, producer, perTx, 'orders')
        const label = `${name} ${perTx} msg${perTx > 1 ? 's' : ''}/tx`
        report({
          bench: 'tx-outbox',
          metric: `${label} (no messages)`,
          value: Math.round(none),
          unit: 'tx/s',
        })
        report({ bench: 'tx-outbox', metric: label, value: Math.round(withMessages), unit: 'tx/s' })
        report({
          bench: 'tx-outbox',
          metric: `${label} vs none`,
          value: Math.round((withMessages / none) * 1000) / 1000,
          unit: 'x',
        })
        report({
          bench: 'tx-outbox',
          metric: `${label} messages`,
          value: Math.round(withMessages * perTx),
          unit: 'msgs/s',
        })
      }
      await producer.close()
    }
  } finally {
    await pool.end()
    sqlite.close()
    await pg.close()
    await cluster.close()
    rmSync(dir, { recursive: true, force: true })
  }
}

void main().catch((err: unknown) => {
  console.error(err)
  process.exitCode = 1
})
