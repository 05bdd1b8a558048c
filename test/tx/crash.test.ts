import { join } from 'node:path'
import t from 'tap'
import { collect, type Dialect, openCluster, openDb, outboxRows, stopSharedPostgres, until } from './helpers'
import { blackHole, firstLine, spawnTs, watchdogCli } from './processes'

/**
 * A producer SIGKILLed between COMMIT and the send (it never reaches its metaserver): a new process's
 * watchdog (`qmq outbox-watchdog`) delivers its messages with their ids.
 */
t.teardown(stopSharedPostgres)

for (const dialect of ['sqlite', 'postgres'] as Dialect[]) {
  t.test(
    `crash ${dialect} - a producer SIGKILLed between COMMIT and the send: a new process's watchdog delivers its messages with their ids`,
    async (t) => {
      const cluster = await openCluster(t, true)
      const db = await openDb(t, dialect)
      const { seen } = await collect(t, cluster, 'order.crash')
      const child = spawnTs(t, join(__dirname, 'fixtures', 'crash-child.ts'), [
        db.url,
        db.provider.outboxTable,
        await blackHole(t),
        '5',
      ])
      const { committed, deliverAt } = JSON.parse(await firstLine(child)) as {
        committed: string[]
        deliverAt: number
      }
      child.kill('SIGKILL')
      await new Promise((r) => child.once('exit', r))
      t.equal(committed.length, 5)
      t.equal(await outboxRows(db), 5, 'the committed messages wait in the outbox')
      const delayed = await db.sql(`SELECT deliver_at FROM ${db.provider.outboxTable} WHERE message_id = ?`, [
        committed[0] as string,
      ])
      t.equal(Number(delayed[0]?.deliver_at), deliverAt, 'the delay time is stored with the row')
      t.equal(seen.size, 0, 'nothing was sent by the dead producer')

      const r = await watchdogCli(t, db, cluster.metaUrl)
      t.equal(r.code, 0, r.code === 0 ? 'the watchdog exited 0' : r.out)
      const result = JSON.parse(r.out.split('\n')[0] as string) as { resent: string[]; failed: string[] }
      t.same(
        [...result.resent].sort(),
        [...committed].sort(),
        'the watchdog resent exactly the committed rows',
      )
      await until(() => seen.size === 5, 15_000, 'five messages consumed')
      t.same([...seen.keys()].sort(), [...committed].sort(), 'delivered with the ids of the commit')
      t.equal(await outboxRows(db), 0, 'the outbox is empty')
    },
  )
}
