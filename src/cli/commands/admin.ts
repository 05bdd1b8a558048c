import { cancelDelayed } from '../../client/producer/cancel'
import { codeForStatus } from '../../common/error-codes'
import { QmqError } from '../../common/errors'
import {
  type BacklogEntry,
  decodeBacklogResponse,
  decodeDlqListResponse,
  encodeBacklogRequest,
  encodeDlqListRequest,
  encodeDlqRedriveRequest,
  encodeForgetGroupRequest,
  MAX_DLQ_LIST,
} from '../../common/protocol/admin'
import { RequestCode } from '../../common/protocol/codes'
import {
  decodeDelayDlqListResponse,
  encodeDelayDlqListRequest,
  encodeDelayDlqRedriveRequest,
  MAX_DELAY_DLQ_LIST,
} from '../../common/protocol/delay-admin'
import { decodeCountResponse } from '../../common/protocol/commands'
import { type FlagSpec, flagsHelp, intFlag, listFlag, parseArgs, stringFlag } from '../args'
import { CLUSTER_FLAGS, type ClusterAdmin, withCluster } from '../cluster'
import { parseStartFrom, table, time } from '../table'
import { resetCursor } from '../../client/consumer/reset-cursor'
import type { Command } from './command'

/**
 * Operator commands: what the metaserver knows (subjects, groups, consumers) and what the brokers
 * hold (backlog, cursors, dead letters). Tables for people, `--json` for scripts.
 */
export function print(json: boolean, value: unknown, text: () => string): void {
  process.stdout.write(json ? `${JSON.stringify(value)}\n` : `${text()}\n`)
}

export function need(value: string | undefined, what: string, usage: string): string {
  if (value === undefined || value.length === 0)
    throw new QmqError('QMQ_ERR_USAGE', `missing ${what}\n${usage}`)
  return value
}

export function adminCommand(
  name: string,
  summary: string,
  usage: string,
  /** The command's own flags; the cluster flags (--metaserver, --token, --json) are added. */
  ownFlags: readonly FlagSpec[],
  body: (cluster: ClusterAdmin, args: ReturnType<typeof parseArgs>, json: boolean) => Promise<number>,
): Command {
  const flags = [...ownFlags, ...CLUSTER_FLAGS]
  return {
    name,
    summary,
    help: () => `Usage: ${usage}\n\n${summary}.\n\nOptions:\n${flagsHelp(flags)}`,
    run: async (argv) => {
      const args = parseArgs(argv, { flags })
      return withCluster(args.flags, (cluster) => body(cluster, args, args.flags.json === true))
    },
  }
}

export const subjectsCommand = adminCommand(
  'subjects',
  'List subjects and the broker groups of their routes',
  'qmq subjects [--json]',
  [],
  async (cluster, _args, json) => {
    const subjects = await cluster.meta.listSubjects()
    print(json, subjects, () =>
      table(
        ['SUBJECT', 'GROUPS', 'VERSION', 'UPDATED'],
        subjects.map((s) => [s.subject, s.groups.join(','), s.version, time(s.updatedAt)]),
        '(no subjects yet)',
      ),
    )
    return 0
  },
)

export const groupsCommand = adminCommand(
  'groups',
  'List broker and delay groups with liveness, read-only marks, load and replication (master, slave, epoch, lag, in-sync; slaves that cannot be promoted marked, with why)',
  'qmq groups [--json]',
  [],
  async (cluster, _args, json) => {
    const groups = await cluster.meta.listGroups()
    // A slave that said it cannot be promoted is marked in SLAVE; why is listed under the table.
    const notPromotable = groups.flatMap((g) =>
      g.servers.flatMap((s) =>
        s.role === 'slave' && s.notPromotable !== undefined
          ? [`${g.name}: slave ${s.address} cannot be promoted: ${s.notPromotable}`]
          : [],
      ),
    )
    print(json, groups, () =>
      [
        table(
          [
            'GROUP',
            'KIND',
            'MASTER',
            'ALIVE',
            'SLAVE',
            'EPOCH',
            'LAG',
            'IN-SYNC',
            'READ-ONLY',
            'SUBJECTS',
            'LAST SEEN',
          ],
          groups.map((g) => {
            const master = g.servers.find((s) => s.role === 'master')
            // Every alive slave; LAG is the largest, IN-SYNC how many the master reports in sync. Slaves
            // not alive are listed after them with the time since they were last heard from (they
            // leave the list after the metaserver's slaveExpiryMs, or with `qmq remove-slave`).
            const slaves = g.servers.filter((s) => s.role === 'slave' && s.alive)
            const down = g.servers.filter((s) => s.role === 'slave' && !s.alive)
            const now = Date.now()
            const lags = slaves.flatMap((s) => (s.replication === undefined ? [] : [s.replication]))
            const inSync = slaves.filter(
              (s) => master?.replication?.inSyncSlaves?.includes(s.address) === true,
            ).length
            return [
              g.name,
              g.kind,
              g.address || '-',
              g.alive ? 'yes' : 'NO',
              slaves.length + down.length === 0
                ? '-'
                : [
                    ...slaves.map((s) =>
                      s.notPromotable !== undefined ? `${s.address} (NOT PROMOTABLE)` : s.address,
                    ),
                    ...down.map(
                      (s) => `${s.address} (down, heard ${ago(now, s.lastHeardAt ?? s.lastSeenAt)})`,
                    ),
                  ].join(','),
              g.epoch ?? 0,
              lags.length === 0
                ? '-'
                : `${Math.max(...lags.map((l) => l.lagBytes ?? 0))} B / ${Math.max(...lags.map((l) => l.lagMs ?? 0))} ms`,
              slaves.length === 0
                ? '-'
                : inSync === slaves.length
                  ? 'yes'
                  : inSync === 0
                    ? 'NO'
                    : `${inSync}/${slaves.length}`,
              g.readOnly ? 'all' : g.readOnlySubjects.length > 0 ? g.readOnlySubjects.join(',') : 'no',
              g.subjects,
              time(g.lastSeenAt),
            ]
          }),
          '(no groups have registered)',
        ),
        ...notPromotable,
      ].join('\n'),
    )
    return 0
  },
)

export const failoverCommand = adminCommand(
  'failover',
  "Switch a broker group over to its in-sync slave: the master steps down (acknowledges no more writes, rejoins as the slave) and the slave is promoted once the master's lease ran out",
  'qmq failover <group> [--json]',
  [],
  async (cluster, { positionals }, json) => {
    const name = need(positionals[0], 'group', 'qmq failover <group>')
    const g = await cluster.meta.failover(name)
    print(
      json,
      g,
      () => `${name}: the master (${g.address}) steps down; its in-sync slave is promoted within the lease`,
    )
    return 0
  },
)

const REMOVE_SLAVE_USAGE = 'qmq remove-slave <group> <host:port> [--json]'

export const removeSlaveCommand = adminCommand(
  'remove-slave',
  "Forget a slave of a broker or delay group that is gone for good (refused while it is alive); slaves not heard from also leave after the metaserver's slaveExpiryMs",
  REMOVE_SLAVE_USAGE,
  [],
  async (cluster, { positionals }, json) => {
    const name = need(positionals[0], 'group', REMOVE_SLAVE_USAGE)
    const address = need(positionals[1], 'slave address', REMOVE_SLAVE_USAGE)
    const g = await cluster.meta.removeSlave(name, address)
    print(json, g, () => `${name}: slave ${address} removed`)
    return 0
  },
)

/** "12s ago", "5m ago", "3h ago"; "never" for 0. */
function ago(now: number, at: number): string {
  if (at <= 0) return 'never'
  const s = Math.max(0, Math.round((now - at) / 1000))
  if (s < 120) return `${s}s ago`
  if (s < 7200) return `${Math.round(s / 60)}m ago`
  return `${Math.round(s / 3600)}h ago`
}

export const consumersCommand = adminCommand(
  'consumers',
  'List producers and consumers registered with the metaserver',
  'qmq consumers [--subject S] [--group G] [--json]',
  [
    { name: 'subject', value: 'S', doc: 'only this subject' },
    { name: 'group', value: 'G', doc: 'only this consumer group' },
  ],
  async (cluster, { flags }, json) => {
    const subject = stringFlag(flags, 'subject')
    const consumerGroup = stringFlag(flags, 'group')
    const consumers = await cluster.meta.listConsumers({
      ...(subject ? { subject } : {}),
      ...(consumerGroup ? { consumerGroup } : {}),
    })
    print(json, consumers, () =>
      table(
        ['CLIENT', 'APP', 'KIND', 'SUBJECT', 'GROUP', 'ONLINE', 'LAST SEEN'],
        consumers.map((c) => [
          c.clientId,
          c.appCode,
          c.kind,
          c.subject,
          c.consumerGroup || '-',
          c.online ? 'yes' : 'no',
          time(c.lastSeenAt),
        ]),
        '(no clients registered)',
      ),
    )
    return 0
  },
)

/** One consumer group's backlog on one broker group, as `qmq backlog --json` prints it. */
export type BacklogRow = BacklogEntry & {
  brokerGroup: string
  /** Nothing pending, in flight, retrying or dead-lettered: the group has caught up. */
  empty: boolean
}

/**
 * What a consumer group holds over all broker groups, in words: `empty`, or the non-zero ones of
 * `N ready` (stored, not handed out yet), `N in flight` (held by consumers), `N retrying` (waiting to be
 * redelivered) and `N dead` (dead letters).
 */
export function backlogSummary(rows: readonly BacklogEntry[]): string {
  let ready = 0
  let held = 0
  let retrying = 0
  let dead = 0
  for (const r of rows) {
    ready += r.pending
    held += r.inFlight - r.retrying // a broker's inFlight counts the ones waiting to be retried too
    retrying += r.retrying
    dead += r.deadLettered
  }
  const parts = (
    [
      [ready, 'ready'],
      [held, 'in flight'],
      [retrying, 'retrying'],
      [dead, 'dead'],
    ] as const
  )
    .filter(([n]) => n > 0)
    .map(([n, what]) => `${n} ${what}`)
  return parts.length === 0 ? 'empty' : parts.join(', ')
}

const BACKLOG_USAGE = 'qmq backlog [subject] [consumer-group] [--json]'
export const backlogCommand = adminCommand(
  'backlog',
  'Show the backlog of consumer groups on every broker group (pending, in flight, retrying, dead, ordered keys blocked) and, per consumer group, whether it is empty',
  BACKLOG_USAGE,
  [],
  async (cluster, { positionals }, json) => {
    if (positionals.length > 2)
      throw new QmqError('QMQ_ERR_USAGE', `too many arguments\nUsage: ${BACKLOG_USAGE}`)
    const [subject, group] = positionals
    const brokers = await cluster.brokerGroups(subject)
    const rows: BacklogRow[] = []
    for (const b of brokers) {
      const frame = await cluster.request(
        b.address,
        RequestCode.ADMIN_BACKLOG,
        encodeBacklogRequest({ subject, group }),
      )
      for (const e of decodeBacklogResponse(frame.body)) {
        const empty = e.pending === 0 && e.inFlight === 0 && e.deadLettered === 0
        rows.push({ brokerGroup: b.name, ...e, empty })
      }
    }
    print(json, rows, () => {
      if (rows.length === 0) {
        if (group !== undefined)
          return `no broker group knows consumer group ${group} on ${subject} (it has not consumed yet, or the subject or group is misspelled)`
        return subject !== undefined ? `(no consumer groups on ${subject})` : '(no consumer groups)'
      }
      const byGroup = new Map<string, BacklogRow[]>()
      for (const r of rows) {
        const key = `${r.group} on ${r.subject}`
        byGroup.set(key, [...(byGroup.get(key) ?? []), r])
      }
      const summary = [...byGroup].map(([key, rs]) => `${key}: ${backlogSummary(rs)}`)
      return `${table(
        [
          'BROKER GROUP',
          'SUBJECT',
          'CONSUMER GROUP',
          'STATE',
          'PENDING',
          'IN FLIGHT',
          'RETRYING',
          'DEAD',
          'CURSOR',
          'MAX SEQ',
          'KEYS BLOCKED',
          'OLDEST BLOCKED',
        ],
        rows.map((r) => [
          r.brokerGroup,
          r.subject,
          r.group,
          r.empty ? 'empty' : 'holding',
          r.pending,
          r.inFlight,
          r.retrying,
          r.deadLettered,
          r.cursor,
          r.maxSequence,
          r.keysBlocked ?? 0,
          blockedAge(r.oldestBlockedMs ?? 0),
        ]),
        '',
      )}\n\n${summary.join('\n')}`
    })
    return 0
  },
)

/** The oldest blocked key's age for the backlog table: '-' when no key is blocked, else 1.5s, 12m, 3.2h. */
function blockedAge(ms: number): string {
  if (ms <= 0) return '-'
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)}s`
  if (ms < 3_600_000) return `${Math.round(ms / 60_000)}m`
  return `${(ms / 3_600_000).toFixed(1)}h`
}

const RESET_USAGE = 'qmq reset-cursor <subject> <consumer-group> --to earliest|latest|<time>'
export const resetCursorCommand = adminCommand(
  'reset-cursor',
  "Move a consumer group's cursor on every broker group of a subject (messages in flight stay in flight)",
  RESET_USAGE,
  [
    {
      name: 'to',
      value: 'WHERE',
      doc: 'earliest, latest, an ISO time (2026-11-21T10:00:00Z) or ms since epoch',
    },
  ],
  async (cluster, { positionals, flags }, json) => {
    const subject = need(positionals[0], 'subject', RESET_USAGE)
    const group = need(positionals[1], 'consumer group', RESET_USAGE)
    const toText = need(stringFlag(flags, 'to'), '--to', RESET_USAGE)
    const to = parseStartFrom(toText)
    if (to === undefined)
      throw new QmqError(
        'QMQ_ERR_USAGE',
        `--to must be earliest, latest, an ISO time or ms since the epoch (got ${JSON.stringify(toText)})`,
      )
    const request = (address: string, code: number, body: Buffer) => cluster.request(address, code, body)
    const brokerGroups = await resetCursor(
      { meta: cluster.meta, request, token: cluster.adminToken },
      subject,
      group,
      to,
    )
    const done = {
      subject,
      group,
      position: typeof to === 'number' ? 'TIMESTAMP' : to.toUpperCase(),
      timeMs: typeof to === 'number' ? to : 0,
      brokerGroups,
    }
    print(
      json,
      done,
      () => `reset ${group} on ${subject} to ${stringFlag(flags, 'to')} on ${done.brokerGroups.join(', ')}`,
    )
    return 0
  },
)

const FORGET_USAGE = 'qmq forget-group <subject> <consumer-group>'
export const forgetGroupCommand = adminCommand(
  'forget-group',
  'Remove a consumer group (cursor, messages in flight, dead letters) from every broker group; refused while it is in use',
  FORGET_USAGE,
  [],
  async (cluster, { positionals }, json) => {
    const subject = need(positionals[0], 'subject', FORGET_USAGE)
    const group = need(positionals[1], 'consumer group', FORGET_USAGE)
    // Every alive broker group, not only the subject's route: a mistyped subject has none.
    const brokers = await cluster.brokerGroups()
    const forgottenOn: string[] = []
    for (const b of brokers) {
      const frame = await cluster.request(
        b.address,
        RequestCode.ADMIN_FORGET_GROUP,
        encodeForgetGroupRequest({ subject, group, token: cluster.adminToken }),
      )
      if (decodeCountResponse(frame.body) > 0) forgottenOn.push(b.name)
    }
    print(json, { subject, group, brokerGroups: forgottenOn }, () =>
      forgottenOn.length === 0
        ? `no broker group knows ${group} on ${subject}`
        : `forgot ${group} on ${subject} on ${forgottenOn.join(', ')}`,
    )
    return 0
  },
)

const DLQ_USAGE = `qmq dlq list <subject> --group G [--limit N]
       qmq dlq show <subject> --group G --sequence N [--broker-group B]
       qmq dlq redrive <subject> --group G (--sequence N ... --broker-group B | --all)`
export const dlqCommand = adminCommand(
  'dlq',
  "List, inspect and redrive a consumer group's dead letters (%DEAD_RETRY%<subject>%<group>)",
  DLQ_USAGE,
  [
    { name: 'group', value: 'G', doc: 'the consumer group' },
    { name: 'limit', value: 'N', doc: 'at most N per broker group (default 100)' },
    { name: 'sequence', value: 'N', repeatable: true, doc: 'a dead letter by its sequence (repeatable)' },
    { name: 'broker-group', value: 'B', doc: 'the broker group holding it (sequences are per broker group)' },
    { name: 'all', doc: 'redrive every dead letter of the group' },
  ],
  async (cluster, { positionals, flags }, json) => {
    const [action, subjectArg] = positionals
    const subject = need(subjectArg, 'subject', DLQ_USAGE)
    const group = need(stringFlag(flags, 'group'), '--group', DLQ_USAGE)
    const only = stringFlag(flags, 'brokerGroup')
    const sequences = listFlag(flags, 'sequence').map((s) => {
      const n = Number(s)
      if (!Number.isSafeInteger(n) || n < 0)
        throw new QmqError('QMQ_ERR_USAGE', `--sequence must be a whole number (got ${s})`)
      return n
    })
    // Usage first: nothing goes on the network for a command line that is wrong.
    const limit = intFlag(flags, 'limit', action === 'show' ? MAX_DLQ_LIST : 100, 1, MAX_DLQ_LIST)
    if (action === 'show' && sequences.length === 0)
      throw new QmqError('QMQ_ERR_USAGE', `dlq show needs --sequence\n${DLQ_USAGE}`)
    const brokers = (await cluster.brokerGroups(subject)).filter((b) => only === undefined || b.name === only)
    if (action === 'list' || action === 'show') {
      const out: {
        brokerGroup: string
        sequence: number
        deliveryCount: number
        deadAt: number
        id: string
        tags: string[]
        properties: Record<string, string>
        body?: string
      }[] = []
      for (const b of brokers) {
        const frame = await cluster.request(
          b.address,
          RequestCode.ADMIN_DLQ_LIST,
          encodeDlqListRequest({ subject, group, limit, afterSequence: -1 }),
        )
        for (const d of decodeDlqListResponse(frame.body)) {
          if (action === 'show' && !sequences.includes(d.sequence)) continue
          const body = d.record.body
          out.push({
            brokerGroup: b.name,
            sequence: d.sequence,
            deliveryCount: d.deliveryCount,
            deadAt: d.deadAt,
            id: d.record.id,
            tags: d.record.tags,
            properties: Object.fromEntries(d.record.properties),
            ...(action === 'show' && body !== undefined
              ? { body: typeof body === 'string' ? body : `base64:${body.toString('base64')}` }
              : {}),
          })
        }
      }
      if (action === 'show') {
        print(json, out, () =>
          out.length === 0 ? '(not found)' : out.map((o) => JSON.stringify(o, null, 2)).join('\n'),
        )
        return out.length === 0 ? 1 : 0
      }
      print(json, out, () =>
        table(
          ['BROKER GROUP', 'SEQUENCE', 'MESSAGE ID', 'DELIVERIES', 'DEAD AT', 'TAGS'],
          out.map((o) => [
            o.brokerGroup,
            o.sequence,
            o.id,
            o.deliveryCount,
            time(o.deadAt),
            o.tags.join(','),
          ]),
          '(no dead letters)',
        ),
      )
      return 0
    }
    if (action === 'redrive') {
      const all = flags.all === true
      if (!all && sequences.length === 0)
        throw new QmqError('QMQ_ERR_USAGE', `redrive needs --sequence or --all\n${DLQ_USAGE}`)
      if (!all && brokers.length > 1) {
        throw new QmqError(
          'QMQ_ERR_USAGE',
          'sequences are per broker group: add --broker-group (see qmq dlq list)',
        )
      }
      let redriven = 0
      for (const b of brokers) {
        const frame = await cluster.request(
          b.address,
          RequestCode.ADMIN_DLQ_REDRIVE,
          encodeDlqRedriveRequest({
            subject,
            group,
            sequences: all ? undefined : sequences,
            token: cluster.adminToken,
          }),
        )
        redriven += decodeCountResponse(frame.body)
      }
      print(json, { redriven }, () => `redrove ${redriven} dead letter(s) of ${group} on ${subject}`)
      return 0
    }
    throw new QmqError('QMQ_ERR_USAGE', `unknown dlq action ${JSON.stringify(action ?? '')}\n${DLQ_USAGE}`)
  },
)

const DELAY_DLQ_USAGE = `qmq delay-dlq list --group D [--limit N]
       qmq delay-dlq redrive --group D (--sequence N ... | --all)`
export const delayDlqCommand = adminCommand(
  'delay-dlq',
  "List and redrive a delay group's dead letters (due messages a broker refused for good)",
  DELAY_DLQ_USAGE,
  [
    { name: 'group', value: 'D', doc: 'the delay group' },
    { name: 'limit', value: 'N', doc: 'at most N (default 100)' },
    { name: 'sequence', value: 'N', repeatable: true, doc: 'a dead letter by its sequence (repeatable)' },
    { name: 'all', doc: 'redrive every dead letter of the delay group' },
  ],
  async (cluster, { positionals, flags }, json) => {
    const [action] = positionals
    const name = need(stringFlag(flags, 'group'), '--group', DELAY_DLQ_USAGE)
    const sequences = listFlag(flags, 'sequence').map((s) => {
      const n = Number(s)
      if (!Number.isSafeInteger(n) || n < 1)
        throw new QmqError('QMQ_ERR_USAGE', `--sequence must be a whole number >= 1 (got ${s})`)
      return n
    })
    // Usage first: nothing goes on the network for a command line that is wrong.
    const limit = intFlag(flags, 'limit', 100, 1, MAX_DELAY_DLQ_LIST)
    const all = flags.all === true
    if (action !== 'list' && action !== 'redrive')
      throw new QmqError(
        'QMQ_ERR_USAGE',
        `unknown delay-dlq action ${JSON.stringify(action ?? '')}\n${DELAY_DLQ_USAGE}`,
      )
    if (action === 'redrive' && all === sequences.length > 0)
      throw new QmqError(
        'QMQ_ERR_USAGE',
        `redrive needs --sequence or --all (one of them)\n${DELAY_DLQ_USAGE}`,
      )
    const group = (await cluster.meta.listGroups()).find((g) => g.kind === 'delay' && g.name === name)
    if (group === undefined || !group.alive || group.address === '')
      throw new QmqError('QMQ_ERR_NOT_FOUND', `no alive delay group ${name}`)
    if (action === 'list') {
      const frame = await cluster.request(
        group.address,
        RequestCode.ADMIN_DELAY_DLQ_LIST,
        encodeDelayDlqListRequest({ limit, afterSequence: -1, token: cluster.clusterSecret }),
      )
      const out = decodeDelayDlqListResponse(frame.body).map((d) => ({
        sequence: d.sequence,
        id: d.record.id,
        subject: d.record.subject,
        scheduleAt: d.record.scheduleAt,
        parkedAt: d.parkedAt,
        error: codeForStatus(d.status) ?? String(d.status),
        message: d.message,
      }))
      print(json, out, () =>
        table(
          ['SEQUENCE', 'MESSAGE ID', 'SUBJECT', 'DUE AT', 'PARKED AT', 'ERROR'],
          out.map((o) => [o.sequence, o.id, o.subject, time(o.scheduleAt ?? 0), time(o.parkedAt), o.error]),
          '(no dead letters)',
        ),
      )
      return 0
    }
    const frame = await cluster.request(
      group.address,
      RequestCode.ADMIN_DELAY_DLQ_REDRIVE,
      encodeDelayDlqRedriveRequest({
        sequences: all ? undefined : sequences,
        token: cluster.clusterSecret,
      }),
    )
    const redriven = decodeCountResponse(frame.body)
    print(json, { redriven }, () => `redrove ${redriven} dead letter(s) of delay group ${name}`)
    return 0
  },
)

const CANCEL_USAGE = 'qmq cancel <message-id> [<message-id> ...]'
export const cancelCommand = adminCommand(
  'cancel',
  'Cancel pending delayed messages by id, in every alive delay group',
  CANCEL_USAGE,
  [],
  async (cluster, { positionals }, json) => {
    if (positionals.length === 0) throw new QmqError('QMQ_ERR_USAGE', `missing message id\n${CANCEL_USAGE}`)
    const answers = await cancelDelayed(
      {
        meta: cluster.meta,
        request: (address, code, body) => cluster.request(address, code, body),
        token: cluster.clusterSecret,
      },
      positionals,
    )
    const out = positionals.map((id, i) => ({ id, cancelled: answers[i] === true }))
    print(json, out, () =>
      out
        .map(
          (o) => `${o.id}: ${o.cancelled ? 'cancelled' : 'not pending (unknown, delivered or not delayed)'}`,
        )
        .join('\n'),
    )
    return out.every((o) => o.cancelled) ? 0 : 1
  },
)
