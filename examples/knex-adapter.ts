/**
 * A transaction provider over Knex: the SqlAdapter interface (src/client/tx/sql.ts) in a dozen
 * lines. Kysely, Drizzle and Prisma adapters look the same: run a transaction, run raw SQL in it.
 * Tested in test/tx/knex.test.ts (PostgreSQL through Knex's 'pg' client).
 * In your application, import from 'qmq' instead of '../src/client'.
 */
import type { Knex } from 'knex'
import {
  type SqlAdapter,
  type SqlRow,
  TransactionProvider,
  type TransactionProviderOptions,
} from '../src/client'

export function knexAdapter(knex: Knex): SqlAdapter<Knex.Transaction> {
  const client = String(knex.client.config.client)
  const postgres = ['pg', 'postgres', 'postgresql'].includes(client)
  return {
    dialect: postgres ? 'postgres' : 'sqlite',
    paramStyle: '?', // knex.raw binds '?' on every database
    // Knex commits when the callback resolves and rolls back when it throws: what the adapter needs.
    transaction: (fn) => knex.transaction((trx) => fn(trx)),
    async query(tx, sql, params) {
      const result = await (tx ?? knex).raw(sql, params as Knex.RawBinding[])
      // pg answers { rows }, the SQLite clients an array of rows.
      return (postgres ? result.rows : result) ?? ([] as SqlRow[])
    },
  }
}

/** `knexProvider(knex)`: give it to producer.setTransactionProvider() and IdempotentChecker. */
export function knexProvider(
  knex: Knex,
  options?: TransactionProviderOptions,
): TransactionProvider<Knex.Transaction> {
  return new TransactionProvider(knexAdapter(knex), options)
}
