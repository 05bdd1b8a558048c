/**
 * JSON bodies of the metaserver HTTP API (docs/metaserver-api.md). Shared by the metaserver, the
 * brokers and delay servers (heartbeats), the SDK (routes, client heartbeats) and the CLI (admin).
 *
 * Conventions:
 * - Times are milliseconds since the Unix epoch (`...At`), durations carry their unit (`...Ms`).
 * - Addresses of broker and delay servers are `host:port` (their binary TCP port); HTTP addresses
 *   (metaservers, a server's /metrics port) are full URLs or `host:port` as given.
 * - Every error answer is `MetaErrorBody` with an HTTP status >= 400.
 * - Unknown fields in a request are ignored (a newer client may send more); missing required ones
 *   get 400 QMQ_ERR_INVALID_ARGUMENT.
 */

/** Path prefix constants, so clients and server agree. */
export const META_PATHS = {
  address: '/meta/address',
  route: '/meta/route',
  serverHeartbeat: '/meta/heartbeat',
  clientHeartbeat: '/meta/client/heartbeat',
  adminSubjects: '/admin/subjects',
  adminGroups: '/admin/groups',
  adminConsumers: '/admin/consumers',
  adminReadOnly: '/admin/readonly',
  health: '/health',
  metrics: '/metrics',
} as const

/**
 * Header carrying the cluster secret on POST /meta/heartbeat (only there). Not `Authorization`, which
 * admin writes use for their token: a server credential and an operator credential stay apart.
 * Proxies in front of a metaserver should keep it out of their logs.
 */
export const CLUSTER_SECRET_HEADER = 'qmq-cluster-secret'

/**
 * Headers carrying an application's credential (appCode, and its token from `qmq auth create`) on
 * GET /meta/route and POST /meta/client/heartbeat, which a metaserver with `auth` on refuses without
 * one (or the cluster secret, for servers). Like CLUSTER_SECRET_HEADER, not `Authorization`. Proxies in
 * front of a metaserver should keep the token header out of their logs.
 */
export const APP_CODE_HEADER = 'qmq-app-code'
export const APP_TOKEN_HEADER = 'qmq-app-token'

/** A broker group holds real-time messages; a delay group holds scheduled ones. */
export type GroupKind = 'broker' | 'delay'
export const GROUP_KINDS: readonly GroupKind[] = ['broker', 'delay']

/** Role of one server inside its group. Only the master's heartbeats make a group alive. */
export type ServerRole = 'master' | 'slave'
export const SERVER_ROLES: readonly ServerRole[] = ['master', 'slave']

/** Who asks for a route. */
export type ClientKind = 'producer' | 'consumer' | 'delay-producer'
export const CLIENT_KINDS: readonly ClientKind[] = ['producer', 'consumer', 'delay-producer']

/**
 * State of a group in a route answer:
 * - 'rw': alive and writable,
 * - 'r': alive, read-only for producers of this subject (globally or for this subject); consumers
 *   still pull from it. Producers never see 'r' groups; dead groups are never listed.
 */
export type RouteGroupState = 'rw' | 'r'

/** Error answer of every endpoint (status >= 400). `code` is a QMQ_ERR_* code of common/error-codes. */
export interface MetaErrorBody {
  code: string
  status: number
  message: string
  retriable: boolean
}

// ---------------------------------------------------------------- discovery

/** GET /meta/address */
export interface AddressesResponse {
  /** Base URLs of the metaservers to use, e.g. ["http://127.0.0.1:8080"]. Never empty. */
  addresses: string[]
}

// ---------------------------------------------------------------- server heartbeats

/** Load figures a server reports; all optional, all used by placement (fewer subjects first). */
export interface ServerLoad {
  /** Subjects the server currently holds data for. */
  subjects?: number
  /** Messages received per second, recent average. */
  messagesInPerSecond?: number
  /** Messages stored but not yet consumed by every group (or, for delay servers, not yet due). */
  backlog?: number
  /** Bytes used by the server's logs. */
  diskUsedBytes?: number
}

/**
 * POST /meta/heartbeat: a broker or delay server registers itself and stays alive. Sent at start,
 * then every `heartbeatIntervalMs` of the answer; `state: 'offline'` on a clean shutdown takes the
 * group out of routes at once. The first heartbeat of an unknown group creates it: no manual step.
 * It must carry the cluster secret in CLUSTER_SECRET_HEADER (401 QMQ_ERR_UNAUTHORIZED otherwise).
 */
export interface ServerHeartbeatRequest {
  group: string
  kind: GroupKind
  role: ServerRole
  /** `host:port` of the binary TCP port clients connect to. */
  address: string
  /** `host:port` (or URL) of the server's HTTP port (/metrics, /health), if any. */
  httpAddress?: string
  /** Default 'online'. */
  state?: 'online' | 'offline'
  load?: ServerLoad
  /** A broker's replication state (groups with slaves; docs/replication.md). */
  replication?: ServerReplication
}

/** What a broker reports about replication with each heartbeat. */
export interface ServerReplication {
  /** The epoch it acts in (0 = the group's first master). */
  epoch: number
  /** Durable ends of its message and action logs (a slave: of its copies). */
  messageOffset: number
  actionOffset: number
  /** A master: the addresses of its slaves that are in sync now. */
  inSyncSlaves?: string[]
  /** A master: it has (had) a slave, so it holds a lease and fails over (docs/replication.md). */
  replicated?: boolean
  /**
   * A master: orders its reports (grows with every heartbeat it builds, across restarts too: the
   * larger of the wall clock in ms and the previous one plus 1). A report older than the one the
   * metaserver stored in the same epoch is refused (QMQ_ERR_STALE_REPORT): a late retry of an older
   * heartbeat never replaces a newer in-sync set. Absent (older servers): ordered by arrival.
   */
  reportSeq?: number
  /** A slave: bytes behind its master, and since when it has not held everything. */
  lagBytes?: number
  lagMs?: number
  /**
   * A slave: false when it cannot be promoted now (it would lose data as master), with the reason in
   * `notPromotableReason`; the metaserver then never promotes it. Absent (older servers): promotable.
   */
  promotable?: boolean
  notPromotableReason?: string
  /**
   * A slave: the highest epoch it refused to be promoted to. It never serves that epoch afterwards
   * (it refuses it for good), so a metaserver that recorded it as that epoch's master may give the
   * epoch up (docs/replication.md, "A promotion refused").
   */
  refusedEpoch?: number
}

export interface ServerHeartbeatResponse {
  group: string
  /** How often the metaserver wants heartbeats. */
  heartbeatIntervalMs: number
  /** A group whose master is silent this long leaves the routes. */
  heartbeatTimeoutMs: number
  /** The group is read-only for producers of every subject. */
  readOnly: boolean
  /** Subjects for which this group is read-only for producers. */
  readOnlySubjects: string[]
  /** The metaserver's clock, for skew diagnostics. */
  serverTime: number
  /**
   * The role the metaserver gives this server (a promoted slave is told 'master', a returning former
   * master 'slave'); absent from older metaservers (keep the configured role).
   */
  role?: ServerRole
  /** The group's epoch (grows with every promotion). */
  epoch?: number
  /** The group's master `host:port` ('' = none alive). */
  masterAddress?: string
  /**
   * A master of a replicated group may acknowledge writes for this long after it sent this heartbeat
   * (shorter than heartbeatTimeoutMs: it stops before a slave can be promoted).
   */
  leaseMs?: number
}

// ---------------------------------------------------------------- routes

/**
 * GET /meta/route?subject=S&kind=K[&group=G][&clientId=C]
 * - kind 'producer': the subject's alive groups that take writes (state 'rw').
 * - kind 'consumer': all alive groups of the subject's route ('rw' and 'r'); `group` (consumer group)
 *   is required for consumers.
 * - kind 'delay-producer': the alive, writable delay groups (not per subject, not persisted).
 * Retry and dead-letter subjects (`%DEAD_RETRY%<subject>%<group>`) answer the real subject's route.
 * The first query of a subject assigns it to groups (placement); see docs/metaserver-api.md.
 * No available group -> 503 QMQ_ERR_NO_ROUTE (retriable).
 */
export interface RouteQuery {
  subject: string
  kind: ClientKind
  /** Consumer group (required for kind 'consumer'). */
  group?: string
  clientId?: string
}

export interface RouteGroup {
  /** Group name. */
  name: string
  /** Master `host:port` (TCP). */
  address: string
  httpAddress?: string
  state: RouteGroupState
}

export interface RouteResponse {
  /** The subject asked for (for retry/dead-letter subjects, as asked, not the real one). */
  subject: string
  /** The subject whose route this is (differs for retry/dead-letter subjects). */
  routeSubject: string
  kind: ClientKind
  groups: RouteGroup[]
  /** Grows by one each time the stored route changes (0 for delay routes). */
  version: number
  /** When the stored route last changed (0 for delay routes). */
  updatedAt: number
  serverTime: number
}

// ---------------------------------------------------------------- clients

export interface ClientSubscription {
  subject: string
  /** Consumer group; required for consumers, omitted for producers. */
  consumerGroup?: string
}

/**
 * POST /meta/client/heartbeat: a producer or consumer says it is online (or going offline) for the
 * listed subjects. Send it at start and every `heartbeatIntervalMs` of the answer. Clients silent for
 * `clientTimeoutMs` are dropped from the registry.
 */
export interface ClientHeartbeatRequest {
  clientId: string
  /** Application name, for operators. */
  appCode?: string
  kind: ClientKind
  /** Default 'online'; 'offline' removes the listed entries at once. */
  state?: 'online' | 'offline'
  subscriptions: ClientSubscription[]
  /** Also answer the route of each listed subject (default false). */
  includeRoutes?: boolean
}

export interface ClientHeartbeatResponse {
  heartbeatIntervalMs: number
  clientTimeoutMs: number
  /** One per listed subject when includeRoutes was true; subjects with no route are left out. */
  routes: RouteResponse[]
  serverTime: number
}

// ---------------------------------------------------------------- admin

export interface ServerInfo {
  role: ServerRole
  address: string
  httpAddress?: string
  lastSeenAt: number
  /** A slave: its last heartbeat, an 'offline' one included (lastSeenAt is 0 after those). */
  lastHeardAt?: number
  alive: boolean
  /** Its last replication report (brokers of replicated groups). */
  replication?: ServerReplication
  /** A slave that said it cannot be promoted (its reason, as stored); absent: promotable. */
  notPromotable?: string
}

/** GET /admin/groups -> { groups: GroupInfo[] }; GET /admin/groups/:name -> GroupInfo */
export interface GroupInfo {
  name: string
  kind: GroupKind
  /** Master `host:port` ('' until a master has heartbeated). */
  address: string
  httpAddress?: string
  /** The master heartbeated within heartbeatTimeoutMs. */
  alive: boolean
  /** Last master heartbeat (0 = never / went offline). */
  lastSeenAt: number
  firstSeenAt: number
  /** Read-only for producers of every subject. */
  readOnly: boolean
  /** Subjects for which it is read-only for producers. */
  readOnlySubjects: string[]
  /** Subjects whose route includes this group. */
  subjects: number
  load: ServerLoad
  servers: ServerInfo[]
  /** Grows with every promotion of a slave (0 = its first master). */
  epoch: number
  /** Promotions so far (automatic and `qmq failover`). */
  failovers: number
}

export interface GroupsResponse {
  groups: GroupInfo[]
}

/** GET /admin/subjects -> { subjects: SubjectInfo[] }; GET /admin/subjects/:subject -> SubjectInfo */
export interface SubjectInfo {
  subject: string
  /** Every group of the stored route, alive or not, in placement order. */
  groups: string[]
  version: number
  createdAt: number
  updatedAt: number
}

export interface SubjectsResponse {
  subjects: SubjectInfo[]
}

/** POST /admin/subjects/:subject/groups (token): add a group to the subject's route. */
export interface ExtendSubjectRequest {
  group: string
}

/** POST /admin/readonly (token): mark or unmark a group read-only for producers. */
export interface ReadOnlyRequest {
  group: string
  /** A subject, or omitted / '*' for every subject. */
  subject?: string
  readOnly: boolean
}

export interface ReadOnlySetting {
  group: string
  /** '*' = every subject. */
  subject: string
  createdAt: number
}

/** GET /admin/readonly and the answer of POST /admin/readonly. */
export interface ReadOnlyResponse {
  settings: ReadOnlySetting[]
}

/** GET /admin/consumers[?subject=S][&consumerGroup=G][&kind=K] */
export interface ClientInfo {
  clientId: string
  appCode: string
  kind: ClientKind
  subject: string
  /** '' for producers. */
  consumerGroup: string
  online: boolean
  lastSeenAt: number
}

export interface ConsumersResponse {
  consumers: ClientInfo[]
}

/** GET /health */
export interface HealthResponse {
  status: 'ok'
  uptimeMs: number
  groupsAlive: number
  groups: number
  subjects: number
  /** 'sqlite' or 'postgres' (metaservers since issue 15). */
  store?: string
  /** True while the store is unreachable: routes come from memory, changes are refused. */
  storeDown?: boolean
}
