import type { SqlAdapter, SqlParam, SqlRow } from './sql'

/**
 * SQLite through better-sqlite3. The SDK already depends on better-sqlite3; these are the members of
 * its `Database` the adapter uses.
 */
export interface SqliteDatabaseLike {
  prepare(sql: string): {
    reader: boolean
    all(...params: unknown[]): unknown[]
    run(...params: unknown[]): unknown
  }
  exec(sql: string): unknown
  readonly inTransaction: boolean
}

/**
 * The adapter over one better-sqlite3 connection. Its statements run synchronously, so a
 * transaction that awaits (an async `fn`) would take in whatever else runs on the connection
 * meanwhile: transactions through this adapter are queued and run one at a time, with BEGIN IMMEDIATE
 * (the write lock up front: several processes on one file serialize instead of failing with BUSY at
 * COMMIT; the connection's busy timeout bounds the wait). Do not write on the same connection outside
 * the provider while one of its async transactions runs.
 */
export function sqliteAdapter(db: SqliteDatabaseLike): SqlAdapter<SqliteDatabaseLike> {
  let queue: Promise<unknown> = Promise.resolve()
  const statements = new Map<string, ReturnType<SqliteDatabaseLike['prepare']>>()
  const prepared = (sql: string) => {
    let s = statements.get(sql)
    if (s === undefined) {
      s = db.prepare(sql)
      if (statements.size < 256) statements.set(sql, s)
    }
    return s
  }
  const serial = <T>(run: () => Promise<T>): Promise<T> => {
    const p = queue.then(run, run)
    queue = p.catch(() => {})
    return p
  }
  return {
    dialect: 'sqlite',
    paramStyle: '?',
    transaction<T>(fn: (tx: SqliteDatabaseLike) => Promise<T>): Promise<T> {
      const run = async (): Promise<T> => {
        db.exec('BEGIN IMMEDIATE')
        try {
          const result = await fn(db)
          db.exec('COMMIT')
          return result
        } catch (err) {
          if (db.inTransaction) db.exec('ROLLBACK')
          throw err
        }
      }
      return serial(run)
    },
    // `tx` is always this adapter's own connection (transaction() hands it out; attach() is refused
    // for SQLite), so statements are prepared on `db` and cached.
    query(tx: SqliteDatabaseLike | undefined, sql: string, params: readonly SqlParam[]): Promise<SqlRow[]> {
      const run = async (): Promise<SqlRow[]> => {
        const s = prepared(sql)
        if (s.reader) return s.all(...params) as SqlRow[]
        s.run(...params)
        return []
      }
      // Inside a transaction: now (it holds the connection). On its own: after the running
      // transaction, so it does not land inside it.
      return tx !== undefined ? run() : serial(run)
    },
  }
}
