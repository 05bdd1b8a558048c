import { closeSync, fstatSync, openSync, readFileSync, readSync } from 'node:fs'
import {
  envName,
  type OptionSpec,
  type OptionsSchema,
  optionsFromEnv,
  parseOptionStrings,
  resolveOptions,
} from '../common/config'
import { QmqError } from '../common/errors'
import { CLUSTER_SECRET_ENV } from '../common/token'
import { kebabCase, type ParsedArgs } from './args'

/**
 * Options that hold secrets. A command line is visible to every user of the machine (`ps`), so these
 * are never taken from a flag: they come from an environment variable shared by every service, or
 * from a file named by a flag (a Kubernetes or Compose secret mounted as a file), or from the JSON
 * config file. Their problems are reported without their value.
 */
export const SECRET_OPTIONS: Readonly<Record<string, { env: string; fileFlag: string }>> = {
  clusterSecret: { env: CLUSTER_SECRET_ENV, fileFlag: 'clusterSecretFile' },
}
const MAX_SECRET_FILE_BYTES = 4096

/**
 * Options that hold a token and still have their old plain flag (it shows in `ps`: discouraged, kept
 * working), plus a flag naming a file that holds the value. Both given is a usage error.
 */
export const FILE_FLAG_OPTIONS: Readonly<Record<string, string>> = {
  adminToken: 'adminTokenFile',
  store: 'storeFile',
}

/** The secret in `path`, without the trailing newline an editor or `echo` leaves. */
export function readSecretFile(flag: string, path: unknown): string {
  if (typeof path !== 'string' || path === '')
    throw new QmqError('QMQ_ERR_USAGE', `${flag} needs a file path`)
  let fd: number | undefined
  try {
    fd = openSync(path, 'r')
    const size = fstatSync(fd).size
    if (size > MAX_SECRET_FILE_BYTES)
      throw new QmqError(
        'QMQ_ERR_CONFIG_INVALID',
        `${flag} ${path}: ${size} bytes; a secret file holds at most ${MAX_SECRET_FILE_BYTES}`,
      )
    const buf = Buffer.alloc(size)
    const n = readSync(fd, buf, 0, size, 0)
    const secret = buf.toString('utf8', 0, n).replace(/[\r\n]+$/, '')
    if (secret === '') throw new QmqError('QMQ_ERR_CONFIG_INVALID', `${flag} ${path}: the file is empty`)
    return secret
  } catch (err) {
    if (err instanceof QmqError) throw err
    throw new QmqError('QMQ_ERR_CONFIG_INVALID', `${flag} ${path}: cannot read it: ${(err as Error).message}`)
  } finally {
    if (fd !== undefined) closeSync(fd)
  }
}

/** Secret options of `schema`, from their file flag or their environment variable (file wins). */
function secretsOf<T>(
  schema: OptionsSchema<T>,
  flags: Record<string, unknown>,
  env: NodeJS.ProcessEnv,
): Record<string, string> {
  const out: Record<string, string> = {}
  for (const [key, fileFlag] of Object.entries(FILE_FLAG_OPTIONS)) {
    if (!Object.hasOwn(schema, key) || flags[fileFlag] === undefined) continue
    const flag = `--${kebabCase(fileFlag)}`
    if (flags[key] !== undefined)
      throw new QmqError('QMQ_ERR_USAGE', `give --${kebabCase(key)} and ${flag} not both (prefer ${flag})`)
    out[key] = readSecretFile(flag, flags[fileFlag])
  }
  for (const [key, where] of Object.entries(SECRET_OPTIONS)) {
    if (!Object.hasOwn(schema, key)) continue
    const fileFlag = `--${kebabCase(where.fileFlag)}`
    if (flags[key] !== undefined) {
      throw new QmqError(
        'QMQ_ERR_USAGE',
        `--${kebabCase(key)} is not accepted: every user of the machine can read a command line (ps); set ${where.env} or use ${fileFlag} FILE`,
      )
    }
    if (flags[where.fileFlag] !== undefined) out[key] = readSecretFile(fileFlag, flags[where.fileFlag])
    else {
      const value = env[where.env]
      if (value !== undefined && value !== '') out[key] = value
    }
  }
  return out
}

/**
 * Resolves a service's options from, in order of precedence: command-line flags, environment
 * variables (`<PREFIX><KEY_IN_SNAKE_CASE>`), a JSON config file (`--config FILE`, keys as in the
 * schema) and the schema defaults. Every source is validated by the one schema, and problems are
 * reported with the flag spelling the user typed.
 */
export function resolveServiceOptions<T>(
  service: string,
  schema: OptionsSchema<T>,
  flags: ParsedArgs['flags'],
  envPrefix: string,
  env: NodeJS.ProcessEnv = process.env,
): Readonly<T> {
  const { config, help: _help, json: _json, ...rest } = flags
  let fromFile: Record<string, unknown> = {}
  if (config !== undefined) {
    if (typeof config !== 'string') throw new QmqError('QMQ_ERR_USAGE', '--config needs a file path')
    let text: string
    try {
      text = readFileSync(config, 'utf8')
    } catch (err) {
      throw new QmqError(
        'QMQ_ERR_CONFIG_INVALID',
        `cannot read config file ${config}: ${(err as Error).message}`,
      )
    }
    try {
      const parsed: unknown = JSON.parse(text)
      if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed))
        throw new Error('not an object')
      fromFile = parseOptionStrings(schema, parsed as Record<string, unknown>)
    } catch (err) {
      throw new QmqError(
        'QMQ_ERR_CONFIG_INVALID',
        `config file ${config} is not a JSON object: ${(err as Error).message}`,
      )
    }
  }
  const fromSecrets = secretsOf(schema, rest, env)
  const fromEnv = optionsFromEnv(schema, envPrefix, env)
  const fromFlags = parseOptionStrings(schema, rest as Record<string, unknown>)
  for (const [key, where] of Object.entries(SECRET_OPTIONS)) {
    // Only the shared variable and the file flag carry a secret (not QMQ_<SERVICE>_<KEY>).
    delete (fromEnv as Record<string, unknown>)[key]
    delete fromFlags[where.fileFlag]
  }
  for (const [key, fileFlag] of Object.entries(FILE_FLAG_OPTIONS)) {
    if (Object.hasOwn(schema, key)) delete fromFlags[fileFlag]
  }
  try {
    return resolveOptions(service, schema, { ...fromFile, ...fromEnv, ...fromFlags, ...fromSecrets })
  } catch (err) {
    if (err instanceof QmqError && err.code === 'QMQ_ERR_CONFIG_INVALID') {
      // Say it with the spellings of the command line.
      const problems = ((err.details?.problems as string[] | undefined) ?? []).map((p) =>
        p
          .replace(/^([a-zA-Z0-9]+):/, (m, key: string) => {
            const secret = SECRET_OPTIONS[key]
            return secret === undefined ? m : `${key} (${secret.env} or --${kebabCase(secret.fileFlag)}):`
          })
          .replace(
            /^([a-zA-Z0-9]+):/,
            (_m, key: string) => `--${kebabCase(key)} (${envName(envPrefix, key)}):`,
          )
          .replace(
            /did you mean ([a-zA-Z0-9 ]+)\?/,
            (_m, keys: string) =>
              `did you mean ${keys
                .split(' or ')
                .map((k) => `--${kebabCase(k)}`)
                .join(' or ')}?`,
          ),
      )
      throw new QmqError(
        'QMQ_ERR_CONFIG_INVALID',
        `Invalid ${service} options:\n  - ${problems.join('\n  - ')}`,
        {
          details: { problems },
        },
      )
    }
    throw err
  }
}

/** Help lines for every option of a schema: flag, default, description, environment variable. */
export function optionsHelp<T>(schema: OptionsSchema<T>, envPrefix: string): string {
  const rows = (Object.entries(schema) as [string, OptionSpec<unknown>][]).flatMap(([key, spec]) => {
    const secret = SECRET_OPTIONS[key]
    if (secret !== undefined)
      return [[`  --${kebabCase(secret.fileFlag)} FILE`, `${spec.doc}  [${secret.env}]`] as const]
    const fileFlag = FILE_FLAG_OPTIONS[key]
    const fileRow =
      fileFlag === undefined
        ? []
        : [
            [
              `  --${kebabCase(fileFlag)} FILE`,
              `the same, read from FILE (preferred: a flag shows in ps)`,
            ] as const,
          ]
    const def = spec.default
    const shown =
      def === undefined
        ? ''
        : Array.isArray(def)
          ? def.length
            ? ` (default: ${def.join(',')})`
            : ''
          : ` (default: ${String(def)})`
    return [
      [`  --${kebabCase(key)}`, `${spec.doc}${shown}  [${envName(envPrefix, key)}]`] as const,
      ...fileRow,
    ]
  })
  const width = Math.max(...rows.map(([f]) => f.length)) + 2
  return rows.map(([f, d]) => `${f.padEnd(width)}${d}`).join('\n')
}
