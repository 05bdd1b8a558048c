import { spawnSync } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { brokerOptionsSchema } from '../../src/broker/broker'
import { QMQ_BIN } from '../../src/cli/child-service'
import { optionsHelp, resolveServiceOptions } from '../../src/cli/service-options'
import type { OptionsSchema } from '../../src/common/config'
import { delayOptionsSchema } from '../../src/delay/options'
import { metaserverOptionsSchema } from '../../src/metaserver/options'

// The cluster secret of `qmq metaserver|broker|delay`: never a flag (ps shows command lines), from
// QMQ_CLUSTER_SECRET or a file; problems never show the value.

const SECRET = 'cli-cluster-secret-0123456789'
type AnySchema = OptionsSchema<Record<string, unknown>>
const services: [string, AnySchema, string][] = [
  ['metaserver', metaserverOptionsSchema as unknown as AnySchema, 'QMQ_METASERVER_'],
  ['broker', brokerOptionsSchema as unknown as AnySchema, 'QMQ_BROKER_'],
  ['delay', delayOptionsSchema as unknown as AnySchema, 'QMQ_DELAY_'],
]

t.test(
  'service options - the cluster secret comes from QMQ_CLUSTER_SECRET or --cluster-secret-file',
  async (t) => {
    const dir = t.testdir()
    const file = join(dir, 'secret')
    writeFileSync(file, `${SECRET}-file\n`)
    for (const [name, schema, prefix] of services) {
      const resolve = (flags: Record<string, string>, env: NodeJS.ProcessEnv) =>
        resolveServiceOptions(name, schema, flags, prefix, env) as { clusterSecret?: string }
      t.equal(
        resolve({}, { QMQ_CLUSTER_SECRET: SECRET }).clusterSecret,
        SECRET,
        `${name}: from the environment`,
      )
      t.equal(
        resolve({ clusterSecretFile: file }, { QMQ_CLUSTER_SECRET: SECRET }).clusterSecret,
        `${SECRET}-file`,
        `${name}: the file wins, without its trailing newline`,
      )
      t.equal(
        resolve({}, { [`${prefix}CLUSTER_SECRET`]: SECRET }).clusterSecret,
        undefined,
        `${name}: only the shared variable is read`,
      )
      t.throws(() => resolve({ clusterSecret: SECRET }, {}), {
        code: 'QMQ_ERR_USAGE',
        message: /--cluster-secret is not accepted.*\(ps\).*QMQ_CLUSTER_SECRET.*--cluster-secret-file/,
      })
      t.throws(() => resolve({ clusterSecretFile: join(dir, 'missing') }, {}), {
        code: 'QMQ_ERR_CONFIG_INVALID',
        message: /--cluster-secret-file .*missing: cannot read it/,
      })
      let err: Error | undefined
      try {
        resolve({}, { QMQ_CLUSTER_SECRET: 'tiny secret' })
      } catch (e) {
        err = e as Error
      }
      t.match(err, {
        code: 'QMQ_ERR_CONFIG_INVALID',
        message: /clusterSecret \(QMQ_CLUSTER_SECRET or --cluster-secret-file\): must be 16 to 1024/,
      })
      t.notMatch(err?.message, /tiny/, `${name}: the value is not shown`)

      const help = optionsHelp(schema, prefix)
      t.match(help, /--cluster-secret-file FILE .*\[QMQ_CLUSTER_SECRET\]/)
      t.notMatch(help, /--cluster-secret /)
    }
    const empty = join(dir, 'empty')
    writeFileSync(empty, '\n')
    t.throws(
      () =>
        resolveServiceOptions('broker', brokerOptionsSchema, { clusterSecretFile: empty }, 'QMQ_BROKER_', {}),
      {
        message: /the file is empty/,
      },
    )
  },
)

t.test('service options - qmq metaserver without a secret exits with a clear error', async (t) => {
  const env = { ...process.env }
  delete env.QMQ_CLUSTER_SECRET
  const r = spawnSync(process.execPath, [QMQ_BIN, 'metaserver', '--port', '0', '--data-dir', t.testdir()], {
    env,
    encoding: 'utf8',
    timeout: 30_000,
  })
  t.not(r.status, 0)
  t.match(r.stderr, /metaserver needs the cluster secret.*QMQ_CLUSTER_SECRET.*--cluster-secret-file/)
})

t.test('service options - the admin token can come from --admin-token-file (not only a flag)', async (t) => {
  const dir = t.testdir()
  const file = join(dir, 'admin-token')
  writeFileSync(file, 'admin-token-from-a-file\n')
  for (const [name, schema, prefix] of services.filter(([n]) => n !== 'delay')) {
    const resolve = (flags: Record<string, string>, env: NodeJS.ProcessEnv = {}) =>
      resolveServiceOptions(name, schema, flags, prefix, env) as { adminToken?: string }
    t.equal(
      resolve({ adminTokenFile: file }, { QMQ_CLUSTER_SECRET: SECRET }).adminToken,
      'admin-token-from-a-file',
      `${name}: from the file, without its trailing newline`,
    )
    t.equal(
      resolve({ adminToken: 'on-the-command-line' }, { QMQ_CLUSTER_SECRET: SECRET }).adminToken,
      'on-the-command-line',
      `${name}: the flag still works (discouraged)`,
    )
    t.throws(() => resolve({ adminToken: 'x', adminTokenFile: file }, { QMQ_CLUSTER_SECRET: SECRET }), {
      code: 'QMQ_ERR_USAGE',
      message: /--admin-token and --admin-token-file/,
    })
    t.throws(() => resolve({ adminTokenFile: join(dir, 'missing') }, { QMQ_CLUSTER_SECRET: SECRET }), {
      code: 'QMQ_ERR_CONFIG_INVALID',
      message: /--admin-token-file .*missing: cannot read it/,
    })
    t.match(optionsHelp(schema, prefix), /--admin-token-file FILE/)
  }
})

t.test('service options - the metaserver store URL from --store-file or QMQ_METASERVER_STORE', async (t) => {
  const dir = t.testdir()
  const file = join(dir, 'store-url')
  writeFileSync(file, 'postgresql://qmq:pw@db:5432/qmq\n')
  const resolve = (flags: Record<string, string>, env: NodeJS.ProcessEnv = {}) =>
    resolveServiceOptions('metaserver', metaserverOptionsSchema, flags, 'QMQ_METASERVER_', {
      QMQ_CLUSTER_SECRET: SECRET,
      ...env,
    }) as { store?: string }
  t.equal(resolve({ storeFile: file }).store, 'postgresql://qmq:pw@db:5432/qmq', 'from the file')
  t.equal(resolve({}, { QMQ_METASERVER_STORE: 'postgres://x@y/z' }).store, 'postgres://x@y/z', 'from the env')
  t.equal(resolve({}).store, undefined, 'unset: SQLite')
  t.throws(() => resolve({ store: 'postgres://a@b/c', storeFile: file }), { code: 'QMQ_ERR_USAGE' })
  t.match(optionsHelp(metaserverOptionsSchema, 'QMQ_METASERVER_'), /--store-file FILE/)
})
