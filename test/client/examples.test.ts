import { execFile, spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { createInterface } from 'node:readline'
import { promisify } from 'node:util'
import t from 'tap'
import { startCluster } from '../helpers/cluster'

// Issue 19 "Must show": the examples run against a cluster the test starts, as their headers say
// (`npx tsx examples/<name>.ts` with QMQ_META). examples/legacy-decorators and examples/nestjs have
// their own tests (legacy-example.test.ts, nestjs-example.test.ts); examples/knex-adapter.ts is a
// library file, run by test/tx/knex.test.ts.

const ROOT = resolve(__dirname, '../..')
const TSX = require.resolve('tsx/cli')

t.test('examples/*.ts run against a local cluster', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'qmq-examples-'))
  const cluster = await startCluster({ dir: join(dir, 'cluster'), brokers: 1, delay: true })
  t.teardown(async () => {
    await cluster.close()
    rmSync(dir, { recursive: true, force: true })
  })
  await cluster.waitAlive('broker', 1)
  await cluster.waitAlive('delay', 1)
  const env = { ...process.env, QMQ_META: cluster.metaUrl, DB: `sqlite:${join(dir, 'orders.db')}` }
  const run = async (name: string) =>
    (
      await promisify(execFile)(process.execPath, [TSX, `examples/${name}`], {
        cwd: ROOT,
        env,
        timeout: 90_000,
      })
    ).stdout

  // consumer.ts runs until SIGINT; producer.ts sends to it.
  const consumer = spawn(process.execPath, [TSX, 'examples/consumer.ts'], {
    cwd: ROOT,
    env,
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  t.teardown(() => {
    if (consumer.exitCode === null && consumer.signalCode === null) consumer.kill('SIGKILL')
  })
  const exited = new Promise<number | null>((r) => consumer.once('exit', (code) => r(code)))
  const consumed: string[] = []
  let onLine: () => void = () => undefined
  createInterface({ input: consumer.stdout }).on('line', (line) => {
    consumed.push(line)
    onLine()
  })
  const until = (cond: () => boolean, what: string) =>
    new Promise<void>((resolvePromise, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`${what}: not seen; got\n${consumed.join('\n')}`)),
        60_000,
      )
      const check = () => {
        if (!cond()) return
        clearTimeout(timer)
        resolvePromise()
      }
      onLine = check
      void exited.then((code) => reject(new Error(`consumer.ts exited (${code}) before ${what}`)))
      check()
    })
  await until(() => consumed.some((l) => /^consuming qmq_subject/.test(l)), 'consumer.ts started')

  const sent = await run('producer.ts')
  t.match(sent, /^sent \S+ to broker-a$/m, 'producer.ts: sent, awaited')
  t.match(sent, /^sent \S+ \(listener\)$/m, 'producer.ts: sent, with a listener')
  await until(
    () =>
      consumed.some((l) => / key=value /.test(l)) &&
      consumed.some((l) => / key=second /.test(l)) &&
      consumed.filter((l) => /^audit /.test(l)).length >= 2 &&
      consumed.filter((l) => /^broadcast /.test(l)).length >= 2,
    'consumer.ts: both messages in its three subscriptions',
  )
  t.pass('consumer.ts got both messages in the group, at-most-once and broadcast subscriptions')

  const [pulled, delayed, orders] = await Promise.all([
    run('pull-consumer.ts'),
    run('delayed.ts'),
    run('order-service.ts'),
  ])
  t.equal(pulled.match(/^pulled /gm)?.length, 5, 'pull-consumer.ts: a batch of 5')
  t.match(pulled, /^iterated \S+ i=99$/m, 'pull-consumer.ts: then for await')
  t.match(delayed, /^scheduled \S+ on delay-1 for /m, 'delayed.ts: scheduled on the delay group')
  t.match(delayed, /^received \S+ key=value, -?\d+ ms after its due time$/m, 'delayed.ts: received when due')
  t.match(orders, /^done: 2 orders, 2 invoices$/m, 'order-service.ts: 2 orders committed, 2 invoices')
  t.match(orders, /rolled back, nothing sent/, 'order-service.ts: the refused order sent nothing')

  consumer.kill('SIGINT')
  t.equal(await exited, 0, 'consumer.ts stops cleanly on SIGINT')
})
