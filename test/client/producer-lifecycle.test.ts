import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { startCluster } from '../helpers/cluster'

/** The producer's life cycle against a real local cluster (in this process). */
const IDLE_PRODUCER = join(__dirname, 'fixtures', 'idle-producer.ts')

t.test('producer lifecycle - an idle producer never closed does not keep the process alive', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'qmq-idle-'))
  const cluster = await startCluster({ dir, brokers: 1 })
  t.teardown(async () => {
    await cluster.close()
    rmSync(dir, { recursive: true, force: true })
  })
  const child = spawn(process.execPath, ['--import', 'tsx', IDLE_PRODUCER, cluster.metaUrl], {
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let out = ''
  child.stdout.on('data', (c: Buffer) => {
    out += c.toString()
  })
  child.stderr.on('data', (c: Buffer) => {
    out += c.toString()
  })
  // A generous bound: before the fix the child stayed up until the broker closed its idle connection
  // (5 minutes).
  const bound = 30_000
  const code = await new Promise<number | string>((resolve) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      resolve('still running')
    }, bound)
    child.once('exit', (c, sig) => {
      clearTimeout(timer)
      resolve(c ?? String(sig))
    })
  })
  t.match(out, /^sent broker-a$/m, 'the message was sent')
  t.equal(code, 0, `the child exited by itself within ${bound} ms (output: ${out.trim()})`)
})
