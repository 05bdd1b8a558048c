import type Database from 'better-sqlite3'
import type { AppCredential } from '../common/auth/credentials'
import { type Grant, validateGrant } from '../common/auth/grants'
import { QmqError } from '../common/errors'

/**
 * Where the metaserver keeps application credentials (issue 18): per appCode the SHA-256 hashes of its
 * tokens (never a token) and its grants. Both stores keep them (SqliteAppStore, PostgresAppStore below,
 * on the same table); a MetaStore exposes its one as `apps` (required: without it the credential
 * endpoints would answer QMQ_ERR_NOT_FOUND and servers with `auth` on refuse every application).
 * test/metaserver/store-conformance.test.ts checks both on the same cases.
 */
export interface StoredApp extends AppCredential {
  createdAt: number
  updatedAt: number
  /**
   * The row's version when it was read (schema.ts v6): one more with every update. A created row starts
   * above every version a deleted row of the same appCode had (the stores below say how), so a change
   * read from a deleted app never matches the app created again under its code.
   */
  version: number
}

/** An app to create (the store picks its first version). */
export type NewApp = Omit<StoredApp, 'version'>

export interface AppCredentialStore {
  listApps(): Promise<StoredApp[]>
  getApp(appCode: string): Promise<StoredApp | undefined>
  /** Inserts; false when the appCode exists already (nothing changed). */
  insertApp(app: NewApp): Promise<boolean>
  /**
   * Compare-and-set: replaces token hashes, grants and updatedAt of the app only if its row is still at
   * `app.version` (the version read), and makes it `app.version + 1`. False when nothing was written:
   * the app is gone or another change came first (read it again: changeApp below).
   */
  updateApp(app: StoredApp): Promise<boolean>
  deleteApp(appCode: string): Promise<boolean>
}

/** How often changeApp redoes a change whose row changed under it before it gives up (retriable). */
export const CHANGE_APP_ATTEMPTS = 16

/**
 * Read-modify-write of one app without losing a concurrent change (`qmq auth grant`, `revoke`,
 * `rotate`, on one metaserver or several sharing a store): applies `change` to `first` (the app as
 * read) and writes it with updateApp's compare-and-set; when another change came first, reads the app
 * again and applies `change` to it. `change` must be a function of the app it is given only (it may
 * throw: nothing is written). Answers the app as written (its new version). Throws QMQ_ERR_NOT_FOUND
 * when the app was deleted meanwhile, QMQ_ERR_BUSY (retriable) after CHANGE_APP_ATTEMPTS lost races.
 */
export async function changeApp(
  store: AppCredentialStore,
  first: StoredApp,
  change: (app: StoredApp) => Omit<StoredApp, 'version'>,
): Promise<StoredApp> {
  let app: StoredApp | undefined = first
  for (let attempt = 0; attempt < CHANGE_APP_ATTEMPTS; attempt++) {
    if (app === undefined) throw new QmqError('QMQ_ERR_NOT_FOUND', `no app ${first.appCode}`)
    const next = { ...change(app), appCode: app.appCode, version: app.version }
    if (await store.updateApp(next)) return { ...next, version: app.version + 1 }
    app = await store.getApp(first.appCode)
  }
  throw new QmqError(
    'QMQ_ERR_BUSY',
    `app ${first.appCode} was changed by ${CHANGE_APP_ATTEMPTS} other changes while this one was made; retry`,
  )
}

/**
 * The table is created by schema.ts migration 3 (both stores), its version column by 6; layouts there.
 *
 * Versions are never reused for an appCode, without a column or table of their own: SQLite keeps a
 * floor in the database header's `user_version` (unused otherwise: schema_version tracks migrations),
 * raised by a delete to the deleted row's version + 1, and a created row starts at it; PostgreSQL starts
 * a created row at `txid_current()`, its transaction's 64-bit id, which is above the ids of every
 * earlier write and so above the deleted row's version (at most its creating id + one per update, each
 * update being a later transaction).
 */

export interface AppRow {
  app_code: string
  token_hashes_json: string
  grants_json: string
  created_at: number
  updated_at: number
  version: number
}

function parseList(json: string): unknown[] {
  try {
    const v: unknown = JSON.parse(json)
    return Array.isArray(v) ? v : []
  } catch {
    return []
  }
}

function toApp(r: AppRow): StoredApp {
  const grants: Grant[] = []
  for (const g of parseList(r.grants_json)) {
    try {
      grants.push(validateGrant(g))
    } catch {
      // a grant this version does not understand grants nothing
    }
  }
  return {
    appCode: r.app_code,
    tokenHashes: parseList(r.token_hashes_json).filter((h): h is string => typeof h === 'string'),
    grants,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
    version: r.version,
  }
}

export class SqliteAppStore implements AppCredentialStore {
  private readonly stmts

  /** `run` is the owning store's error wrapper (closed store, SQLite errors -> QmqError). */
  constructor(
    db: Database.Database,
    private readonly run: <T>(what: string, fn: () => T) => Promise<T>,
  ) {
    const cols = 'app_code, token_hashes_json, grants_json, created_at, updated_at'
    const read = `${cols}, version`
    this.stmts = {
      all: db.prepare(`SELECT ${read} FROM app_credentials ORDER BY app_code`),
      get: db.prepare(`SELECT ${read} FROM app_credentials WHERE app_code = ?`),
      insert: db.prepare(
        `INSERT INTO app_credentials (${read}) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (app_code) DO NOTHING`,
      ),
      // Compare-and-set on version (see updateApp in AppCredentialStore).
      update: db.prepare(
        `UPDATE app_credentials SET token_hashes_json = ?, grants_json = ?, updated_at = ?, version = version + 1
         WHERE app_code = ? AND version = ?`,
      ),
      delete: db.prepare('DELETE FROM app_credentials WHERE app_code = ? RETURNING version'),
    }
    // One transaction each (IMMEDIATE: the floor is read and written under the write lock).
    this.insertTx = db.transaction((a: NewApp): boolean => {
      const floor = db.pragma('user_version', { simple: true }) as number
      return (
        this.stmts.insert.run(
          a.appCode,
          JSON.stringify(a.tokenHashes),
          JSON.stringify(a.grants),
          a.createdAt,
          a.updatedAt,
          floor,
        ).changes === 1
      )
    })
    this.deleteTx = db.transaction((appCode: string): boolean => {
      const row = this.stmts.delete.get(appCode) as { version: number } | undefined
      if (row === undefined) return false
      const floor = db.pragma('user_version', { simple: true }) as number
      // An integer of ours (PRAGMA takes no parameters); user_version is a signed 32-bit field.
      const next = Math.trunc(row.version) + 1
      if (next > floor && next <= 0x7fff_ffff) db.pragma(`user_version = ${next}`)
      return true
    })
  }

  private readonly insertTx: Database.Transaction<(a: NewApp) => boolean>
  private readonly deleteTx: Database.Transaction<(appCode: string) => boolean>

  listApps(): Promise<StoredApp[]> {
    return this.run('list apps', () => (this.stmts.all.all() as AppRow[]).map(toApp))
  }

  getApp(appCode: string): Promise<StoredApp | undefined> {
    return this.run('get app', () => {
      const row = this.stmts.get.get(appCode) as AppRow | undefined
      return row === undefined ? undefined : toApp(row)
    })
  }

  insertApp(a: NewApp): Promise<boolean> {
    return this.run('create app', () => this.insertTx.immediate(a))
  }

  updateApp(a: StoredApp): Promise<boolean> {
    return this.run(
      'update app',
      () =>
        this.stmts.update.run(
          JSON.stringify(a.tokenHashes),
          JSON.stringify(a.grants),
          a.updatedAt,
          a.appCode,
          a.version,
        ).changes === 1,
    )
  }

  deleteApp(appCode: string): Promise<boolean> {
    return this.run('delete app', () => this.deleteTx.immediate(appCode))
  }
}

/** The PostgreSQL store's query function: runs one statement on its pool, errors -> QmqError. */
export type PostgresQuery = <R extends Pick<AppRow, 'app_code'>>(
  what: string,
  sql: string,
  params?: unknown[],
) => Promise<R[]>

const PG_COLS = 'app_code, token_hashes_json, grants_json, created_at, updated_at'
const PG_READ = `${PG_COLS}, version`

/**
 * AppCredentialStore on PostgreSQL, through the PostgresMetaStore's pool and error wrapper (a closed
 * store or a database outage fails with the retriable QMQ_ERR_METASERVER_STORE like its other writes).
 * Each call is one statement: the insert is `ON CONFLICT (app_code) DO NOTHING RETURNING`, so of several
 * metaservers creating the same appCode at once exactly one gets true; update (compare-and-set on
 * version: one statement, so under READ COMMITTED a concurrent update makes it match no row once the
 * other commits) and delete answer whether a row matched. BIGINT times are read as numbers (the pool's int8 parser).
 */
export class PostgresAppStore implements AppCredentialStore {
  constructor(private readonly q: PostgresQuery) {}

  async listApps(): Promise<StoredApp[]> {
    return (
      await this.q<AppRow>('list apps', `SELECT ${PG_READ} FROM app_credentials ORDER BY app_code`)
    ).map(toApp)
  }

  async getApp(appCode: string): Promise<StoredApp | undefined> {
    const rows = await this.q<AppRow>(
      `get app ${appCode}`,
      `SELECT ${PG_READ} FROM app_credentials WHERE app_code = $1`,
      [appCode],
    )
    return rows[0] === undefined ? undefined : toApp(rows[0])
  }

  async insertApp(a: NewApp): Promise<boolean> {
    const rows = await this.q<Pick<AppRow, 'app_code'>>(
      `create app ${a.appCode}`,
      `INSERT INTO app_credentials (${PG_READ}) VALUES ($1, $2, $3, $4, $5, txid_current())
       ON CONFLICT (app_code) DO NOTHING RETURNING app_code`,
      [a.appCode, JSON.stringify(a.tokenHashes), JSON.stringify(a.grants), a.createdAt, a.updatedAt],
    )
    return rows.length === 1
  }

  async updateApp(a: StoredApp): Promise<boolean> {
    const rows = await this.q<Pick<AppRow, 'app_code'>>(
      `update app ${a.appCode}`,
      `UPDATE app_credentials SET token_hashes_json = $1, grants_json = $2, updated_at = $3,
       version = version + 1 WHERE app_code = $4 AND version = $5 RETURNING app_code`,
      [JSON.stringify(a.tokenHashes), JSON.stringify(a.grants), a.updatedAt, a.appCode, a.version],
    )
    return rows.length === 1
  }

  async deleteApp(appCode: string): Promise<boolean> {
    const rows = await this.q<Pick<AppRow, 'app_code'>>(
      `delete app ${appCode}`,
      'DELETE FROM app_credentials WHERE app_code = $1 RETURNING app_code',
      [appCode],
    )
    return rows.length === 1
  }
}
