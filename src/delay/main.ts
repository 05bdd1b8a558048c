import { optionsFromEnv } from '../common/config'
import { createLogger } from '../common/logger'
import { CLUSTER_SECRET_ENV } from '../common/token'
import { DelayServer } from './delay-server'
import { type DelayOptions, delayOptionsSchema } from './options'

/**
 * Runs one delay server in this process, configured from the environment (`QMQ_DELAY_PORT`,
 * `QMQ_DELAY_DATA_DIR`, `QMQ_DELAY_METASERVER`, ... one variable per option of delayOptionsSchema).
 * `QMQ_DELAY_BROKERS=name=host:port,...` is the `brokers` option (fixed routes); QMQ_CLUSTER_SECRET is
 * the cluster secret. Used by crash tests
 * and benchmarks; the `qmq delay` command of the CLI is the operator's entry point.
 *
 * Prints one JSON line on stdout once listening: {"event":"listening","port":N,"httpPort":N}.
 * Logs go to stderr. SIGTERM/SIGINT close cleanly.
 */
async function main(): Promise<void> {
  const log = createLogger({ level: 'warn', destination: process.stderr })
  const options = optionsFromEnv(delayOptionsSchema, 'QMQ_DELAY_') as Partial<DelayOptions>
  // The cluster secret has one variable for every service (as in the CLI), not QMQ_DELAY_CLUSTER_SECRET.
  delete options.clusterSecret
  const secret = process.env[CLUSTER_SECRET_ENV]
  if (secret !== undefined && secret !== '') options.clusterSecret = secret
  const server = new DelayServer(options, { logger: log })
  await server.start()
  process.stdout.write(
    `${JSON.stringify({ event: 'listening', port: server.port, httpPort: server.httpPort })}\n`,
  )
  const stop = () => {
    server.close().then(
      () => process.exit(0),
      () => process.exit(1),
    )
  }
  process.once('SIGTERM', stop)
  process.once('SIGINT', stop)
}

main().catch((err: unknown) => {
  process.stderr.write(`delay server failed to start: ${err instanceof Error ? err.stack : String(err)}\n`)
  process.exit(1)
})
