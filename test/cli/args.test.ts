import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { integer, type OptionsSchema, oneOf, optionalString } from '../../src/common/config'
import type { QmqError } from '../../src/common/errors'
import { camelCase, kebabCase, listFlag, parseArgs } from '../../src/cli/args'
import { optionsHelp, resolveServiceOptions } from '../../src/cli/service-options'
import { parseDuration, table } from '../../src/cli/table'

t.test('cli args - flags in every spelling, positionals, repeatable flags and --', async (t) => {
  const a = parseArgs(
    [
      'send',
      'order.created',
      '--data-dir',
      '/d',
      '--port=9',
      '--json',
      '--no-fsync',
      '--property',
      'a=1',
      '--property',
      'b=2',
      '--',
      '--not-a-flag',
    ],
    {
      repeatable: ['property'],
    },
  )
  t.same(a.positionals, ['send', 'order.created', '--not-a-flag'])
  t.same(a.flags, { dataDir: '/d', port: '9', json: true, fsync: false, property: ['a=1', 'b=2'] })
  t.same(listFlag(a.flags, 'property'), ['a=1', 'b=2'])
  t.equal(camelCase('heartbeat-timeout-ms'), 'heartbeatTimeoutMs')
  t.equal(kebabCase('heartbeatTimeoutMs'), 'heartbeat-timeout-ms')
  t.same(parseArgs(['-h']).flags, { help: true })
})

t.test('cli args - a flag without its value is a usage error', async (t) => {
  t.throws(() => parseArgs(['--port']), { code: 'QMQ_ERR_USAGE' })
  t.throws(() => parseArgs(['--port', '--json']), { code: 'QMQ_ERR_USAGE' })
  t.throws(() => parseArgs(['-x']), { code: 'QMQ_ERR_USAGE' })
})

interface Opts {
  port: number
  dataDir: string | undefined
  flush: 'sync' | 'async'
}
const schema: OptionsSchema<Opts> = {
  port: integer({ default: 20881, min: 0, max: 65535, doc: 'TCP port' }),
  dataDir: optionalString({ doc: 'data directory' }),
  flush: oneOf({ default: 'sync', values: ['sync', 'async'] as const, doc: 'flush policy' }),
}

t.test('cli options - flags beat environment beat config file beat defaults', async (t) => {
  const dir = t.testdir()
  const file = join(dir, 'broker.json')
  writeFileSync(file, JSON.stringify({ port: 1, dataDir: '/from-file', flush: 'async' }))
  const env = { QMQ_BROKER_PORT: '2', QMQ_BROKER_DATA_DIR: '/from-env' }
  const o = resolveServiceOptions('broker', schema, { config: file, port: '3' }, 'QMQ_BROKER_', env)
  t.same({ ...o }, { port: 3, dataDir: '/from-env', flush: 'async' })
  const d = resolveServiceOptions('broker', schema, {}, 'QMQ_BROKER_', {})
  t.same({ ...d }, { port: 20881, dataDir: undefined, flush: 'sync' })
})

t.test('cli options - problems are reported with the flag and environment spellings', async (t) => {
  const err = t.throws(() =>
    resolveServiceOptions('broker', schema, { port: 'x', dataDr: '/d' }, 'QMQ_BROKER_', {
      QMQ_BROKER_FLUSH: 'never',
    }),
  ) as QmqError
  t.equal(err.code, 'QMQ_ERR_CONFIG_INVALID')
  t.match(err.message, /--port \(QMQ_BROKER_PORT\): must be an integer/)
  t.match(err.message, /--flush \(QMQ_BROKER_FLUSH\): must be one of 'sync', 'async' \(got "never"\)/)
  t.match(err.message, /--data-dr \(QMQ_BROKER_DATA_DR\): unknown option \(did you mean --data-dir\?\)/)
  const dir = t.testdir({ 'bad.json': '[1,2]' })
  t.throws(
    () => resolveServiceOptions('broker', schema, { config: join(dir, 'bad.json') }, 'QMQ_BROKER_', {}),
    {
      code: 'QMQ_ERR_CONFIG_INVALID',
      message: /is not a JSON object/,
    },
  )
  t.throws(
    () => resolveServiceOptions('broker', schema, { config: join(dir, 'missing.json') }, 'QMQ_BROKER_', {}),
    {
      code: 'QMQ_ERR_CONFIG_INVALID',
      message: /cannot read config file/,
    },
  )
})

t.test('cli options - help lists every option with its default and environment variable', async (t) => {
  const help = optionsHelp(schema, 'QMQ_BROKER_')
  t.match(help, /--port\s+TCP port \(default: 20881\)\s+\[QMQ_BROKER_PORT\]/)
  t.match(help, /--data-dir\s+data directory\s+\[QMQ_BROKER_DATA_DIR\]/)
})

t.test('cli table and durations', async (t) => {
  t.equal(
    table(
      ['A', 'N'],
      [
        ['x', 5],
        ['yy', 10],
      ],
    ),
    'A    N\n--  --\nx    5\nyy  10',
  )
  t.equal(table(['A'], [], '(none)'), '(none)')
  t.equal(parseDuration('30s'), 30_000)
  t.equal(parseDuration('1.5m'), 90_000)
  t.equal(parseDuration('250'), 250)
  t.equal(parseDuration('2h'), 7_200_000)
  t.equal(parseDuration('soon'), undefined)
})
