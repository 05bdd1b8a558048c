import { envName } from '../common/config'
import { isQmqError, QmqError } from '../common/errors'
import { isLogLevel, LOG_LEVELS } from '../common/logger'
import { CLUSTER_SECRET_ENV } from '../common/token'
import { closest, kebabCase } from './args'
import type { Command } from './commands/command'
import {
  backlogCommand,
  cancelCommand,
  consumersCommand,
  delayDlqCommand,
  dlqCommand,
  failoverCommand,
  forgetGroupCommand,
  groupsCommand,
  removeSlaveCommand,
  resetCursorCommand,
  subjectsCommand,
} from './commands/admin'
import { authCommand } from './commands/auth'
import { devCommand } from './commands/dev'
import { historyCommand, messageCommand, messagesCommand } from './commands/message'
import { outboxWatchdogCommand } from './commands/outbox-watchdog'
import { sendCommand, tailCommand } from './commands/send-tail'
import { brokerCommand, delayCommand, metaserverCommand } from './commands/services'
import { SECRET_OPTIONS } from './service-options'

/**
 * `qmq <command> ...`: the entry of the qmq CLI (bin/qmq.js calls main()).
 * Errors are printed as one line with their stable code; usage errors exit 2, others 1.
 */
export const COMMANDS: Command[] = [
  devCommand,
  metaserverCommand,
  brokerCommand,
  delayCommand,
  subjectsCommand,
  groupsCommand,
  failoverCommand,
  removeSlaveCommand,
  consumersCommand,
  backlogCommand,
  resetCursorCommand,
  forgetGroupCommand,
  dlqCommand,
  delayDlqCommand,
  cancelCommand,
  messageCommand,
  messagesCommand,
  historyCommand,
  sendCommand,
  tailCommand,
  outboxWatchdogCommand,
  authCommand,
]

/** QMQ_* variables any command reads; services add their own (Command.envNames). */
const GLOBAL_ENV = [
  'QMQ_METASERVER',
  'QMQ_ADMIN_TOKEN',
  'QMQ_LOG_LEVEL',
  CLUSTER_SECRET_ENV,
  'QMQ_TLS',
  'QMQ_TLS_CA_FILE',
  'QMQ_TLS_CERT_FILE',
  'QMQ_TLS_KEY_FILE',
  'QMQ_APP_CODE',
  'QMQ_APP_TOKEN',
]
const SERVICE_PREFIXES = ['QMQ_METASERVER_', 'QMQ_BROKER_', 'QMQ_DELAY_']

/**
 * Refuses an invalid QMQ_LOG_LEVEL and warns (stderr) about a QMQ_* variable that is not one the
 * command reads but is close to one: a typo would otherwise be silently ignored. Variables of
 * another service (QMQ_BROKER_* when running `qmq metaserver`, all of them for `qmq dev`, whose
 * children check their own) are left alone.
 */
function checkEnvironment(command: Command, env: NodeJS.ProcessEnv): void {
  const level = env.QMQ_LOG_LEVEL
  if (level !== undefined && level.trim() !== '' && !isLogLevel(level.trim().toLowerCase()))
    throw new QmqError(
      'QMQ_ERR_USAGE',
      `QMQ_LOG_LEVEL must be one of ${LOG_LEVELS.join(', ')} (got ${JSON.stringify(level)})`,
    )
  const own = command.envNames?.() ?? []
  const known = new Set([...GLOBAL_ENV, ...own])
  const ownPrefix = own[0]?.slice(0, own[0].indexOf('_', 4) + 1)
  for (const name of Object.keys(env)) {
    if (!name.startsWith('QMQ_') || known.has(name)) continue
    const prefix = SERVICE_PREFIXES.find((p) => name.startsWith(p))
    if (prefix !== undefined && prefix !== ownPrefix) continue
    const secret = Object.entries(SECRET_OPTIONS).find(
      ([key]) => prefix !== undefined && name === envName(prefix, key),
    )
    if (secret !== undefined) {
      const [, where] = secret
      process.stderr.write(
        `qmq: warning: ignoring ${name}: a secret is read only from ${where.env} (the same for every service) or --${kebabCase(where.fileFlag)} FILE\n`,
      )
      continue
    }
    const near = closest(name, known)
    if (near !== undefined)
      process.stderr.write(
        `qmq: warning: ignoring ${name}, not a variable qmq reads (did you mean ${near}?)\n`,
      )
  }
}

function usage(): string {
  const width = Math.max(...COMMANDS.map((c) => c.name.length)) + 4
  return [
    'Usage: qmq <command> [options]',
    '',
    'Commands:',
    ...COMMANDS.map((c) => `  ${c.name.padEnd(width)}${c.summary}`),
    '',
    "Run 'qmq <command> --help' for the options of a command.",
  ].join('\n')
}

export async function run(argv: readonly string[]): Promise<number> {
  const [name, ...rest] = argv
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(`${usage()}\n`)
    return name === undefined ? 2 : 0
  }
  if (name === '--version' || name === 'version') {
    process.stdout.write(`${(require('../../package.json') as { version: string }).version}\n`)
    return 0
  }
  const command = COMMANDS.find((c) => c.name === name)
  if (command === undefined) {
    process.stderr.write(`qmq: unknown command '${name}'\n\n${usage()}\n`)
    return 2
  }
  if (rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(`${command.help()}\n`)
    return 0
  }
  try {
    checkEnvironment(command, process.env)
    return await command.run(rest)
  } catch (err) {
    if (isQmqError(err)) {
      process.stderr.write(`qmq ${name}: ${err.message} [${err.code}]\n`)
      // A wrong command line, environment or config file: 2, like other usage errors.
      return err.code === 'QMQ_ERR_USAGE' || err.code === 'QMQ_ERR_CONFIG_INVALID' ? 2 : 1
    }
    const sys = err as NodeJS.ErrnoException & { port?: number; address?: string }
    if (sys?.code === 'EADDRINUSE') {
      // One line, not a stack: `qmq dev` reads it to name its own flag.
      process.stderr.write(
        `qmq ${name}: port ${sys.port} in use (${sys.address}:${sys.port}): is another qmq service running? choose another port [QMQ_ERR_PORT_IN_USE]\n`,
      )
      return 1
    }
    process.stderr.write(`qmq ${name}: ${(err as Error)?.stack ?? String(err)}\n`)
    return 1
  }
}

export function main(argv: readonly string[]): void {
  run(argv).then(
    (code) => {
      process.exitCode = code
    },
    (err: unknown) => {
      process.stderr.write(`qmq: ${String(err)}\n`)
      process.exitCode = 1
    },
  )
}
