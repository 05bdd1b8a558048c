/**
 * Client SDK throughput: sendMessage with batching, then consume with an empty handler.
 *
 *   node --import tsx bench/client-throughput.ts [--messages 300000] [--body-bytes 1024] [--fake]
 *     [--window 10000] [--batch-size N] [--linger-ms N] [--pull-batch-size 1000] [--prefetch 4000]
 *
 * Options are the SDK defaults except where docs/client.md ("Tuning for throughput") recommends
 * otherwise for a high-volume subject: the consumer pulls 1000 messages at a time with a prefetch of
 * 4000. The producer keeps `--window` (= maxQueueSize, default 10000) messages unsettled, sending
 * one more each time one settles, as an application streaming messages with bounded memory does.
 *
 * The metaserver and the broker run in a child process (this file with --child), so the numbers are
 * the SDK's in its own process against a real broker over TCP. Prints JSON lines:
 *   { "bench": "client-produce", "metric": "throughput", "value": n, "unit": "msgs/s" }
 *   { "bench": "client-produce", "metric": "client-cpu-per-msg", "value": n, "unit": "us" }
 *   { "bench": "client-consume", "metric": "throughput", "value": n, "unit": "msgs/s" }
 *   { "bench": "client-consume", "metric": "client-cpu-per-msg", "value": n, "unit": "us" }
 */
import { fork } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Broker } from '../src/broker/broker'
import { MessageConsumerProvider, MessageProducerProvider } from '../src/client'
import { silentLogger } from '../src/common/logger'
import { MetaClient } from '../src/common/meta/meta-client'
import { Metaserver } from '../src/metaserver/main'
import { FakeBroker, FakeMetaserver } from '../test/client/helpers/fake-cluster'

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
    process.on('message', () => process.exit(0))
    return
  }
  const dir = mkdtempSync(join(tmpdir(), 'qmq-bench-client-'))
  const meta = new Metaserver(
    { port: 0, dataDir: join(dir, 'meta'), heartbeatIntervalMs: 200 },
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
  process.on('message', async () => {
    await broker.close()
    await meta.close()
    rmSync(dir, { recursive: true, force: true })
    process.exit(0)
  })
}

function emit(bench: string, metric: string, value: number, unit: string, digits = 0): void {
  const f = 10 ** digits
  console.log(JSON.stringify({ bench, metric, value: Math.round(value * f) / f, unit }))
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
if (process.argv.includes('--batch-size')) producerOptions.batchSize = arg('batch-size', 100)
if (process.argv.includes('--linger-ms')) producerOptions.lingerMs = arg('linger-ms', 1)

async function main(): Promise<void> {
  const total = arg('messages', 300_000)
  const bodyBytes = arg('body-bytes', 1024)
  const cluster = fork(__filename, ['--child', ...(process.argv.includes('--fake') ? ['--fake'] : [])], {
    execArgv: process.execArgv,
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
    })
    const pc = consumer.getOrCreatePullConsumer(subject, 'bench-warm', { startFrom: 'earliest' })
    await pc.pull(1, 0).catch(() => [])

    // ---- produce
    const producer = new MessageProducerProvider({
      appCode: 'bench',
      metaServer: metaUrl,
      ...producerOptions,
    })
    await producer.init()
    const body = Buffer.alloc(bodyBytes, 0x61)
    await producer.sendMessage(producer.generateMessage(subject).setBody(body)) // route + connection warm-up
    // Keep `window` messages unsettled (within maxQueueSize): every settled send makes room for one
    // more, as an application streaming messages with bounded memory does.
    const window = producerOptions.maxQueueSize
    let done = 0
    let failed = 0
    const started = process.hrtime.bigint()
    const produceCpu = process.cpuUsage()
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
    const produceSec = Number(process.hrtime.bigint() - started) / 1e9
    emit('client-produce', 'throughput', done / produceSec, 'msgs/s')
    emitCpu('client-produce', process.cpuUsage(produceCpu), done)
    emit('client-produce', 'throughput', (done * bodyBytes) / produceSec / 1024 / 1024, 'MiB/s')
    if (failed > 0) emit('client-produce', 'failed', failed, 'msgs')
    await producer.close()

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
    emit('client-consume', 'throughput', consumed / consumeSec, 'msgs/s')
    emitCpu('client-consume', process.cpuUsage(consumeCpu), consumed)
    await consumer.close()
  } finally {
    cluster.send('stop')
    await new Promise((r) => cluster.once('exit', r))
  }
}

if (process.argv.includes('--child')) void child()
else
  main().catch((err: unknown) => {
    console.error(err)
    process.exit(1)
  })
