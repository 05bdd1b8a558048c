import { isQmqError } from '../common/errors'
import type { Command } from './commands/command'
import {
  backlogCommand,
  cancelCommand,
  consumersCommand,
  delayDlqCommand,
  dlqCommand,
  forgetGroupCommand,
  groupsCommand,
  resetCursorCommand,
  subjectsCommand,
} from './commands/admin'
import { devCommand } from './commands/dev'
import { outboxWatchdogCommand } from './commands/outbox-watchdog'
import { sendCommand, tailCommand } from './commands/send-tail'
import { brokerCommand, delayCommand, metaserverCommand } from './commands/services'

/**
 * `qmq <command> ...`: the entry of the qmq CLI (bin/qmq.js calls main()).
 * Errors are printed as one line with their stable code; usage errors exit 2, others 1.
 */
const COMMANDS: Command[] = [
  devCommand,
  metaserverCommand,
  brokerCommand,
  delayCommand,
  subjectsCommand,
  groupsCommand,
  consumersCommand,
  backlogCommand,
  resetCursorCommand,
  forgetGroupCommand,
  dlqCommand,
  delayDlqCommand,
  cancelCommand,
  sendCommand,
  tailCommand,
  outboxWatchdogCommand,
]

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
    return await command.run(rest)
  } catch (err) {
    if (isQmqError(err)) {
      process.stderr.write(`qmq ${name}: ${err.message} [${err.code}]\n`)
      return err.code === 'QMQ_ERR_USAGE' ? 2 : 1
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
