import type { SqlAdapter, SqlParam, SqlRow } from './sql'

/**
 * PostgreSQL through node-postgres (`pg`). The SDK does not depend on `pg`: these are the few
 * members it uses, which a `pg.Pool` and a `pg.PoolClient` (or `pg.Client`) have.
 */
export interface PgQueryable {
  query(text: string, values?: unknown[]): Promise<{ rows: SqlRow[] }>
}

/** A checked-out connection of a pool (`pg.PoolClient`). */
export interface PgPoolClientLike extends PgQueryable {
  release(err?: Error | boolean): void
  /** pg emits 'error' on a checked-out client whose server went away between queries. */
  on?(event: 'error', listener: (err: Error) => void): unknown
  off?(event: 'error', listener: (err: Error) => void): unknown
}

/** A `pg.Pool`. */
export interface PgPoolLike extends PgQueryable {
  connect(): Promise<PgPoolClientLike>
}

/**
 * The adapter over a `pg.Pool`: each transaction checks a client out, runs BEGIN ... COMMIT on it and
 * hands the client (the transaction handle, `Tx`) to the caller. A connection that failed while
 * rolling back is destroyed rather than returned to the pool.
 */
export function pgAdapter(pool: PgPoolLike): SqlAdapter<PgQueryable> {
  return {
    dialect: 'postgres',
    paramStyle: '$',
    async transaction<T>(fn: (tx: PgQueryable) => Promise<T>): Promise<T> {
      const client = await pool.connect()
      let broken: Error | undefined
      // While the client is checked out, pg reports a lost server (e.g. shut down between two queries
      // of the transaction) as an 'error' event on it: without a listener that is an uncaught
      // exception. The failure also surfaces through the next query; the client is then destroyed.
      const onError = (err: Error) => {
        broken ??= err
      }
      client.on?.('error', onError)
      try {
        await client.query('BEGIN')
        try {
          const result = await fn(client)
          await client.query('COMMIT')
          return result
        } catch (err) {
          await client.query('ROLLBACK').catch((e: unknown) => {
            broken = e instanceof Error ? e : new Error(String(e))
          })
          throw err
        }
      } catch (err) {
        broken ??= isConnectionError(err) ? (err as Error) : undefined
        throw err
      } finally {
        client.off?.('error', onError)
        client.release(broken ?? false)
      }
    },
    async query(tx: PgQueryable | undefined, sql: string, params: readonly SqlParam[]): Promise<SqlRow[]> {
      const r = await (tx ?? pool).query(sql, params as unknown[])
      return r.rows ?? []
    },
  }
}

/** Errors after which a connection must not go back to the pool (socket gone, server shut down). */
function isConnectionError(err: unknown): boolean {
  const code = (err as { code?: unknown } | undefined)?.code
  if (typeof code === 'string' && (code.startsWith('08') || code === '57P01' || code.startsWith('E')))
    return true
  return err instanceof Error && /Connection terminated|not queryable|ECONNRE/.test(err.message)
}
