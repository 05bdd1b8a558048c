import { QmqError } from './errors'

/**
 * Names that cross the wire and end up in file names and SQL: subjects, consumer groups, broker and
 * delay group names, consumer ids. All are UTF-8 strings checked here once, at the edge.
 */
export const MAX_SUBJECT_BYTES = 200 // bytes of UTF-8
export const MAX_GROUP_BYTES = 200 // bytes of UTF-8
export const MAX_CONSUMER_ID_BYTES = 200 // bytes of UTF-8

// No control characters, no whitespace, no path separators other than the ones QMQ subjects use.
// biome-ignore lint/suspicious/noControlCharactersInRegex: matching control characters is the point
const FORBIDDEN = /[\u0000-\u0020\u007f\\/]/

/**
 * '%' is reserved for the servers' own names, `%DEAD_RETRY%<subject>%<group>` (and QMQ's `%RETRY%`):
 * with no '%' in a user subject or consumer group, such a name splits at its one '%' after the prefix,
 * and no two (subject, group) pairs share a name. Consumer ids and broker/delay group names of the
 * brokers' own options are not part of these names (broker group names refuse '%' on their own).
 */
const RESERVED = '%'
const DEAD_LETTER_PREFIX = '%DEAD_RETRY%'
const RETRY_PREFIXES = [DEAD_LETTER_PREFIX, '%RETRY%'] as const

type NameKind = 'subject' | 'group' | 'consumerId'

const CODES = {
  subject: 'QMQ_ERR_SUBJECT_INVALID',
  group: 'QMQ_ERR_GROUP_INVALID',
  consumerId: 'QMQ_ERR_CONSUMER_ID_INVALID',
} as const

function check(kind: NameKind, value: unknown, maxBytes: number): string {
  const code = CODES[kind]
  if (typeof value !== 'string' || value.length === 0) {
    throw new QmqError(code, `${kind} must be a non-empty string`)
  }
  const bytes = Buffer.byteLength(value, 'utf8')
  if (bytes > maxBytes) throw new QmqError(code, `${kind} is ${bytes} bytes; the maximum is ${maxBytes}`)
  if (FORBIDDEN.test(value)) {
    throw new QmqError(
      code,
      `${kind} ${JSON.stringify(value)} has whitespace, a control character or a slash`,
    )
  }
  if (kind !== 'consumerId' && value.includes(RESERVED)) {
    throw new QmqError(
      code,
      `${kind} ${JSON.stringify(value)} has '%', which qmq reserves for its dead-letter subjects (%DEAD_RETRY%<subject>%<group>)`,
    )
  }
  return value
}

/** A subject as users name it (SDK, SEND, PULL, routes): no '%'. */
export function validateSubject(value: unknown): string {
  return check('subject', value, MAX_SUBJECT_BYTES)
}

/** A consumer group (or a broker/delay group name): no '%'. */
export function validateGroup(value: unknown): string {
  return check('group', value, MAX_GROUP_BYTES)
}

export function validateConsumerId(value: unknown): string {
  return check('consumerId', value, MAX_CONSUMER_ID_BYTES)
}

/** `%DEAD_RETRY%<subject>%<group>`: where a group's dead letters of a subject go. */
export function deadLetterSubject(subject: string, group: string): string {
  return `${DEAD_LETTER_PREFIX}${validateSubject(subject)}%${validateGroup(group)}`
}

export function isDeadLetterSubject(subject: string): boolean {
  return subject.startsWith(DEAD_LETTER_PREFIX)
}

/**
 * `%DEAD_RETRY%<subject>%<group>` (or `%RETRY%...`) -> its subject and group; undefined when the name
 * is not of that shape with a valid subject and group (so with exactly one '%' after the prefix).
 */
export function parseDeadLetterSubject(name: string): { subject: string; group: string } | undefined {
  const prefix = RETRY_PREFIXES.find((p) => name.startsWith(p))
  if (prefix === undefined) return undefined
  const rest = name.slice(prefix.length)
  const cut = rest.indexOf(RESERVED)
  if (cut <= 0 || cut !== rest.lastIndexOf(RESERVED)) return undefined
  const subject = rest.slice(0, cut)
  const group = rest.slice(cut + 1)
  try {
    validateSubject(subject)
    validateGroup(group)
  } catch {
    return undefined
  }
  return { subject, group }
}

/**
 * A subject a route lookup may name: a user subject, or a dead-letter (or retry) name of one, which is
 * answered with its subject's route. Anything else that starts with '%' is refused.
 */
export function validateRouteSubject(value: unknown): { subject: string; routeSubject: string } {
  if (typeof value === 'string' && value.startsWith(RESERVED)) {
    const parsed = parseDeadLetterSubject(value)
    if (parsed === undefined) {
      throw new QmqError(
        'QMQ_ERR_SUBJECT_INVALID',
        `subject ${JSON.stringify(value.length > 120 ? `${value.slice(0, 120)}...` : value)} is not a dead-letter name %DEAD_RETRY%<subject>%<group> (subject and group have no '%')`,
      )
    }
    return { subject: value, routeSubject: parsed.subject }
  }
  const subject = validateSubject(value)
  return { subject, routeSubject: subject }
}
