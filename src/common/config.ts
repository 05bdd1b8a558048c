import { QmqError } from './errors'

/**
 * Option resolution shared by every service and client.
 *
 * A component declares a schema (one `OptionSpec` per key, with its default and units in the key
 * name: `segmentBytes`, `leaseMs`), then `resolveOptions()`:
 * - rejects unknown keys, with a hint for renamed keys and near-misses,
 * - checks every value and reports every problem at once, with the key, the rule and the value,
 * - fills in defaults and returns a frozen object.
 * Values that come as strings (environment variables, CLI flags, config files) go through
 * `parseOptionStrings()` first, which uses each spec's `parse`.
 */
export interface OptionSpec<V> {
  readonly default: V
  readonly doc: string
  /** Returns a description of the problem, or undefined when the value is acceptable. */
  readonly check: (value: unknown) => string | undefined
  /** Turns a string from the environment, a flag or a file into a value (checked afterwards). */
  readonly parse: (raw: string) => unknown
}

export type OptionsSchema<T> = { readonly [K in keyof T]-?: OptionSpec<T[K]> }

function describe(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value)
  if (typeof value === 'number' || typeof value === 'boolean' || value === null) return String(value)
  if (value === undefined) return 'undefined'
  if (Array.isArray(value)) return 'an array'
  return `a ${typeof value}`
}

const parseNumber = (raw: string): unknown => {
  const trimmed = raw.trim()
  if (trimmed === '') return raw
  const n = Number(trimmed.replaceAll('_', ''))
  return Number.isNaN(n) ? raw : n
}

export function integer(opts: {
  default: number
  min?: number
  max?: number
  doc: string
}): OptionSpec<number> {
  const { min = Number.MIN_SAFE_INTEGER, max = Number.MAX_SAFE_INTEGER } = opts
  return {
    default: opts.default,
    doc: opts.doc,
    parse: parseNumber,
    check: (v) =>
      typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max
        ? `must be an integer from ${min} to ${max} (got ${describe(v)})`
        : undefined,
  }
}

export function number(opts: {
  default: number
  min?: number
  max?: number
  doc: string
}): OptionSpec<number> {
  const { min = -Number.MAX_VALUE, max = Number.MAX_VALUE } = opts
  return {
    default: opts.default,
    doc: opts.doc,
    parse: parseNumber,
    check: (v) =>
      typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max
        ? `must be a number from ${min} to ${max} (got ${describe(v)})`
        : undefined,
  }
}

export function boolean(opts: { default: boolean; doc: string }): OptionSpec<boolean> {
  return {
    default: opts.default,
    doc: opts.doc,
    parse: (raw) => {
      const s = raw.trim().toLowerCase()
      if (s === 'true' || s === '1' || s === 'yes') return true
      if (s === 'false' || s === '0' || s === 'no') return false
      return raw
    },
    check: (v) => (typeof v !== 'boolean' ? `must be true or false (got ${describe(v)})` : undefined),
  }
}

export function string(opts: {
  default: string
  doc: string
  pattern?: RegExp
  minLength?: number
}): OptionSpec<string> {
  const minLength = opts.minLength ?? 0
  return {
    default: opts.default,
    doc: opts.doc,
    parse: (raw) => raw,
    check: (v) => {
      if (typeof v !== 'string') return `must be a string (got ${describe(v)})`
      if (v.length < minLength) return `must be at least ${minLength} characters (got ${describe(v)})`
      if (opts.pattern && !opts.pattern.test(v)) return `must match ${opts.pattern} (got ${describe(v)})`
      return undefined
    },
  }
}

export function optionalString(opts: { doc: string; pattern?: RegExp }): OptionSpec<string | undefined> {
  return {
    default: undefined,
    doc: opts.doc,
    parse: (raw) => raw,
    check: (v) => {
      if (v === undefined) return undefined
      if (typeof v !== 'string' || v.length === 0) return `must be a non-empty string (got ${describe(v)})`
      if (opts.pattern && !opts.pattern.test(v)) return `must match ${opts.pattern} (got ${describe(v)})`
      return undefined
    },
  }
}

/** Cluster secrets: visible ASCII without spaces (it travels in an HTTP header), bounded length. */
export const SECRET_MIN_LENGTH = 16
export const SECRET_MAX_LENGTH = 1024
const SECRET_CHARS = /^[\x21-\x7e]*$/

/**
 * An optional secret (the cluster secret). Its problems never quote the value: option errors are
 * printed and logged, secrets must not be.
 */
export function optionalSecret(opts: { doc: string }): OptionSpec<string | undefined> {
  return {
    default: undefined,
    doc: opts.doc,
    parse: (raw) => raw,
    check: (v) => {
      if (v === undefined) return undefined
      if (typeof v !== 'string') return `must be a string (got ${v === null ? 'null' : `a ${typeof v}`})`
      if (v.length < SECRET_MIN_LENGTH || v.length > SECRET_MAX_LENGTH || !SECRET_CHARS.test(v))
        return `must be ${SECRET_MIN_LENGTH} to ${SECRET_MAX_LENGTH} visible ASCII characters without spaces (got ${v.length} characters; the value is not shown)`
      return undefined
    },
  }
}

export function oneOf<const V extends string>(opts: {
  default: V
  values: readonly V[]
  doc: string
}): OptionSpec<V> {
  return {
    default: opts.default,
    doc: opts.doc,
    parse: (raw) => raw,
    check: (v) =>
      typeof v !== 'string' || !(opts.values as readonly string[]).includes(v)
        ? `must be one of ${opts.values.map((x) => `'${x}'`).join(', ')} (got ${describe(v)})`
        : undefined,
  }
}

export function stringList(opts: { default: readonly string[]; doc: string }): OptionSpec<readonly string[]> {
  return {
    default: opts.default,
    doc: opts.doc,
    parse: (raw) =>
      raw
        .split(',')
        .map((s) => s.trim())
        .filter((s) => s.length > 0),
    check: (v) =>
      !Array.isArray(v) || v.some((x) => typeof x !== 'string')
        ? `must be a list of strings (got ${describe(v)})`
        : undefined,
  }
}

export function editDistance(a: string, b: string): number {
  const al = a.toLowerCase()
  const bl = b.toLowerCase()
  let prev = Array.from({ length: bl.length + 1 }, (_, i) => i)
  for (let i = 1; i <= al.length; i++) {
    const cur = [i]
    for (let j = 1; j <= bl.length; j++) {
      const cost = al[i - 1] === bl[j - 1] ? 0 : 1
      cur[j] = Math.min((prev[j] ?? 0) + 1, (cur[j - 1] ?? 0) + 1, (prev[j - 1] ?? 0) + cost)
    }
    prev = cur
  }
  return prev[bl.length] ?? 0
}

export interface ResolveOptionsExtra {
  /** Old key -> hint shown when someone still passes it ("renamed to leaseMs"). */
  readonly renamed?: Readonly<Record<string, string>>
}

/**
 * Validates `input` against `schema`, fills defaults and freezes the result.
 * Throws QMQ_ERR_CONFIG_INVALID listing every problem (details.problems holds them as an array).
 */
export function resolveOptions<T>(
  component: string,
  schema: OptionsSchema<T>,
  input: unknown = {},
  extra: ResolveOptionsExtra = {},
): Readonly<T> {
  const problems: string[] = []
  if (input === null || typeof input !== 'object' || Array.isArray(input)) {
    throw new QmqError(
      'QMQ_ERR_CONFIG_INVALID',
      `${component} options must be an object (got ${describe(input)})`,
      {
        details: { problems: ['options must be an object'] },
      },
    )
  }
  const given = input as Record<string, unknown>
  const known = Object.keys(schema)
  for (const key of Object.keys(given)) {
    if (Object.hasOwn(schema, key)) continue
    const renamed = extra.renamed?.[key]
    if (renamed !== undefined) {
      problems.push(`${key}: no longer supported; ${renamed}`)
      continue
    }
    const near = known.filter((k) => editDistance(k, key) <= Math.max(2, Math.floor(key.length / 4)))
    problems.push(`${key}: unknown option${near.length > 0 ? ` (did you mean ${near.join(' or ')}?)` : ''}`)
  }
  const out: Record<string, unknown> = {}
  for (const key of known) {
    const spec = (schema as Record<string, OptionSpec<unknown>>)[key]
    if (spec === undefined) continue
    const value = given[key]
    if (value === undefined) {
      out[key] = Array.isArray(spec.default) ? Object.freeze([...spec.default]) : spec.default
      continue
    }
    const problem = spec.check(value)
    if (problem !== undefined) problems.push(`${key}: ${problem}`)
    else out[key] = Array.isArray(value) ? Object.freeze([...value]) : value
  }
  if (problems.length > 0) {
    throw new QmqError(
      'QMQ_ERR_CONFIG_INVALID',
      `Invalid ${component} options:\n  - ${problems.join('\n  - ')}`,
      {
        details: { problems },
      },
    )
  }
  return Object.freeze(out) as Readonly<T>
}

/** `segmentBytes` -> `SEGMENT_BYTES`. */
export function envName(prefix: string, key: string): string {
  return `${prefix}${key.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase()}`
}

/**
 * Reads `PREFIX_KEY_NAME` environment variables for every key of the schema and parses them.
 * Values are not checked here: pass the result to resolveOptions(), which reports bad ones.
 */
export function optionsFromEnv<T>(
  schema: OptionsSchema<T>,
  prefix: string,
  env: NodeJS.ProcessEnv = process.env,
): Partial<Record<keyof T, unknown>> {
  const out: Partial<Record<keyof T, unknown>> = {}
  for (const key of Object.keys(schema) as (keyof T & string)[]) {
    const raw = env[envName(prefix, key)]
    if (raw === undefined) continue
    out[key] = schema[key].parse(raw)
  }
  return out
}

/** Parses string values (from flags or a config file of strings) with each key's parser; unknown keys pass through. */
export function parseOptionStrings<T>(
  schema: OptionsSchema<T>,
  raw: Record<string, unknown>,
): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  for (const [key, value] of Object.entries(raw)) {
    const spec = (schema as Record<string, OptionSpec<unknown>>)[key]
    out[key] = spec !== undefined && typeof value === 'string' ? spec.parse(value) : value
  }
  return out
}
