/**
 * A small JSON-lines logger with a pino-compatible call shape:
 *   log.info('started')                 -> {"level":"info","time":...,"msg":"started",...bindings}
 *   log.warn({ offset, dropped }, 'truncated torn tail')
 *   log.error(err, 'append failed')     -> the error goes under "err" with message, code, stack
 * `child(bindings)` adds fields to every line. The level comes from the `level` option, overridden by
 * the QMQ_LOG_LEVEL environment variable when set (so an operator can turn on debug without a redeploy).
 */
export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const
export type LogLevel = (typeof LOG_LEVELS)[number]

const LEVEL_VALUE: Record<LogLevel, number> = {
  trace: 10,
  debug: 20,
  info: 30,
  warn: 40,
  error: 50,
  fatal: 60,
  silent: Number.POSITIVE_INFINITY,
}

type LogFn = {
  (msg: string): void
  (obj: object | Error, msg?: string): void
}

export interface Logger {
  readonly level: LogLevel
  trace: LogFn
  debug: LogFn
  info: LogFn
  warn: LogFn
  error: LogFn
  fatal: LogFn
  child(bindings: Record<string, unknown>): Logger
  isLevelEnabled(level: LogLevel): boolean
}

export interface LoggerOptions {
  level?: LogLevel
  /** Where lines go; defaults to process.stdout. Anything with write(string). */
  destination?: { write(line: string): unknown }
  bindings?: Record<string, unknown>
  /** Set to false to ignore QMQ_LOG_LEVEL (tests that assert on output). */
  env?: boolean
}

export function isLogLevel(value: unknown): value is LogLevel {
  return typeof value === 'string' && (LOG_LEVELS as readonly string[]).includes(value)
}

function serializeError(err: Error): Record<string, unknown> {
  const out: Record<string, unknown> = { type: err.name, message: err.message, stack: err.stack }
  const code = (err as { code?: unknown }).code
  if (code !== undefined) out.code = code
  const details = (err as { details?: unknown }).details
  if (details !== undefined) out.details = details
  if (err.cause instanceof Error) out.cause = serializeError(err.cause)
  return out
}

function safeStringify(value: Record<string, unknown>): string {
  try {
    return JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v))
  } catch {
    return JSON.stringify({
      level: value.level,
      time: value.time,
      msg: value.msg,
      logError: 'unserializable fields',
    })
  }
}

class JsonLogger implements Logger {
  readonly level: LogLevel
  private readonly threshold: number
  private readonly destination: { write(line: string): unknown }
  private readonly bindings: Record<string, unknown>

  constructor(
    level: LogLevel,
    destination: { write(line: string): unknown },
    bindings: Record<string, unknown>,
  ) {
    this.level = level
    this.threshold = LEVEL_VALUE[level]
    this.destination = destination
    this.bindings = bindings
  }

  isLevelEnabled(level: LogLevel): boolean {
    return LEVEL_VALUE[level] >= this.threshold
  }

  child(bindings: Record<string, unknown>): Logger {
    return new JsonLogger(this.level, this.destination, { ...this.bindings, ...bindings })
  }

  private write(level: LogLevel, a: object | Error | string, msg?: string): void {
    if (LEVEL_VALUE[level] < this.threshold) return
    const line: Record<string, unknown> = { level, time: Date.now(), ...this.bindings }
    if (typeof a === 'string') {
      line.msg = a
    } else if (a instanceof Error) {
      line.err = serializeError(a)
      line.msg = msg ?? a.message
    } else {
      for (const [k, v] of Object.entries(a)) line[k] = v instanceof Error ? serializeError(v) : v
      if (msg !== undefined) line.msg = msg
    }
    this.destination.write(`${safeStringify(line)}\n`)
  }

  trace: LogFn = (a: object | string, msg?: string) => this.write('trace', a, msg)
  debug: LogFn = (a: object | string, msg?: string) => this.write('debug', a, msg)
  info: LogFn = (a: object | string, msg?: string) => this.write('info', a, msg)
  warn: LogFn = (a: object | string, msg?: string) => this.write('warn', a, msg)
  error: LogFn = (a: object | string, msg?: string) => this.write('error', a, msg)
  fatal: LogFn = (a: object | string, msg?: string) => this.write('fatal', a, msg)
}

export function createLogger(options: LoggerOptions = {}): Logger {
  let level: LogLevel = options.level ?? 'info'
  if (options.env !== false) {
    const fromEnv = process.env.QMQ_LOG_LEVEL?.trim().toLowerCase()
    if (isLogLevel(fromEnv)) level = fromEnv
  }
  return new JsonLogger(level, options.destination ?? process.stdout, options.bindings ?? {})
}

/** A logger that drops everything: the default for embedded components and tests. */
export const silentLogger: Logger = createLogger({ level: 'silent', env: false })
