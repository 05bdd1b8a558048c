import { spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import t from 'tap'
import { MessageConsumerProvider, MessageProducerProvider } from '../../src/client'
import { QMQ_BIN } from '../../src/cli/child-service'
import { startCluster } from '../helpers/cluster'
import { testDir } from '../helpers/testdir'

// Issue 19 item 4: `qmq tail ... | head -1` must not crash with EPIPE nor keep 49 messages leased:
// a closed stdout ends the command cleanly, and what it pulled but did not print goes back to the group.

t.test('cli tail - a closed stdout ends tail cleanly and releases the unprinted messages', async (t) => {
  const cluster = await startCluster({ dir: testDir(t), brokers: 1 })
  t.teardown(() => cluster.close())
  await cluster.waitAlive('broker', 1)
  const producer = new MessageProducerProvider({ appCode: 'p', metaServer: cluster.metaUrl })
  t.teardown(() => producer.close())
  await producer.init()
  const ids = new Set<string>()
  for (let i = 0; i < 50; i++) {
    const m = producer.generateMessage('tail.pipe').setProperty('i', i)
    ids.add(m.getMessageId())
    await producer.sendMessage(m)
  }

  const child = spawn(
    process.execPath,
    [
      QMQ_BIN,
      'tail',
      'tail.pipe',
      '--group',
      'g',
      '--from',
      'earliest',
      '--metaserver',
      cluster.metaUrl,
      '--json',
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  )
  let stderr = ''
  child.stderr.on('data', (d) => {
    stderr += String(d)
  })
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)))
  const first = await new Promise<string>((resolve) => {
    const lines = createInterface({ input: child.stdout })
    lines.once('line', (line) => {
      lines.close()
      // What `head -1` does: read one line, then close the pipe.
      child.stdout.destroy()
      resolve(line)
    })
  })
  const firstId = (JSON.parse(first) as { id: string }).id
  t.ok(ids.has(firstId))
  const timer = setTimeout(() => child.kill('SIGKILL'), 30_000)
  const code = await exited
  clearTimeout(timer)
  t.equal(code, 0, `exit code 0 (stderr: ${stderr})`)
  t.notMatch(stderr, /EPIPE|at .*\.js/, 'no stack trace')
  const said = /output closed after (\d+) message/.exec(stderr)
  t.ok(said, `says it stopped because its output closed (stderr: ${stderr})`)
  const printed = Number(said?.[1])
  t.ok(printed >= 1 && printed < 50, `printed ${printed}`)

  // Everything not printed is available to the group again well before the 30 s lease would end.
  const consumer = new MessageConsumerProvider({ appCode: 'c', metaServer: cluster.metaUrl })
  t.teardown(() => consumer.close())
  await consumer.init()
  const pc = consumer.getOrCreatePullConsumer('tail.pipe', 'g', { startFrom: 'earliest' })
  const got = new Set<string>()
  const end = Date.now() + 10_000
  while (got.size < 50 - printed && Date.now() < end) {
    for (const m of await pc.pull(100, 500)) {
      got.add(m.getMessageId())
      await m.ack()
    }
  }
  t.equal(got.size, 50 - printed, 'the unprinted messages came back within 10 s')
  t.notOk(got.has(firstId), 'the printed message was acked')
})

t.test('cli tail - a closed stdout ends tail even when no further message comes', async (t) => {
  const cluster = await startCluster({ dir: testDir(t), brokers: 1 })
  t.teardown(() => cluster.close())
  await cluster.waitAlive('broker', 1)
  const producer = new MessageProducerProvider({ appCode: 'p', metaServer: cluster.metaUrl })
  t.teardown(() => producer.close())
  await producer.init()
  await producer.sendMessage(producer.generateMessage('tail.idle'))

  // A real shell pipe (what users run), not the socket pair spawn's 'pipe' gives: `head -1` reads one
  // line and exits, closing the read end; nothing more is ever sent to the subject.
  const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`
  const tail = [process.execPath, QMQ_BIN, 'tail', 'tail.idle', '--group', 'g', '--from', 'earliest']
  const script = `${[...tail, '--metaserver', cluster.metaUrl].map(q).join(' ')} | head -1`
  const child = spawn('sh', ['-c', script], { stdio: ['ignore', 'pipe', 'pipe'], detached: true })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (d) => {
    stdout += String(d)
  })
  child.stderr.on('data', (d) => {
    stderr += String(d)
  })
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)))
  // Before the fix tail waited for the next message to notice, i.e. forever here; the bound is
  // generous for a loaded machine (it ends within about a second of the first line).
  let killed = false
  const timer = setTimeout(() => {
    killed = true
    process.kill(-(child.pid as number), 'SIGKILL') // the shell and the pipeline it started
  }, 30_000)
  await exited
  clearTimeout(timer)
  t.equal(stdout.split('\n').filter((l) => l !== '').length, 1, 'head printed the first line')
  t.notOk(killed, `the pipeline ended by itself, not killed (stderr: ${stderr})`)
  t.match(stderr, /output closed after 1 message/, 'tail says its output closed')
  t.notMatch(stderr, /EPIPE|at .*\.js/, 'no stack trace')
})
