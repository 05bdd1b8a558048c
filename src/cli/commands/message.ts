import { QmqError } from '../../common/errors'
import type { HistoryResult, ListResult, MessageResult, MessageView } from '../../common/protocol/query'
import { intFlag, stringFlag } from '../args'
import { table, time } from '../table'
import { adminCommand, need, print } from './admin'

/**
 * `qmq message <id>`, `qmq messages`, `qmq history`: message query, lifecycle trace and per-minute
 * counts, through the metaserver (docs/query.md), which asks every broker and delay group.
 */

function parseTime(text: string | undefined, what: string): number | undefined {
  if (text === undefined) return undefined
  const n = /^\d+$/.test(text) ? Number(text) : Date.parse(text)
  if (!Number.isSafeInteger(n) || n < 0)
    throw new QmqError(
      'QMQ_ERR_USAGE',
      `${what} must be ms since the epoch or an ISO 8601 time (got ${text})`,
    )
  return n
}

function warnErrors(errors: readonly { group: string; code: string; message: string }[]): void {
  for (const e of errors) process.stderr.write(`warning: ${e.group} did not answer: ${e.code} ${e.message}\n`)
}

/** The timeline of one message, for people. */
export function formatMessage(r: MessageResult): string {
  if (!r.found) return `message ${r.id}: not found (never stored here, or removed by retention)`
  const lines: string[] = []
  for (const m of r.messages) {
    lines.push(
      `message ${m.id}  subject ${m.subject}  on ${m.kind} group ${m.server}  sequence ${m.sequence}`,
    )
    const extra = [
      m.appCode !== undefined ? `app ${m.appCode}` : undefined,
      m.host !== undefined ? `host ${m.host}` : undefined,
      m.keys.length > 0 ? `keys ${m.keys.join(',')}` : undefined,
      m.tags.length > 0 ? `tags ${m.tags.join(',')}` : undefined,
      m.scheduleAt !== undefined ? `scheduled for ${time(m.scheduleAt)}` : undefined,
      `${m.bodyBytes} body bytes`,
    ].filter((x) => x !== undefined)
    lines.push(`  ${extra.join('  ')}`)
    if (m.bodyWithheld === true)
      lines.push(
        '  body withheld: the metaserver shows bodies and properties only with the admin token (--token or QMQ_ADMIN_TOKEN)',
      )
    if (m.consumers && m.consumers.length > 0) {
      lines.push(
        table(
          ['  CONSUMER GROUP', 'STATE', 'DELIVERIES', 'HOLDER', 'RETRY AT'],
          m.consumers.map((c) => [
            `  ${c.consumerGroup}`,
            c.state,
            c.deliveryCount,
            c.holder,
            c.retryAt !== undefined ? time(c.retryAt) : undefined,
          ]),
        ),
      )
    }
  }
  lines.push('', 'timeline:')
  for (const e of r.events) {
    const who = [
      e.consumerGroup !== undefined && e.consumerGroup !== '' ? `group ${e.consumerGroup}` : undefined,
      e.consumer !== undefined ? `consumer ${e.consumer}` : undefined,
      e.deliveryCount !== undefined ? `delivery #${e.deliveryCount}` : undefined,
      e.retryAt !== undefined ? `retry at ${time(e.retryAt)}` : undefined,
      e.appCode !== undefined ? `app ${e.appCode}` : undefined,
      e.host !== undefined ? `host ${e.host}` : undefined,
    ].filter((x) => x !== undefined)
    lines.push(`  ${time(e.time)}  ${e.type.padEnd(10)} ${e.server.padEnd(12)} ${who.join('  ')}`.trimEnd())
  }
  return lines.join('\n')
}

function listTable(messages: readonly MessageView[]): string {
  return table(
    ['STORED', 'ID', 'SUBJECT', 'GROUP', 'SEQ', 'KEYS', 'BYTES'],
    messages.map((m) => [
      time(m.storedAt),
      m.id,
      m.subject,
      m.server,
      m.sequence,
      m.keys.join(','),
      m.bodyBytes,
    ]),
    '(no messages)',
  )
}

const MESSAGE_USAGE = 'qmq message <id> [--subject S] [--json]'
export const messageCommand = adminCommand(
  'message',
  'Show one message: where it is stored, where it stands for each consumer group, and its timeline',
  MESSAGE_USAGE,
  [{ name: 'subject', value: 'SUBJECT', doc: "ask only the subject's broker groups (and delay groups)" }],
  async (cluster, { positionals, flags }, json) => {
    const id = need(positionals[0], 'message id', MESSAGE_USAGE)
    const r = await cluster.meta.getMessage(id, stringFlag(flags, 'subject'))
    warnErrors(r.errors)
    print(json, r, () => formatMessage(r))
    return r.found ? 0 : 1
  },
)

const MESSAGES_USAGE =
  'qmq messages --subject S [--from T] [--to T] [--limit N] [--cursor C] [--json]\n       qmq messages --key K [--subject S] [--limit N] [--json]'
export const messagesCommand = adminCommand(
  'messages',
  'List messages of a subject by store time (newest first, paged), or find them by business key',
  MESSAGES_USAGE,
  [
    { name: 'subject', value: 'SUBJECT', doc: 'the subject' },
    { name: 'key', value: 'KEY', doc: 'a business key (message.setKeys)' },
    {
      name: 'from',
      value: 'TIME',
      doc: 'stored at or after (ms since epoch or ISO 8601; default an hour ago)',
    },
    { name: 'to', value: 'TIME', doc: 'stored before (default now)' },
    { name: 'limit', value: 'N', doc: 'messages per page, 1 to 500 (default 50)' },
    { name: 'cursor', value: 'C', doc: 'the nextCursor of the previous page' },
  ],
  async (cluster, { flags }, json) => {
    const subject = stringFlag(flags, 'subject')
    const key = stringFlag(flags, 'key')
    if (subject === undefined && key === undefined)
      throw new QmqError('QMQ_ERR_USAGE', `give --subject or --key\n${MESSAGES_USAGE}`)
    const from = parseTime(stringFlag(flags, 'from'), '--from')
    const to = parseTime(stringFlag(flags, 'to'), '--to')
    const cursor = stringFlag(flags, 'cursor')
    const r: ListResult = await cluster.meta.listMessages({
      ...(subject !== undefined ? { subject } : {}),
      ...(key !== undefined ? { key } : {}),
      ...(from !== undefined ? { from } : {}),
      ...(to !== undefined ? { to } : {}),
      ...(cursor !== undefined ? { cursor } : {}),
      limit: intFlag(flags, 'limit', 50, 1, 500),
    })
    warnErrors(r.errors)
    print(json, r, () =>
      r.nextCursor !== undefined
        ? `${listTable(r.messages)}\n(more: --cursor ${r.nextCursor})`
        : listTable(r.messages),
    )
    return 0
  },
)

export const historyCommand = adminCommand(
  'history',
  'Per-minute counts (produced, delivered, acked, nacked, expired, dead, bytes) of the last minutes',
  'qmq history [--subject S] [--consumer-group G] [--server NAME] [--minutes N] [--json]',
  [
    { name: 'subject', value: 'SUBJECT', doc: 'only this subject' },
    { name: 'consumer-group', value: 'GROUP', doc: "only this consumer group ('' = subject-level counts)" },
    { name: 'server', value: 'NAME', doc: 'only this broker or delay group' },
    { name: 'minutes', value: 'N', doc: 'how far back, 1 to 1500 (default 60)' },
  ],
  async (cluster, { flags }, json) => {
    const minutes = intFlag(flags, 'minutes', 60, 1, 1500)
    const to = Date.now()
    const subject = stringFlag(flags, 'subject')
    const consumerGroup = stringFlag(flags, 'consumerGroup')
    const server = stringFlag(flags, 'server')
    const r: HistoryResult = await cluster.meta.history({
      from: to - minutes * 60_000,
      to,
      ...(subject !== undefined ? { subject } : {}),
      ...(consumerGroup !== undefined ? { consumerGroup } : {}),
      ...(server !== undefined ? { server } : {}),
    })
    warnErrors(r.errors)
    print(json, r, () =>
      table(
        [
          'MINUTE',
          'SUBJECT',
          'CONSUMER GROUP',
          'PRODUCED',
          'DELIVERED',
          'ACKED',
          'NACKED',
          'EXPIRED',
          'DEAD',
          'BYTES',
        ],
        r.series.flatMap((s) =>
          s.points.map((p) => [
            time(p.minute),
            s.subject,
            s.consumerGroup === '' ? '-' : s.consumerGroup,
            p.produced,
            p.delivered,
            p.acked,
            p.nacked,
            p.expired,
            p.dead,
            p.bytes,
          ]),
        ),
        '(no counts in that time)',
      ),
    )
    return 0
  },
)
