/**
 * Not a benchmark by itself: the broker process the broker benchmarks spawn. Starts a Broker on the
 * data dir given as the first argument (options as JSON in the second), prints `{"port":N}` and runs
 * until SIGTERM/SIGKILL. Without arguments it exits at once (so bench/run.ts skips it cheaply).
 */
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { Broker } from '../src/broker/broker'
import { silentLogger } from '../src/common/logger'

/**
 * QMQ_BROKER_LOOP_STATS=1: at exit, prints to stderr one JSON line with the broker's event-loop delay
 * percentiles (ms) and the store's fdatasync/append latency histograms (diagnosis of latency tails).
 */
const loopStats = process.env.QMQ_BROKER_LOOP_STATS === '1'

async function main(): Promise<void> {
  const dataDir = process.argv[2]
  if (dataDir === undefined) return
  const extra = process.argv[3] === undefined ? {} : (JSON.parse(process.argv[3]) as Record<string, unknown>)
  const broker = new Broker({ port: 0, httpPort: -1, ...extra, dataDir }, { logger: silentLogger })
  const { port } = await broker.start()
  const h = loopStats ? monitorEventLoopDelay({ resolution: 1 }) : undefined
  h?.enable()
  process.stdout.write(`${JSON.stringify({ port })}\n`)
  const stop = async () => {
    if (h !== undefined) {
      h.disable()
      const ms = (n: number) => +(n / 1e6).toFixed(2)
      const hist: Record<string, unknown> = {}
      for (const m of await broker.registry.getMetricsAsJSON()) {
        if (String(m.type) !== 'histogram' || !/sync|append|request|write/.test(m.name)) continue
        hist[m.name] = (m.values as { value: number; labels: Record<string, unknown>; metricName?: string }[])
          .filter((v) => v.metricName?.endsWith('_bucket') === true && v.value > 0)
          .map((v) => `${v.labels.request ?? ''}le${v.labels.le}:${v.value}`)
          .join(' ')
      }
      process.stderr.write(
        `${JSON.stringify({
          brokerLoopDelayMs: {
            p50: ms(h.percentile(50)),
            p90: ms(h.percentile(90)),
            p99: ms(h.percentile(99)),
            p999: ms(h.percentile(99.9)),
            max: ms(h.max),
          },
          hist,
        })}\n`,
      )
    }
    broker.close().then(
      () => process.exit(0),
      () => process.exit(1),
    )
  }
  process.on('SIGTERM', () => void stop())
  process.on('SIGINT', () => void stop())
}

main().catch((err) => {
  process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`)
  process.exit(1)
})
