import type { Pool, PoolClient, QueryResultRow } from 'pg'
import { QmqError } from '../common/errors'
import { type AppCredentialStore, PostgresAppStore } from './app-store'
import {
  type ClientRow,
  type EpochRow,
  type GroupRow,
  type LivenessRow,
  type ReadOnlyRow,
  type ReplicationRow,
  type RouteRow,
  type ServerRow,
  type SlaveRow,
  SERVED_MARK,
  storeError,
  toClient,
  toEpoch,
  toGroup,
  toLiveness,
  toReadOnly,
  toReplication,
  toRoute,
  toServer,
  toSlave,
} from './rows'
import { chooseAbandon, choosePromotion } from './promotion'
import { staleReport } from './store'
import { pendingMigrations, SCHEMA_VERSION, VERSION_TABLE } from './schema'
import type {
  AbandonRequest,
  AbandonResult,
  HeartbeatResult,
  LivenessDecision,
  PromoteRequest,
  PromoteResult,
  ReplicationReport,
  StoredReplication,
  MetaSnapshot,
  MetaStore,
  StoredClient,
  StoredGroup,
  StoredMetaserver,
  StoredRoute,
  StoredServer,
  SlaveKey,
} from './store'

/**
 * MetaStore on PostgreSQL through `pg` (node-postgres) with a pool, shared by any number of
 * metaservers. Every decision is one statement or one transaction in the database, never a read in
 * one metaserver's memory followed by a write:
 * - placement: `INSERT ... ON CONFLICT (subject) DO NOTHING`, then a read in a new statement (READ
 *   COMMITTED: a concurrent insert that won is committed and visible by then);
 * - route changes: `UPDATE ... WHERE version = $expected` (compare-and-set);
 * - liveness: one upsert whose `WHERE alive <> excluded.alive` is re-checked on the newest row version
 *   when two metaservers race, so exactly one of them changes it;
 * - heartbeats and promotions of a group: transactions that first lock the group's `groups` row (the
 *   heartbeat's upsert, the promotion's SELECT ... FOR UPDATE), so a promotion sees every heartbeat
 *   committed before it and a heartbeat after it reads the new epoch;
 * - migrations: under a transaction-scoped advisory lock, so metaservers starting together migrate once.
 * BIGINT columns (ms times) are read as JS numbers (exact below 2^53).
 */

/** Key of the advisory lock held while migrating ("qmqmeta" in ASCII, as an int8). */
const MIGRATION_LOCK_KEY = '31927006302401633'
const INT8_OID = 20
const POOL_MAX = 10
const CONNECT_TIMEOUT_MS = 3_000
/** A statement running longer than this fails (the database is stuck or gone): answers stay bounded. */
const STATEMENT_TIMEOUT_MS = 5_000

/** `pg` is an optional peer dependency, loaded when a metaserver opens a PostgreSQL store. */
function loadPg(): typeof import('pg') {
  try {
    return require('pg') as typeof import('pg')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'MODULE_NOT_FOUND' && String(err).includes("'pg'"))
      throw new QmqError(
        'QMQ_ERR_DEPENDENCY_MISSING',
        'a postgres:// metaserver store needs the pg package, an optional dependency of qmq that is not installed: npm install pg',
        { cause: err },
      )
    throw err
  }
}

const SLAVE_COLUMNS =
  'group_name, address, http_address, last_seen_at, message_offset, action_offset, heard_at, not_promotable'
const REPLICATION_COLUMNS =
  'group_name, replicated, epoch, in_sync_json, reported_at, report_seq, step_down_at, prior_in_sync_json'

/**
 * Upserts a slave row ($1..$8 in SLAVE_COLUMNS order): its offsets and notPromotable are those of its
 * newest report (they go back when it truncates).
 */
const UPSERT_SLAVE = `INSERT INTO slaves AS s (${SLAVE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
  ON CONFLICT (group_name, address) DO UPDATE SET http_address = excluded.http_address,
    heard_at = GREATEST(s.heard_at, excluded.heard_at),
    last_seen_at = CASE WHEN excluded.last_seen_at = 0 THEN 0
                        ELSE GREATEST(s.last_seen_at, excluded.last_seen_at) END,
    message_offset = CASE WHEN excluded.last_seen_at = 0 OR excluded.last_seen_at >= s.last_seen_at
                          THEN excluded.message_offset ELSE s.message_offset END,
    action_offset = CASE WHEN excluded.last_seen_at = 0 OR excluded.last_seen_at >= s.last_seen_at
                         THEN excluded.action_offset ELSE s.action_offset END,
    not_promotable = CASE WHEN excluded.last_seen_at = 0 OR excluded.last_seen_at >= s.last_seen_at
                          THEN excluded.not_promotable ELSE s.not_promotable END`

function slaveParams(group: string, slave: StoredServer): unknown[] {
  return [
    group,
    slave.address,
    slave.httpAddress ?? null,
    slave.lastSeenAt,
    slave.messageOffset ?? 0,
    slave.actionOffset ?? 0,
    slave.heardAt ?? slave.lastSeenAt,
    slave.notPromotable ?? null,
  ]
}

/** A new epoch's replication state (see sqlite-store.ts newEpochReplication): $1 group, $2 epoch, $3 in-sync, $4 now, $5 prior. */
const NEW_EPOCH_REPLICATION = `INSERT INTO group_replication
    (group_name, replicated, epoch, in_sync_json, reported_at, step_down_at, prior_in_sync_json)
  VALUES ($1, TRUE, $2, $3, $4, NULL, $5)
  ON CONFLICT (group_name) DO UPDATE SET replicated = TRUE, epoch = excluded.epoch,
    in_sync_json = excluded.in_sync_json, reported_at = excluded.reported_at, report_seq = 0,
    step_down_at = NULL, prior_in_sync_json = excluded.prior_in_sync_json`

async function epochOf(c: PoolClient, group: string): Promise<number> {
  const r = await c.query<{ epoch: number }>('SELECT epoch FROM group_epochs WHERE group_name = $1', [group])
  return r.rows[0]?.epoch ?? 0
}

async function replicationOf(c: PoolClient, group: string): Promise<StoredReplication | undefined> {
  const r = await c.query<ReplicationRow>(
    `SELECT ${REPLICATION_COLUMNS} FROM group_replication WHERE group_name = $1`,
    [group],
  )
  return r.rows[0] === undefined ? undefined : toReplication(r.rows[0])
}

/** Hides the password of a connection URL (for logs and errors). */
export function redactUrl(url: string): string {
  return url.replace(/(\/\/[^:/@]*:)[^@]*@/, '$1***@')
}

export class PostgresMetaStore implements MetaStore {
  readonly kind = 'postgres'
  readonly shared = true
  private readonly pool: Pool
  private closed = false
  /** Application credentials (issue 18), on this store's pool and error wrapper. */
  readonly apps: AppCredentialStore

  private constructor(pool: Pool) {
    this.pool = pool
    this.apps = new PostgresAppStore((what, sql, params) => this.q(what, sql, params))
  }

  /** Connects, creates or migrates the schema, and answers the store. */
  static async open(url: string): Promise<PostgresMetaStore> {
    const pg = loadPg()
    const pool = new pg.Pool({
      connectionString: url,
      max: POOL_MAX,
      connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
      statement_timeout: STATEMENT_TIMEOUT_MS,
      application_name: 'qmq-metaserver',
      types: {
        getTypeParser: ((oid: number, format?: 'text' | 'binary') =>
          oid === INT8_OID
            ? (v: string) => Number(v)
            : pg.types.getTypeParser(oid, format ?? 'text')) as typeof pg.types.getTypeParser,
      },
    })
    // An idle client losing its connection (the database restarted) is not fatal: the next query
    // opens a new one. Without a listener the pool's 'error' would crash the process.
    pool.on('error', () => {})
    const store = new PostgresMetaStore(pool)
    try {
      await store.migrate()
    } catch (err) {
      await pool.end().catch(() => {})
      throw storeError(err, `cannot open metaserver database ${redactUrl(url)}`)
    }
    return store
  }

  private async migrate(): Promise<void> {
    await this.tx(async (c) => {
      await c.query(`SELECT pg_advisory_xact_lock(${MIGRATION_LOCK_KEY})`)
      await c.query(VERSION_TABLE)
      const r = await c.query<{ v: number | null }>('SELECT MAX(version) AS v FROM schema_version')
      const current = r.rows[0]?.v ?? 0
      if (current > SCHEMA_VERSION) {
        throw new QmqError(
          'QMQ_ERR_METASERVER_STORE',
          `the database has schema version ${current}, newer than this metaserver's ${SCHEMA_VERSION}; upgrade qmq`,
        )
      }
      for (const m of pendingMigrations(current)) {
        await c.query(m.sql.postgres)
        await c.query('INSERT INTO schema_version (version) VALUES ($1)', [m.version])
      }
    })
  }

  private async q<R extends QueryResultRow>(what: string, sql: string, params: unknown[] = []): Promise<R[]> {
    if (this.closed) throw new QmqError('QMQ_ERR_METASERVER_STORE', `${what}: store is closed`)
    try {
      return (await this.pool.query<R>(sql, params)).rows
    } catch (err) {
      throw storeError(err, what)
    }
  }

  private async tx<T>(fn: (c: PoolClient) => Promise<T>): Promise<T> {
    const c = await this.pool.connect()
    let broken = false
    // The connection lost while checked out (the database stopped between two statements) emits
    // 'error' on the client: without a listener that is an uncaught exception. The statement in
    // flight fails by itself; the client is discarded on release.
    const onError = () => {
      broken = true
    }
    c.on('error', onError)
    try {
      await c.query('BEGIN')
      const out = await fn(c)
      await c.query('COMMIT')
      return out
    } catch (err) {
      await c.query('ROLLBACK').catch(() => {
        broken = true
      })
      throw err
    } finally {
      c.off('error', onError)
      c.release(broken)
    }
  }

  async clockOffsetMs(localNow: number): Promise<number> {
    const before = localNow
    const started = Date.now()
    const rows = await this.q<{ now: number }>(
      'read database clock',
      'SELECT (extract(epoch FROM clock_timestamp()) * 1000)::float8 AS now',
    )
    const rtt = Date.now() - started
    return Math.round((rows[0]?.now ?? before) - (before + rtt / 2))
  }

  async loadAll(): Promise<MetaSnapshot> {
    if (this.closed) throw new QmqError('QMQ_ERR_METASERVER_STORE', 'load metadata: store is closed')
    try {
      // One REPEATABLE READ transaction: the tables are read at one instant.
      return await this.tx(async (c) => {
        await c.query('SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY')
        const groups = (
          await c.query<GroupRow>('SELECT name, kind, first_seen_at, load_json FROM groups')
        ).rows.map(toGroup)
        const servers = (
          await c.query<ServerRow>(
            'SELECT group_name, role, address, http_address, last_seen_at FROM servers',
          )
        ).rows.map(toServer)
        const routes = (
          await c.query<RouteRow>(
            'SELECT subject, groups_json, version, created_at, updated_at FROM subject_routes',
          )
        ).rows.map(toRoute)
        const readOnly = (
          await c.query<ReadOnlyRow>('SELECT group_name, subject, created_at FROM readonly_settings')
        ).rows.map(toReadOnly)
        const clients = (
          await c.query<ClientRow>(
            'SELECT client_id, kind, subject, consumer_group, app_code, last_seen_at FROM clients',
          )
        ).rows.map(toClient)
        const liveness = (
          await c.query<LivenessRow>('SELECT group_name, alive, version, changed_at FROM group_liveness')
        ).rows.map(toLiveness)
        const epochs = (
          await c.query<EpochRow>('SELECT group_name, epoch, failovers, updated_at FROM group_epochs')
        ).rows.map(toEpoch)
        const slaves = (await c.query<SlaveRow>(`SELECT ${SLAVE_COLUMNS} FROM slaves`)).rows.map(toSlave)
        const replication = (
          await c.query<ReplicationRow>(`SELECT ${REPLICATION_COLUMNS} FROM group_replication`)
        ).rows.map(toReplication)
        return {
          replication,
          epochs,
          groups,
          servers: [...servers, ...slaves],
          routes,
          readOnly,
          clients,
          liveness,
        }
      })
    } catch (err) {
      throw storeError(err, 'load metadata')
    }
  }

  /** A transaction wrapped as the store's errors (closed store, database failures). */
  private async txStored<T>(what: string, fn: (c: PoolClient) => Promise<T>): Promise<T> {
    if (this.closed) throw new QmqError('QMQ_ERR_METASERVER_STORE', `${what}: store is closed`)
    try {
      return await this.tx(fn)
    } catch (err) {
      throw storeError(err, what)
    }
  }

  async recordHeartbeat(
    group: StoredGroup,
    server: StoredServer,
    epoch: number,
    report?: ReplicationReport,
  ): Promise<HeartbeatResult> {
    return this.txStored(`record heartbeat of ${group.name}`, async (c) => {
      // Locks the group's row until commit: a promotion of the group waits for this transaction.
      await c.query(
        `INSERT INTO groups (name, kind, first_seen_at, load_json, updated_at) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (name) DO UPDATE SET load_json = excluded.load_json, updated_at = excluded.updated_at`,
        [group.name, group.kind, group.firstSeenAt, JSON.stringify(group.load), server.lastSeenAt],
      )
      const stored = await epochOf(c, group.name)
      if (stored > epoch)
        return { written: false, epoch: stored, replication: await replicationOf(c, group.name) }
      if (server.role === 'master' && report !== undefined) {
        // The group's row is locked (above): no other report is written meanwhile.
        const current = await replicationOf(c, group.name)
        if (staleReport(current, stored, report))
          return { written: true, epoch: stored, replication: current, staleReport: true }
      }
      if (server.role === 'master') {
        await c.query(
          `INSERT INTO servers (group_name, role, address, http_address, last_seen_at, epoch)
           VALUES ($1, 'master', $2, $3, $4, $5)
           ON CONFLICT (group_name, role) DO UPDATE SET address = excluded.address,
             http_address = excluded.http_address, epoch = excluded.epoch,
             last_seen_at = CASE WHEN excluded.last_seen_at = 0 THEN 0
                                 ELSE GREATEST(servers.last_seen_at, excluded.last_seen_at) END`,
          [server.group, server.address, server.httpAddress ?? null, server.lastSeenAt, stored],
        )
        await c.query('DELETE FROM slaves WHERE group_name = $1 AND address = $2', [
          server.group,
          server.address,
        ])
        if (report !== undefined)
          // A report replaces an older one only; a step-down is kept within its epoch.
          await c.query(
            `INSERT INTO group_replication AS r (group_name, replicated, epoch, in_sync_json, reported_at, report_seq, step_down_at)
             VALUES ($1, $2, $3, $4, $5, $6, NULL)
             ON CONFLICT (group_name) DO UPDATE SET replicated = excluded.replicated, epoch = excluded.epoch,
               in_sync_json = excluded.in_sync_json, reported_at = excluded.reported_at, report_seq = excluded.report_seq,
               step_down_at = CASE WHEN r.epoch < excluded.epoch THEN NULL ELSE r.step_down_at END
             WHERE r.epoch < excluded.epoch OR (r.epoch = excluded.epoch AND CASE
               WHEN r.report_seq > 0 AND excluded.report_seq > 0 THEN r.report_seq <= excluded.report_seq
               ELSE r.reported_at <= excluded.reported_at END)`,
            [
              server.group,
              report.replicated,
              stored,
              JSON.stringify(report.inSync),
              server.lastSeenAt,
              report.seq ?? 0,
            ],
          )
        // Only a heartbeat the server sent as master carries a report (see sqlite-store.ts).
        if (report !== undefined)
          await c.query(
            `UPDATE group_replication SET prior_in_sync_json = '${SERVED_MARK}'
             WHERE group_name = $1 AND epoch = $2 AND prior_in_sync_json <> '${SERVED_MARK}'`,
            [server.group, stored],
          )
      } else await c.query(UPSERT_SLAVE, slaveParams(server.group, server))
      return { written: true, epoch: stored, replication: await replicationOf(c, group.name) }
    })
  }

  async getRoute(subject: string): Promise<StoredRoute | undefined> {
    const rows = await this.q<RouteRow>(
      `read route of ${subject}`,
      'SELECT subject, groups_json, version, created_at, updated_at FROM subject_routes WHERE subject = $1',
      [subject],
    )
    return rows[0] === undefined ? undefined : toRoute(rows[0])
  }

  async assignRouteIfAbsent(subject: string, groups: readonly string[], now: number): Promise<StoredRoute> {
    await this.q(
      `assign route of ${subject}`,
      `INSERT INTO subject_routes (subject, groups_json, version, created_at, updated_at) VALUES ($1, $2, 1, $3, $3)
       ON CONFLICT (subject) DO NOTHING`,
      [subject, JSON.stringify(groups), now],
    )
    const route = await this.getRoute(subject)
    if (route === undefined)
      throw new QmqError('QMQ_ERR_METASERVER_STORE', `route of ${subject} vanished after its insert`)
    return route
  }

  async updateRoute(
    subject: string,
    groups: readonly string[],
    expectedVersion: number,
    now: number,
  ): Promise<StoredRoute | undefined> {
    const rows = await this.q<RouteRow>(
      `update route of ${subject}`,
      `UPDATE subject_routes SET groups_json = $1, version = version + 1, updated_at = $2
       WHERE subject = $3 AND version = $4
       RETURNING subject, groups_json, version, created_at, updated_at`,
      [JSON.stringify(groups), now, subject, expectedVersion],
    )
    return rows[0] === undefined ? undefined : toRoute(rows[0])
  }

  async setReadOnly(group: string, subject: string, readOnly: boolean, now: number): Promise<void> {
    if (readOnly)
      await this.q(
        `set read-only of ${group}`,
        'INSERT INTO readonly_settings (group_name, subject, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING',
        [group, subject, now],
      )
    else
      await this.q(
        `clear read-only of ${group}`,
        'DELETE FROM readonly_settings WHERE group_name = $1 AND subject = $2',
        [group, subject],
      )
  }

  async upsertClient(c: StoredClient): Promise<void> {
    await this.q(
      `record client ${c.clientId}`,
      `INSERT INTO clients (client_id, kind, subject, consumer_group, app_code, last_seen_at) VALUES ($1, $2, $3, $4, $5, $6)
       ON CONFLICT (client_id, kind, subject, consumer_group) DO UPDATE SET
         app_code = excluded.app_code, last_seen_at = GREATEST(clients.last_seen_at, excluded.last_seen_at)`,
      [c.clientId, c.kind, c.subject, c.consumerGroup, c.appCode, c.lastSeenAt],
    )
  }

  async deleteClient(
    c: Pick<StoredClient, 'clientId' | 'kind' | 'subject' | 'consumerGroup'>,
  ): Promise<void> {
    await this.q(
      `delete client ${c.clientId}`,
      'DELETE FROM clients WHERE client_id = $1 AND kind = $2 AND subject = $3 AND consumer_group = $4',
      [c.clientId, c.kind, c.subject, c.consumerGroup],
    )
  }

  async deleteClientsSeenBefore(before: number): Promise<number> {
    const rows = await this.q<{ n: number }>(
      'expire clients',
      'WITH d AS (DELETE FROM clients WHERE last_seen_at < $1 RETURNING 1) SELECT COUNT(*)::int AS n FROM d',
      [before],
    )
    return rows[0]?.n ?? 0
  }

  async decideLiveness(
    group: string,
    alive: boolean,
    now: number,
    deadBefore: number,
  ): Promise<LivenessDecision> {
    // The upsert's WHERE is evaluated again on the newest row version when another metaserver's
    // upsert of the same group committed first (READ COMMITTED), so only one of them changes it.
    const changed = await this.q<{ version: number }>(
      `decide liveness of ${group}`,
      `INSERT INTO group_liveness AS l (group_name, alive, version, changed_at)
       SELECT $1, $2, 1, $3
       WHERE $2 OR NOT EXISTS (
         SELECT 1 FROM servers WHERE group_name = $1 AND role = 'master' AND last_seen_at > $4)
       ON CONFLICT (group_name) DO UPDATE SET alive = excluded.alive, version = l.version + 1,
         changed_at = excluded.changed_at
       WHERE l.alive <> excluded.alive
       RETURNING version`,
      [group, alive, now, deadBefore],
    )
    const state = await this.q<{ alive: boolean | null; version: number | null; seen: number | null }>(
      `read liveness of ${group}`,
      `SELECT (SELECT alive FROM group_liveness WHERE group_name = $1) AS alive,
              (SELECT version FROM group_liveness WHERE group_name = $1) AS version,
              (SELECT last_seen_at FROM servers WHERE group_name = $1 AND role = 'master') AS seen`,
      [group],
    )
    const s = state[0]
    const won = changed[0]
    return {
      changed: won !== undefined,
      alive: won !== undefined ? alive : (s?.alive ?? true),
      version: won?.version ?? s?.version ?? 0,
      masterLastSeenAt: s?.seen ?? 0,
    }
  }

  async promote(req: PromoteRequest): Promise<PromoteResult> {
    const { group, now } = req
    return this.txStored(`promote a slave of ${group}`, async (c) => {
      // The group's row first: heartbeats of the group (which lock it with their upsert) and other
      // promotions wait, so what is read below stays true until commit.
      await c.query('SELECT 1 FROM groups WHERE name = $1 FOR UPDATE', [group])
      const seen = await c.query<{ last_seen_at: number; address: string }>(
        `SELECT last_seen_at, address FROM servers WHERE group_name = $1 AND role = 'master'`,
        [group],
      )
      const slaves = await c.query<SlaveRow>(`SELECT ${SLAVE_COLUMNS} FROM slaves WHERE group_name = $1`, [
        group,
      ])
      const choice = choosePromotion(req, {
        epoch: await epochOf(c, group),
        masterLastSeenAt: seen.rows[0]?.last_seen_at ?? 0,
        masterAddress: seen.rows[0]?.address,
        replication: await replicationOf(c, group),
        slaves: slaves.rows.map(toSlave),
      })
      if (!('slave' in choice)) return choice
      await c.query(
        `INSERT INTO group_epochs (group_name, epoch, failovers, updated_at) VALUES ($1, 0, 0, $2)
         ON CONFLICT (group_name) DO NOTHING`,
        [group, now],
      )
      // Compare-and-set (the group lock above already serializes promotions of one group).
      const moved = await c.query(
        `UPDATE group_epochs SET epoch = epoch + 1, failovers = failovers + 1, updated_at = $1
         WHERE group_name = $2 AND epoch = $3`,
        [now, group, req.expectedEpoch],
      )
      if (moved.rowCount !== 1) return { refused: 'epoch' as const }
      const next = req.expectedEpoch + 1
      const slave = choice.slave
      await c.query(
        `INSERT INTO servers (group_name, role, address, http_address, last_seen_at, epoch)
         VALUES ($1, 'master', $2, $3, $4, $5)
         ON CONFLICT (group_name, role) DO UPDATE SET address = excluded.address,
           http_address = excluded.http_address, last_seen_at = excluded.last_seen_at, epoch = excluded.epoch`,
        [group, slave.address, slave.httpAddress ?? null, slave.lastSeenAt, next],
      )
      await c.query('DELETE FROM slaves WHERE group_name = $1 AND address = $2', [group, slave.address])
      await c.query(NEW_EPOCH_REPLICATION, [group, next, '[]', now, JSON.stringify(choice.priorInSync)])
      return { promoted: { ...slave, role: 'master' as const } }
    })
  }

  async abandonPromotion(req: AbandonRequest): Promise<AbandonResult> {
    const { group, now, slave } = req
    return this.txStored(`abandon the promotion of ${slave.address} in ${group}`, async (c) => {
      // The group's row first, as promote() does: heartbeats and promotions of the group wait.
      await c.query('SELECT 1 FROM groups WHERE name = $1 FOR UPDATE', [group])
      const master = await c.query<{ address: string }>(
        `SELECT address FROM servers WHERE group_name = $1 AND role = 'master'`,
        [group],
      )
      const choice = chooseAbandon(
        req,
        await epochOf(c, group),
        master.rows[0]?.address,
        await replicationOf(c, group),
      )
      if ('refused' in choice) return choice
      const moved = await c.query(
        'UPDATE group_epochs SET epoch = epoch + 1, updated_at = $1 WHERE group_name = $2 AND epoch = $3',
        [now, group, req.epoch],
      )
      if (moved.rowCount !== 1) return { refused: 'epoch' as const }
      const next = req.epoch + 1
      await c.query(`DELETE FROM servers WHERE group_name = $1 AND role = 'master'`, [group])
      await c.query(UPSERT_SLAVE, slaveParams(group, slave))
      await c.query(NEW_EPOCH_REPLICATION, [group, next, JSON.stringify(choice.inSync), now, '[]'])
      return { abandoned: next }
    })
  }

  async setStepDown(group: string, at: number | undefined): Promise<StoredReplication | undefined> {
    return this.txStored(`set step-down of ${group}`, async (c) => {
      // After every heartbeat answered so far (they lock the group's row): see store.ts.
      await c.query('SELECT 1 FROM groups WHERE name = $1 FOR UPDATE', [group])
      if (at === undefined)
        await c.query('UPDATE group_replication SET step_down_at = NULL WHERE group_name = $1', [group])
      else
        await c.query(
          `UPDATE group_replication SET step_down_at = COALESCE(step_down_at, GREATEST($1::bigint, COALESCE(
             (SELECT last_seen_at FROM servers WHERE group_name = $2 AND role = 'master'), 0)))
           WHERE group_name = $2`,
          [at, group],
        )
      return replicationOf(c, group)
    })
  }

  async registerMetaserver(m: StoredMetaserver): Promise<void> {
    await this.q(
      'register metaserver',
      `INSERT INTO metaservers (id, url, started_at, last_seen_at) VALUES ($1, $2, $3, $4)
       ON CONFLICT (id) DO UPDATE SET url = excluded.url, last_seen_at = excluded.last_seen_at`,
      [m.id, m.url, m.startedAt, m.lastSeenAt],
    )
  }

  async listMetaservers(seenAfter: number): Promise<StoredMetaserver[]> {
    const rows = await this.q<{ id: string; url: string; started_at: number; last_seen_at: number }>(
      'list metaservers',
      'SELECT id, url, started_at, last_seen_at FROM metaservers WHERE last_seen_at > $1 ORDER BY started_at, id',
      [seenAfter],
    )
    return rows.map((r) => ({ id: r.id, url: r.url, startedAt: r.started_at, lastSeenAt: r.last_seen_at }))
  }

  async expireSlaves(heardBefore: number): Promise<SlaveKey[]> {
    const rows = await this.q<{ group_name: string; address: string }>(
      'expire slaves',
      'DELETE FROM slaves WHERE heard_at < $1 RETURNING group_name, address',
      [heardBefore],
    )
    return rows.map((r) => ({ group: r.group_name, address: r.address }))
  }

  async removeSlave(
    group: string,
    address: string,
    seenBefore: number,
  ): Promise<'removed' | 'alive' | 'unknown'> {
    const rows = await this.q<{ deleted: boolean }>(
      `remove slave ${address} of ${group}`,
      `WITH d AS (DELETE FROM slaves WHERE group_name = $1 AND address = $2 AND last_seen_at < $3 RETURNING 1)
       SELECT EXISTS (SELECT 1 FROM d) AS deleted`,
      [group, address, seenBefore],
    )
    if (rows[0]?.deleted === true) return 'removed'
    const seen = await this.q<{ n: number }>(
      `remove slave ${address} of ${group}`,
      'SELECT COUNT(*)::int AS n FROM slaves WHERE group_name = $1 AND address = $2',
      [group, address],
    )
    return (seen[0]?.n ?? 0) > 0 ? 'alive' : 'unknown'
  }

  async removeMetaserver(id: string): Promise<void> {
    await this.q('remove metaserver', 'DELETE FROM metaservers WHERE id = $1', [id])
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    await this.pool.end().catch(() => {})
  }
}
