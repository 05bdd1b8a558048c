import { QmqError } from '../errors'
import { parseDeadLetterSubject } from '../names'

/**
 * Permissions of an application: a list of grants, each allowing one action on subjects named
 * exactly or by a prefix pattern.
 *
 * - `produce` on `subject`: SEND (broker and delay server) and CANCEL of delayed messages.
 * - `consume` on `subject` with `group`: PULL, ACK, NACK and HEARTBEAT of that consumer group.
 * - `admin` on `subject`: the admin requests of brokers and delay servers (backlog, cursor reset,
 *   dead letters, forget-group, subjects list) for those subjects; `*` for the cluster-wide ones.
 *
 * Patterns: an exact name (`order.created`), a prefix ending in `*` (`order.*` matches
 * `order.created` and `order.x.y`; `order*` matches `orders` too), or `*` alone (everything).
 * A dead-letter subject `%DEAD_RETRY%<subject>%<group>` follows its group's permissions: consuming
 * it needs `consume` on `<subject>` with `<group>`.
 */
export type GrantAction = 'produce' | 'consume' | 'admin'
export const GRANT_ACTIONS: readonly GrantAction[] = ['produce', 'consume', 'admin']

export interface Grant {
  action: GrantAction
  /** Exact subject or prefix pattern (`a.b.*`, `*`). */
  subject: string
  /** `consume` only: exact consumer group or prefix pattern; `*` = any group. */
  group?: string
}

const MAX_PATTERN = 256
const PATTERN = /^[^\s%]+$/

export function patternMatches(pattern: string, name: string): boolean {
  if (pattern === '*') return true
  if (pattern.endsWith('*')) return name.startsWith(pattern.slice(0, -1))
  return pattern === name
}

function checkPattern(what: string, v: unknown): string {
  if (typeof v !== 'string' || v.length === 0 || v.length > MAX_PATTERN || !PATTERN.test(v))
    throw new QmqError(
      'QMQ_ERR_INVALID_ARGUMENT',
      `${what} must be a name or a prefix pattern ending in * (1 to ${MAX_PATTERN} characters, no spaces or %)`,
    )
  if (v.indexOf('*') !== -1 && v.indexOf('*') !== v.length - 1)
    throw new QmqError('QMQ_ERR_INVALID_ARGUMENT', `${what} ${JSON.stringify(v)}: '*' may only end a pattern`)
  return v
}

/** Checks an untrusted grant (HTTP body, CLI, stored JSON). */
export function validateGrant(x: unknown): Grant {
  if (x === null || typeof x !== 'object' || Array.isArray(x))
    throw new QmqError('QMQ_ERR_INVALID_ARGUMENT', 'a grant is an object { action, subject, group? }')
  const o = x as Record<string, unknown>
  for (const k of Object.keys(o))
    if (k !== 'action' && k !== 'subject' && k !== 'group')
      throw new QmqError('QMQ_ERR_INVALID_ARGUMENT', `a grant has no key ${JSON.stringify(k)}`)
  if (!GRANT_ACTIONS.includes(o.action as GrantAction))
    throw new QmqError('QMQ_ERR_INVALID_ARGUMENT', `grant action must be one of ${GRANT_ACTIONS.join(', ')}`)
  const action = o.action as GrantAction
  const subject = checkPattern('grant subject', o.subject)
  if (action !== 'consume') {
    if (o.group !== undefined)
      throw new QmqError('QMQ_ERR_INVALID_ARGUMENT', `a ${action} grant takes no group (consume grants do)`)
    return { action, subject }
  }
  return { action, subject, group: o.group === undefined ? '*' : checkPattern('grant group', o.group) }
}

export function sameGrant(a: Grant, b: Grant): boolean {
  return a.action === b.action && a.subject === b.subject && (a.group ?? '') === (b.group ?? '')
}

export function mayProduce(grants: readonly Grant[], subject: string): boolean {
  for (const g of grants) if (g.action === 'produce' && patternMatches(g.subject, subject)) return true
  return false
}

export function mayConsume(grants: readonly Grant[], subject: string, group: string): boolean {
  // A dead-letter subject is consumed under its own subject's and group's grant.
  const dead = parseDeadLetterSubject(subject)
  const s = dead?.subject ?? subject
  const gr = dead?.group ?? group
  for (const g of grants)
    if (g.action === 'consume' && patternMatches(g.subject, s) && patternMatches(g.group ?? '*', gr))
      return true
  return false
}

/** `subject` undefined = a cluster-wide admin request (needs an admin grant on `*`). */
export function mayAdmin(grants: readonly Grant[], subject: string | undefined): boolean {
  const s = subject === undefined ? undefined : (parseDeadLetterSubject(subject)?.subject ?? subject)
  for (const g of grants) {
    if (g.action !== 'admin') continue
    if (s === undefined ? g.subject === '*' : patternMatches(g.subject, s)) return true
  }
  return false
}
