import { type ChildProcess, execFile, spawn } from 'node:child_process'
import { mkdtempSync, rmSync, symlinkSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { createInterface } from 'node:readline'
import { promisify } from 'node:util'
import t from 'tap'
import { MessageProducerProvider } from '../../src/client'
import { startCluster } from '../helpers/cluster'

// Issue 19 item 6: the NestJS example (examples/nestjs) compiled as NestJS projects are
// (experimentalDecorators + emitDecoratorMetadata, by tsc: a type error fails this test) and run as a
// standalone Nest application against a real cluster: its @QmqListener provider consumes what its
// injected producer sends and what this test sends; SIGTERM runs Nest's shutdown hooks, which close
// the consumer (the metaserver then lists it offline) and then the producer.

const ROOT = resolve(__dirname, '../..')
const SUBJECT = 'example.nest.order.created'

/** Lines of a child's stdout, and a wait for the first one matching a pattern. */
function lines(child: ChildProcess) {
  const seen: string[] = []
  let notify: () => void = () => undefined
  createInterface({ input: child.stdout as NodeJS.ReadableStream }).on('line', (line) => {
    seen.push(line)
    notify()
  })
  const waitFor = (pattern: RegExp, ms: number): Promise<string> =>
    new Promise((resolvePromise, reject) => {
      const check = () => {
        const hit = seen.find((l) => pattern.test(l))
        if (hit === undefined) return false
        clearTimeout(timer)
        resolvePromise(hit)
        return true
      }
      const timer = setTimeout(
        () => reject(new Error(`no line matching ${pattern} in ${ms} ms; got:\n${seen.join('\n')}`)),
        ms,
      )
      const previous = notify
      notify = () => {
        previous()
        check()
      }
      check()
    })
  return { seen, waitFor }
}

t.test('examples/nestjs: Nest providers consume, produce and close on SIGTERM', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'qmq-nest-'))
  const cluster = await startCluster({ dir: join(dir, 'cluster'), brokers: 1 })
  t.teardown(async () => {
    await cluster.close()
    rmSync(dir, { recursive: true, force: true })
  })
  await cluster.waitAlive('broker', 1)

  // Compile as a NestJS project does; the output resolves packages from the repository's node_modules.
  const out = join(dir, 'out')
  await promisify(execFile)(
    process.execPath,
    [require.resolve('typescript/bin/tsc'), '-p', 'examples/nestjs/tsconfig.json', '--outDir', out],
    { cwd: ROOT, timeout: 120_000 },
  )
  symlinkSync(join(ROOT, 'node_modules'), join(out, 'node_modules'), 'dir')
  symlinkSync(join(ROOT, 'package.json'), join(out, 'package.json')) // src/common/metrics.ts reads its version

  const child = spawn(process.execPath, [join(out, 'examples/nestjs/main.js')], {
    env: { ...process.env, QMQ_META: cluster.metaUrl, NO_COLOR: '1' },
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) =>
    child.once('exit', (code, signal) => r({ code, signal })),
  )
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  })
  const output = lines(child)
  // A wait for a line fails at once when the app exits first.
  const waitFor = (pattern: RegExp, ms: number) =>
    Promise.race([
      output.waitFor(pattern, ms),
      exited.then(({ code, signal }) => {
        throw new Error(`the app exited (code ${code}, signal ${signal}) before a line matching ${pattern}`)
      }),
    ])

  const started = await waitFor(/consumer (\S+) started with 1 listener/, 60_000)
  const consumerId = /consumer (\S+) started/.exec(started)?.[1] ?? ''
  await waitFor(/3 orders placed and billed/, 30_000)
  t.equal(output.seen.filter((l) => /billed order /.test(l)).length, 3, 'the orders the app sent, billed')

  // Messages from elsewhere reach the Nest listener too.
  const producer = new MessageProducerProvider({ appCode: 'nest-test', metaServer: cluster.metaUrl })
  t.teardown(() => producer.close())
  await producer.init()
  for (const id of ['from-test-1', 'from-test-2'])
    await producer.sendMessage(
      producer.generateMessage(SUBJECT).setProperty('orderId', id).setProperty('total', 1),
    )
  await waitFor(/billed order from-test-1 /, 20_000)
  await waitFor(/billed order from-test-2 /, 20_000)

  const online = await cluster.meta.listConsumers({ subject: SUBJECT, consumerGroup: 'billing' })
  t.match(online, [{ clientId: consumerId, appCode: 'nest-example', online: true }], 'registered online')

  // enableShutdownHooks: SIGTERM runs onApplicationShutdown, then Nest re-raises the signal.
  child.kill('SIGTERM')
  const { code, signal } = await exited
  t.ok(signal === 'SIGTERM' || code === 0, `exits after its shutdown hooks (code ${code}, signal ${signal})`)
  const at = (pattern: RegExp) => output.seen.findIndex((l) => pattern.test(l))
  t.ok(at(/shutting down on SIGTERM/) >= 0, 'the shutdown hook ran')
  t.ok(at(/consumer closed/) > at(/shutting down/), 'consumer closed')
  t.ok(at(/producer closed/) > at(/consumer closed/), 'then the producer closed')
  const after = await cluster.meta.listConsumers({ subject: SUBJECT, consumerGroup: 'billing' })
  t.notOk(
    after.some((c) => c.clientId === consumerId && c.online),
    'the closed consumer said goodbye (the metaserver no longer lists it online)',
  )
  t.equal(output.seen.filter((l) => /billed order /.test(l)).length, 5, 'each message billed once')
})
