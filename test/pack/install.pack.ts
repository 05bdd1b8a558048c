import { execFile } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'
import { startCluster } from '../helpers/cluster'

// Issue 19 item 5: the package installs from a clean clone. `npm pack` builds dist/ (prepack); the
// tarball installed into a fresh app (from the npm registry, like a user) gives `import 'qmq'` and
// the `qmq` bin, without better-sqlite3 (a server-only, optional peer dependency).
// Slow (an npm install): run with `npm run test:pack`, not part of `npm test`.

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

    const packDir = join(dir, 'pack')
    mkdirSync(packDir)
    await run('npm', ['pack', '--pack-destination', packDir], { cwd: ROOT, env, timeout: 180_000 })
    const tarball = readdirSync(packDir).find((f) => f.endsWith('.tgz'))
    t.ok(tarball, 'npm pack wrote a tarball')

    const app = join(dir, 'app')
    mkdirSync(app)
    writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true }))
    const started = Date.now()
    await run('npm', ['install', join(packDir, tarball as string), '--no-audit', '--no-fund'], {
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
      {
        cwd: app,
        env,
        timeout: 60_000,
      },
    ).then(
      () => ({ code: 0, stderr: '' }),
      (err: { code: number; stderr: string }) => err,
    )
    t.equal(meta.code, 1)
    t.match(meta.stderr, /npm install better-sqlite3/)
  },
)
