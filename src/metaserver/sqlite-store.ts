import type Database from 'better-sqlite3'
import { QmqError } from '../common/errors'
import type {
  MetaSnapshot,
  MetaStore,
  StoredClient,
  StoredGroup,
  StoredRoute,
  StoredServer,
  LivenessDecision,
  StoredMetaserver,
} from './store'
import { type AppCredentialStore, SqliteAppStore } from './app-store'
import {
  type ClientRow,
  type EpochRow,
  type GroupRow,
  type LivenessRow,
  type ReadOnlyRow,
  type RouteRow,
  type ServerRow,
  storeError,
  toClient,
  toEpoch,
  toGroup,
  toLiveness,
  toReadOnly,
  toRoute,
  toServer,
} from './rows'
import { pendingMigrations, SCHEMA_VERSION, VERSION_TABLE } from './schema'

/**
 * MetaStore on better-sqlite3 (one file, WAL mode). Every method runs synchronously inside the
 * process, so SQLite transactions plus the single thread make `assignRouteIfAbsent` and `updateRoute`
 * atomic; they are written as SQL a PostgreSQL store can mirror (INSERT ... ON CONFLICT DO NOTHING,
 * UPDATE ... WHERE version = ?).
 *
 * The schema and its migrations are in schema.ts (shared with the PostgreSQL store).
 */
export const SQLITE_SCHEMA_VERSION = SCHEMA_VERSION

/**
 * better-sqlite3 is an optional peer dependency (a native module, server-only): an application that
 * only uses the SDK does not install it. It is loaded when a metaserver opens its store.
 */
function loadSqlite(): typeof Database {
  try {
    return require('better-sqlite3') as typeof Database
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'MODULE_NOT_FOUND' && String(err).includes('better-sqlite3'))
      throw new QmqError(
        'QMQ_ERR_DEPENDENCY_MISSING',
        'the metaserver stores its state in SQLite through better-sqlite3, an optional dependency of qmq that is not installed: npm install better-sqlite3',
        { cause: err },
      )
    throw err
  }
}

export class SqliteMetaStore implements MetaStore {
  private readonly db: Database.Database
  private readonly stmts
  private closed = false
  /** Application credentials (app-store.ts). */
  readonly apps: AppCredentialStore

  /** `file` is a path (created if missing) or ':memory:'. */
  constructor(file: string) {
    const Sqlite = loadSqlite()
    let opened: Database.Database | undefined
    try {
      opened = new Sqlite(file)
      this.db = opened
      opened.pragma('journal_mode = WAL')
      opened.pragma('synchronous = NORMAL')
      opened.pragma('busy_timeout = 5000')
      this.migrate(file)
    } catch (err) {
      // A database refused (newer schema, not a database) is closed, not left open.
      opened?.close()
      throw storeError(err, `cannot open metaserver database ${file}`)
    }
    const db = this.db
    this.apps = new SqliteAppStore(db, (what, fn) => this.run(what, fn))
    this.stmts = {
      allGroups: db.prepare('SELECT name, kind, first_seen_at, load_json FROM groups'),
      allServers: db.prepare('SELECT group_name, role, address, http_address, last_seen_at FROM servers'),
      allRoutes: db.prepare(
        'SELECT subject, groups_json, version, created_at, updated_at FROM subject_routes',
      ),
      allReadOnly: db.prepare('SELECT group_name, subject, created_at FROM readonly_settings'),
      allClients: db.prepare(
        'SELECT client_id, kind, subject, consumer_group, app_code, last_seen_at FROM clients',
      ),
      upsertGroup: db.prepare(
        `INSERT INTO groups (name, kind, first_seen_at, load_json, updated_at) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (name) DO UPDATE SET load_json = excluded.load_json, updated_at = excluded.updated_at`,
      ),
      upsertServer: db.prepare(
        `INSERT INTO servers (group_name, role, address, http_address, last_seen_at) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (group_name, role) DO UPDATE SET address = excluded.address,
           http_address = excluded.http_address,
           last_seen_at = CASE WHEN excluded.last_seen_at = 0 THEN 0
                               ELSE MAX(servers.last_seen_at, excluded.last_seen_at) END`,
      ),
      getRoute: db.prepare(
        'SELECT subject, groups_json, version, created_at, updated_at FROM subject_routes WHERE subject = ?',
      ),
      insertRoute: db.prepare(
        `INSERT INTO subject_routes (subject, groups_json, version, created_at, updated_at) VALUES (?, ?, 1, ?, ?)
         ON CONFLICT (subject) DO NOTHING`,
      ),
      casRoute: db.prepare(
        'UPDATE subject_routes SET groups_json = ?, version = version + 1, updated_at = ? WHERE subject = ? AND version = ?',
      ),
      insertReadOnly: db.prepare(
        'INSERT INTO readonly_settings (group_name, subject, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING',
      ),
      deleteReadOnly: db.prepare('DELETE FROM readonly_settings WHERE group_name = ? AND subject = ?'),
      upsertClient: db.prepare(
        `INSERT INTO clients (client_id, kind, subject, consumer_group, app_code, last_seen_at) VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT (client_id, kind, subject, consumer_group) DO UPDATE SET
           app_code = excluded.app_code, last_seen_at = MAX(clients.last_seen_at, excluded.last_seen_at)`,
      ),
      deleteClient: db.prepare(
        'DELETE FROM clients WHERE client_id = ? AND kind = ? AND subject = ? AND consumer_group = ?',
      ),
      expireClients: db.prepare('DELETE FROM clients WHERE last_seen_at < ?'),
      allLiveness: db.prepare('SELECT group_name, alive, version, changed_at FROM group_liveness'),
      getLiveness: db.prepare('SELECT alive, version FROM group_liveness WHERE group_name = ?'),
      upsertLiveness: db.prepare(
        `INSERT INTO group_liveness (group_name, alive, version, changed_at) VALUES (?, ?, 1, ?)
         ON CONFLICT (group_name) DO UPDATE SET alive = excluded.alive, version = version + 1,
           changed_at = excluded.changed_at`,
      ),
      masterLastSeen: db.prepare("SELECT last_seen_at FROM servers WHERE group_name = ? AND role = 'master'"),
      upsertMetaserver: db.prepare(
        `INSERT INTO metaservers (id, url, started_at, last_seen_at) VALUES (?, ?, ?, ?)
         ON CONFLICT (id) DO UPDATE SET url = excluded.url, last_seen_at = excluded.last_seen_at`,
      ),
      liveMetaservers: db.prepare(
        'SELECT id, url, started_at, last_seen_at FROM metaservers WHERE last_seen_at > ? ORDER BY started_at, id',
      ),
      deleteMetaserver: db.prepare('DELETE FROM metaservers WHERE id = ?'),
      allEpochs: db.prepare('SELECT group_name, epoch, failovers, updated_at FROM group_epochs'),
      insertEpoch: db.prepare(
        'INSERT INTO group_epochs (group_name, epoch, failovers, updated_at) VALUES (?, 0, 0, ?) ON CONFLICT DO NOTHING',
      ),
      casEpoch: db.prepare(
        'UPDATE group_epochs SET epoch = epoch + 1, failovers = failovers + 1, updated_at = ? WHERE group_name = ? AND epoch = ?',
      ),
      deleteSlave: db.prepare("DELETE FROM servers WHERE group_name = ? AND role = 'slave'"),
    }
  }

  /** Applies the pending migrations of schema.ts, each in its own transaction with its version row. */
  private migrate(file: string): void {
    this.db
      .transaction(() => {
        this.db.exec(VERSION_TABLE)
        const row = this.db.prepare('SELECT MAX(version) AS v FROM schema_version').get() as {
          v: number | null
        }
        const current = row.v ?? 0
        if (current > SCHEMA_VERSION) {
          throw new QmqError(
            'QMQ_ERR_METASERVER_STORE',
            `${file} has schema version ${current}, newer than this metaserver's ${SCHEMA_VERSION}; upgrade qmq`,
          )
        }
        for (const m of pendingMigrations(current)) {
          this.db.exec(m.sql.sqlite)
          this.db.prepare('INSERT INTO schema_version (version) VALUES (?)').run(m.version)
        }
      })
      .immediate()
  }

  readonly kind = 'sqlite'
  readonly shared = false

  clockOffsetMs(): Promise<number> {
    return Promise.resolve(0)
  }

  private run<T>(what: string, fn: () => T): Promise<T> {
    if (this.closed)
      return Promise.reject(new QmqError('QMQ_ERR_METASERVER_STORE', `${what}: store is closed`))
    try {
      return Promise.resolve(fn())
    } catch (err) {
      return Promise.reject(storeError(err, what))
    }
  }

  loadAll(): Promise<MetaSnapshot> {
    return this.run('load metadata', () => {
      const s = this.stmts
      const groups = (s.allGroups.all() as GroupRow[]).map(toGroup)
      const servers = (s.allServers.all() as ServerRow[]).map(toServer)
      const routes = (s.allRoutes.all() as RouteRow[]).map(toRoute)
      const readOnly = (s.allReadOnly.all() as ReadOnlyRow[]).map(toReadOnly)
      const clients = (s.allClients.all() as ClientRow[]).map(toClient)
      const liveness = (s.allLiveness.all() as LivenessRow[]).map(toLiveness)
      const epochs = (s.allEpochs.all() as EpochRow[]).map(toEpoch)
      return { epochs, groups, servers, routes, readOnly, clients, liveness }
    })
  }

  recordHeartbeat(group: StoredGroup, server: StoredServer): Promise<void> {
    return this.run(`record heartbeat of ${group.name}`, () => {
      this.db.transaction(() => {
        this.stmts.upsertGroup.run(
          group.name,
          group.kind,
          group.firstSeenAt,
          JSON.stringify(group.load),
          server.lastSeenAt,
        )
        this.stmts.upsertServer.run(
          server.group,
          server.role,
          server.address,
          server.httpAddress ?? null,
          server.lastSeenAt,
        )
      })()
    })
  }

  getRoute(subject: string): Promise<StoredRoute | undefined> {
    return this.run(`read route of ${subject}`, () => {
      const row = this.stmts.getRoute.get(subject) as RouteRow | undefined
      return row === undefined ? undefined : toRoute(row)
    })
  }

  assignRouteIfAbsent(subject: string, groups: readonly string[], now: number): Promise<StoredRoute> {
    return this.run(`assign route of ${subject}`, () =>
      this.db
        .transaction(() => {
          this.stmts.insertRoute.run(subject, JSON.stringify(groups), now, now)
          return toRoute(this.stmts.getRoute.get(subject) as RouteRow)
        })
        .immediate(),
    )
  }

  updateRoute(
    subject: string,
    groups: readonly string[],
    expectedVersion: number,
    now: number,
  ): Promise<StoredRoute | undefined> {
    return this.run(`update route of ${subject}`, () =>
      this.db
        .transaction(() => {
          const changed = this.stmts.casRoute.run(
            JSON.stringify(groups),
            now,
            subject,
            expectedVersion,
          ).changes
          if (changed === 0) return undefined
          return toRoute(this.stmts.getRoute.get(subject) as RouteRow)
        })
        .immediate(),
    )
  }

  setReadOnly(group: string, subject: string, readOnly: boolean, now: number): Promise<void> {
    return this.run(`set read-only of ${group}`, () => {
      if (readOnly) this.stmts.insertReadOnly.run(group, subject, now)
      else this.stmts.deleteReadOnly.run(group, subject)
    })
  }

  upsertClient(c: StoredClient): Promise<void> {
    return this.run(`record client ${c.clientId}`, () => {
      this.stmts.upsertClient.run(c.clientId, c.kind, c.subject, c.consumerGroup, c.appCode, c.lastSeenAt)
    })
  }

  deleteClient(c: Pick<StoredClient, 'clientId' | 'kind' | 'subject' | 'consumerGroup'>): Promise<void> {
    return this.run(`delete client ${c.clientId}`, () => {
      this.stmts.deleteClient.run(c.clientId, c.kind, c.subject, c.consumerGroup)
    })
  }

  deleteClientsSeenBefore(before: number): Promise<number> {
    return this.run('expire clients', () => this.stmts.expireClients.run(before).changes)
  }

  decideLiveness(group: string, alive: boolean, now: number, deadBefore: number): Promise<LivenessDecision> {
    return this.run(`decide liveness of ${group}`, () =>
      this.db
        .transaction((): LivenessDecision => {
          const s = this.stmts
          const seen = s.masterLastSeen.get(group) as { last_seen_at: number } | undefined
          const masterLastSeenAt = seen?.last_seen_at ?? 0
          const cur = s.getLiveness.get(group) as { alive: number; version: number } | undefined
          const curAlive = cur === undefined ? undefined : cur.alive !== 0
          const version = cur?.version ?? 0
          if (curAlive === alive) return { changed: false, alive, version, masterLastSeenAt }
          // A dead decision needs the stored master silent too (another metaserver may have heard it).
          if (!alive && masterLastSeenAt > deadBefore)
            return { changed: false, alive: curAlive ?? true, version, masterLastSeenAt }
          s.upsertLiveness.run(group, alive ? 1 : 0, now)
          return { changed: true, alive, version: (cur?.version ?? 0) + 1, masterLastSeenAt }
        })
        .immediate(),
    )
  }

  promote(
    group: string,
    expectedEpoch: number,
    master: StoredServer,
    now: number,
    deadBefore: number,
  ): Promise<boolean> {
    return this.run(`promote a slave of ${group}`, () =>
      this.db
        .transaction(() => {
          // The stored master heard after deadBefore (maybe by another metaserver): it is alive.
          const seen = this.stmts.masterLastSeen.get(group) as { last_seen_at: number } | undefined
          if ((seen?.last_seen_at ?? 0) > deadBefore) return false
          this.stmts.insertEpoch.run(group, now)
          if (this.stmts.casEpoch.run(now, group, expectedEpoch).changes === 0) return false
          this.stmts.upsertServer.run(
            group,
            'master',
            master.address,
            master.httpAddress ?? null,
            master.lastSeenAt,
          )
          this.stmts.deleteSlave.run(group)
          return true
        })
        .immediate(),
    )
  }

  registerMetaserver(m: StoredMetaserver): Promise<void> {
    return this.run('register metaserver', () => {
      this.stmts.upsertMetaserver.run(m.id, m.url, m.startedAt, m.lastSeenAt)
    })
  }

  listMetaservers(seenAfter: number): Promise<StoredMetaserver[]> {
    return this.run('list metaservers', () =>
      (
        this.stmts.liveMetaservers.all(seenAfter) as {
          id: string
          url: string
          started_at: number
          last_seen_at: number
        }[]
      ).map((r) => ({ id: r.id, url: r.url, startedAt: r.started_at, lastSeenAt: r.last_seen_at })),
    )
  }

  removeMetaserver(id: string): Promise<void> {
    return this.run('remove metaserver', () => {
      this.stmts.deleteMetaserver.run(id)
    })
  }

  close(): Promise<void> {
    if (this.closed) return Promise.resolve()
    this.closed = true
    try {
      this.db.close()
    } catch {
      // closing twice or a failed close leaves nothing to do
    }
    return Promise.resolve()
  }
}
