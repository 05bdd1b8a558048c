import t from 'tap'
import {
  boolean,
  envName,
  integer,
  type OptionsSchema,
  oneOf,
  optionalString,
  optionsFromEnv,
  parseOptionStrings,
  resolveOptions,
  stringList,
} from '../../src/common/config'
import { QmqError } from '../../src/common/errors'

interface Opts {
  segmentBytes: number
  leaseMs: number
  flush: 'sync' | 'async'
  verbose: boolean
  metaserver: string | undefined
  tags: readonly string[]
}

const schema: OptionsSchema<Opts> = {
  segmentBytes: integer({ default: 64 * 1024 * 1024, min: 4096, doc: 'segment size' }),
  leaseMs: integer({ default: 30_000, min: 1, doc: 'lease' }),
  flush: oneOf({ default: 'sync', values: ['sync', 'async'] as const, doc: 'flush policy' }),
  verbose: boolean({ default: false, doc: 'verbose' }),
  metaserver: optionalString({ doc: 'metaserver URL', pattern: /^https?:\/\// }),
  tags: stringList({ default: [], doc: 'tags' }),
}

t.test('config - defaults are filled in and the result is frozen', async (t) => {
  const o = resolveOptions('broker', schema, { leaseMs: 5 })
  t.equal(o.segmentBytes, 64 * 1024 * 1024)
  t.equal(o.leaseMs, 5)
  t.equal(o.flush, 'sync')
  t.equal(o.metaserver, undefined)
  t.ok(Object.isFrozen(o))
  t.ok(Object.isFrozen(o.tags))
  t.throws(() => {
    ;(o as { leaseMs: number }).leaseMs = 1
  })
})

t.test('config - every problem is reported at once, with key, rule and value', async (t) => {
  const err = t.throws(() =>
    resolveOptions('broker', schema, {
      segmentBytes: 10,
      flush: 'never',
      leaseMs: 1.5,
      verbose: 'yes',
      segmentByte: 1,
    }),
  ) as QmqError
  t.ok(err instanceof QmqError)
  t.equal(err.code, 'QMQ_ERR_CONFIG_INVALID')
  const problems = err.details?.problems as string[]
  t.equal(problems.length, 5)
  t.match(err.message, /segmentBytes: must be an integer from 4096/)
  t.match(err.message, /flush: must be one of 'sync', 'async' \(got "never"\)/)
  t.match(err.message, /leaseMs: must be an integer/)
  t.match(err.message, /verbose: must be true or false \(got "yes"\)/)
  t.match(err.message, /segmentByte: unknown option \(did you mean segmentBytes\?\)/)
})

t.test('config - renamed keys get a hint; non-objects are refused', async (t) => {
  const err = t.throws(() =>
    resolveOptions('broker', schema, { lease: 10 }, { renamed: { lease: 'renamed to leaseMs' } }),
  )
  t.match((err as Error).message, /lease: no longer supported; renamed to leaseMs/)
  t.throws(() => resolveOptions('broker', schema, 'x'), { code: 'QMQ_ERR_CONFIG_INVALID' })
  t.throws(() => resolveOptions('broker', schema, [1]), { code: 'QMQ_ERR_CONFIG_INVALID' })
  t.throws(() => resolveOptions('broker', schema, { metaserver: 'ftp://x' }), {
    code: 'QMQ_ERR_CONFIG_INVALID',
  })
})

t.test('config - environment variables are parsed by each key type', async (t) => {
  t.equal(envName('QMQ_BROKER_', 'segmentBytes'), 'QMQ_BROKER_SEGMENT_BYTES')
  const env = {
    QMQ_BROKER_SEGMENT_BYTES: '1_048_576',
    QMQ_BROKER_VERBOSE: 'yes',
    QMQ_BROKER_TAGS: 'a, b,,c',
    QMQ_BROKER_LEASE_MS: 'abc',
  }
  const raw = optionsFromEnv(schema, 'QMQ_BROKER_', env)
  t.same(raw, { segmentBytes: 1048576, verbose: true, tags: ['a', 'b', 'c'], leaseMs: 'abc' })
  t.throws(() => resolveOptions('broker', schema, raw), /leaseMs: must be an integer .* \(got "abc"\)/)
  t.same(parseOptionStrings(schema, { leaseMs: '7', other: 'x' }), { leaseMs: 7, other: 'x' })
})
