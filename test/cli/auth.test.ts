import { existsSync, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { run } from '../../src/cli/main'
import { hashToken } from '../../src/common/auth/credentials'
import { silentLogger } from '../../src/common/logger'
import { MetaClient } from '../../src/common/meta/meta-client'
import { Metaserver } from '../../src/metaserver/main'
import { SqliteMetaStore } from '../../src/metaserver/sqlite-store'
import { MIGRATIONS, SCHEMA_VERSION, VERSION_TABLE } from '../../src/metaserver/schema'
import {
  CLUSTER_SECRET,
  freshLocation,
  locationOptions,
  STORE_KINDS,
  type StoreLocation,
  TOKEN,
} from '../metaserver/helpers'

/** `qmq auth` against a real metaserver, run in this process with stdout and stderr captured. */
async function cli(
  argv: string[],
  env: Record<string, string>,
): Promise<{ code: number; out: string; err: string }> {
  const saved: Record<string, string | undefined> = {}
  for (const [k, v] of Object.entries(env)) {
    saved[k] = process.env[k]
    process.env[k] = v
  }
  let out = ''
  let err = ''
  const wOut = process.stdout.write.bind(process.stdout)
  const wErr = process.stderr.write.bind(process.stderr)
  process.stdout.write = ((c: string | Uint8Array) => {
    out += String(c)
    return true
  }) as typeof process.stdout.write
  process.stderr.write = ((c: string | Uint8Array) => {
    err += String(c)
    return true
  }) as typeof process.stderr.write
  try {
    return { code: await run(argv), out, err }
  } finally {
    process.stdout.write = wOut
    process.stderr.write = wErr
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k]
      else process.env[k] = v
    }
  }
}

/** Everything the store holds of the credentials, as bytes: the SQLite file, or PostgreSQL's rows. */
async function storedBytes(l: StoreLocation): Promise<Buffer> {
  if (l.store === undefined) {
    // WAL mode: recent writes are in meta.db-wal until a checkpoint
    const files = ['meta.db', 'meta.db-wal'].map((f) => join(l.dataDir, f)).filter((f) => existsSync(f))
    return Buffer.concat(files.map((f) => readFileSync(f)))
  }
  const { Client } = await import('pg')
  const c = new Client({ connectionString: l.store })
  await c.connect()
  try {
    const r = await c.query<{ row: string }>('SELECT app_credentials::text AS row FROM app_credentials')
    if (r.rows.length === 0) throw new Error('no credentials stored in PostgreSQL')
    return Buffer.from(r.rows.map((x) => x.row).join('\n'))
  } finally {
    await c.end()
  }
}

for (const kind of STORE_KINDS)
  t.test(
    `cli [${kind}] - qmq auth create, grant, revoke, rotate, list, delete; tokens stored hashed`,
    async (t) => {
      const dir = t.testdir()
      const location = await freshLocation(t, kind)
      location.dataDir = join(dir, 'meta')
      const meta = new Metaserver(
        { port: 0, ...locationOptions(location), adminToken: TOKEN, clusterSecret: CLUSTER_SECRET },
        { logger: silentLogger },
      )
      await meta.start()
      t.teardown(() => meta.close())
      const env = { QMQ_METASERVER: meta.url, QMQ_ADMIN_TOKEN: TOKEN }

      const created = await cli(
        ['auth', 'create', 'billing', '--consume', 'orders.*', '--group', 'billing'],
        env,
      )
      t.equal(created.code, 0, created.err)
      const token = created.out.trim()
      t.match(token, /^qmq_[A-Za-z0-9_-]{43}$/, 'the token is printed once on stdout')

      const file = join(dir, 'ops.token')
      const ops = await cli(['auth', 'create', 'ops', '--admin', '*', '--token-file', file], env)
      t.equal(ops.code, 0, ops.err)
      t.equal(ops.out, '', 'with --token-file nothing is printed')
      t.equal(statSync(file).mode & 0o777, 0o600, 'the token file is private')

      t.equal((await cli(['auth', 'grant', 'billing', '--produce', 'refunds'], env)).code, 0)
      t.equal(
        (await cli(['auth', 'revoke', 'billing', '--consume', 'orders.*', '--group', 'billing'], env)).code,
        0,
      )
      const list = await cli(['auth', 'list', '--json'], env)
      const apps = JSON.parse(list.out) as { appCode: string; grants: unknown[]; tokens: number }[]
      t.same(
        apps.map((a) => [a.appCode, a.grants, a.tokens]),
        [
          ['billing', [{ action: 'produce', subject: 'refunds' }], 1],
          ['ops', [{ action: 'admin', subject: '*' }], 1],
        ],
      )
      t.notMatch(list.out, token.slice(4), 'list never shows a token')

      const rotated = await cli(['auth', 'rotate', 'billing', '--keep-previous'], env)
      t.equal(rotated.code, 0, rotated.err)
      const server = new MetaClient({ url: meta.url, clusterSecret: CLUSTER_SECRET })
      t.teardown(() => server.close())
      const creds = await server.credentials()
      const billing = creds.apps.find((a) => a.appCode === 'billing')
      t.same(
        billing?.tokenHashes,
        [hashToken(token), hashToken(rotated.out.trim())],
        'hashes only, previous kept',
      )
      const stored = await storedBytes(location)
      t.ok(stored.includes(Buffer.from(hashToken(token))), `the ${kind} store holds the hash`)
      t.equal(stored.includes(Buffer.from(token)), false, 'no token in the database')

      const noSecret = new MetaClient({ url: meta.url })
      t.teardown(() => noSecret.close())
      await t.rejects(
        noSecret.credentials(),
        { code: 'QMQ_ERR_UNAUTHORIZED' },
        'credentials need the cluster secret',
      )
      const noToken = await cli(['auth', 'create', 'x'], { QMQ_METASERVER: meta.url, QMQ_ADMIN_TOKEN: '' })
      t.equal(noToken.code, 1)
      t.match(noToken.err, /QMQ_ERR_UNAUTHORIZED/)
      t.equal((await cli(['auth', 'create', 'bad app'], env)).code, 1, 'an invalid appCode is refused')
      t.equal((await cli(['auth', 'delete', 'ops'], env)).code, 0)
      t.equal((await cli(['auth', 'frobnicate'], env)).code, 2)
    },
  )

t.test('sqlite store - a schema 1 database is migrated to the latest (3: app_credentials)', async (t) => {
  const file = join(t.testdir(), 'meta.db')
  const Sqlite = require('better-sqlite3') as typeof import('better-sqlite3')
  const db = new Sqlite(file)
  // as a version 1 metaserver left it: its tables and one schema_version row
  db.exec(`${VERSION_TABLE}; ${MIGRATIONS[0]!.sql.sqlite}; INSERT INTO schema_version VALUES (1);`)
  db.close()
  const store = new SqliteMetaStore(file)
  t.teardown(() => store.close())
  const apps = store.apps
  t.ok(await apps.insertApp({ appCode: 'a', tokenHashes: ['h'], grants: [], createdAt: 1, updatedAt: 1 }))
  t.same(
    (await apps.listApps()).map((a) => a.appCode),
    ['a'],
  )
  const check = new Sqlite(file, { readonly: true })
  t.equal(
    (check.prepare('SELECT MAX(version) AS v FROM schema_version').get() as { v: number }).v,
    SCHEMA_VERSION,
  )
  check.close()
})
