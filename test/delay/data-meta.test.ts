import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { ManualClock } from '../../src/common/clock'
import { silentLogger } from '../../src/common/logger'
import { DelayServer } from '../../src/delay/delay-server'
import { bucketFileName } from '../../src/delay/store/bucket'
import { delayed, FakeSender, send, T0 } from './helpers/delay-helpers'
import { delayDir, startDelay } from './helpers/start-delay'

/**
 * meta.json's format (src/delay/store/data-meta.ts): a data dir whose message log holds a refusal
 * marker is format 2, which versions before markers refuse to open (they would deliver the markers as
 * messages); one that never held a marker stays format 1.
 */

type Meta = { version?: number; bucketMinutes?: unknown; minutes?: unknown }
const readMeta = (dir: string): Meta =>
  JSON.parse(fs.readFileSync(path.join(dir, 'meta.json'), 'utf8')) as Meta

/** The check every version before markers makes on open (delay-store.ts checkMeta then). */
const olderVersionOpens = (meta: Meta, bucketMinutes: number): boolean => meta.bucketMinutes === bucketMinutes

t.test('delay data meta - a data dir stays format 1 until a refusal marker is written', async (t) => {
  const { dir, closers } = delayDir(t)
  const clock = new ManualClock(T0)
  const { client } = await startDelay(closers, dir, clock, new FakeSender())
  t.same(
    (await send(client, [delayed('kept', T0 + 150_000)])).map((r) => r.status),
    [0],
  )
  t.same(readMeta(dir), { version: 1, bucketMinutes: 1 }, 'nothing refused: format 1')
  t.ok(olderVersionOpens(readMeta(dir), 1), 'an older version opens it')

  const sched = path.join(dir, 'schedule', bucketFileName(T0 + 60_000, '.sched'))
  fs.mkdirSync(sched)
  t.not((await send(client, [delayed('gone', T0 + 90_000)]))[0]?.status, 0, 'refused after its write')
  const meta = readMeta(dir)
  t.equal(meta.version, 2, 'format 2 once a marker is written')
  t.equal(meta.minutes, 1, 'the bucket size kept')
  t.notOk(olderVersionOpens(meta, 1), 'an older version refuses to open it')
  t.match(String(meta.bucketMinutes), /refusal markers/, 'its error quotes why')
  fs.rmdirSync(sched)

  // This version reopens it (and keeps checking the bucket size).
  await (closers.pop() as () => Promise<void>)()
  const { client: c2 } = await startDelay(closers, dir, clock, new FakeSender())
  t.same(await send(c2, [delayed('gone', T0 + 90_000)]), [{ status: 0, message: '' }], 'reopened')
  await (closers.pop() as () => Promise<void>)()
  const other = new DelayServer(
    { port: 0, dataDir: dir, bucketMinutes: 60 },
    { clock, logger: silentLogger, sender: new FakeSender(), routes: { groups: async () => [] } },
  )
  await t.rejects(other.start(), { code: 'QMQ_ERR_CONFIG_INVALID' }, 'another bucket size refused')
  await other.close()
})

t.test('delay data meta - a format from a newer version is refused', async (t) => {
  const { dir, closers } = delayDir(t)
  fs.writeFileSync(path.join(dir, 'meta.json'), JSON.stringify({ version: 3, minutes: 1 }))
  const server = new DelayServer(
    { port: 0, dataDir: dir, bucketMinutes: 1 },
    { logger: silentLogger, sender: new FakeSender(), routes: { groups: async () => [] } },
  )
  await t.rejects(server.start(), { code: 'QMQ_ERR_CONFIG_INVALID', message: /newer qmq/ })
  await server.close()
  t.same(closers, [])
})
