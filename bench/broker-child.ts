/**
 * Not a benchmark by itself: the broker process the broker benchmarks spawn. Starts a Broker on the
 * data dir given as the first argument (options as JSON in the second), prints `{"port":N}` and runs
 * until SIGTERM/SIGKILL. Without arguments it exits at once (so bench/run.ts skips it cheaply).
 */
import { Broker } from '../src/broker/broker'
import { silentLogger } from '../src/common/logger'

async function main(): Promise<void> {
  const dataDir = process.argv[2]
  if (dataDir === undefined) return
  const extra = process.argv[3] === undefined ? {} : (JSON.parse(process.argv[3]) as Record<string, unknown>)
  const broker = new Broker({ port: 0, httpPort: -1, ...extra, dataDir }, { logger: silentLogger })
  const { port } = await broker.start()
  process.stdout.write(`${JSON.stringify({ port })}\n`)
  const stop = () => {
    broker.close().then(
      () => process.exit(0),
      () => process.exit(1),
    )
  }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
}

main().catch((err) => {
  process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`)
  process.exit(1)
})
