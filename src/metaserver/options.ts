import {
  boolean,
  integer,
  type OptionsSchema,
  optionalSecret,
  optionalString,
  resolveOptions,
  string,
  stringList,
} from '../common/config'
import { checkTlsOptions, type TlsFileOptions, tlsFileSchema } from '../common/tls'
import { type AuthOptions, authOptionsSchema } from '../common/auth/options'
import { missingClusterSecret } from '../common/token'

export const DEFAULT_METASERVER_PORT = 8080
export const DEFAULT_HEARTBEAT_INTERVAL_MS = 3_000
export const DEFAULT_HEARTBEAT_TIMEOUT_MS = 10_000
export const DEFAULT_LAST_SEEN_WRITE_INTERVAL_MS = 1_000
export const DEFAULT_CLIENT_HEARTBEAT_INTERVAL_MS = 20_000
export const DEFAULT_CLIENT_TIMEOUT_MS = 60_000
/** Slaves gone for good leave `qmq groups` after this (10 minutes). */
export const DEFAULT_SLAVE_EXPIRY_MS = 600_000
export const DEFAULT_MIN_GROUPS_PER_SUBJECT = 2
export const DEFAULT_MAX_BODY_BYTES = 1024 * 1024 // 1 MiB

export interface MetaserverOptions extends TlsFileOptions, AuthOptions {
  host: string
  port: number
  dataDir: string
  store: string | undefined
  advertisedUrl: string | undefined
  adminToken: string | undefined
  /** Brokers and delay servers send it with their heartbeats; required (see resolveMetaserverOptions). */
  clusterSecret: string | undefined
  advertisedAddresses: readonly string[]
  heartbeatIntervalMs: number
  heartbeatTimeoutMs: number
  lastSeenWriteIntervalMs: number
  clientHeartbeatIntervalMs: number
  clientTimeoutMs: number
  slaveExpiryMs: number
  minGroupsPerSubject: number
  extendOnOutage: boolean
  maxBodyBytes: number
  reloadIntervalMs: number
  /** Serve the web console at /console (docs/console.md). */
  console: boolean
}

/** The CLI maps `--data-dir` / `QMQ_METASERVER_DATA_DIR` etc. onto these keys (config.optionsFromEnv). */
export const metaserverOptionsSchema: OptionsSchema<MetaserverOptions> = {
  host: string({ default: '127.0.0.1', minLength: 1, doc: 'Address to bind the HTTP server to' }),
  port: integer({
    default: DEFAULT_METASERVER_PORT,
    min: 0,
    max: 65535,
    doc: 'HTTP port (0 = any free port)',
  }),
  dataDir: string({ default: './data/metaserver', minLength: 1, doc: 'Directory of meta.db (SQLite)' }),
  store: optionalString({
    doc: 'Metadata store: a postgres:// URL (any number of metaservers may share the database), or unset for SQLite at dataDir/meta.db; a URL with a password is better given with --store-file or QMQ_METASERVER_STORE',
  }),
  advertisedUrl: optionalString({
    doc: 'This metaserver base URL as clients reach it, registered in the store for GET /meta/address (default: the bound address)',
  }),
  adminToken: optionalString({
    doc: 'Bearer token required by admin write endpoints; when unset, admin writes are refused',
  }),
  clusterSecret: optionalSecret({
    doc: 'Secret brokers and delay servers authenticate their heartbeats with (required; never a flag: QMQ_CLUSTER_SECRET or --cluster-secret-file)',
  }),
  advertisedAddresses: stringList({
    default: [],
    doc: 'Metaserver base URLs answered by GET /meta/address (empty = the live metaservers registered in the store)',
  }),
  heartbeatIntervalMs: integer({
    default: DEFAULT_HEARTBEAT_INTERVAL_MS,
    min: 10,
    max: 600_000,
    doc: 'Heartbeat interval asked of brokers and delay servers',
  }),
  heartbeatTimeoutMs: integer({
    default: DEFAULT_HEARTBEAT_TIMEOUT_MS,
    min: 20,
    max: 3_600_000,
    doc: 'A group whose master is silent this long leaves the routes',
  }),
  lastSeenWriteIntervalMs: integer({
    default: DEFAULT_LAST_SEEN_WRITE_INTERVAL_MS,
    min: 0,
    max: 60_000,
    doc: 'Persist a server last-seen time at most this often (state changes are written at once)',
  }),
  clientHeartbeatIntervalMs: integer({
    default: DEFAULT_CLIENT_HEARTBEAT_INTERVAL_MS,
    min: 10,
    max: 600_000,
    doc: 'Heartbeat interval asked of producers and consumers',
  }),
  clientTimeoutMs: integer({
    default: DEFAULT_CLIENT_TIMEOUT_MS,
    min: 20,
    max: 3_600_000,
    doc: 'A client entry silent this long is dropped from the registry',
  }),
  slaveExpiryMs: integer({
    default: DEFAULT_SLAVE_EXPIRY_MS,
    min: 0,
    max: 30 * 24 * 3_600_000,
    doc: 'A slave not heard from this long (gone for good) is removed from its group (0 = never; never less than 2 x heartbeatTimeoutMs + lastSeenWriteIntervalMs)',
  }),
  minGroupsPerSubject: integer({
    default: DEFAULT_MIN_GROUPS_PER_SUBJECT,
    min: 1,
    max: 64,
    doc: 'Broker groups a new subject is assigned to (fewer only if fewer are available)',
  }),
  extendOnOutage: boolean({
    default: true,
    doc: 'When all groups of a route are dead or read-only, add one alive writable group for producers',
  }),
  maxBodyBytes: integer({
    default: DEFAULT_MAX_BODY_BYTES,
    min: 1024,
    max: 64 * 1024 * 1024,
    doc: 'Largest accepted request body',
  }),
  reloadIntervalMs: integer({
    default: 0,
    min: 0,
    max: 3_600_000,
    doc: 'Reload routes, marks and last-seen times from the store this often (0 = default: never for SQLite, every 1000 ms for a shared PostgreSQL store)',
  }),
  console: boolean({
    default: true,
    doc: 'Serve the web console at /console on the HTTP port (false = off: /console answers 404)',
  }),
  ...tlsFileSchema,
  // Route lookups and client heartbeats need an application credential (client-auth.ts).
  auth: {
    ...authOptionsSchema.auth,
    doc: 'Require an application credential (appCode + token) or the cluster secret on route lookups and client heartbeats, and check the app grants the subject (docs/security.md)',
  },
  authRefreshMs: {
    ...authOptionsSchema.authRefreshMs,
    doc: 'How often the credentials used by auth are reloaded from the store (revocations take effect within it)',
  },
}

/**
 * Resolves and checks the options. A metaserver without a cluster secret refuses to start: anyone who
 * can reach it could otherwise register a group or move one's address (issue 12).
 */
export function resolveMetaserverOptions(input: unknown = {}): ResolvedMetaserverOptions {
  const o = resolveOptions('metaserver', metaserverOptionsSchema, input)
  checkTlsOptions('metaserver', o)
  if (o.clusterSecret === undefined)
    throw missingClusterSecret(
      'metaserver',
      'brokers and delay servers authenticate their heartbeats with it',
    )
  return o as ResolvedMetaserverOptions
}

/** Options after resolveMetaserverOptions: the cluster secret is always there. */
export type ResolvedMetaserverOptions = Readonly<MetaserverOptions> & { readonly clusterSecret: string }
