/**
 * Child-process entry for crash tests and benchmarks: starts a Broker on the data dir given as the
 * first argument, prints `{"port":N}` on one line to stdout, and runs until killed.
 * Usage: node --import tsx test/broker/server/broker-child.ts <dataDir> [optionsJson]
 * Without arguments it exits at once (so a test runner that picks it up does nothing).
 */
import { Broker } from '../../../src/broker/broker'
import { silentLogger } from '../../../src/common/logger'

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
