import { QmqError } from '../../common/errors'

/**
 * The small SQL surface the transactional outbox and the idempotent checker run on. The bundled
 * adapters (pg.ts: node-postgres, sqlite.ts: better-sqlite3) implement it; a Knex, Kysely, Drizzle
 * or Prisma user implements it in a dozen lines over their own transaction (docs/transactions.md).
 *
 * `Tx` is the caller's transaction handle: a pg client, the better-sqlite3 Database, a Knex `trx`.
 */
export interface SqlAdapter<Tx extends object> {
  /** Decides the SQL the outbox uses: row claiming and column types. */
  readonly dialect: SqlDialect
  /**
   * How `query` numbers parameters: '$' ($1, $2: pg) or '?' (better-sqlite3, Knex raw).
   * Default: '$' for postgres, '?' for sqlite.
   */
  readonly paramStyle?: '$' | '?'
  /**
   * Runs `fn` in a new transaction on one connection: commit when it resolves, roll back (and
   * rethrow) when it rejects. Resolves only after COMMIT succeeded.
   */
  transaction<T>(fn: (tx: Tx) => Promise<T>): Promise<T>
  /**
   * Runs one statement inside `tx`, or on its own (autocommit) when `tx` is undefined, and returns the
   * rows (`[]` when there are none). Parameters: strings, numbers, Buffers, null.
   */
  query(tx: Tx | undefined, sql: string, params: readonly SqlParam[]): Promise<SqlRow[]>
}

export type SqlDialect = 'postgres' | 'sqlite'
export type SqlParam = string | number | Buffer | null
export type SqlRow = Record<string, unknown>

const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$/

/** Table names go into SQL text: only plain (optionally schema-qualified) identifiers. */
export function checkTableName(name: string, what: string): string {
  if (typeof name !== 'string' || !IDENTIFIER.test(name)) {
    throw new QmqError(
      'QMQ_ERR_INVALID_ARGUMENT',
      `${what} must be a plain SQL identifier like qmq_outbox or app.qmq_outbox (got ${JSON.stringify(name)})`,
    )
  }
  return name
}

/** Rewrites `?` placeholders as `$1, $2, ...` when the adapter wants them (no `?` in our SQL text). */
export function placeholders(sql: string, style: '$' | '?'): string {
  if (style === '?') return sql
  let n = 0
  return sql.replace(/\?/g, () => `$${++n}`)
}

/** `?, ?, ?` for an IN list of `n` values. */
export function inList(n: number): string {
  return Array.from({ length: n }, () => '?').join(', ')
}

/**
 * The outbox table. One row per message sent inside a transaction, written in that transaction and
 * deleted once a broker (or delay) group stored the message:
 *
 *   message_id     the message's id: the resend after a crash uses it, so broker dedupe drops copies
 *   subject        for operators (the record carries it too)
 *   record         the message record exactly as the producer encodes it (src/common/record.ts,
 *                  CRC included): what is sent, byte for byte
 *   deliver_at     ms since the epoch when the message is delayed, else NULL (also in the record)
 *   created_at     ms since the epoch when the row was written; the watchdog takes the oldest first
 *   attempts       failed resends by the watchdog (rows that keep failing are kept, never dropped)
 *   last_error     the last resend failure, for operators
 *   claimed_until  no watchdog takes the row before then (ms since the epoch; 0 = free): on SQLite a
 *                  watchdog's claim while it sends; on both, the wait after a failed resend.
 *                  (PostgreSQL claims with SELECT ... FOR UPDATE SKIP LOCKED instead.)
 *
 * The index on created_at serves the watchdog's "oldest rows first" scan and the age metric.
 */
export function outboxMigration(dialect: SqlDialect, table = 'qmq_outbox'): string[] {
  checkTableName(table, 'outbox table')
  const bytes = dialect === 'postgres' ? 'bytea' : 'BLOB'
  const int64 = dialect === 'postgres' ? 'bigint' : 'INTEGER'
  const index = `${table.replace('.', '_')}_created_at_idx`
  const schema = table.includes('.') ? `${table.slice(0, table.indexOf('.'))}.` : ''
  return [
    `CREATE TABLE IF NOT EXISTS ${table} (
  message_id    text PRIMARY KEY,
  subject       text NOT NULL,
  record        ${bytes} NOT NULL,
  deliver_at    ${int64},
  created_at    ${int64} NOT NULL,
  attempts      integer NOT NULL DEFAULT 0,
  last_error    text,
  claimed_until ${int64} NOT NULL DEFAULT 0
)`,
    dialect === 'postgres'
      ? `CREATE INDEX IF NOT EXISTS ${index.replace(/^.*\./, '')} ON ${table} (created_at)`
      : `CREATE INDEX IF NOT EXISTS ${schema}${index.replace(/^.*\./, '')} ON ${table.replace(/^.*\./, '')} (created_at)`,
  ]
}

/**
 * The idempotent checker's table: one row per (consumer group, message id) whose handler committed,
 * written in the handler's own transaction. Rows older than the retention are deleted (expire()).
 */
export function processedMigration(dialect: SqlDialect, table = 'qmq_processed'): string[] {
  checkTableName(table, 'processed table')
  const int64 = dialect === 'postgres' ? 'bigint' : 'INTEGER'
  const index = `${table.replace(/^.*\./, '')}_processed_at_idx`
  const schema = table.includes('.') ? `${table.slice(0, table.indexOf('.'))}.` : ''
  return [
    `CREATE TABLE IF NOT EXISTS ${table} (
  consumer_group text NOT NULL,
  message_id     text NOT NULL,
  processed_at   ${int64} NOT NULL,
  PRIMARY KEY (consumer_group, message_id)
)`,
    dialect === 'postgres'
      ? `CREATE INDEX IF NOT EXISTS ${index} ON ${table} (processed_at)`
      : `CREATE INDEX IF NOT EXISTS ${schema}${index} ON ${table.replace(/^.*\./, '')} (processed_at)`,
  ]
}

/** A column read back as a number (pg returns bigint columns as strings). */
export function num(v: unknown): number {
  if (typeof v === 'number') return v
  if (typeof v === 'bigint' || typeof v === 'string') return Number(v)
  return Number.NaN
}

/** A bytea / BLOB column as a Buffer. */
export function bytes(v: unknown): Buffer {
  if (Buffer.isBuffer(v)) return v
  if (v instanceof Uint8Array) return Buffer.from(v.buffer, v.byteOffset, v.byteLength)
  throw new QmqError('QMQ_ERR_INTERNAL', `expected a binary column, got ${typeof v}`)
}
