import { QmqError } from '../common/errors'
import {
  CLIENT_KINDS,
  type ClientHeartbeatRequest,
  type ClientKind,
  type ClientSubscription,
  GROUP_KINDS,
  type ReadOnlyRequest,
  SERVER_ROLES,
  type ServerHeartbeatRequest,
  type ServerReplication,
  type ServerLoad,
} from '../common/meta/types'
import { validateConsumerId, validateGroup, validateSubject } from '../common/names'

/**
 * Checks of request bodies and query parameters: each turns unknown JSON into a typed request or
 * throws a QmqError naming the field (QMQ_ERR_INVALID_ARGUMENT, or the names' own codes).
 */

const MAX_SUBSCRIPTIONS = 1000
const MAX_TEXT = 200 // characters of free-text fields (appCode, addresses)

type Json = Record<string, unknown>

function invalid(message: string): QmqError {
  return new QmqError('QMQ_ERR_INVALID_ARGUMENT', message)
}

function show(v: unknown): string {
  if (v === undefined) return 'nothing'
  if (typeof v === 'string') return JSON.stringify(v.length > 60 ? `${v.slice(0, 60)}...` : v)
  if (v === null || typeof v !== 'object') return String(v)
  return Array.isArray(v) ? 'an array' : 'an object'
}

export function requireObject(body: unknown, what = 'body'): Json {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw new QmqError('QMQ_ERR_JSON_INVALID', `${what} must be a JSON object (got ${show(body)})`)
  }
  return body as Json
}

function oneOf<V extends string>(obj: Json, field: string, values: readonly V[], fallback?: V): V {
  const v = obj[field]
  if (v === undefined && fallback !== undefined) return fallback
  if (typeof v !== 'string' || !(values as readonly string[]).includes(v)) {
    throw invalid(`${field} must be one of ${values.map((x) => `'${x}'`).join(', ')} (got ${show(v)})`)
  }
  return v as V
}

function text(obj: Json, field: string, required: boolean): string | undefined {
  const v = obj[field]
  if (v === undefined || (v === null && !required)) {
    if (required) throw invalid(`${field} is required`)
    return undefined
  }
  if (typeof v !== 'string' || v.length === 0 || v.length > MAX_TEXT) {
    throw invalid(`${field} must be a non-empty string of at most ${MAX_TEXT} characters (got ${show(v)})`)
  }
  return v
}

/** `host:port`, `[v6]:port`; port 1-65535. */
export function validateAddress(value: unknown, field: string): string {
  if (typeof value !== 'string' || value.length === 0 || value.length > MAX_TEXT) {
    throw invalid(`${field} must be "host:port" (got ${show(value)})`)
  }
  const m = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})$/.exec(value)
  const port = m === null ? 0 : Number(m[2])
  if (m === null || port < 1 || port > 65535)
    throw invalid(`${field} must be "host:port" with a port from 1 to 65535 (got ${show(value)})`)
  return value
}

/** An optional HTTP address: `host:port` or an http(s) URL. */
function httpAddress(obj: Json, field: string): string | undefined {
  const v = obj[field]
  if (v === undefined || v === null) return undefined
  if (typeof v === 'string' && /^https?:\/\//.test(v) && v.length <= MAX_TEXT) {
    try {
      new URL(v)
      return v
    } catch {
      // falls through to the error below
    }
  }
  return validateAddress(v, field)
}

function load(obj: Json): ServerLoad | undefined {
  const v = obj.load
  if (v === undefined || v === null) return undefined
  const o = requireObjectField(v, 'load')
  const out: ServerLoad = {}
  for (const key of ['subjects', 'messagesInPerSecond', 'backlog', 'diskUsedBytes'] as const) {
    const n = o[key]
    if (n === undefined || n === null) continue
    if (typeof n !== 'number' || !Number.isFinite(n) || n < 0) {
      throw invalid(`load.${key} must be a number >= 0 (got ${show(n)})`)
    }
    out[key] = n
  }
  return out
}

/** A broker's replication report (issue 14): offsets, and a master's in-sync slaves (at most 16). */
function replication(obj: Json): ServerReplication | undefined {
  const v = obj.replication
  if (v === undefined || v === null) return undefined
  const o = requireObjectField(v, 'replication')
  const int = (key: string, required: boolean): number | undefined => {
    const n = o[key]
    if (n === undefined || n === null) {
      if (required) throw invalid(`replication.${key} is required`)
      return undefined
    }
    if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0)
      throw invalid(`replication.${key} must be an integer >= 0 (got ${show(n)})`)
    return n
  }
  const out: ServerReplication = {
    epoch: int('epoch', true) as number,
    messageOffset: int('messageOffset', true) as number,
    actionOffset: int('actionOffset', true) as number,
  }
  const lagBytes = int('lagBytes', false)
  if (lagBytes !== undefined) out.lagBytes = lagBytes
  const lagMs = int('lagMs', false)
  if (lagMs !== undefined) out.lagMs = lagMs
  if (o.replicated !== undefined) {
    if (typeof o.replicated !== 'boolean') throw invalid('replication.replicated must be a boolean')
    out.replicated = o.replicated
  }
  const reportSeq = int('reportSeq', false)
  if (reportSeq !== undefined) out.reportSeq = reportSeq
  if (o.promotable !== undefined) {
    if (typeof o.promotable !== 'boolean') throw invalid('replication.promotable must be a boolean')
    out.promotable = o.promotable
  }
  if (o.notPromotableReason !== undefined) {
    if (typeof o.notPromotableReason !== 'string' || o.notPromotableReason.length > 500)
      throw invalid('replication.notPromotableReason must be a string of at most 500 characters')
    out.notPromotableReason = o.notPromotableReason
  }
  const refusedEpoch = int('refusedEpoch', false)
  if (refusedEpoch !== undefined) out.refusedEpoch = refusedEpoch
  if (o.inSyncSlaves !== undefined) {
    if (!Array.isArray(o.inSyncSlaves) || o.inSyncSlaves.length > 16)
      throw invalid('replication.inSyncSlaves must be an array of at most 16 addresses')
    out.inSyncSlaves = o.inSyncSlaves.map((a, i) => validateAddress(a, `replication.inSyncSlaves[${i}]`))
  }
  return out
}

function requireObjectField(v: unknown, field: string): Json {
  if (v === null || typeof v !== 'object' || Array.isArray(v))
    throw invalid(`${field} must be an object (got ${show(v)})`)
  return v as Json
}

function state(obj: Json): 'online' | 'offline' {
  return oneOf(obj, 'state', ['online', 'offline'] as const, 'online')
}

export function parseServerHeartbeat(body: unknown): ServerHeartbeatRequest {
  const o = requireObject(body)
  const req: ServerHeartbeatRequest = {
    group: validateGroup(o.group),
    kind: oneOf(o, 'kind', GROUP_KINDS),
    role: oneOf(o, 'role', SERVER_ROLES),
    address: validateAddress(o.address, 'address'),
    state: state(o),
  }
  const http = httpAddress(o, 'httpAddress')
  if (http !== undefined) req.httpAddress = http
  const l = load(o)
  if (l !== undefined) req.load = l
  const r = replication(o)
  if (r !== undefined) req.replication = r
  return req
}

export function parseClientKind(value: unknown): ClientKind {
  return oneOf({ kind: value }, 'kind', CLIENT_KINDS)
}

export function parseClientHeartbeat(body: unknown): ClientHeartbeatRequest {
  const o = requireObject(body)
  const kind = oneOf(o, 'kind', CLIENT_KINDS)
  const subs = o.subscriptions
  if (!Array.isArray(subs)) throw invalid(`subscriptions must be an array (got ${show(subs)})`)
  if (subs.length > MAX_SUBSCRIPTIONS)
    throw invalid(`subscriptions has ${subs.length} entries; the maximum is ${MAX_SUBSCRIPTIONS}`)
  const subscriptions = subs.map((s, i): ClientSubscription => {
    const so = requireObjectField(s, `subscriptions[${i}]`)
    const sub: ClientSubscription = { subject: validateSubject(so.subject) }
    if (kind === 'consumer') {
      if (so.consumerGroup === undefined)
        throw invalid(`subscriptions[${i}].consumerGroup is required for consumers`)
      sub.consumerGroup = validateGroup(so.consumerGroup)
    } else if (so.consumerGroup !== undefined && so.consumerGroup !== null && so.consumerGroup !== '') {
      sub.consumerGroup = validateGroup(so.consumerGroup)
    }
    return sub
  })
  const includeRoutes = o.includeRoutes
  if (includeRoutes !== undefined && typeof includeRoutes !== 'boolean') {
    throw invalid(`includeRoutes must be true or false (got ${show(includeRoutes)})`)
  }
  const req: ClientHeartbeatRequest = {
    clientId: validateConsumerId(o.clientId),
    kind,
    state: state(o),
    subscriptions,
    includeRoutes: includeRoutes === true,
  }
  const appCode = text(o, 'appCode', false)
  if (appCode !== undefined) req.appCode = appCode
  return req
}

export function parseReadOnly(body: unknown): ReadOnlyRequest {
  const o = requireObject(body)
  const readOnly = o.readOnly
  if (typeof readOnly !== 'boolean') throw invalid(`readOnly must be true or false (got ${show(readOnly)})`)
  const req: ReadOnlyRequest = { group: validateGroup(o.group), readOnly }
  if (o.subject !== undefined && o.subject !== null && o.subject !== '*')
    req.subject = validateSubject(o.subject)
  return req
}

export function parseExtend(body: unknown): { group: string } {
  const o = requireObject(body)
  return { group: validateGroup(o.group) }
}
