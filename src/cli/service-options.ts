import { readFileSync } from 'node:fs'
import {
  envName,
  type OptionSpec,
  type OptionsSchema,
  optionsFromEnv,
  parseOptionStrings,
  resolveOptions,
} from '../common/config'
import { QmqError } from '../common/errors'
import { kebabCase, type ParsedArgs } from './args'

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
  const fromEnv = optionsFromEnv(schema, envPrefix, env)
  const fromFlags = parseOptionStrings(schema, rest as Record<string, unknown>)
  try {
    return resolveOptions(service, schema, { ...fromFile, ...fromEnv, ...fromFlags })
  } catch (err) {
    if (err instanceof QmqError && err.code === 'QMQ_ERR_CONFIG_INVALID') {
      // Say it with the spellings of the command line.
      const problems = ((err.details?.problems as string[] | undefined) ?? []).map((p) =>
        p
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
  const rows = (Object.entries(schema) as [string, OptionSpec<unknown>][]).map(([key, spec]) => {
    const def = spec.default
    const shown =
      def === undefined
        ? ''
        : Array.isArray(def)
          ? def.length
            ? ` (default: ${def.join(',')})`
            : ''
          : ` (default: ${String(def)})`
    return [`  --${kebabCase(key)}`, `${spec.doc}${shown}  [${envName(envPrefix, key)}]`] as const
  })
  const width = Math.max(...rows.map(([f]) => f.length)) + 2
  return rows.map(([f, d]) => `${f.padEnd(width)}${d}`).join('\n')
}
