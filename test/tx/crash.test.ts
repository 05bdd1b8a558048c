import { type ChildProcess, spawn } from 'node:child_process'
import { createServer, type Socket } from 'node:net'
import { join } from 'node:path'
import t from 'tap'
import { encodeRecord } from '../../src/common/record'
import { Message } from '../../src/client'
import {
  collect,
  type Dialect,
  openCluster,
  openDb,
  outboxRows,
  stopSharedPostgres,
  type TestDb,
  until,
} from './helpers'

/**
 * Crashes and concurrency with real processes: a producer SIGKILLed between COMMIT and the send,
 * whose messages a new process's watchdog (`qmq outbox-watchdog`) delivers; two watchdogs draining
 * one outbox at once never send a row twice.
 */
t.teardown(stopSharedPostgres)

const root = join(__dirname, '..', '..')
type T = { teardown: (fn: () => unknown) => void }

function spawnTs(t: T, script: string, args: string[]): ChildProcess {
  const child = spawn(process.execPath, ['--import', 'tsx', script, ...args], {
    cwd: root,
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  })
  return child
}

function firstLine(child: ChildProcess): Promise<string> {
  return new Promise((resolve, reject) => {
    let out = ''
    let err = ''
    child.stderr?.on('data', (d: Buffer) => {
      err += d.toString()
    })
    child.stdout?.on('data', (d: Buffer) => {
      out += d.toString()
      const nl = out.indexOf('\n')
      if (nl >= 0) resolve(out.slice(0, nl))
    })
    child.once('exit', (code) => reject(new Error(`child exited ${code} before a line: ${out}\n${err}`)))
  })
}

function watchdogCli(
  t: T,
  db: TestDb,
  metaUrl: string,
  extra: string[] = [],
): Promise<{ code: number; out: string }> {
  const run = spawn(
    process.execPath,
    [
      join(root, 'bin', 'qmq.js'),
      'outbox-watchdog',
      '--db',
      db.url,
      '--table',
      db.provider.outboxTable,
      '--metaserver',
      metaUrl,
      '--once',
      '--json',
      ...extra,
    ],
    { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] },
  )
  t.teardown(() => {
    if (run.exitCode === null) run.kill('SIGKILL')
  })
  let out = ''
  let err = ''
  run.stdout.on('data', (d: Buffer) => {
    out += d.toString()
  })
  run.stderr.on('data', (d: Buffer) => {
    err += d.toString()
  })
  return new Promise((resolve) =>
    run.once('exit', (code) => resolve({ code: code ?? -1, out: code === 0 ? out : out + err })),
  )
}

/** A metaserver address that accepts connections and never answers: sends hang there. */
async function blackHole(t: T): Promise<string> {
  const sockets = new Set<Socket>()
  const server = createServer((s) => {
    sockets.add(s)
    s.on('error', () => {})
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  t.teardown(
    () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy()
        server.close(() => r())
      }),
  )
  const addr = server.address()
  return `http://127.0.0.1:${typeof addr === 'object' && addr !== null ? addr.port : 0}/meta/address`
}

for (const dialect of ['sqlite', 'postgres'] as Dialect[]) {
  t.test(
    `crash ${dialect} - a producer SIGKILLed between COMMIT and the send: a new process's watchdog delivers its messages with their ids`,
    async (t) => {
      const cluster = await openCluster(t)
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
