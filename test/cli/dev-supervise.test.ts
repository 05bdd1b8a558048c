import { spawn } from 'node:child_process'
import { createServer } from 'node:net'
import { createInterface } from 'node:readline'
import t from 'tap'
import { QMQ_BIN } from '../../src/cli/child-service'
import { MetaClient } from '../../src/common/meta/meta-client'
import { testDir } from '../helpers/testdir'

// Issue 19 item 9: `qmq dev` restarts a service that dies (only Ctrl-C stops the cluster), and a busy
// port is a one-line hint naming the flag to change, not a stack trace.

interface DevInfo {
  metaAddress: string
  brokers: { group: string; address: string; pid: number }[]
}

t.test('qmq dev - a SIGKILLed broker is restarted on its address; Ctrl-C still stops all', async (t) => {
  const dir = testDir(t)
  const dev = spawn(
    process.execPath,
    [
      QMQ_BIN,
      'dev',
      '--data-dir',
      dir,
      '--brokers',
      '1',
      '--delays',
      '0',
      '--metaserver-port',
      '0',
      '--broker-port',
      '0',
      '--json',
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  )
  const exited = new Promise<number | null>((r) => dev.once('exit', (code) => r(code)))
  t.teardown(() => {
    if (dev.exitCode === null) dev.kill('SIGKILL')
  })
  let stderr = ''
  const stderrLines: string[] = []
  createInterface({ input: dev.stderr }).on('line', (l) => {
    stderr += `${l}\n`
    stderrLines.push(l)
  })
  const info = await new Promise<DevInfo>((resolve) =>
    createInterface({ input: dev.stdout }).once('line', (l) => resolve(JSON.parse(l) as DevInfo)),
  )
  const broker = info.brokers[0]
  t.ok(broker && broker.pid > 0, 'the JSON line names each service pid')
  process.kill(broker?.pid as number, 'SIGKILL')

  const until = async (what: string, ok: () => boolean | Promise<boolean>, ms = 30_000) => {
    const end = Date.now() + ms
    while (!(await ok())) {
      if (Date.now() > end || dev.exitCode !== null) throw new Error(`${what}; stderr: ${stderr}`)
      await new Promise((r) => setTimeout(r, 100))
    }
  }
  await until('no restart line', () => stderrLines.some((l) => /broker-1 restarted/.test(l)))
  t.ok(
    stderrLines.some((l) => /broker-1 exited \(SIGKILL\); restarting in/.test(l)),
    stderr,
  )
  t.equal(dev.exitCode, null, 'qmq dev is still running')
  const meta = new MetaClient({ url: info.metaAddress, timeoutMs: 2_000 })
  t.teardown(() => meta.close())
  await until('broker-1 not alive again on its address', async () => {
    const groups = await meta.listGroups().catch(() => [])
    return groups.some((g) => g.name === 'broker-1' && g.alive && g.address === broker?.address)
  })
  t.pass('broker-1 is alive again on the same address')

  dev.kill('SIGINT')
  t.equal(await exited, 0, 'Ctrl-C stops the cluster cleanly')
})

t.test('qmq dev - a busy port is a one-line hint and exit 1', async (t) => {
  const busy = createServer()
  await new Promise<void>((r) => busy.listen(0, '127.0.0.1', r))
  t.teardown(() => busy.close())
  const port = (busy.address() as { port: number }).port
  const dev = spawn(
    process.execPath,
    [QMQ_BIN, 'dev', '--data-dir', testDir(t), '--metaserver-port', String(port)],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  )
  let stderr = ''
  dev.stderr.on('data', (d) => {
    stderr += String(d)
  })
  const code = await new Promise<number | null>((r) => dev.once('exit', (c) => r(c)))
  t.equal(code, 1, stderr)
  t.match(stderr, new RegExp(`port ${port} in use: is another cluster running\\? use --metaserver-port`))
  t.notMatch(stderr, /\n\s+at /, 'no stack trace')
  t.equal(stderr.trim().split('\n').length, 1, `one line: ${stderr}`)
})
