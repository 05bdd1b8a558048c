/**
 * Client SDK throughput: sendMessage with batching, then consume with an empty handler.
 *
 *   node --import tsx bench/client-throughput.ts [--messages 300000] [--body-bytes 1024] [--fake]
 *     [--window 10000] [--batch-size N] [--linger-ms N] [--pull-batch-size 1000] [--prefetch 4000]
 *     [--rounds 3] [--produce-only] [--no-tuned] [--quick] [--metrics]
 *
 * Options are the SDK defaults except where docs/client.md ("Tuning for throughput") recommends
 * otherwise for a high-volume subject: the consumer pulls 1000 messages at a time with a prefetch of
 * 4000. The producer keeps `--window` (= maxQueueSize, default 10000) messages unsettled, sending
 * one more each time one settles, as an application streaming messages with bounded memory does.
 *
 * The metaserver and the broker run in a child process (this file with --child), so the numbers are
 * the SDK's in its own process against a real broker over TCP; the broker runs with node's defaults,
 * as `qmq broker` does. After the run with node's defaults, the produce phase runs again in a new
 * process with the young-generation size docs/client.md recommends for high-volume clients
 * (TUNED_NODE_FLAGS; metrics named "... (node <flags>)"); `--no-tuned` skips that. The produce phase
 * runs `--rounds` times on one producer; the median round is reported, with the slowest and fastest.
 * The consume phase then reads everything produced. `--metrics` gives both providers a prom-client
 * Registry (docs/client.md, Metrics), to measure what the client's metrics cost. Prints JSON lines:
 *   { "bench": "client-produce", "metric": "throughput", "value": n, "unit": "msgs/s" }
 *   { "bench": "client-produce", "metric": "client-cpu-per-msg", "value": n, "unit": "us" }
 *   { "bench": "client-produce", "metric": "broker-cpu-per-msg", "value": n, "unit": "us" } (its process)
 *   { "bench": "client-consume", "metric": "throughput", "value": n, "unit": "msgs/s" }
 *   { "bench": "client-consume", "metric": "client-cpu-per-msg", "value": n, "unit": "us" }
 */
import { fork, spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Registry } from 'prom-client'
import { Broker } from '../src/broker/broker'
import { MessageConsumerProvider, MessageProducerProvider } from '../src/client'
import { silentLogger } from '../src/common/logger'
import { MetaClient } from '../src/common/meta/meta-client'
import { quick } from './common'
import { Metaserver } from '../src/metaserver/main'
import { FakeBroker, FakeMetaserver } from '../test/client/helpers/fake-cluster'

/** The bench cluster's secret (metaserver and broker in this process). */
const CLUSTER_SECRET = 'bench-cluster-secret-0123456789'

function arg(name: string, dflt: number): number {
  const i = process.argv.indexOf(`--${name}`)
  return i >= 0 ? Number(process.argv[i + 1]) : dflt
}

async function child(): Promise<void> {
  if (process.argv.includes('--fake')) {
    // The in-memory stand-ins of test/client (SDK ceiling without storage costs).
    const b = await new FakeBroker({ name: 'fake-a' }).start()
    const m = await new FakeMetaserver(() => [b]).start()
    process.send?.({ metaUrl: m.url })
    process.on('message', (m) => {
      if (m === 'cpu') process.send?.({ cpu: process.cpuUsage() })
      else process.exit(0)
    })
    return
  }
  const dir = mkdtempSync(join(tmpdir(), 'qmq-bench-client-'))
  const meta = new Metaserver(
    { port: 0, dataDir: join(dir, 'meta'), heartbeatIntervalMs: 200, clusterSecret: CLUSTER_SECRET },
    { logger: silentLogger },
  )
  await meta.start()
  const metaUrl = `${meta.url}/meta/address`
  const broker = new Broker(
    {
      group: 'bench-a',
      port: 0,
      httpPort: -1,
      dataDir: join(dir, 'broker'),
      metaserver: metaUrl,
      clusterSecret: CLUSTER_SECRET,
      heartbeatIntervalMs: 200,
    },
    { logger: silentLogger },
  )
  await broker.start()
  // wait until the group is alive in routes
  const mc = new MetaClient({ url: metaUrl })
  for (;;) {
    const groups = await mc.listGroups().catch(() => [])
    if (groups.some((g) => g.alive)) break
    await new Promise((r) => setTimeout(r, 50))
  }
  await mc.close()
  process.send?.({ metaUrl })
  process.on('message', async (m) => {
    // 'cpu': this process's CPU time so far (the broker's cost per message); anything else: stop.
    if (m === 'cpu') return void process.send?.({ cpu: process.cpuUsage() })
    await broker.close()
    await meta.close()
    rmSync(dir, { recursive: true, force: true })
    process.exit(0)
  })
}

/** Node flags docs/client.md ("Tuning for throughput") recommends for a client at 100k+ msgs/s. */
const TUNED_NODE_FLAGS = ['--max-semi-space-size=64']
/** Set in the tuned run: appended to metric names. */
const label = process.argv.includes('--tuned') ? ` (node ${TUNED_NODE_FLAGS.join(' ')})` : ''
/** Targets of the client SDK issue: 1 KiB messages on the 2-core reference machine. */
const TARGET = '>= 150000'

function emit(bench: string, metric: string, value: number, unit: string, digits = 0, target?: string): void {
  const f = 10 ** digits
  const line: Record<string, unknown> = {
    bench,
    metric: metric + label,
    value: Math.round(value * f) / f,
    unit,
  }
  if (target !== undefined) line.target = target
  console.log(JSON.stringify(line))
}

/**
 * CPU time of this (the client's) process per message: what the SDK costs, much less sensitive to
 * other load on the machine than wall-clock throughput. 1e6 / it is the single-core ceiling.
 */
function emitCpu(bench: string, cpu: NodeJS.CpuUsage, messages: number): void {
  emit(bench, 'client-cpu-per-msg', (cpu.user + cpu.system) / Math.max(1, messages), 'us', 2)
}

/** The options docs/client.md recommends for throughput ("Tuning"); everything else is default. */
const producerOptions: { maxQueueSize: number; batchSize?: number; lingerMs?: number } = {
  maxQueueSize: arg('window', 10_000),
}
const consumerOptions = { pullBatchSize: arg('pull-batch-size', 1_000), prefetch: arg('prefetch', 4_000) }
const extras = process.argv.includes('--metrics') ? { registry: new Registry() } : {}
if (process.argv.includes('--batch-size')) producerOptions.batchSize = arg('batch-size', 100)
if (process.argv.includes('--linger-ms')) producerOptions.lingerMs = arg('linger-ms', 1)

async function main(): Promise<void> {
  // --quick (npm run bench -- --quick): a smoke run, one short round, no tuned run.
  const total = arg('messages', quick ? 50_000 : 300_000)
  const rounds = Math.max(1, arg('rounds', quick ? 1 : 3))
  const bodyBytes = arg('body-bytes', 1024)
  const cluster = fork(__filename, ['--child', ...(process.argv.includes('--fake') ? ['--fake'] : [])], {
    // The broker runs with node's defaults whatever flags this (client) process was given.
    execArgv: process.execArgv.filter((a) => !TUNED_NODE_FLAGS.includes(a)),
    stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
  })
  const { metaUrl } = await new Promise<{ metaUrl: string }>((resolve, reject) => {
    cluster.once('message', (m) => resolve(m as { metaUrl: string }))
    cluster.once('exit', (code) => reject(new Error(`cluster exited with ${code}`)))
  })
  try {
    const subject = `bench.client.${Date.now()}`
    // Register the consumer group first (new groups start at the latest message).
    const consumer = new MessageConsumerProvider({
      appCode: 'bench',
      metaServer: metaUrl,
      ...consumerOptions,
      ...extras,
    })
    const pc = consumer.getOrCreatePullConsumer(subject, 'bench-warm', { startFrom: 'earliest' })
    await pc.pull(1, 0).catch(() => [])

    // ---- produce
    const producer = new MessageProducerProvider({
      appCode: 'bench',
      metaServer: metaUrl,
      ...producerOptions,
      ...extras,
    })
    await producer.init()
    const body = Buffer.alloc(bodyBytes, 0x61)
    await producer.sendMessage(producer.generateMessage(subject).setBody(body)) // route + connection warm-up
    // Keep `window` messages unsettled (within maxQueueSize): every settled send makes room for one
    // more, as an application streaming messages with bounded memory does.
    const window = producerOptions.maxQueueSize
    /** CPU time (µs) the cluster process (broker + metaserver) has used so far. */
    const clusterCpu = (): Promise<number> =>
      new Promise((resolve) => {
        cluster.once('message', (m) => {
          const { cpu } = m as { cpu: NodeJS.CpuUsage }
          resolve(cpu.user + cpu.system)
        })
        cluster.send('cpu')
      })
    const produceRound = async (): Promise<{
      done: number
      failed: number
      sec: number
      cpu: number
      brokerCpu: number
    }> => {
      const broker0 = await clusterCpu()
      let done = 0
      let failed = 0
      const started = process.hrtime.bigint()
      const cpu0 = process.cpuUsage()
      await new Promise<void>((resolve) => {
        let sent = 0
        const pump = (): void => {
          while (sent < total && producer.queueSize < window) {
            sent++
            producer.sendMessage(producer.generateMessage(subject).setBody(body)).then(onSent, onFailed)
          }
        }
        const onSent = (): void => {
          if (++done + failed === total) resolve()
          else pump()
        }
        const onFailed = (): void => {
          if (done + ++failed === total) resolve()
          else pump()
        }
        pump()
      })
      const sec = Number(process.hrtime.bigint() - started) / 1e9
      const u = process.cpuUsage(cpu0)
      return { done, failed, sec, cpu: u.user + u.system, brokerCpu: (await clusterCpu()) - broker0 }
    }
    // Several rounds, the median reported: one round on a shared 2-core machine swings by a third.
    const runs: Awaited<ReturnType<typeof produceRound>>[] = []
    for (let r = 0; r < rounds; r++) {
      const run = await produceRound()
      runs.push(run)
      const us = (cpu: number) => (cpu / Math.max(1, run.done)).toFixed(2)
      process.stderr.write(
        `  produce round ${r + 1}${label}: ${Math.round(run.done / run.sec)} msgs/s, ` +
          `CPU per message: client ${us(run.cpu)} us, broker ${us(run.brokerCpu)} us\n`,
      )
    }
    const byRate = [...runs].sort((a, b) => a.done / a.sec - b.done / b.sec)
    const median = byRate[Math.floor(byRate.length / 2)] as (typeof runs)[number]
    const done = runs.reduce((n, r) => n + r.done, 0)
    const failed = runs.reduce((n, r) => n + r.failed, 0)
    emit('client-produce', 'throughput', median.done / median.sec, 'msgs/s', 0, TARGET)
    if (rounds > 1) {
      const first = byRate[0] as (typeof runs)[number]
      const last = byRate[byRate.length - 1] as (typeof runs)[number]
      emit('client-produce', `throughput, slowest of ${rounds} rounds`, first.done / first.sec, 'msgs/s')
      emit('client-produce', `throughput, fastest of ${rounds} rounds`, last.done / last.sec, 'msgs/s')
    }
    emit('client-produce', 'client-cpu-per-msg', median.cpu / Math.max(1, median.done), 'us', 2)
    emit('client-produce', 'broker-cpu-per-msg', median.brokerCpu / Math.max(1, median.done), 'us', 2)
    emit('client-produce', 'throughput', (median.done * bodyBytes) / median.sec / 1024 / 1024, 'MiB/s')
    if (failed > 0) emit('client-produce', 'failed', failed, 'msgs')
    await producer.close()
    if (process.argv.includes('--produce-only')) return

    // ---- consume (empty handler), all messages from the earliest
    let consumed = 0
    const target = done + 1
    const consumeStart = process.hrtime.bigint()
    const consumeCpu = process.cpuUsage()
    let finished: () => void = () => {}
    const all = new Promise<void>((resolve) => {
      finished = resolve
    })
    consumer.addListener(
      subject,
      'bench-consume',
      () => {
        if (++consumed === target) finished()
      },
      { startFrom: 'earliest' },
    )
    await consumer.start()
    await all
    const consumeSec = Number(process.hrtime.bigint() - consumeStart) / 1e9
    emit('client-consume', 'throughput', consumed / consumeSec, 'msgs/s', 0, TARGET)
    emitCpu('client-consume', process.cpuUsage(consumeCpu), consumed)
    await consumer.close()
  } finally {
    cluster.send('stop')
    await new Promise((r) => cluster.once('exit', r))
  }
}

/** The produce phase again, in a new client process started with TUNED_NODE_FLAGS. */
function tunedRun(): number {
  const passOn = process.argv.slice(2).filter((a) => a !== '--no-tuned')
  const run = spawnSync(
    process.execPath,
    [
      ...TUNED_NODE_FLAGS,
      ...process.execArgv,
      __filename,
      ...passOn,
      '--produce-only',
      '--tuned',
      '--no-tuned',
    ],
    { stdio: ['ignore', 'inherit', 'inherit'] },
  )
  return run.status ?? 1
}

if (process.argv.includes('--child')) void child()
else
  main().then(
    () => {
      if (!quick && !process.argv.includes('--no-tuned') && !process.argv.includes('--fake'))
        process.exitCode = tunedRun()
    },
    (err: unknown) => {
      console.error(err)
      process.exit(1)
    },
  )
