import { QmqError } from './errors'

/**
 * Names that cross the wire and end up in file names and SQL: subjects, consumer groups, broker and
 * delay group names, consumer ids. All are UTF-8 strings checked here once, at the edge.
 */
export const MAX_SUBJECT_BYTES = 200 // bytes of UTF-8
export const MAX_GROUP_BYTES = 200 // bytes of UTF-8
export const MAX_CONSUMER_ID_BYTES = 200 // bytes of UTF-8

// No control characters, no whitespace, no path separators other than the ones QMQ subjects use.
// Retry and dead-letter subjects use '%' (e.g. %DEAD_RETRY%order.created%billing).
// biome-ignore lint/suspicious/noControlCharactersInRegex: matching control characters is the point
const FORBIDDEN = /[\u0000-\u0020\u007f\\/]/

function check(kind: 'subject' | 'group' | 'consumerId', value: unknown, maxBytes: number): string {
  const code =
    kind === 'subject'
      ? 'QMQ_ERR_SUBJECT_INVALID'
      : kind === 'group'
        ? 'QMQ_ERR_GROUP_INVALID'
        : 'QMQ_ERR_CONSUMER_ID_INVALID'
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
  return value
}

export function validateSubject(value: unknown): string {
  return check('subject', value, MAX_SUBJECT_BYTES)
}

export function validateGroup(value: unknown): string {
  return check('group', value, MAX_GROUP_BYTES)
}

export function validateConsumerId(value: unknown): string {
  return check('consumerId', value, MAX_CONSUMER_ID_BYTES)
}

/** `%DEAD_RETRY%<subject>%<group>`: where a group's dead letters of a subject go. */
export function deadLetterSubject(subject: string, group: string): string {
  return `%DEAD_RETRY%${subject}%${group}`
}

export function isDeadLetterSubject(subject: string): boolean {
  return subject.startsWith('%DEAD_RETRY%')
}
