import type Database from 'better-sqlite3'
import { QmqError } from '../common/errors'
import type {
  AbandonRequest,
  AbandonResult,
  MetaSnapshot,
  MetaStore,
  StoredClient,
  StoredGroup,
  StoredRoute,
  StoredServer,
  LivenessDecision,
  StoredMetaserver,
  HeartbeatResult,
  PromoteRequest,
  PromoteResult,
  ReplicationReport,
  StoredReplication,
  SlaveKey,
} from './store'
import { type AppCredentialStore, SqliteAppStore } from './app-store'
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
  storeError,
  toClient,
  toEpoch,
  toGroup,
  toLiveness,
  toReadOnly,
  SERVED_MARK,
  toReplication,
  toRoute,
  toServer,
  toSlave,
} from './rows'
import { chooseAbandon, choosePromotion } from './promotion'
import { staleReport } from './store'
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
        `INSERT INTO servers (group_name, role, address, http_address, last_seen_at, epoch) VALUES (?, 'master', ?, ?, ?, ?)
         ON CONFLICT (group_name, role) DO UPDATE SET address = excluded.address,
           http_address = excluded.http_address, epoch = excluded.epoch,
           last_seen_at = CASE WHEN excluded.last_seen_at = 0 THEN 0
                               ELSE MAX(servers.last_seen_at, excluded.last_seen_at) END`,
      ),
      promotedMaster: db.prepare(
        `INSERT INTO servers (group_name, role, address, http_address, last_seen_at, epoch) VALUES (?, 'master', ?, ?, ?, ?)
         ON CONFLICT (group_name, role) DO UPDATE SET address = excluded.address,
           http_address = excluded.http_address, epoch = excluded.epoch, last_seen_at = excluded.last_seen_at`,
      ),
      // A slave's offsets are those of its newest report (they go back when it truncates).
      upsertSlave: db.prepare(
        `INSERT INTO slaves (group_name, address, http_address, last_seen_at, message_offset, action_offset, heard_at, not_promotable)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (group_name, address) DO UPDATE SET http_address = excluded.http_address,
           heard_at = MAX(slaves.heard_at, excluded.heard_at),
           last_seen_at = CASE WHEN excluded.last_seen_at = 0 THEN 0
                               ELSE MAX(slaves.last_seen_at, excluded.last_seen_at) END,
           message_offset = CASE WHEN excluded.last_seen_at = 0 OR excluded.last_seen_at >= slaves.last_seen_at
                                 THEN excluded.message_offset ELSE slaves.message_offset END,
           action_offset = CASE WHEN excluded.last_seen_at = 0 OR excluded.last_seen_at >= slaves.last_seen_at
                                THEN excluded.action_offset ELSE slaves.action_offset END,
           not_promotable = CASE WHEN excluded.last_seen_at = 0 OR excluded.last_seen_at >= slaves.last_seen_at
                                 THEN excluded.not_promotable ELSE slaves.not_promotable END`,
      ),
      allSlaves: db.prepare(
        'SELECT group_name, address, http_address, last_seen_at, message_offset, action_offset, heard_at, not_promotable FROM slaves',
      ),
      slavesOf: db.prepare(
        'SELECT group_name, address, http_address, last_seen_at, message_offset, action_offset, heard_at, not_promotable FROM slaves WHERE group_name = ?',
      ),
      expireSlaves: db.prepare('DELETE FROM slaves WHERE heard_at < ? RETURNING group_name, address'),
      slaveSeen: db.prepare('SELECT last_seen_at FROM slaves WHERE group_name = ? AND address = ?'),
      deleteSlave: db.prepare('DELETE FROM slaves WHERE group_name = ? AND address = ?'),
      getEpoch: db.prepare('SELECT epoch FROM group_epochs WHERE group_name = ?'),
      allReplication: db.prepare(
        'SELECT group_name, replicated, epoch, in_sync_json, reported_at, report_seq, step_down_at, prior_in_sync_json FROM group_replication',
      ),
      getReplication: db.prepare(
        'SELECT group_name, replicated, epoch, in_sync_json, reported_at, report_seq, step_down_at, prior_in_sync_json FROM group_replication WHERE group_name = ?',
      ),
      // A report replaces an older one only (lower epoch, or same epoch and not older: by reportSeq when
      // both have one, else by arrival); a step-down is kept within its epoch.
      upsertReport: db.prepare(
        `INSERT INTO group_replication (group_name, replicated, epoch, in_sync_json, reported_at, report_seq, step_down_at)
         VALUES (?, ?, ?, ?, ?, ?, NULL)
         ON CONFLICT (group_name) DO UPDATE SET replicated = excluded.replicated, epoch = excluded.epoch,
           in_sync_json = excluded.in_sync_json, reported_at = excluded.reported_at, report_seq = excluded.report_seq,
           step_down_at = CASE WHEN group_replication.epoch < excluded.epoch THEN NULL
                               ELSE group_replication.step_down_at END
         WHERE group_replication.epoch < excluded.epoch
            OR (group_replication.epoch = excluded.epoch AND CASE
                  WHEN group_replication.report_seq > 0 AND excluded.report_seq > 0
                  THEN group_replication.report_seq <= excluded.report_seq
                  ELSE group_replication.reported_at <= excluded.reported_at END)`,
      ),
      // A new epoch's replication state: `in_sync_json` is '[]' after a promotion (prior_in_sync_json
      // the others of the set it chose from), the prior set after an abandoned one ('[]' then).
      newEpochReplication: db.prepare(
        `INSERT INTO group_replication (group_name, replicated, epoch, in_sync_json, reported_at, step_down_at, prior_in_sync_json)
         VALUES (?, 1, ?, ?, ?, NULL, ?)
         ON CONFLICT (group_name) DO UPDATE SET replicated = 1, epoch = excluded.epoch, in_sync_json = excluded.in_sync_json,
           reported_at = excluded.reported_at, report_seq = 0, step_down_at = NULL,
           prior_in_sync_json = excluded.prior_in_sync_json`,
      ),
      // A master heartbeat: its epoch was served (rows.ts SERVED_MARK); no write when already marked.
      markServed: db.prepare(
        `UPDATE group_replication SET prior_in_sync_json = '${SERVED_MARK}'
         WHERE group_name = ? AND epoch = ? AND prior_in_sync_json <> '${SERVED_MARK}'`,
      ),
      setStepDown: db.prepare(
        `UPDATE group_replication SET step_down_at = COALESCE(step_down_at, MAX(?, COALESCE(
           (SELECT last_seen_at FROM servers WHERE group_name = group_replication.group_name AND role = 'master'), 0)))
         WHERE group_name = ?`,
      ),
      clearStepDown: db.prepare('UPDATE group_replication SET step_down_at = NULL WHERE group_name = ?'),
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
      masterLastSeen: db.prepare(
        "SELECT last_seen_at, address FROM servers WHERE group_name = ? AND role = 'master'",
      ),
      deleteMaster: db.prepare("DELETE FROM servers WHERE group_name = ? AND role = 'master'"),
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
      abandonEpoch: db.prepare(
        'UPDATE group_epochs SET epoch = epoch + 1, updated_at = ? WHERE group_name = ? AND epoch = ?',
      ),
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
      const slaves = (s.allSlaves.all() as SlaveRow[]).map(toSlave)
      const replication = (s.allReplication.all() as ReplicationRow[]).map(toReplication)
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
  }

  private replicationOf(group: string): StoredReplication | undefined {
    const row = this.stmts.getReplication.get(group) as ReplicationRow | undefined
    return row === undefined ? undefined : toReplication(row)
  }

  private epochOf(group: string): number {
    return (this.stmts.getEpoch.get(group) as { epoch: number } | undefined)?.epoch ?? 0
  }

  recordHeartbeat(
    group: StoredGroup,
    server: StoredServer,
    epoch: number,
    report?: ReplicationReport,
  ): Promise<HeartbeatResult> {
    return this.run(`record heartbeat of ${group.name}`, () =>
      this.db
        .transaction((): HeartbeatResult => {
          const s = this.stmts
          s.upsertGroup.run(
            group.name,
            group.kind,
            group.firstSeenAt,
            JSON.stringify(group.load),
            server.lastSeenAt,
          )
          const stored = this.epochOf(group.name)
          if (stored > epoch)
            return { written: false, epoch: stored, replication: this.replicationOf(group.name) }
          if (server.role === 'master' && report !== undefined) {
            const current = this.replicationOf(group.name)
            if (staleReport(current, stored, report))
              return { written: true, epoch: stored, replication: current, staleReport: true }
          }
          if (server.role === 'master') {
            s.upsertServer.run(
              server.group,
              server.address,
              server.httpAddress ?? null,
              server.lastSeenAt,
              stored,
            )
            s.deleteSlave.run(server.group, server.address)
            if (report !== undefined)
              s.upsertReport.run(
                server.group,
                report.replicated ? 1 : 0,
                stored,
                JSON.stringify(report.inSync),
                server.lastSeenAt,
                report.seq ?? 0,
              )
            // Only a heartbeat the server sent as master carries a report: the promoted slave's own
            // heartbeats (stored with role master once it is the recorded master) do not mark.
            if (report !== undefined) s.markServed.run(server.group, stored)
          } else {
            s.upsertSlave.run(
              server.group,
              server.address,
              server.httpAddress ?? null,
              server.lastSeenAt,
              server.messageOffset ?? 0,
              server.actionOffset ?? 0,
              server.heardAt ?? server.lastSeenAt,
              server.notPromotable ?? null,
            )
          }
          return { written: true, epoch: stored, replication: this.replicationOf(group.name) }
        })
        .immediate(),
    )
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

  promote(req: PromoteRequest): Promise<PromoteResult> {
    const { group, now } = req
    return this.run(`promote a slave of ${group}`, () =>
      this.db
        .transaction((): PromoteResult => {
          const s = this.stmts
          const seen = s.masterLastSeen.get(group) as { last_seen_at: number; address: string } | undefined
          const choice = choosePromotion(req, {
            epoch: this.epochOf(group),
            masterLastSeenAt: seen?.last_seen_at ?? 0,
            masterAddress: seen?.address,
            replication: this.replicationOf(group),
            slaves: (s.slavesOf.all(group) as SlaveRow[]).map(toSlave),
          })
          if (!('slave' in choice)) return choice
          s.insertEpoch.run(group, now)
          if (s.casEpoch.run(now, group, req.expectedEpoch).changes === 0) return { refused: 'epoch' }
          const next = req.expectedEpoch + 1
          const slave = choice.slave
          s.promotedMaster.run(group, slave.address, slave.httpAddress ?? null, slave.lastSeenAt, next)
          s.deleteSlave.run(group, slave.address)
          s.newEpochReplication.run(group, next, '[]', now, JSON.stringify(choice.priorInSync))
          return { promoted: { ...slave, role: 'master' } }
        })
        .immediate(),
    )
  }

  abandonPromotion(req: AbandonRequest): Promise<AbandonResult> {
    const { group, now, slave } = req
    return this.run(`abandon the promotion of ${slave.address} in ${group}`, () =>
      this.db
        .transaction((): AbandonResult => {
          const s = this.stmts
          const master = s.masterLastSeen.get(group) as { address: string } | undefined
          const choice = chooseAbandon(req, this.epochOf(group), master?.address, this.replicationOf(group))
          if ('refused' in choice) return choice
          if (s.abandonEpoch.run(now, group, req.epoch).changes === 0) return { refused: 'epoch' }
          const next = req.epoch + 1
          s.deleteMaster.run(group)
          s.upsertSlave.run(
            group,
            slave.address,
            slave.httpAddress ?? null,
            slave.lastSeenAt,
            slave.messageOffset ?? 0,
            slave.actionOffset ?? 0,
            slave.heardAt ?? slave.lastSeenAt,
            slave.notPromotable ?? null,
          )
          s.newEpochReplication.run(group, next, JSON.stringify(choice.inSync), now, '[]')
          return { abandoned: next }
        })
        .immediate(),
    )
  }

  setStepDown(group: string, at: number | undefined): Promise<StoredReplication | undefined> {
    return this.run(`set step-down of ${group}`, () =>
      this.db
        .transaction(() => {
          if (at === undefined) this.stmts.clearStepDown.run(group)
          else this.stmts.setStepDown.run(at, group)
          return this.replicationOf(group)
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

  expireSlaves(heardBefore: number): Promise<SlaveKey[]> {
    return this.run('expire slaves', () =>
      (this.stmts.expireSlaves.all(heardBefore) as { group_name: string; address: string }[]).map((r) => ({
        group: r.group_name,
        address: r.address,
      })),
    )
  }

  removeSlave(group: string, address: string, seenBefore: number): Promise<'removed' | 'alive' | 'unknown'> {
    return this.run(`remove slave ${address} of ${group}`, () =>
      this.db
        .transaction((): 'removed' | 'alive' | 'unknown' => {
          const row = this.stmts.slaveSeen.get(group, address) as { last_seen_at: number } | undefined
          if (row === undefined) return 'unknown'
          if (row.last_seen_at >= seenBefore) return 'alive'
          this.stmts.deleteSlave.run(group, address)
          return 'removed'
        })
        .immediate(),
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
