import { type ChildProcess, spawn } from 'node:child_process'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { QmqError } from '../common/errors'

/**
 * A qmq service running as a child process through the CLI (`qmq metaserver|broker|delay ...`),
 * as `qmq dev` and the end-to-end tests start them. Readiness is the service's "<name> started"
 * log line, which carries the addresses it bound (so port 0 works).
 *
 * The child gets a process group of its own (a terminal's Ctrl-C reaches only the parent, which
 * then stops each service once) and an IPC channel, through which it notices that the parent died
 * and closes itself.
 */
export const QMQ_BIN = join(__dirname, '..', '..', 'bin', 'qmq.js')
export const DEFAULT_START_TIMEOUT_MS = 30_000

export interface ChildService {
  name: string
  proc: ChildProcess
  /** The "started" log line of the service, parsed. Rejects if it exits or times out first. */
  started: Promise<Record<string, unknown>>
  /** Resolves with the exit code (or signal name) once the process is gone. */
  exited: Promise<number | string>
}

export interface ChildServiceOptions {
  /** Lines of the child's output go here (both streams); default: dropped. */
  onLine?: (line: string, parsed: Record<string, unknown> | undefined) => void
  env?: NodeJS.ProcessEnv
  startTimeoutMs?: number
  /**
   * A command the service is started through, which then runs node itself: `['ip', 'netns', 'exec',
   * 'ns1']` runs it in a network namespace. It must exec node (same pid), so that signals reach it.
   */
  launcher?: readonly string[]
}

export function startChildService(
  name: string,
  args: readonly string[],
  options: ChildServiceOptions = {},
): ChildService {
  const service = args[0] ?? name
  const startedMsg = `${service} started`
  const command = [...(options.launcher ?? []), process.execPath, QMQ_BIN, ...args]
  const proc = spawn(command[0] ?? process.execPath, command.slice(1), {
    stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
    detached: true,
    env: { ...process.env, QMQ_LOG_LEVEL: process.env.QMQ_LOG_LEVEL ?? 'info', ...options.env },
  })
  const exited = new Promise<number | string>((resolve) => {
    proc.once('exit', (code, signal) => resolve(code ?? signal ?? 'unknown'))
  })
  const timeoutMs = options.startTimeoutMs ?? DEFAULT_START_TIMEOUT_MS
  const started = new Promise<Record<string, unknown>>((resolve, reject) => {
    const timer = setTimeout(() => {
      reject(new QmqError('QMQ_ERR_TIMEOUT', `${name} did not start within ${timeoutMs} ms`))
    }, timeoutMs)
    exited.then((how) => {
      clearTimeout(timer)
      reject(new QmqError('QMQ_ERR_INTERNAL', `${name} exited during start (${how})`))
    })
    createInterface({ input: proc.stdout as NodeJS.ReadableStream }).on('line', (line) => {
      let parsed: Record<string, unknown> | undefined
      try {
        parsed = JSON.parse(line) as Record<string, unknown>
      } catch {
        parsed = undefined
      }
      if (parsed?.msg === startedMsg) {
        clearTimeout(timer)
        resolve(parsed)
      }
      options.onLine?.(line, parsed)
    })
  })
  started.catch(() => {})
  createInterface({ input: proc.stderr as NodeJS.ReadableStream }).on('line', (line) =>
    options.onLine?.(line, undefined),
  )
  return { name, proc, started, exited }
}

/** SIGTERM (a clean close), then SIGKILL after `timeoutMs`; resolves with how it exited. */
export async function stopChildService(child: ChildService, timeoutMs = 15_000): Promise<number | string> {
  if (child.proc.exitCode !== null || child.proc.signalCode !== null) return child.exited
  child.proc.kill('SIGTERM')
  const timer = setTimeout(() => child.proc.kill('SIGKILL'), timeoutMs)
  const how = await child.exited
  clearTimeout(timer)
  return how
}
