import { execFile, execFileSync, spawn } from 'node:child_process'
import { promisify } from 'node:util'
import { createInterface } from 'node:readline'
import t from 'tap'
import { QMQ_BIN } from '../../src/cli/child-service'
import { MessageConsumerProvider, MessageProducerProvider, TimeUnit } from '../../src/client'
import { testDir } from '../helpers/testdir'

/**
 * The README's first command: `npm start` (= `qmq dev`) starts a whole local cluster as separate
 * processes, serves a produce/consume round trip (real-time and delayed), and stops cleanly on Ctrl-C.
 */
t.test('local cluster - qmq dev serves a round trip and stops cleanly on SIGINT', async (t) => {
  const dir = testDir(t)
  const dev = spawn(
    process.execPath,
    [
      QMQ_BIN,
      'dev',
      '--data-dir',
      dir,
      '--metaserver-port',
      '0',
      '--broker-port',
      '0',
      '--delay-port',
      '0',
      '--json',
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  )
  const exited = new Promise<number | null>((r) => dev.once('exit', (code) => r(code)))
  t.teardown(async () => {
    if (dev.exitCode === null && dev.signalCode === null) dev.kill('SIGKILL')
    await exited
    // A dead `qmq dev` takes its services down (they watch their IPC channel); make sure anyway.
    try {
      execFileSync('pkill', ['-KILL', '-f', dir])
    } catch {}
  })
  const cluster = await new Promise<{ metaAddress: string; brokers: unknown[]; delays: unknown[] }>(
    (resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error('qmq dev did not print its addresses within 60 s')),
        60_000,
      )
      createInterface({ input: dev.stdout }).on('line', (line) => {
        if (!line.startsWith('{')) return
        clearTimeout(timer)
        resolve(JSON.parse(line))
      })
      exited.then((code) => reject(new Error(`qmq dev exited early with ${code}`)))
    },
  )
  t.equal(cluster.brokers.length, 2, 'two broker groups')
  t.equal(cluster.delays.length, 1, 'one delay group')

  const producer = new MessageProducerProvider({ appCode: 'e2e', metaServer: cluster.metaAddress })
  await producer.init()
  // Heartbeats every second (not every third of the broker's 30 s lease): billing stays active on the
  // brokers while the CLI commands below run, however slow a loaded machine makes them.
  const consumer = new MessageConsumerProvider({
    appCode: 'e2e',
    metaServer: cluster.metaAddress,
    heartbeatIntervalMs: 1_000,
  })
  t.teardown(() => consumer.close())
  await consumer.init()
  const pull = consumer.getOrCreatePullConsumer('e2e.orders', 'billing', { startFrom: 'earliest' })

  const sent = new Set<string>()
  const sends: Promise<unknown>[] = []
  for (let i = 0; i < 200; i++) {
    const m = producer.generateMessage('e2e.orders')
    m.setProperty('n', i)
    if (i % 40 === 0) m.setDelayTime(1500, TimeUnit.MILLISECONDS)
    sent.add(m.getMessageId())
    sends.push(producer.sendMessage(m))
  }
  await Promise.all(sends)

  const got = new Set<string>()
  const deadline = Date.now() + 30_000
  while (got.size < sent.size && Date.now() < deadline) {
    for (const m of await pull.pull(100, 1000)) {
      got.add(m.getMessageId())
      await m.ack()
    }
  }
  t.same(
    [...sent].filter((id) => !got.has(id)),
    [],
    'every sent message (real-time and delayed) is consumed',
  )
  await producer.close()

  // The operator CLI against the same cluster.
  const qmq = async (...args: string[]) => {
    const { stdout } = await promisify(execFile)(
      process.execPath,
      [QMQ_BIN, ...args, '--metaserver', cluster.metaAddress],
      {
        encoding: 'utf8',
      },
    )
    return stdout
  }
  const sentByCli = JSON.parse(
    await qmq('send', 'e2e.cli', '--property', 'k=v', '--tag', 'red', '--body', 'hi', '--json'),
  )
  t.equal(sentByCli.sent, 1)
  const tailed = JSON.parse(
    await qmq('tail', 'e2e.cli', '--group', 'cli', '--from', 'earliest', '--count', '1', '--json'),
  )
  t.match(
    tailed,
    { id: sentByCli.ids[0], tags: ['red'], properties: { k: 'v' }, body: 'hi' },
    'tail prints what send sent',
  )
  const groups = JSON.parse(await qmq('groups', '--json')) as { name: string; alive: boolean }[]
  t.same(groups.map((g) => [g.name, g.alive]).sort(), [
    ['broker-1', true],
    ['broker-2', true],
    ['delay-1', true],
  ])
  const subjects = JSON.parse(await qmq('subjects', '--json')) as { subject: string }[]
  t.ok(
    subjects.some((s) => s.subject === 'e2e.orders'),
    'subjects lists e2e.orders',
  )
  const backlog = JSON.parse(await qmq('backlog', 'e2e.orders', 'billing', '--json')) as {
    pending: number
    inFlight: number
  }[]
  t.ok(backlog.length > 0, 'backlog answers for every broker group of the subject')
  t.same(
    backlog.map((b) => b.pending + b.inFlight),
    backlog.map(() => 0),
    'billing consumed and acked everything',
  )
  t.match(await qmq('dlq', 'list', 'e2e.orders', '--group', 'billing'), /no dead letters/)
  // billing's consumer is still open and heartbeating: the group cannot be forgotten.
  await t.rejects(qmq('forget-group', 'e2e.orders', 'billing'), {
    code: 1,
    stderr: /QMQ_ERR_GROUP_ACTIVE/,
  })
  await consumer.close()
  t.same(
    JSON.parse(await qmq('forget-group', 'e2e.orders', 'nobody', '--json')),
    { subject: 'e2e.orders', group: 'nobody', brokerGroups: [] },
    'forgetting a group nobody knows changes nothing',
  )

  dev.kill('SIGINT')
  t.equal(await exited, 0, 'qmq dev exits 0 after Ctrl-C')
  let left = ''
  try {
    left = execFileSync('pgrep', ['-f', dir], { encoding: 'utf8' })
  } catch {
    left = ''
  }
  t.equal(left.trim(), '', 'no service process is left running')
})
