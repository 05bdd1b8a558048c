import type Database from 'better-sqlite3'
import type { AppCredential } from '../common/auth/credentials'
import { type Grant, validateGrant } from '../common/auth/grants'

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
}

export interface AppCredentialStore {
  listApps(): Promise<StoredApp[]>
  getApp(appCode: string): Promise<StoredApp | undefined>
  /** Inserts; false when the appCode exists already (nothing changed). */
  insertApp(app: StoredApp): Promise<boolean>
  /** Replaces token hashes and grants of an existing app; false when there is none. */
  updateApp(app: StoredApp): Promise<boolean>
  deleteApp(appCode: string): Promise<boolean>
}

/** The table is created by schema.ts migration 3 (both stores); its layout is described there. */

export interface AppRow {
  app_code: string
  token_hashes_json: string
  grants_json: string
  created_at: number
  updated_at: number
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
    this.stmts = {
      all: db.prepare(`SELECT ${cols} FROM app_credentials ORDER BY app_code`),
      get: db.prepare(`SELECT ${cols} FROM app_credentials WHERE app_code = ?`),
      insert: db.prepare(
        `INSERT INTO app_credentials (${cols}) VALUES (?, ?, ?, ?, ?) ON CONFLICT (app_code) DO NOTHING`,
      ),
      update: db.prepare(
        'UPDATE app_credentials SET token_hashes_json = ?, grants_json = ?, updated_at = ? WHERE app_code = ?',
      ),
      delete: db.prepare('DELETE FROM app_credentials WHERE app_code = ?'),
    }
  }

  listApps(): Promise<StoredApp[]> {
    return this.run('list apps', () => (this.stmts.all.all() as AppRow[]).map(toApp))
  }

  getApp(appCode: string): Promise<StoredApp | undefined> {
    return this.run('get app', () => {
      const row = this.stmts.get.get(appCode) as AppRow | undefined
      return row === undefined ? undefined : toApp(row)
    })
  }

  insertApp(a: StoredApp): Promise<boolean> {
    return this.run(
      'create app',
      () =>
        this.stmts.insert.run(
          a.appCode,
          JSON.stringify(a.tokenHashes),
          JSON.stringify(a.grants),
          a.createdAt,
          a.updatedAt,
        ).changes === 1,
    )
  }

  updateApp(a: StoredApp): Promise<boolean> {
    return this.run(
      'update app',
      () =>
        this.stmts.update.run(JSON.stringify(a.tokenHashes), JSON.stringify(a.grants), a.updatedAt, a.appCode)
          .changes === 1,
    )
  }

  deleteApp(appCode: string): Promise<boolean> {
    return this.run('delete app', () => this.stmts.delete.run(appCode).changes === 1)
  }
}

/** The PostgreSQL store's query function: runs one statement on its pool, errors -> QmqError. */
export type PostgresQuery = <R extends Pick<AppRow, 'app_code'>>(
  what: string,
  sql: string,
  params?: unknown[],
) => Promise<R[]>

const PG_COLS = 'app_code, token_hashes_json, grants_json, created_at, updated_at'

/**
 * AppCredentialStore on PostgreSQL, through the PostgresMetaStore's pool and error wrapper (a closed
 * store or a database outage fails with the retriable QMQ_ERR_METASERVER_STORE like its other writes).
 * Each call is one statement: the insert is `ON CONFLICT (app_code) DO NOTHING RETURNING`, so of several
 * metaservers creating the same appCode at once exactly one gets true; update and delete answer
 * whether a row matched. BIGINT times are read as numbers (the pool's int8 parser).
 */
export class PostgresAppStore implements AppCredentialStore {
  constructor(private readonly q: PostgresQuery) {}

  async listApps(): Promise<StoredApp[]> {
    return (
      await this.q<AppRow>('list apps', `SELECT ${PG_COLS} FROM app_credentials ORDER BY app_code`)
    ).map(toApp)
  }

  async getApp(appCode: string): Promise<StoredApp | undefined> {
    const rows = await this.q<AppRow>(
      `get app ${appCode}`,
      `SELECT ${PG_COLS} FROM app_credentials WHERE app_code = $1`,
      [appCode],
    )
    return rows[0] === undefined ? undefined : toApp(rows[0])
  }

  async insertApp(a: StoredApp): Promise<boolean> {
    const rows = await this.q<Pick<AppRow, 'app_code'>>(
      `create app ${a.appCode}`,
      `INSERT INTO app_credentials (${PG_COLS}) VALUES ($1, $2, $3, $4, $5)
       ON CONFLICT (app_code) DO NOTHING RETURNING app_code`,
      [a.appCode, JSON.stringify(a.tokenHashes), JSON.stringify(a.grants), a.createdAt, a.updatedAt],
    )
    return rows.length === 1
  }

  async updateApp(a: StoredApp): Promise<boolean> {
    const rows = await this.q<Pick<AppRow, 'app_code'>>(
      `update app ${a.appCode}`,
      `UPDATE app_credentials SET token_hashes_json = $1, grants_json = $2, updated_at = $3
       WHERE app_code = $4 RETURNING app_code`,
      [JSON.stringify(a.tokenHashes), JSON.stringify(a.grants), a.updatedAt, a.appCode],
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
