import { execFile } from 'node:child_process'
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'
import { startCluster } from '../helpers/cluster'
import { CLUSTER_SECRET } from '../metaserver/helpers'

// Issue 19 item 5: the package installs from a clean clone. `npm pack` builds dist/ (prepack); the
// tarball installed into a fresh app (from the npm registry, like a user) gives `import 'qmq'` and
// the `qmq` bin, without better-sqlite3 (a server-only, optional peer dependency).
// Part of `npm test` (so of CI), with a longer timeout than the other files: the build in prepack takes
// about 35 s and the install (npm's cache first: --prefer-offline) 6 to 20 s on a loaded 2-core machine;
// `npm run test:pack` runs it alone. The repository is packed from a copy of its files (what a clone
// has, with the repository's node_modules for the build), so the test never rewrites the checkout's dist/.
t.setTimeout(600_000)

const run = promisify(execFile)
const ROOT = resolve(__dirname, '../..')
// A child npm must not inherit the settings npm gave to this process (npm_config_*), nor a prefix.
const env = Object.fromEntries(
  Object.entries(process.env).filter(([k]) => !k.toLowerCase().startsWith('npm_')),
) as NodeJS.ProcessEnv

t.test(
  'npm pack installs into a fresh app: SDK send/consume against a cluster, npx qmq --help',
  async (t) => {
    // Outside the repository: Node would otherwise find the repository's node_modules from the app.
    const dir = mkdtempSync(join(tmpdir(), 'qmq-pack-'))
    t.teardown(() => rmSync(dir, { recursive: true, force: true }))
    const cluster = await startCluster({ dir: join(dir, 'cluster'), brokers: 1 })
    t.teardown(() => cluster.close())

    // A clean clone: the files git has (tracked, and new ones not ignored), no dist/, no data.
    const clone = join(dir, 'clone')
    const { stdout: files } = await run(
      'git',
      ['ls-files', '-z', '--cached', '--others', '--exclude-standard'],
      {
        cwd: ROOT,
        maxBuffer: 64 * 1024 * 1024,
      },
    )
    for (const f of files.split('\0')) {
      if (f === '' || !existsSync(join(ROOT, f))) continue // deleted in the work tree, not yet committed
      mkdirSync(dirname(join(clone, f)), { recursive: true })
      copyFileSync(join(ROOT, f), join(clone, f))
    }
    t.notOk(existsSync(join(clone, 'dist')), 'the clone has no dist/')
    symlinkSync(join(ROOT, 'node_modules'), join(clone, 'node_modules'), 'dir')

    const packDir = join(dir, 'pack')
    mkdirSync(packDir)
    const packStart = Date.now()
    await run('npm', ['pack', '--pack-destination', packDir], { cwd: clone, env, timeout: 300_000 })
    t.comment(`npm pack (with its build) took ${Math.round((Date.now() - packStart) / 1000)} s`)
    const tarball = readdirSync(packDir).find((f) => f.endsWith('.tgz'))
    t.ok(tarball, 'npm pack wrote a tarball')

    const app = join(dir, 'app')
    mkdirSync(app)
    writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true }))
    const started = Date.now()
    // --prefer-offline: what npm's cache holds is not revalidated with the registry.
    const install = [
      'install',
      join(packDir, tarball as string),
      '--prefer-offline',
      '--no-audit',
      '--no-fund',
    ]
    await run('npm', install, {
      cwd: app,
      env,
      timeout: 300_000,
    })
    t.comment(`client install took ${Math.round((Date.now() - started) / 1000)} s`)
    t.notOk(existsSync(join(app, 'node_modules', 'better-sqlite3')), 'no native SQLite in a client install')

    writeFileSync(
      join(app, 'app.js'),
      `const { MessageProducerProvider, MessageConsumerProvider } = require('qmq')
async function main() {
  const metaServer = process.argv[2]
  const producer = new MessageProducerProvider({ appCode: 'app', metaServer })
  const consumer = new MessageConsumerProvider({ appCode: 'app', metaServer })
  await producer.init()
  await consumer.init()
  const pull = consumer.getOrCreatePullConsumer('pack.test', 'g', { startFrom: 'earliest' })
  const m = producer.generateMessage('pack.test').setProperty('k', 'v')
  await producer.sendMessage(m)
  let got = []
  for (let i = 0; i < 20 && got.length === 0; i++) got = await pull.pull(1, 500)
  await got[0].ack()
  console.log(JSON.stringify({ sent: m.getMessageId(), got: got[0].getMessageId(), k: got[0].getStringProperty('k') }))
  await consumer.close()
  await producer.close()
}
main().catch((err) => { console.error(err); process.exit(1) })
`,
    )
    const out = await run(process.execPath, ['app.js', cluster.metaUrl], { cwd: app, env, timeout: 60_000 })
    const r = JSON.parse(out.stdout) as { sent: string; got: string; k: string }
    t.equal(r.got, r.sent, 'the app consumed what it sent')
    t.equal(r.k, 'v')

    const help = await run('npx', ['--no-install', 'qmq', '--help'], { cwd: app, env, timeout: 60_000 })
    t.match(help.stdout, /Usage: qmq <command>/)

    // A server command in a client-only install says what to install.
    const meta = await run(
      'npx',
      ['--no-install', 'qmq', 'metaserver', '--port', '0', '--data-dir', join(dir, 'm')],
      { cwd: app, env: { ...env, QMQ_CLUSTER_SECRET: CLUSTER_SECRET }, timeout: 60_000 },
    ).then(
      () => ({ code: 0, stderr: '' }),
      (err: { code: number; stderr: string }) => err,
    )
    t.equal(meta.code, 1)
    t.match(meta.stderr, /npm install better-sqlite3/)
  },
)
