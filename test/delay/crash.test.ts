import { type ChildProcess, spawn } from 'node:child_process'
import path from 'node:path'
import { createInterface } from 'node:readline'
import t from 'tap'
import { RawClient } from '../helpers/raw-client'
import { delayed, send, waitFor } from './helpers/delay-helpers'
import { FakeBroker } from './helpers/fake-broker'

const MAIN = path.join(__dirname, '..', '..', 'src', 'delay', 'main.ts')

async function startChild(dir: string, brokers: string): Promise<{ child: ChildProcess; port: number }> {
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

function kill(child: ChildProcess, signal: NodeJS.Signals): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve()
  return new Promise((resolve) => {
    child.once('exit', () => resolve())
    child.kill(signal)
  })
}

t.test('delay - a SIGKILLed delay server restarts without losing a message', async (t) => {
  const children: ChildProcess[] = []
  const broker = await new FakeBroker().start()
  t.teardown(async () => {
    for (const c of children) await kill(c, 'SIGKILL')
    await broker.stop()
  })
  const dir = t.testdir()
  const first = await startChild(dir, `b1=${broker.address}`)
  children.push(first.child)
  const client = await RawClient.connect(first.port)
  const now = Date.now()
  const ids: string[] = []
  const records: Buffer[] = []
  for (let i = 0; i < 300; i++) {
    const id = `k${i}`
    ids.push(id)
    // 200 due within ~2 s (dispatch is under way when the kill comes), 100 due later.
    records.push(delayed(id, i < 200 ? now + 600 + i * 8 : now + 3_500 + i))
  }
  for (let i = 0; i < records.length; i += 50) {
    const res = await send(client, records.slice(i, i + 50))
    t.ok(
      res.every((r) => r.status === 0),
      `batch ${i / 50} acknowledged`,
    )
  }
  await waitFor(() => broker.received.length >= 40, 10_000, 'dispatch to start')
  await kill(first.child, 'SIGKILL')
  client.destroy()
  const deliveredBefore = broker.uniqueIds().size
  t.ok(deliveredBefore < 300, `killed mid-dispatch (${deliveredBefore} delivered)`)

  const second = await startChild(dir, `b1=${broker.address}`)
  children.push(second.child)
  await waitFor(() => broker.uniqueIds().size === 300, 15_000, 'every message after the restart')
  t.same([...broker.uniqueIds()].sort(), [...ids].sort(), 'every acknowledged message was delivered')
  const duplicates = broker.received.length - 300
  t.ok(
    duplicates <= deliveredBefore,
    `resent at most what was delivered just before the kill (${duplicates})`,
  )
  await kill(second.child, 'SIGTERM')
})
