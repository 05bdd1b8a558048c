import { readFileSync } from 'node:fs'
import { QmqError } from '../../common/errors'
import type { ConsumedMessage } from '../../client/consumer/consumed-message'
import { type FlagSpec, flagsHelp, intFlag, listFlag, parseArgs, stringFlag } from '../args'
import { DEFAULT_METASERVER_URL, METASERVER_FLAG, sdkIdentity } from '../cluster'
import { watchStdoutReader } from '../stdout-reader'
import { parseDuration, parseStartFrom } from '../table'
import type { Command } from './command'

/**
 * `qmq send` and `qmq tail`: produce and watch messages from the command line through the SDK, as
 * an application would. They use the metaserver given by --metaserver / QMQ_METASERVER.
 */
/** The client options of qmq send / tail: default appCode qmq-cli (cluster.ts sdkIdentity). */
function clientOf(flags: ReturnType<typeof parseArgs>['flags']): Record<string, unknown> {
  return { ...sdkIdentity(flags, process.env, 'qmq-cli'), metaServer: metaServerOf(flags) }
}

function metaServerOf(flags: ReturnType<typeof parseArgs>['flags']): string {
  return stringFlag(flags, 'metaserver') ?? process.env.QMQ_METASERVER ?? DEFAULT_METASERVER_URL
}

const SEND_USAGE =
  'qmq send <subject> [--body TEXT | --body-file FILE] [--property k=v]... [--tag T]... [--delay 30s | --at TIME] [--count N]'

const SEND_FLAGS: readonly FlagSpec[] = [
  { name: 'body', value: 'TEXT', doc: 'message body (a string)' },
  { name: 'body-file', value: 'FILE', doc: 'message body read from a file (binary)' },
  { name: 'property', value: 'K=V', repeatable: true, doc: 'a property (repeatable)' },
  {
    name: 'tag',
    value: 'T',
    repeatable: true,
    doc: 'a tag consumers can filter on (repeatable, at most 10)',
  },
  { name: 'delay', value: 'DURATION', doc: 'deliver later: 1500ms, 30s, 5m, 2h, 3d (through a delay group)' },
  { name: 'at', value: 'TIME', doc: 'deliver at an ISO time (through a delay group)' },
  {
    name: 'count',
    value: 'N',
    doc: 'send N messages (property "n" numbers them); progress goes to stderr',
  },
  METASERVER_FLAG,
  { name: 'json', doc: 'print the result as JSON' },
]

export const sendCommand: Command = {
  name: 'send',
  summary: 'Send messages to a subject (properties, tags, body, delay)',
  help: () => `Usage: ${SEND_USAGE}

Send one message (or --count copies) to a subject through the producer SDK and print its id.

Options:
${flagsHelp(SEND_FLAGS)}`,
  run: async (argv) => {
    const { positionals, flags } = parseArgs(argv, { flags: SEND_FLAGS })
    const subject = positionals[0]
    if (subject === undefined) throw new QmqError('QMQ_ERR_USAGE', `missing subject\nUsage: ${SEND_USAGE}`)
    const count = intFlag(flags, 'count', 1, 1)
    const bodyText = stringFlag(flags, 'body')
    const bodyFile = stringFlag(flags, 'bodyFile')
    if (bodyText !== undefined && bodyFile !== undefined)
      throw new QmqError('QMQ_ERR_USAGE', 'give --body or --body-file, not both')
    const body = bodyFile !== undefined ? readFileSync(bodyFile) : bodyText
    const properties = listFlag(flags, 'property').map((kv) => {
      const eq = kv.indexOf('=')
      if (eq <= 0)
        throw new QmqError('QMQ_ERR_USAGE', `--property must be key=value (got ${JSON.stringify(kv)})`)
      return [kv.slice(0, eq), kv.slice(eq + 1)] as const
    })
    const tags = listFlag(flags, 'tag')
    const delayRaw = stringFlag(flags, 'delay')
    const atRaw = stringFlag(flags, 'at')
    let at: Date | undefined
    if (delayRaw !== undefined && atRaw !== undefined)
      throw new QmqError('QMQ_ERR_USAGE', 'give --delay or --at, not both')
    if (delayRaw !== undefined) {
      const ms = parseDuration(delayRaw)
      if (ms === undefined)
        throw new QmqError(
          'QMQ_ERR_USAGE',
          `--delay must look like 1500ms, 30s, 5m, 2h or 3d (got ${delayRaw})`,
        )
      at = new Date(Date.now() + ms)
    }
    if (atRaw !== undefined) {
      at = new Date(atRaw)
      if (Number.isNaN(at.getTime()))
        throw new QmqError('QMQ_ERR_USAGE', `--at must be an ISO time (got ${atRaw})`)
    }

    const { MessageProducerProvider } = require('../../client') as typeof import('../../client')
    const producer = new MessageProducerProvider(clientOf(flags))
    await producer.init()
    const ids: string[] = []
    let done = 0
    const started = Date.now()
    const progress =
      count >= 1000 ? setInterval(() => process.stderr.write(`sent ${done}/${count}\n`), 1000) : undefined
    try {
      const window: Promise<unknown>[] = []
      for (let i = 0; i < count; i++) {
        const m = producer.generateMessage(subject)
        for (const [k, v] of properties) m.setProperty(k, v)
        if (count > 1) m.setProperty('n', i)
        for (const tag of tags) m.addTag(tag)
        if (body !== undefined) m.setBody(body)
        if (at !== undefined) m.setDelayTime(at)
        if (ids.length < 1000) ids.push(m.getMessageId())
        window.push(
          producer.sendMessage(m).then(() => {
            done++
          }),
        )
        if (window.length >= 1000) await Promise.all(window.splice(0))
      }
      await Promise.all(window)
    } finally {
      if (progress) clearInterval(progress)
      await producer.close()
    }
    const result = {
      subject,
      sent: done,
      ids: count <= 1000 ? ids : undefined,
      ms: Date.now() - started,
      ...(at ? { deliverAt: at.toISOString() } : {}),
    }
    if (flags.json === true) process.stdout.write(`${JSON.stringify(result)}\n`)
    else if (count === 1) process.stdout.write(`${ids[0]}${at ? ` (due ${at.toISOString()})` : ''}\n`)
    else process.stdout.write(`sent ${done} messages to ${subject} in ${result.ms} ms\n`)
    return 0
  },
}

const TAIL_USAGE =
  'qmq tail <subject> --group G [--count N] [--from earliest|latest|<time>] [--no-ack] [--json]'

function describe(m: ConsumedMessage): Record<string, unknown> {
  const body = m.getBody()
  return {
    id: m.getMessageId(),
    subject: m.getSubject(),
    createdAt: m.getCreatedTime().toISOString(),
    deliveryCount: m.getDeliveryCount(),
    tags: m.getTags(),
    properties: Object.fromEntries(m.getProperties()),
    ...(body === undefined ? {} : { body: m.getStringBody() ?? `base64:${body.toString('base64')}` }),
  }
}

const TAIL_FLAGS: readonly FlagSpec[] = [
  { name: 'group', value: 'G', doc: 'consumer group (required)' },
  { name: 'count', value: 'N', doc: 'stop after N messages' },
  {
    name: 'from',
    value: 'WHERE',
    doc: 'where a NEW group starts: latest (default), earliest, or an ISO time / ms since epoch (first message stored at or after it)',
  },
  {
    name: 'ack',
    doc: 'ack each printed message (default); --no-ack: they come back to the group after its lease',
  },
  METASERVER_FLAG,
  { name: 'json', doc: 'one JSON object per message' },
]

export const tailCommand: Command = {
  name: 'tail',
  summary: 'Print messages of a subject as a consumer group receives them',
  help: () => `Usage: ${TAIL_USAGE}

Consume a subject as a member of consumer group G and print each message. By default messages are
acked (the group moves on): to watch without taking messages from a running group, use a new group
name. Stops after --count messages or on Ctrl-C.

Options:
${flagsHelp(TAIL_FLAGS)}`,
  run: async (argv) => {
    const { positionals, flags } = parseArgs(argv, { flags: TAIL_FLAGS })
    const subject = positionals[0]
    const group = stringFlag(flags, 'group')
    if (subject === undefined || group === undefined)
      throw new QmqError('QMQ_ERR_USAGE', `missing subject or --group\nUsage: ${TAIL_USAGE}`)
    const limit = intFlag(flags, 'count', Number.MAX_SAFE_INTEGER, 1)
    const fromText = stringFlag(flags, 'from') ?? 'latest'
    const from = parseStartFrom(fromText)
    if (from === undefined)
      throw new QmqError(
        'QMQ_ERR_USAGE',
        `--from must be latest, earliest, an ISO time or ms since the epoch (got ${fromText})`,
      )
    const ack = flags.ack !== false

    const { MessageConsumerProvider } = require('../../client') as typeof import('../../client')
    const consumer = new MessageConsumerProvider(clientOf(flags))
    await consumer.init()
    const pull = consumer.getOrCreatePullConsumer(subject, group, { startFrom: from })
    let stop = false
    // Ends a pull waiting for messages at once (Ctrl-C, or the reader of stdout went away).
    const stopping = new AbortController()
    const onSignal = () => {
      stop = true
      stopping.abort()
    }
    process.once('SIGINT', onSignal)
    process.once('SIGTERM', onSignal)
    // A closed stdout (`qmq tail ... | head -1`) is no crash: stop pulling, and hand back what was
    // pulled but not printed. A message is acked only once its line was handed to the OS.
    const out = process.stdout
    let outputClosed = false
    const onOutputError = () => {
      outputClosed = true
      stop = true
      stopping.abort()
    }
    out.on('error', onOutputError)
    // A write notices a closed pipe (EPIPE) only when a message comes: watch for it meanwhile.
    const unwatch = watchStdoutReader(onOutputError)
    const print = (line: string) =>
      new Promise<boolean>((resolve) => {
        if (outputClosed) return resolve(false)
        out.write(line, (err) => resolve(err == null && !outputClosed))
      })
    let seen = 0
    let released = 0
    try {
      while (!stop && seen < limit) {
        let batch: ConsumedMessage[]
        try {
          batch = await pull.pull(Math.min(100, limit - seen), 1000, { signal: stopping.signal })
        } catch (err) {
          if (stopping.signal.aborted) break // what a pull in flight brings is released by close()
          throw err
        }
        for (const m of batch) {
          const d = describe(m)
          const printed =
            !outputClosed &&
            (await print(
              flags.json === true
                ? `${JSON.stringify(d)}\n`
                : `${d.createdAt} ${d.id} tags=[${(d.tags as string[]).join(',')}] ${JSON.stringify(d.properties)}${d.body === undefined ? '' : ` body=${JSON.stringify(String(d.body).slice(0, 200))}`}\n`,
            ))
          if (printed) {
            seen++
            if (ack) await m.ack()
          } else {
            // Back to the group now rather than after its lease.
            released++
            void m.nack({ retryAfterMs: 0 })
          }
        }
      }
    } finally {
      unwatch()
      process.off('SIGINT', onSignal)
      process.off('SIGTERM', onSignal)
      await consumer.close()
    }
    if (outputClosed)
      process.stderr.write(
        `qmq tail: output closed after ${seen} message(s); released ${released} back to ${group}\n`,
      )
    return 0
  },
}
