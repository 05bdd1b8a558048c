import { envName, type OptionSpec, type OptionsSchema } from '../../common/config'
import { QmqError } from '../../common/errors'
import { createLogger } from '../../common/logger'
import { type FlagSpec, kebabCase, parseArgs } from '../args'
import { FILE_FLAG_OPTIONS, optionsHelp, resolveServiceOptions, SECRET_OPTIONS } from '../service-options'
import type { Command } from './command'

/**
 * `qmq metaserver|broker|delay`: start one service in the foreground until SIGINT/SIGTERM, then close
 * it cleanly (answers in flight, flushes, checkpoints). Options come from flags, environment, a JSON
 * config file and defaults (see service-options.ts). The modules are loaded lazily so that
 * `qmq --help` and the admin commands start fast.
 */
interface Service {
  start(): Promise<unknown>
  close(): Promise<void>
}

interface ServiceSpec<T> {
  name: string
  summary: string
  envPrefix: string
  schema: () => OptionsSchema<T>
  create: (options: Readonly<T>) => Service
  describe: (service: Service) => Record<string, unknown>
}

/**
 * The flag table of a service: one flag per schema option, the file flag of each secret option (the
 * secret's own flag is in the table only to be refused with a hint), plus --config and --json.
 */
function serviceFlags<T>(schema: OptionsSchema<T>): FlagSpec[] {
  return [
    ...Object.entries(SECRET_OPTIONS)
      .filter(([key]) => Object.hasOwn(schema, key))
      .map(([key, where]) => ({
        name: kebabCase(where.fileFlag),
        value: 'FILE',
        doc: `file holding the ${kebabCase(key)} (or ${where.env})`,
      })),
    ...Object.entries(FILE_FLAG_OPTIONS)
      .filter(([key]) => Object.hasOwn(schema, key))
      .map(([key, fileFlag]) => ({
        name: kebabCase(fileFlag),
        value: 'FILE',
        doc: `file holding the ${kebabCase(key)} (instead of --${kebabCase(key)}, which ps shows)`,
      })),
    ...(Object.entries(schema) as [string, OptionSpec<unknown>][]).map(([key, o]) => ({
      name: kebabCase(key),
      value: 'VALUE',
      negatable: typeof o.default === 'boolean',
      doc: o.doc,
    })),
    { name: 'config', value: 'FILE', doc: 'JSON object of options' },
    { name: 'json', doc: '(accepted, no effect)' },
  ]
}

function serviceCommand<T>(spec: ServiceSpec<T>): Command {
  return {
    // Secrets have no QMQ_<SERVICE>_ variable (only the shared one, in main.ts's GLOBAL_ENV): not listed.
    envNames: () =>
      Object.keys(spec.schema())
        .filter((key) => !Object.hasOwn(SECRET_OPTIONS, key))
        .map((key) => envName(spec.envPrefix, key)),
    name: spec.name,
    summary: spec.summary,
    help: () =>
      `Usage: qmq ${spec.name} [options]\n\n${spec.summary}.\n\nOptions (flag, environment variable, or key of a JSON file given with --config FILE):\n${optionsHelp(spec.schema(), spec.envPrefix)}\n  --config FILE    JSON object of options; flags and environment win over it`,
    run: async (argv) => {
      const { flags, positionals } = parseArgs(argv, { flags: serviceFlags(spec.schema()) })
      if (positionals.length > 0)
        throw new QmqError(
          'QMQ_ERR_USAGE',
          `qmq ${spec.name} takes no arguments (got ${positionals.join(' ')})`,
        )
      const options = resolveServiceOptions(spec.name, spec.schema(), flags, spec.envPrefix)
      const service = spec.create(options)
      const log = createLogger().child({ service: spec.name })
      await service.start()
      log.info(spec.describe(service), `${spec.name} started`)
      await new Promise<void>((resolve) => {
        let closing = false
        const stop = (signal: string) => {
          // The parent going away while we already close cleanly (it signalled us, then exited) is no
          // reason to cut the close short; a second signal is.
          if (closing && signal === 'parent exited') return
          if (closing) {
            log.warn({ signal }, 'second signal: exiting without a clean close')
            process.exit(1)
          }
          closing = true
          log.info({ signal }, `${spec.name} closing`)
          service.close().then(
            () => resolve(),
            (err: unknown) => {
              log.error(err as Error, 'close failed')
              process.exitCode = 1
              resolve()
            },
          )
        }
        process.on('SIGINT', () => stop('SIGINT'))
        process.on('SIGTERM', () => stop('SIGTERM'))
        // Started by `qmq dev` with an IPC channel: close when the parent goes away.
        if (process.channel) {
          process.channel.unref()
          process.once('disconnect', () => stop('parent exited'))
        }
      })
      log.info(`${spec.name} stopped`)
      return 0
    },
  }
}

export const metaserverCommand = serviceCommand({
  name: 'metaserver',
  summary: 'Start a metaserver: HTTP discovery, registration and liveness of groups, subject placement',
  envPrefix: 'QMQ_METASERVER_',
  schema: () => require('../../metaserver/options').metaserverOptionsSchema,
  create: (options) => {
    const { Metaserver } = require('../../metaserver/main') as typeof import('../../metaserver/main')
    return new Metaserver(options)
  },
  describe: (s) => {
    const m = s as import('../../metaserver/main').Metaserver
    const { redactUrl } =
      require('../../metaserver/postgres-store') as typeof import('../../metaserver/postgres-store')
    const store = m.options.store
    return {
      url: m.url,
      metaAddress: `${m.url}/meta/address`,
      ...(store === undefined || store === '' ? { dataDir: m.options.dataDir } : { store: redactUrl(store) }),
    }
  },
})

export const brokerCommand = serviceCommand({
  name: 'broker',
  summary: 'Start a broker (the master of a broker group): real-time messages over TCP',
  envPrefix: 'QMQ_BROKER_',
  schema: () => (require('../../broker/broker') as typeof import('../../broker/broker')).brokerOptionsSchema,
  create: (options) => {
    const { Broker } = require('../../broker/broker') as typeof import('../../broker/broker')
    return new Broker(options)
  },
  describe: (s) => {
    const b = s as import('../../broker/broker').Broker
    return { group: b.options.group, ...b.addresses, dataDir: b.options.dataDir }
  },
})

export const delayCommand = serviceCommand({
  name: 'delay',
  summary: 'Start a delay server (the master of a delay group): messages due up to 2 years ahead',
  envPrefix: 'QMQ_DELAY_',
  schema: () => (require('../../delay/options') as typeof import('../../delay/options')).delayOptionsSchema,
  create: (options) => {
    const { DelayServer } = require('../../delay/delay-server') as typeof import('../../delay/delay-server')
    return new DelayServer(options)
  },
  describe: (s) => {
    const d = s as import('../../delay/delay-server').DelayServer
    return { group: d.options.group, address: d.address, httpPort: d.httpPort, dataDir: d.options.dataDir }
  },
})
