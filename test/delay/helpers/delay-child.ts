import { type ChildProcess, spawn } from 'node:child_process'
import path from 'node:path'
import { createInterface } from 'node:readline'
import { DELAY_TEST_SECRET } from './delay-helpers'

/** A delay server as a child process (src/delay/main.ts) for crash tests (not a test file). */

const MAIN = path.join(__dirname, '..', '..', '..', 'src', 'delay', 'main.ts')

export async function startDelayChild(
  dir: string,
  brokers: string,
  env: Record<string, string> = {},
): Promise<{ child: ChildProcess; port: number }> {
  const child = spawn(process.execPath, ['--import', 'tsx', MAIN], {
    env: {
      ...process.env,
      QMQ_DELAY_PORT: '0',
      QMQ_DELAY_DATA_DIR: dir,
      QMQ_DELAY_BUCKET_MINUTES: '1',
      QMQ_DELAY_CHECKPOINT_INTERVAL_MS: '100',
      QMQ_DELAY_RETRY_INITIAL_MS: '20',
      QMQ_DELAY_RETRY_MAX_MS: '200',
      QMQ_DELAY_BROKERS: brokers,
      QMQ_CLUSTER_SECRET: DELAY_TEST_SECRET,
      ...env,
    },
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream })
  const port = await new Promise<number>((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`delay child exited with ${code}`)))
    lines.once('line', (line) => resolve((JSON.parse(line) as { port: number }).port))
  })
  return { child, port }
}

export function killChild(child: ChildProcess, signal: NodeJS.Signals): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve()
  return new Promise((resolve) => {
    child.once('exit', () => resolve())
    child.kill(signal)
  })
}
