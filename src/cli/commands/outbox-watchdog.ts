import { QmqError } from '../../common/errors'
import { createLogger } from '../../common/logger'
import type { TransactionProvider } from '../../client/tx/provider'
import { type FlagSpec, flagsHelp, intFlag, parseArgs, stringFlag } from '../args'
import { CLUSTER_FLAGS, DEFAULT_METASERVER_URL, sdkIdentity } from '../cluster'
import { parseDuration } from '../table'
import type { Command } from './command'

const USAGE =
  'qmq outbox-watchdog --db URL [--table qmq_outbox] [--interval 5s] [--min-age 30s] [--batch 100] [--once] [--migrate]'

function duration(flags: ReturnType<typeof parseArgs>['flags'], key: string, fallback: number): number {
  const raw = stringFlag(flags, key)
  if (raw === undefined) return fallback
  const ms = parseDuration(raw)
  if (ms === undefined)
    throw new QmqError('QMQ_ERR_USAGE', `--${key} must look like 500ms, 30s or 5m (got ${raw})`)
  return ms
}

/**
 * Opens the database of `--db`: postgres:// or postgresql:// through `pg` (installed by the
 * application: the SDK does not depend on it), sqlite:PATH or a file path through better-sqlite3.
 */
async function openProvider(
  url: string,
  table: string,
): Promise<{ provider: TransactionProvider<object>; close: () => Promise<void> }> {
  const { postgresProvider, sqliteProvider } =
    require('../../client/tx/provider') as typeof import('../../client/tx/provider')
  if (/^postgres(ql)?:\/\//.test(url)) {
    let pg: typeof import('pg')
    try {
      pg = require('pg') as typeof import('pg')
    } catch {
      throw new QmqError('QMQ_ERR_USAGE', "a postgres:// --db needs the 'pg' package: npm install pg")
    }
    const pool = new pg.Pool({ connectionString: url, max: 2 })
    pool.on('error', () => {}) // an idle client lost (database restarted): the next pass reconnects
    return { provider: postgresProvider(pool, { outboxTable: table }), close: () => pool.end() }
  }
  const path = url.startsWith('sqlite:') ? url.slice('sqlite:'.length).replace(/^\/\//, '') : url
  const Database = require('better-sqlite3') as typeof import('better-sqlite3')
  const db = new Database(path, { fileMustExist: true, timeout: 10_000 })
  return {
    provider: sqliteProvider(db, { outboxTable: table }),
    close: async () => {
      db.close()
    },
  }
}

const FLAGS: readonly FlagSpec[] = [
  {
    name: 'db',
    value: 'URL',
    doc: "postgres://user@host:port/db (needs the 'pg' package) or sqlite:PATH / PATH",
  },
  { name: 'table', value: 'NAME', doc: 'outbox table (default qmq_outbox)' },
  { name: 'interval', value: 'D', doc: 'between passes (default 5s)' },
  {
    name: 'min-age',
    value: 'D',
    doc: 'rows younger than this are left to their producer (default 30s; --once: 0)',
  },
  { name: 'batch', value: 'N', doc: 'rows claimed at once (default 100)' },
  { name: 'once', doc: 'one drain, print the result, exit' },
  { name: 'migrate', doc: 'create the outbox table first if it does not exist' },
  {
    name: 'metaserver',
    value: 'URL',
    doc: `metaserver base or /meta/address URL (default ${DEFAULT_METASERVER_URL}) [QMQ_METASERVER]`,
  },
  { name: 'json', doc: 'print the --once result as JSON' },
  // TLS towards the metaserver and the brokers, as the admin commands take it.
  ...CLUSTER_FLAGS.filter((f) => f.name.startsWith('tls')),
]

export const outboxWatchdogCommand: Command = {
  name: 'outbox-watchdog',
  summary: 'Resend the outbox rows an application left behind (transactional messages)',
  help: () => `Usage: ${USAGE}

Sends the rows of an application's outbox table (docs/transactions.md) that were committed but never
sent, with their own message ids, and deletes them once stored: for an application that died between
COMMIT and the send and is not coming back soon. Several watchdogs (and the applications' own) may run
on one database: rows are claimed, never sent by two at once. Runs until Ctrl-C, or with --once sends
what is there now and exits (1 when a row could not be sent).

Against servers started with --auth, run it as the application whose outbox it drains: QMQ_APP_CODE and
QMQ_APP_TOKEN (the app needs the produce grant of the rows' subjects). TLS: the --tls* flags below.

Options:
${flagsHelp(FLAGS)}`,
  run: async (argv) => {
    const { flags } = parseArgs(argv, { flags: FLAGS })
    const url = stringFlag(flags, 'db')
    if (url === undefined) throw new QmqError('QMQ_ERR_USAGE', `missing --db\nUsage: ${USAGE}`)
    const table = stringFlag(flags, 'table') ?? 'qmq_outbox'
    const once = flags.once === true
    const intervalMs = duration(flags, 'interval', 5_000)
    const minAgeMs = duration(flags, 'minAge', once ? 0 : 30_000)
    const batch = intFlag(flags, 'batch', 100, 1)
    const metaServer = stringFlag(flags, 'metaserver') ?? process.env.QMQ_METASERVER ?? DEFAULT_METASERVER_URL

    const { MessageProducerProvider } = require('../../client') as typeof import('../../client')
    const { OutboxWatchdog } =
      require('../../client/tx/watchdog') as typeof import('../../client/tx/watchdog')
    // Logs go to stderr: stdout carries the --once result.
    const logger = createLogger({ level: 'info', destination: process.stderr })
    // With --auth servers the rows are sent as the application whose outbox this is: QMQ_APP_CODE
    // and QMQ_APP_TOKEN (its produce grant covers the subjects).
    if (process.env.QMQ_APP_TOKEN && !process.env.QMQ_APP_CODE)
      throw new QmqError('QMQ_ERR_USAGE', 'QMQ_APP_TOKEN needs QMQ_APP_CODE (the application it belongs to)')
    const identity = sdkIdentity(flags, process.env, 'qmq-outbox-watchdog')
    const { provider, close } = await openProvider(url, table)
    const producer = new MessageProducerProvider({ ...identity, metaServer })
    try {
      if (flags.migrate === true) await provider.migrate()
      await producer.init()
      const watchdog = new OutboxWatchdog(
        provider,
        { send: (m) => producer.sendMessage(m), ready: () => true },
        { watchdogIntervalMs: intervalMs, watchdogMinAgeMs: minAgeMs, watchdogBatchSize: batch },
        logger.child({ component: 'outbox-watchdog' }),
      )
      if (once) {
        const r = await watchdog.drain(minAgeMs)
        if (flags.json === true) process.stdout.write(`${JSON.stringify(r)}\n`)
        else process.stdout.write(`resent ${r.resent.length} rows, ${r.failed.length} failed (kept)\n`)
        return r.failed.length > 0 ? 1 : 0
      }
      watchdog.start()
      await new Promise<void>((resolve) => {
        process.once('SIGINT', resolve)
        process.once('SIGTERM', resolve)
      })
      await watchdog.stop()
      return 0
    } finally {
      await producer.close()
      await close()
    }
  },
}
