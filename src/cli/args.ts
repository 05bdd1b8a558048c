import { editDistance } from '../common/config'
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

/**
 * One flag a command accepts. Each command declares its flags in one table, which both the parser
 * (unknown flags are refused, with the closest known one suggested) and its help text are made
 * from, so the two cannot drift.
 */
export interface FlagSpec {
  /** Kebab-case name without dashes: 'body-file'. */
  name: string
  /** Placeholder of its value in help ('FILE'); absent = a boolean flag (`--json`, `--no-json`). */
  value?: string
  /** May be given several times (`--property k=v`); the values collect into an array. */
  repeatable?: boolean
  /** A flag with a value that also accepts `--no-<name>` (= false): the boolean options of services. */
  negatable?: boolean
  doc: string
}

/** Flags every command accepts (help is handled by main before the command runs). */
export const HELP_FLAG: FlagSpec = { name: 'help', doc: 'show this help' }

export interface ParseOptions {
  /**
   * The command's flag table: with it, a flag not in the table (nor --help/-h) is a usage error
   * naming the closest known flag, and `booleans`/`repeatable` come from the table.
   */
  flags?: readonly FlagSpec[]
  /** Flags that never take a value (`--json`, `--help`). */
  booleans?: readonly string[]
  /** Flags that may be given several times (`--property k=v`). */
  repeatable?: readonly string[]
  /** Short aliases: { h: 'help' }. */
  aliases?: Readonly<Record<string, string>>
}

/** The known flag closest to `name` (both camelCase), if it is close enough to be a likely typo. */
export function closest(name: string, known: Iterable<string>): string | undefined {
  let best: string | undefined
  let bestDistance = Number.POSITIVE_INFINITY
  for (const k of known) {
    const d = editDistance(k, name)
    if (d < bestDistance) {
      best = k
      bestDistance = d
    }
  }
  return bestDistance <= Math.max(2, Math.floor(name.length / 3)) ? best : undefined
}

function unknownFlag(name: string, known: Iterable<string>): QmqError {
  const near = closest(name, known)
  return new QmqError(
    'QMQ_ERR_USAGE',
    `unknown flag --${kebabCase(name)}${near === undefined ? '' : ` (did you mean --${kebabCase(near)}?)`}`,
  )
}

/** Help lines for a flag table: `  --name VALUE   doc`, aligned. */
export function flagsHelp(specs: readonly FlagSpec[]): string {
  const rows = specs.map(
    (f) => [`  --${f.name}${f.value === undefined ? '' : ` ${f.value}`}`, f.doc] as const,
  )
  const width = Math.max(20, ...rows.map(([f]) => f.length + 2))
  return rows.map(([f, d]) => `${f.padEnd(width)}${d}`).join('\n')
}

export function parseArgs(argv: readonly string[], options: ParseOptions = {}): ParsedArgs {
  const table = options.flags
  const booleans = new Set(['help', 'json', ...(options.booleans ?? [])])
  const repeatable = new Set(options.repeatable ?? [])
  // undefined = no table: any flag is accepted (the caller checks them, e.g. against an options schema).
  let known: Set<string> | undefined
  const negatable = new Set<string>()
  if (table !== undefined) {
    known = new Set(['help'])
    booleans.clear()
    booleans.add('help')
    for (const f of table) {
      const key = camelCase(f.name)
      known.add(key)
      if (f.value === undefined) booleans.add(key)
      if (f.value === undefined || f.negatable) negatable.add(key)
      if (f.repeatable) repeatable.add(key)
    }
  }
  const check = (key: string) => {
    if (known !== undefined && !known.has(key)) throw unknownFlag(key, known)
  }
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
      const negated =
        eq < 0 && name.startsWith('no') && name.length > 2 && /[A-Z]/.test(name[2] as string)
          ? `${(name[2] as string).toLowerCase()}${name.slice(3)}`
          : undefined
      if (negated !== undefined && !known?.has(name)) {
        // --no-x: x must be a known boolean flag (with a table); without one, any x.
        if (known !== undefined && !negatable.has(negated)) throw unknownFlag(name, known)
        set(negated, false)
        continue
      }
      check(name)
      if (eq >= 0) {
        if (known !== undefined && booleans.has(name))
          throw new QmqError('QMQ_ERR_USAGE', `--${kebabCase(name)} takes no value`)
        set(name, arg.slice(eq + 1))
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
