/**
 * The metaserver's schema history, one list of migrations for both stores: entry N brings a database
 * from version N-1 to N. The SQLite and PostgreSQL texts of a migration differ only in column types
 * (SQLite INTEGER/TEXT, PostgreSQL BIGINT/TEXT/BOOLEAN); tables, keys and meanings are the same.
 * `schema_version(version)` holds one row per applied migration; a store refuses to open a database
 * whose highest version is newer than the last entry here (a newer qmq wrote it).
 *
 * Version 1 (issue 5):
 *   groups(name PK, kind 'broker'|'delay', first_seen_at, load_json, updated_at)
 *   servers(group_name, role 'master'|'slave', address 'host:port', http_address, last_seen_at; PK(group_name, role))
 *   subject_routes(subject PK, groups_json '["g1","g2"]', version, created_at, updated_at)
 *   readonly_settings(group_name, subject ('*' = all); PK(group_name, subject), created_at)
 *   clients(client_id, kind, subject, consumer_group ('' for producers), app_code, last_seen_at;
 *           PK(client_id, kind, subject, consumer_group))
 * Version 2 (issue 15, several metaservers on one store):
 *   group_liveness(group_name PK, alive, version (grows by one per decided transition), changed_at)
 *   metaservers(id PK, url, started_at, last_seen_at): the metaservers sharing the store
 * Version 3 (issue 18, application credentials; app-store.ts reads and writes it):
 *   app_credentials(app_code PK, token_hashes_json '["<sha256 hex>",...]',
 *                   grants_json '[{"action":"produce","subject":"order.*"},...]', created_at, updated_at)
 * Version 4 (issue 14, replication):
 *   group_epochs(group_name PK, epoch, failovers, updated_at)   absent row = epoch 0
 * Version 5 (issue 14 review: what a promotion needs is in the store, so any metaserver decides it):
 *   servers gains epoch: the group epoch its master row was written in (a master row is never
 *     overwritten by a heartbeat written in an older epoch: another metaserver promoted meanwhile)
 *   slaves(group_name, address 'host:port', http_address, last_seen_at, message_offset, action_offset;
 *          PK(group_name, address))   every slave of a group; the offsets are the durable ends of its
 *          copies as it last reported them. The 'slave' rows of servers move here; servers keeps masters.
 *   group_replication(group_name PK, replicated, epoch, in_sync_json '["host:port",...]', reported_at,
 *          step_down_at (NULL = none))   the master's last report: it has slaves (it holds a lease and
 *          fails over), which slaves were in sync, in which epoch and when; and a `qmq failover` asked.
 * Version 6 (issue 18 review: `qmq auth` grant/revoke/rotate are compare-and-set, app-store.ts):
 *   app_credentials gains version: grows by one with every update of the row; an update applies only
 *     to the version it read (UPDATE ... WHERE version = <read>), so two changes at once never lose one.
 *     A created row starts above every version of a deleted row of its appCode (app-store.ts: SQLite's
 *     header user_version, PostgreSQL's txid_current()), so a change read before a delete and
 *     re-create never applies to the new app.
 * Version 7 (slaves gone for good expire):
 *   slaves gains heard_at: its last heartbeat, 'offline' ones included (last_seen_at is 0 after
 *     those); a row not heard from for the metaserver's slaveExpiryMs is deleted. Rows already there
 *     start at their last_seen_at, or (offline ones) at the newest master last-seen.
 * Version 8 (in-sync reports are ordered):
 *   group_replication gains report_seq: the master's reportSeq of the stored report (0: none sent; a
 *     new epoch starts at 0). A report of the same epoch with a lower reportSeq is refused.
 * Version 9 (a promotion refused by the promoted slave):
 *   slaves gains not_promotable: NULL, or why the slave said (its newest heartbeat) it cannot be
 *     promoted; such a slave is never promoted.
 *   group_replication gains prior_in_sync_json '["host:port",...]': set by a promotion, the other
 *     slaves of the in-sync set it chose from; they become the in-sync set of the next epoch when the
 *     promoted slave refuses (abandonPromotion). 'null' (rows.ts SERVED_MARK) once a master's report
 *     was stored in the epoch (served: never given up); '[]' otherwise.
 * All times are ms since the epoch (the store's clock, see store.ts).
 */

export type Dialect = 'sqlite' | 'postgres'

interface Migration {
  version: number
  sql: Record<Dialect, string>
}

function both(sql: string): Record<Dialect, string> {
  return {
    sqlite: sql.replaceAll('{INT64}', 'INTEGER').replaceAll('{BOOL}', 'INTEGER'),
    postgres: sql.replaceAll('{INT64}', 'BIGINT').replaceAll('{BOOL}', 'BOOLEAN'),
  }
}

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    sql: both(`
CREATE TABLE IF NOT EXISTS groups (
  name TEXT PRIMARY KEY, kind TEXT NOT NULL, first_seen_at {INT64} NOT NULL,
  load_json TEXT NOT NULL DEFAULT '{}', updated_at {INT64} NOT NULL
);
CREATE TABLE IF NOT EXISTS servers (
  group_name TEXT NOT NULL, role TEXT NOT NULL, address TEXT NOT NULL, http_address TEXT,
  last_seen_at {INT64} NOT NULL, PRIMARY KEY (group_name, role)
);
CREATE TABLE IF NOT EXISTS subject_routes (
  subject TEXT PRIMARY KEY, groups_json TEXT NOT NULL, version INTEGER NOT NULL,
  created_at {INT64} NOT NULL, updated_at {INT64} NOT NULL
);
CREATE TABLE IF NOT EXISTS readonly_settings (
  group_name TEXT NOT NULL, subject TEXT NOT NULL, created_at {INT64} NOT NULL,
  PRIMARY KEY (group_name, subject)
);
CREATE TABLE IF NOT EXISTS clients (
  client_id TEXT NOT NULL, kind TEXT NOT NULL, subject TEXT NOT NULL, consumer_group TEXT NOT NULL,
  app_code TEXT NOT NULL, last_seen_at {INT64} NOT NULL,
  PRIMARY KEY (client_id, kind, subject, consumer_group)
);
CREATE INDEX IF NOT EXISTS clients_last_seen ON clients (last_seen_at);
`),
  },
  {
    version: 2,
    sql: both(`
CREATE TABLE IF NOT EXISTS group_liveness (
  group_name TEXT PRIMARY KEY, alive {BOOL} NOT NULL, version INTEGER NOT NULL, changed_at {INT64} NOT NULL
);
CREATE TABLE IF NOT EXISTS metaservers (
  id TEXT PRIMARY KEY, url TEXT NOT NULL, started_at {INT64} NOT NULL, last_seen_at {INT64} NOT NULL
);
`),
  },
  {
    version: 3,
    sql: both(`
CREATE TABLE IF NOT EXISTS app_credentials (
  app_code TEXT PRIMARY KEY, token_hashes_json TEXT NOT NULL, grants_json TEXT NOT NULL,
  created_at {INT64} NOT NULL, updated_at {INT64} NOT NULL
);
`),
  },
  {
    version: 4,
    sql: both(`
CREATE TABLE IF NOT EXISTS group_epochs (
  group_name TEXT PRIMARY KEY, epoch {INT64} NOT NULL, failovers {INT64} NOT NULL, updated_at {INT64} NOT NULL
);
`),
  },
  {
    version: 5,
    sql: both(`
ALTER TABLE servers ADD COLUMN epoch {INT64} NOT NULL DEFAULT 0;
UPDATE servers SET epoch = COALESCE((SELECT e.epoch FROM group_epochs e WHERE e.group_name = servers.group_name), 0);
CREATE TABLE IF NOT EXISTS slaves (
  group_name TEXT NOT NULL, address TEXT NOT NULL, http_address TEXT, last_seen_at {INT64} NOT NULL,
  message_offset {INT64} NOT NULL, action_offset {INT64} NOT NULL, PRIMARY KEY (group_name, address)
);
INSERT INTO slaves (group_name, address, http_address, last_seen_at, message_offset, action_offset)
  SELECT group_name, address, http_address, last_seen_at, 0, 0 FROM servers WHERE role = 'slave';
DELETE FROM servers WHERE role = 'slave';
CREATE TABLE IF NOT EXISTS group_replication (
  group_name TEXT PRIMARY KEY, replicated {BOOL} NOT NULL, epoch {INT64} NOT NULL, in_sync_json TEXT NOT NULL,
  reported_at {INT64} NOT NULL, step_down_at {INT64}
);
`),
  },
  {
    version: 6,
    sql: both(`
ALTER TABLE app_credentials ADD COLUMN version {INT64} NOT NULL DEFAULT 0;
`),
  },
  {
    version: 7,
    sql: both(`
ALTER TABLE slaves ADD COLUMN heard_at {INT64} NOT NULL DEFAULT 0;
UPDATE slaves SET heard_at = CASE WHEN last_seen_at > 0 THEN last_seen_at
  ELSE COALESCE((SELECT MAX(m.last_seen_at) FROM servers m), 0) END;
`),
  },
  {
    version: 8,
    sql: both(`
ALTER TABLE group_replication ADD COLUMN report_seq {INT64} NOT NULL DEFAULT 0;
`),
  },
  {
    version: 9,
    sql: both(`
ALTER TABLE slaves ADD COLUMN not_promotable TEXT;
ALTER TABLE group_replication ADD COLUMN prior_in_sync_json TEXT NOT NULL DEFAULT '[]';
`),
  },
]

export const SCHEMA_VERSION = MIGRATIONS[MIGRATIONS.length - 1]?.version ?? 0

export const VERSION_TABLE = 'CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)'

/** The migrations a database at `current` still needs. */
export function pendingMigrations(current: number): Migration[] {
  return MIGRATIONS.filter((m) => m.version > current)
}
