import { AsyncLocalStorage } from 'node:async_hooks'
import { QmqError } from '../../common/errors'
import { type PgPoolLike, type PgQueryable, pgAdapter } from './pg'
import {
  checkTableName,
  outboxMigration,
  placeholders,
  processedMigration,
  type SqlAdapter,
  type SqlDialect,
  type SqlParam,
  type SqlRow,
} from './sql'
import { type SqliteDatabaseLike, sqliteAdapter } from './sqlite'

export interface TransactionProviderOptions {
  /** The outbox table (default `qmq_outbox`; `schema.table` allowed). */
  outboxTable?: string
  /** The idempotent checker's table (default `qmq_processed`). */
  processedTable?: string
}

/**
 * One transaction as the provider follows it: the caller's handle, what must run in it before
 * COMMIT (the outbox's INSERT of the messages sent in it: one that fails rolls the transaction
 * back) and what runs after COMMIT.
 *
 *   open --commit--> committed (after-commit hooks run once)
 *        --rollback/throw--> rolledBack (hooks dropped: nothing is sent)
 */
export class TxScope<Tx extends object> {
  state: 'open' | 'committed' | 'rolledBack' = 'open'
  /** Set once the before-commit work ran: nothing more may be added to the transaction. */
  sealed = false
  private before: (() => Promise<void>)[] = []
  private hooks: (() => void)[] = []
  /** Per-scope data of the users of the scope (the outbox's list of messages), by owner. */
  readonly data = new Map<object, unknown>()

  constructor(readonly tx: Tx) {}

  /** Work to do in the transaction before COMMIT (run by settle(), in order). */
  beforeCommit(fn: () => Promise<void>): void {
    this.before.push(fn)
  }

  onCommit(fn: () => void): void {
    this.hooks.push(fn)
  }

  /** Runs the before-commit work (also what it adds meanwhile); rethrows the first failure. */
  async settle(): Promise<void> {
    for (let fn = this.before.shift(); fn !== undefined; fn = this.before.shift()) await fn()
    this.sealed = true
  }

  /** @internal */
  committed(): void {
    if (this.state !== 'open') return
    this.state = 'committed'
    const hooks = this.hooks
    this.hooks = []
    for (const h of hooks) h()
  }

  /** @internal */
  rolledBack(): void {
    if (this.state !== 'open') return
    this.state = 'rolledBack'
    this.hooks = []
  }
}

/**
 * A transaction the caller began on their own connection (e.g. `BEGIN` on a pg client), attached to
 * the provider: messages sent in it (inside `run()`, or with `{ transaction: handle.tx }`) go to the
 * outbox on that connection, and leave after `commit()`.
 */
export class AttachedTransaction<Tx extends object> {
  /** @internal */
  constructor(
    private readonly provider: TransactionProvider<Tx>,
    /** @internal */ readonly scope: TxScope<Tx>,
  ) {}

  get tx(): Tx {
    return this.scope.tx
  }

  /** Runs `fn` with this transaction as the current one (AsyncLocalStorage). */
  run<T>(fn: () => T): T {
    return this.provider.runInScope(this.scope, fn)
  }

  /** Waits for the outbox writes, runs COMMIT on the connection, then sends the messages. */
  async commit(): Promise<void> {
    try {
      await this.scope.settle()
      await this.provider.adapter.query(this.scope.tx, 'COMMIT', [])
    } catch (err) {
      await this.provider.adapter.query(this.scope.tx, 'ROLLBACK', []).catch(() => {})
      this.provider.end(this.scope, false)
      throw err
    }
    this.provider.end(this.scope, true)
  }

  /** Runs ROLLBACK on the connection: nothing sent in the transaction leaves. */
  async rollback(): Promise<void> {
    try {
      await this.provider.adapter.query(this.scope.tx, 'ROLLBACK', [])
    } finally {
      this.provider.end(this.scope, false)
    }
  }
}

/**
 * The application's database as qmq sees it: it runs transactions (`transaction(fn)`), knows which
 * one the caller is in (AsyncLocalStorage: no handle threaded through calls), and holds the outbox
 * and processed-message tables. Give it to `producer.setTransactionProvider()` for transactional
 * sends, and to `IdempotentChecker` for idempotent consumers.
 *
 * Make one with `postgresProvider(pool)`, `sqliteProvider(db)`, or `new TransactionProvider(adapter)`
 * over your own SqlAdapter (Knex, Kysely, Drizzle, Prisma: docs/transactions.md).
 */
export class TransactionProvider<Tx extends object = object> {
  readonly outboxTable: string
  readonly processedTable: string
  private readonly als = new AsyncLocalStorage<TxScope<Tx>>()
  private readonly scopes = new WeakMap<Tx, TxScope<Tx>>()
  private readonly style: '$' | '?'

  constructor(
    readonly adapter: SqlAdapter<Tx>,
    options: TransactionProviderOptions = {},
  ) {
    if (adapter === null || typeof adapter !== 'object' || typeof adapter.transaction !== 'function') {
      throw new QmqError('QMQ_ERR_INVALID_ARGUMENT', 'TransactionProvider needs an SqlAdapter')
    }
    if (adapter.dialect !== 'postgres' && adapter.dialect !== 'sqlite') {
      throw new QmqError(
        'QMQ_ERR_INVALID_ARGUMENT',
        `SqlAdapter dialect must be 'postgres' or 'sqlite' (got ${JSON.stringify(adapter.dialect)})`,
      )
    }
    this.outboxTable = checkTableName(options.outboxTable ?? 'qmq_outbox', 'outboxTable')
    this.processedTable = checkTableName(options.processedTable ?? 'qmq_processed', 'processedTable')
    this.style = adapter.paramStyle ?? (adapter.dialect === 'postgres' ? '$' : '?')
  }

  get dialect(): SqlDialect {
    return this.adapter.dialect
  }

  /** The DDL of the outbox and processed tables (idempotent: CREATE ... IF NOT EXISTS). */
  migrationSql(): string[] {
    return [
      ...outboxMigration(this.dialect, this.outboxTable),
      ...processedMigration(this.dialect, this.processedTable),
    ]
  }

  /** Creates the outbox and processed tables and their indexes if they do not exist. */
  async migrate(): Promise<void> {
    for (const sql of this.migrationSql()) await this.adapter.query(undefined, sql, [])
  }

  /**
   * Runs `fn` in a transaction: COMMIT when it returns (or resolves), ROLLBACK when it throws. The
   * messages sent inside (through a producer given this provider) are written to the outbox in the
   * transaction and sent once COMMIT succeeded; after a rollback none is sent. Called inside another
   * transaction of this provider, `fn` joins that one.
   */
  async transaction<T>(fn: (tx: Tx) => Promise<T> | T): Promise<T> {
    const outer = this.als.getStore()
    if (outer !== undefined && outer.state === 'open') return fn(outer.tx)
    let scope: TxScope<Tx> | undefined
    let result: T
    try {
      result = await this.adapter.transaction(async (tx) => {
        const s = new TxScope(tx)
        scope = s
        this.scopes.set(tx, s)
        const r = await this.als.run(s, () => fn(tx))
        await s.settle()
        return r
      })
    } catch (err) {
      if (scope !== undefined) this.end(scope, false)
      throw err
    }
    if (scope !== undefined) this.end(scope, true)
    return result
  }

  /**
   * Follows a transaction the caller began on `tx` (e.g. after `await client.query('BEGIN')` on a pg
   * client): end it with the handle's commit() / rollback() so the messages sent in it leave after
   * COMMIT. PostgreSQL only (SQLite: use transaction()).
   */
  attach(tx: Tx): AttachedTransaction<Tx> {
    if (tx === null || typeof tx !== 'object') {
      throw new QmqError('QMQ_ERR_INVALID_ARGUMENT', 'attach() needs the transaction handle (a client)')
    }
    if (this.dialect === 'sqlite') {
      // One SQLite connection is shared by the provider's own work (outbox deletes, watchdog claims),
      // queued one transaction at a time: a BEGIN the caller runs outside that queue would mix with it.
      throw new QmqError(
        'QMQ_ERR_INVALID_ARGUMENT',
        'attach() is for PostgreSQL connections; on SQLite run the transaction with provider.transaction(fn)',
      )
    }
    const existing = this.scopes.get(tx)
    if (existing !== undefined && existing.state === 'open') {
      throw new QmqError(
        'QMQ_ERR_TX_STATE',
        'this connection already has an open transaction of the provider',
      )
    }
    const scope = new TxScope(tx)
    this.scopes.set(tx, scope)
    return new AttachedTransaction(this, scope)
  }

  /** The transaction the caller is in (AsyncLocalStorage), or undefined. */
  current(): Tx | undefined {
    const s = this.als.getStore()
    return s !== undefined && s.state === 'open' ? s.tx : undefined
  }

  /** @internal The scope of the caller's transaction: the explicit handle's, or the current one. */
  scopeOf(explicit?: Tx): TxScope<Tx> | undefined {
    if (explicit === undefined) return this.als.getStore()
    const s = this.scopes.get(explicit)
    if (s === undefined) {
      throw new QmqError(
        'QMQ_ERR_TX_UNKNOWN',
        'the transaction given was not started (transaction()) or attached (attach()) through this provider',
      )
    }
    return s
  }

  /** @internal */
  runInScope<T>(scope: TxScope<Tx>, fn: () => T): T {
    return this.als.run(scope, fn)
  }

  /** @internal Ends a scope: after-commit hooks run, or are dropped. */
  end(scope: TxScope<Tx>, committed: boolean): void {
    if (this.scopes.get(scope.tx) === scope) this.scopes.delete(scope.tx)
    if (committed) scope.committed()
    else scope.rolledBack()
  }

  /**
   * Runs one statement written with `?` placeholders (turned into $1, $2 for pg) in `tx`, or on its
   * own when `tx` is undefined; resolves its rows. Values: strings, numbers, Buffers, null.
   */
  query(tx: Tx | undefined, sql: string, params: readonly SqlParam[]): Promise<SqlRow[]> {
    return this.adapter.query(tx, placeholders(sql, this.style), params)
  }
}

/**
 * PostgreSQL through node-postgres: `postgresProvider(pool)` with your `pg.Pool`. `transaction(fn)`
 * hands `fn` a pool client inside BEGIN ... COMMIT; a transaction you run yourself on a client goes
 * through `provider.attach(client)`.
 */
export function postgresProvider(
  pool: PgPoolLike,
  options?: TransactionProviderOptions,
): TransactionProvider<PgQueryable> {
  return new TransactionProvider(pgAdapter(pool), options)
}

/**
 * SQLite through better-sqlite3: `sqliteProvider(db)` with your `Database` (WAL mode and a busy
 * timeout recommended when several processes share the file). `transaction(fn)` hands `fn` the
 * database inside BEGIN IMMEDIATE ... COMMIT; the provider's transactions run one at a time.
 */
export function sqliteProvider(
  db: SqliteDatabaseLike,
  options?: TransactionProviderOptions,
): TransactionProvider<SqliteDatabaseLike> {
  return new TransactionProvider(sqliteAdapter(db), options)
}
