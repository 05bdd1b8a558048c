import { QmqError } from '../common/errors'

/**
 * Command-line parsing: `qmq <command> [subcommand] [positionals] [--flag value | --flag=value | --no-flag]`.
 * Flags are kebab-case on the command line (`--segment-bytes`) and camelCase in the result
 * (`segmentBytes`), matching option schema keys. A flag given twice keeps the last value, except
 * flags listed as `repeatable`, which collect into an array.
 */
export interface ParsedArgs {
  positionals: string[]
  flags: Record<string, string | boolean | string[]>
}

export function camelCase(flag: string): string {
  return flag.replace(/-([a-z0-9])/g, (_m, c: string) => c.toUpperCase())
}

export function kebabCase(key: string): string {
  return key.replace(/([a-z0-9])([A-Z])/g, '$1-$2').toLowerCase()
}

export interface ParseOptions {
  /** Flags that never take a value (`--json`, `--help`). */
  booleans?: readonly string[]
  /** Flags that may be given several times (`--property k=v`). */
  repeatable?: readonly string[]
  /** Short aliases: { h: 'help' }. */
  aliases?: Readonly<Record<string, string>>
}

export function parseArgs(argv: readonly string[], options: ParseOptions = {}): ParsedArgs {
  const booleans = new Set(['help', 'json', ...(options.booleans ?? [])])
  const repeatable = new Set(options.repeatable ?? [])
  const aliases: Record<string, string> = { h: 'help', ...(options.aliases ?? {}) }
  const positionals: string[] = []
  const flags: ParsedArgs['flags'] = {}
  const set = (key: string, value: string | boolean) => {
    if (repeatable.has(key) && typeof value === 'string') {
      const prev = flags[key]
      flags[key] = Array.isArray(prev) ? [...prev, value] : [value]
    } else flags[key] = value
  }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string
    if (arg === '--') {
      positionals.push(...argv.slice(i + 1))
      break
    }
    if (arg.startsWith('--')) {
      const eq = arg.indexOf('=')
      const name = camelCase(eq >= 0 ? arg.slice(2, eq) : arg.slice(2))
      if (name.length === 0) throw new QmqError('QMQ_ERR_USAGE', `malformed flag ${JSON.stringify(arg)}`)
      if (eq >= 0) {
        set(name, arg.slice(eq + 1))
      } else if (name.startsWith('no') && name.length > 2 && /[A-Z]/.test(name[2] as string)) {
        set(`${(name[2] as string).toLowerCase()}${name.slice(3)}`, false)
      } else if (booleans.has(name)) {
        set(name, true)
      } else {
        const next = argv[i + 1]
        if (next === undefined || (next.startsWith('--') && next.length > 2)) {
          throw new QmqError('QMQ_ERR_USAGE', `--${kebabCase(name)} needs a value`)
        }
        set(name, next)
        i++
      }
      continue
    }
    if (arg.startsWith('-') && arg.length === 2) {
      const name = aliases[arg.slice(1)]
      if (name === undefined) throw new QmqError('QMQ_ERR_USAGE', `unknown flag ${arg}`)
      if (booleans.has(name)) set(name, true)
      else {
        const next = argv[i + 1]
        if (next === undefined) throw new QmqError('QMQ_ERR_USAGE', `${arg} needs a value`)
        set(name, next)
        i++
      }
      continue
    }
    positionals.push(arg)
  }
  return { positionals, flags }
}

/** A flag's value as a string, or undefined; a repeated or boolean flag is a usage error here. */
export function stringFlag(flags: ParsedArgs['flags'], key: string): string | undefined {
  const v = flags[key]
  if (v === undefined) return undefined
  if (typeof v !== 'string') throw new QmqError('QMQ_ERR_USAGE', `--${kebabCase(key)} takes one value`)
  return v
}

/** A whole-number flag within [min, max], or `fallback` when absent; anything else is a usage error. */
export function intFlag(
  flags: ParsedArgs['flags'],
  key: string,
  fallback: number,
  min: number,
  max = Number.MAX_SAFE_INTEGER,
): number {
  const raw = stringFlag(flags, key)
  if (raw === undefined) return fallback
  const n = Number(raw)
  if (!Number.isSafeInteger(n) || n < min || n > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `>= ${min}` : `from ${min} to ${max}`
    throw new QmqError(
      'QMQ_ERR_USAGE',
      `--${kebabCase(key)} must be a whole number ${range} (got ${JSON.stringify(raw)})`,
    )
  }
  return n
}

export function listFlag(flags: ParsedArgs['flags'], key: string): string[] {
  const v = flags[key]
  if (v === undefined) return []
  if (Array.isArray(v)) return v
  if (typeof v === 'string') return [v]
  throw new QmqError('QMQ_ERR_USAGE', `--${kebabCase(key)} needs a value`)
}
