import t from 'tap'
import { Message } from '../../src/client'
import { encodeRecord } from '../../src/common/record'
import { type Dialect, openCluster, openDb, outboxRows, stopSharedPostgres } from './helpers'
import { watchdogCli } from './processes'

/** Two watchdog processes draining one outbox at once never send a row twice. */
t.teardown(stopSharedPostgres)

for (const dialect of ['sqlite', 'postgres'] as Dialect[]) {
  t.test(`crash ${dialect} - two watchdogs on one outbox never send a row twice`, async (t) => {
    const cluster = await openCluster(t)
    const db = await openDb(t, dialect)
    const ids: string[] = []
    const old = Date.now() - 60_000
    for (let i = 0; i < 200; i++) {
      const m = Message.create('order.two').setProperty('i', i)
      ids.push(m.getMessageId())
      await db.sql(
        `INSERT INTO ${db.provider.outboxTable} (message_id, subject, record, deliver_at, created_at) VALUES (?, ?, ?, ?, ?)`,
        [m.getMessageId(), 'order.two', encodeRecord(m.toRecord()), null, old + i],
      )
    }
    const [a, b] = await Promise.all([
      watchdogCli(t, db, cluster.metaUrl, ['--batch', '5']),
      watchdogCli(t, db, cluster.metaUrl, ['--batch', '5']),
    ])
    t.equal(a.code, 0, a.code === 0 ? 'watchdog A exited 0' : a.out)
    t.equal(b.code, 0, b.code === 0 ? 'watchdog B exited 0' : b.out)
    const ra = (JSON.parse(a.out.split('\n')[0] as string) as { resent: string[] }).resent
    const rb = (JSON.parse(b.out.split('\n')[0] as string) as { resent: string[] }).resent
    t.comment(`watchdog A resent ${ra.length}, B ${rb.length}`)
    const both = ra.filter((id) => rb.includes(id))
    t.same(both, [], 'no row was sent by both')
    t.same([...ra, ...rb].sort(), [...ids].sort(), 'every row was sent once')
    t.equal(await outboxRows(db), 0)
  })
}
