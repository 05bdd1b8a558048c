import { QmqError } from '../common/errors'
import type { ClientKind, GroupKind, ServerLoad, ServerRole } from '../common/meta/types'
import type {
  StoredClient,
  StoredEpoch,
  StoredGroup,
  StoredLiveness,
  StoredReadOnly,
  StoredReplication,
  StoredRoute,
  StoredServer,
} from './store'

/**
 * The rows of the tables of schema.ts as both stores read them, and their mapping to the store's
 * types. SQLite answers booleans as 0/1, PostgreSQL as booleans; every other column reads the same.
 */

/** A store failure as the retriable QMQ_ERR_METASERVER_STORE (a QmqError passes through). */
export function storeError(err: unknown, what: string): QmqError {
  if (err instanceof QmqError) return err
  const message = err instanceof Error ? err.message : String(err)
  return new QmqError('QMQ_ERR_METASERVER_STORE', `${what}: ${message}`, { cause: err })
}

export function parseJson<T>(json: string, fallback: T, ok: (v: unknown) => boolean): T {
  try {
    const v: unknown = JSON.parse(json)
    return ok(v) ? (v as T) : fallback
  } catch {
    return fallback
  }
}

/**
 * group_replication.prior_in_sync_json once a master heartbeated as master in the row's epoch
 * (StoredReplication.served): set by every master heartbeat, replaced by the next promotion.
 */
export const SERVED_MARK = 'null'

function parseGroups(json: string): string[] {
  return parseJson<unknown[]>(json, [], Array.isArray).filter((x): x is string => typeof x === 'string')
}

export interface GroupRow {
  name: string
  kind: string
  first_seen_at: number
  load_json: string
}

export function toGroup(r: GroupRow): StoredGroup {
  return {
    name: r.name,
    kind: r.kind as GroupKind,
    firstSeenAt: r.first_seen_at,
    load: parseJson<ServerLoad>(
      r.load_json,
      {},
      (v) => v !== null && typeof v === 'object' && !Array.isArray(v),
    ),
  }
}

export interface ServerRow {
  group_name: string
  role: string
  address: string
  http_address: string | null
  last_seen_at: number
}

export function toServer(r: ServerRow): StoredServer {
  return {
    group: r.group_name,
    role: r.role as ServerRole,
    address: r.address,
    httpAddress: r.http_address ?? undefined,
    lastSeenAt: r.last_seen_at,
  }
}

export interface RouteRow {
  subject: string
  groups_json: string
  version: number
  created_at: number
  updated_at: number
}

export function toRoute(row: RouteRow): StoredRoute {
  return {
    subject: row.subject,
    groups: parseGroups(row.groups_json),
    version: row.version,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  }
}

export interface ReadOnlyRow {
  group_name: string
  subject: string
  created_at: number
}

export function toReadOnly(r: ReadOnlyRow): StoredReadOnly {
  return { group: r.group_name, subject: r.subject, createdAt: r.created_at }
}

export interface ClientRow {
  client_id: string
  kind: string
  subject: string
  consumer_group: string
  app_code: string
  last_seen_at: number
}

export function toClient(r: ClientRow): StoredClient {
  return {
    clientId: r.client_id,
    kind: r.kind as ClientKind,
    subject: r.subject,
    consumerGroup: r.consumer_group,
    appCode: r.app_code,
    lastSeenAt: r.last_seen_at,
  }
}

export interface LivenessRow {
  group_name: string
  alive: boolean | number
  version: number
  changed_at: number
}

export function toLiveness(r: LivenessRow): StoredLiveness {
  return {
    group: r.group_name,
    alive: r.alive === true || r.alive === 1,
    version: r.version,
    changedAt: r.changed_at,
  }
}

export interface EpochRow {
  group_name: string
  epoch: number
  failovers: number
  updated_at: number
}

export function toEpoch(r: EpochRow): StoredEpoch {
  return { group: r.group_name, epoch: r.epoch, failovers: r.failovers, updatedAt: r.updated_at }
}

export interface SlaveRow {
  group_name: string
  address: string
  http_address: string | null
  last_seen_at: number
  message_offset: number
  action_offset: number
  heard_at: number
  not_promotable: string | null
}

export function toSlave(r: SlaveRow): StoredServer {
  const out: StoredServer = {
    group: r.group_name,
    role: 'slave',
    address: r.address,
    httpAddress: r.http_address ?? undefined,
    lastSeenAt: r.last_seen_at,
    messageOffset: r.message_offset,
    actionOffset: r.action_offset,
    heardAt: r.heard_at,
  }
  if (r.not_promotable !== null) out.notPromotable = r.not_promotable
  return out
}

export interface ReplicationRow {
  group_name: string
  replicated: boolean | number
  epoch: number
  in_sync_json: string
  reported_at: number
  report_seq: number
  step_down_at: number | null
  prior_in_sync_json: string
}

export function toReplication(r: ReplicationRow): StoredReplication {
  return {
    group: r.group_name,
    replicated: r.replicated === true || r.replicated === 1,
    epoch: r.epoch,
    inSync: parseGroups(r.in_sync_json),
    reportedAt: r.reported_at,
    reportSeq: Number(r.report_seq),
    stepDownAt: r.step_down_at ?? undefined,
    priorInSync: parseGroups(r.prior_in_sync_json),
    ...(r.prior_in_sync_json === SERVED_MARK ? { served: true } : {}),
  }
}
