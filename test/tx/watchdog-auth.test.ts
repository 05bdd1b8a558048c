import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { Broker } from '../../src/broker/broker'
import { MessageConsumerProvider } from '../../src/client/consumer/consumer-provider'
import { silentLogger } from '../../src/common/logger'
import { MetaClient } from '../../src/common/meta/meta-client'
import { Metaserver } from '../../src/metaserver/main'
import { CLUSTER_SECRET, TOKEN } from '../metaserver/helpers'
import { openDb, outboxRows, until } from './helpers'
import { blackHole, firstLine, spawnTs, watchdogCli } from './processes'

/**
 * `qmq outbox-watchdog` against a cluster whose metaserver and broker run with --auth: it sends the
 * rows as the application whose outbox it drains (QMQ_APP_CODE / QMQ_APP_TOKEN). It used to connect
 * as an app of its own without a token, and every send was refused.
 */
t.test('watchdog - drains an outbox into a cluster with auth on, as the outbox owner', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'qmq-tx-auth-'))
  const meta = new Metaserver(
    {
      port: 0,
      dataDir: join(dir, 'meta'),
      adminToken: TOKEN,
      clusterSecret: CLUSTER_SECRET,
      auth: true,
      authRefreshMs: 150,
    },
    { logger: silentLogger },
  )
  await meta.start()
  const admin = new MetaClient({ url: meta.url, adminToken: TOKEN })
  const owner = await admin.createApp('orders', [
    { action: 'produce', subject: 'order.*' },
    { action: 'consume', subject: 'order.*', group: 'g' },
  ])
  const broker = new Broker(
    {
      metaserver: meta.url,
      clusterSecret: CLUSTER_SECRET,
      auth: true,
      authRefreshMs: 150,
      port: 0,
      httpPort: -1,
      heartbeatIntervalMs: 200,
      dataDir: join(dir, 'broker'),
    },
    { logger: silentLogger },
  )
  await broker.start()
  t.teardown(async () => {
    await broker.close()
    await admin.close()
    await meta.close()
    rmSync(dir, { recursive: true, force: true })
  })

  // Three committed rows whose producer died before sending them.
  const db = await openDb(t, 'sqlite')
  const child = spawnTs(t, join(__dirname, 'fixtures', 'crash-child.ts'), [
    db.url,
    db.provider.outboxTable,
    await blackHole(t),
    '3',
    '0',
  ])
  const { committed } = JSON.parse(await firstLine(child)) as { committed: string[] }
  child.kill('SIGKILL')
  await new Promise((r) => child.once('exit', r))
  t.equal(await outboxRows(db), 3, 'the committed rows wait in the outbox')

  const seen = new Set<string>()
  const consumer = new MessageConsumerProvider({
    appCode: owner.appCode,
    token: owner.token,
    metaServer: meta.url,
    pullTimeoutMs: 300,
  })
  consumer.addListener('order.crash', 'g', async (m) => {
    seen.add(m.getMessageId())
  })
  await consumer.start()
  t.teardown(() => consumer.close())

  const { QMQ_APP_CODE: _c, QMQ_APP_TOKEN: _t, ...base } = process.env
  const anonymous = await watchdogCli(t, db, meta.url, [], base)
  t.not(anonymous.code, 0, 'without the app credential the rows cannot be sent')
  t.equal(await outboxRows(db), 3, 'and they stay in the outbox')

  // The refused run backed the rows off (1 s, doubling): run the watchdog until they are due and sent.
  const env = { ...base, QMQ_APP_CODE: owner.appCode, QMQ_APP_TOKEN: owner.token }
  const resent: string[] = []
  const failures: string[] = []
  await until(
    async () => {
      const r = await watchdogCli(t, db, meta.url, [], env)
      if (r.code !== 0) failures.push(r.out)
      else resent.push(...(JSON.parse(r.out.split('\n')[0] as string) as { resent: string[] }).resent)
      return resent.length >= 3 || failures.length > 0
    },
    30_000,
    'the rows resent',
  )
  t.same(failures, [], 'every watchdog run exited 0')
  t.same([...resent].sort(), [...committed].sort(), 'every committed row resent, once')
  await until(() => seen.size === 3, 15_000, 'three messages consumed')
  t.same([...seen].sort(), [...committed].sort(), 'delivered with the ids of the commit')
  t.equal(await outboxRows(db), 0, 'the outbox is empty')
})
