import fs from 'node:fs'
import path from 'node:path'
import type { Test } from 'tap'
import t from 'tap'
import { Broker, type BrokerOptions } from '../../../src/broker/broker'
import type { FsIo } from '../../../src/broker/store'
import { nodeFsIo } from '../../../src/broker/store'
import { createMessageStore, type FileMessageStore } from '../../../src/broker/store/file-message-store'
import { silentLogger } from '../../../src/common/logger'
import { RequestCode } from '../../../src/common/protocol/codes'
import {
  decodeFetchRequest,
  decodeFetchResponse,
  encodeFetchRequest,
  type FetchResponse,
  type ReplicatedLogValue,
} from '../../../src/common/protocol/replication'
import { RawClient } from '../../helpers/raw-client'
import { replicationTestBroker, tempDir, waitUntil } from '../../helpers/replication'
import { ack, message, pull, send } from '../server/ops'

/**
 * What a master counts as a slave's acknowledgement. The slave here is this test, speaking REPL_FETCH
 * itself, so it decides exactly which offset it claims to hold durably.
 */

const SECRET = 'replication-acks-test-secret'

const BASE = replicationTestBroker(SECRET)

function freshDir(t: Test): string {
  return tempDir(t, 'qmq-repl-acks-')
}

function pathOf(fd: number): string {
  try {
    return fs.readlinkSync(`/proc/self/fd/${fd}`)
  } catch {
    return ''
  }
}

function until(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  return waitUntil(what, cond, timeoutMs, 10)
}

/**
 * A master whose store does its file I/O through `io` (to hold or fail fdatasyncs), stopped at the
 * test's teardown; `end` is its message log's end offset.
 */
async function startWithIo(
  t: Test,
  extra: Partial<BrokerOptions>,
  io: FsIo,
): Promise<{ port: number; end: () => number }> {
  let store: FileMessageStore | undefined
  const broker = new Broker(
    { ...BASE, ...extra, dataDir: freshDir(t) },
    {
      logger: silentLogger,
      createStore: (ctx) => {
        store = createMessageStore({
          ...ctx.options,
          clock: ctx.clock,
          logger: ctx.logger,
          registry: ctx.registry,
          io,
        })
        return store
      },
    },
  )
  const { port } = await broker.start()
  t.teardown(() => broker.close())
  return { port, end: () => (store as FileMessageStore).mlog.log.endOffset }
}

/** A hand-driven slave: one REPL_FETCH at a time, claiming `offset` as its durable end. */
async function fetchAt(
  c: RawClient,
  log: ReplicatedLogValue,
  offset: number,
  opts: { slaveId?: string; epoch?: number; waitMs?: number; acked?: number } = {},
): Promise<FetchResponse> {
  const body = await c.call(
    RequestCode.REPL_FETCH,
    encodeFetchRequest({
      token: SECRET,
      slaveId: opts.slaveId ?? 'test-slave:1',
      log,
      offset,
      maxBytes: 1024 * 1024,
      waitMs: opts.waitMs ?? 0,
      epoch: opts.epoch ?? 0,
      acked: opts.acked,
    }),
  )
  return decodeFetchResponse(body)
}

t.test('replication acks - a sync SEND waits for its own records, not for later ones', async (t) => {
  // The master's message-log fdatasyncs are held on demand, so that a second SEND is written while
  // the first one's fdatasync is still running (what steady load does all the time).
  let hold: Promise<void> | undefined
  let release = () => {}
  const io: FsIo = {
    ...nodeFsIo,
    fdatasync: async (fd) => {
      if (hold !== undefined && pathOf(fd).includes('/messagelog/')) await hold
      return nodeFsIo.fdatasync(fd)
    },
  }
  const { port, end } = await startWithIo(t, { flush: 'sync' }, io)

  const slave = await RawClient.connect(port)
  t.teardown(() => slave.close())
  // The slave registers, holding everything (both logs are empty): the group now has an in-sync slave.
  await fetchAt(slave, 0, 0)
  await fetchAt(slave, 1, 0)

  const p1 = await RawClient.connect(port)
  const p2 = await RawClient.connect(port)
  t.teardown(() => p1.close())
  t.teardown(() => p2.close())
  hold = new Promise<void>((r) => {
    release = r
  })
  const e0 = end()
  const first = send(p1, [message('s', 'first', Buffer.alloc(300, 1))])
  await until('the first SEND written', () => end() > e0)
  const e1 = end()
  const second = send(p2, [message('s', 'second', Buffer.alloc(300, 2))])
  await until('the second SEND written', () => end() > e1)
  const e2 = end()
  hold = undefined
  release()

  let firstDone = false
  let secondDone = false
  void first.then(() => {
    firstDone = true
  })
  void second.then(() => {
    secondDone = true
  })
  // The slave wrote both SENDs' records (a pipelined fetch asks past them) but holds only the
  // first's durably (`acked`): the first is answered, not the second.
  await fetchAt(slave, 0, e2, { acked: e1 })
  await until('the first SEND answered', () => firstDone, 3_000).catch(() => {})
  t.ok(firstDone, 'the first SEND is answered once a slave holds its own records')
  t.notOk(secondDone, 'the second SEND still waits: the slave does not hold it')
  t.same(await first, [{ status: 0, message: '' }])
  await fetchAt(slave, 0, e2, { acked: e2 })
  t.same(await second, [{ status: 0, message: '' }], 'answered once the slave holds it too')
})

/** Cuts a stopped broker's log at `offset` (what a crash leaves when its tail was unsynced). */
function cutLog(dir: string, offset: number): void {
  for (const name of fs.readdirSync(dir)) {
    const base = Number(name.replace(/\.log$/, ''))
    const file = path.join(dir, name)
    if (base >= offset && base > 0) fs.rmSync(file)
    else if (fs.statSync(file).size > offset - base) fs.truncateSync(file, offset - base)
  }
}

function segmentFiles(dir: string): Map<string, Buffer> {
  const out = new Map<string, Buffer>()
  for (const name of fs.readdirSync(dir).sort()) out.set(name, fs.readFileSync(path.join(dir, name)))
  return out
}

function ends(b: Broker): { m: number; a: number } {
  const s = b.messageStore as FileMessageStore
  return { m: s.mlog.log.endOffset, a: s.alog.log.endOffset }
}

function caughtUp(master: Broker, slave: Broker): boolean {
  const s = slave.replicationStatus()
  if (!('slave' in s)) return false
  const e = ends(master)
  return s.slave.messageOffset === e.m && s.slave.actionOffset === e.a
}

t.test(
  'replication acks - a master restarted with a shorter log makes the slave cut back before copying on',
  async (t) => {
    const mDir = freshDir(t)
    const sDir = freshDir(t)
    const opts = { ...BASE, replication: 'async' as const, replicationFetchWaitMs: 100 }
    const master = new Broker({ ...opts, dataDir: mDir }, { logger: silentLogger })
    t.teardown(() => master.close())
    const { port, address } = await master.start()
    const slave = new Broker(
      { ...opts, dataDir: sDir, role: 'slave', masterAddress: address },
      { logger: silentLogger },
    )
    t.teardown(() => slave.close())
    await slave.start()
    const c = await RawClient.connect(port)
    for (let i = 0; i < 3; i++) await send(c, [message('s', `kept-${i}`, Buffer.alloc(200, i))])
    const synced = ends(master).m
    const syncedActions = ends(master).a
    for (let i = 0; i < 2; i++) await send(c, [message('s', `lost-${i}`, Buffer.alloc(100, i))])
    // Consumer progress the master loses too (its action log's tail).
    const held = await pull(c, { subject: 's', group: 'g0', consumerId: 'c0', maxMessages: 2 })
    await ack(c, { subject: 's', group: 'g0', consumerId: 'c0', sequences: held.map((m) => m.sequence) })
    t.ok(ends(master).a > syncedActions, 'actions written')
    await until('slave caught up', () => caughtUp(master, slave))
    const slaveHeld = ends(master).m
    await c.close()
    await slave.close()
    // The master crashes; its last two records were never fdatasynced and are gone after restart.
    await (master.messageStore as FileMessageStore).abandon()
    await master.close()
    cutLog(path.join(mDir, 'messagelog'), synced)
    cutLog(path.join(mDir, 'actionlog'), syncedActions)

    const { port: port2 } = await master.start()
    t.equal(ends(master).m, synced, 'the restarted master has the shorter log')
    const c2 = await RawClient.connect(port2)
    t.teardown(() => c2.close())
    // Written at the offsets the slave's copy of the lost records occupies, and past its end.
    for (let i = 0; i < 3; i++) await send(c2, [message('s', `new-${i}`, Buffer.alloc(400, 9 - i))])
    t.ok(ends(master).m > slaveHeld, "the master's log passes the slave's copy")

    await slave.start()
    await until('slave caught up again', () => caughtUp(master, slave))
    await slave.close()
    for (const dir of ['messagelog', 'actionlog']) {
      const a = segmentFiles(path.join(mDir, dir))
      const b = segmentFiles(path.join(sDir, dir))
      t.same([...b.keys()], [...a.keys()], `${dir}: same segments`)
      for (const [name, bytes] of b)
        t.ok(a.get(name)?.subarray(0, bytes.length).equals(bytes), `${dir}/${name}: same bytes`)
    }

    // Opened as a master, the copy holds the kept and the new records, not the lost ones.
    await master.close()
    const promoted = new Broker({ ...opts, dataDir: sDir }, { logger: silentLogger })
    t.teardown(() => promoted.close())
    const { port: port3 } = await promoted.start()
    const pc = await RawClient.connect(port3)
    t.teardown(() => pc.close())
    const got = await pull(pc, { subject: 's', group: 'g', consumerId: 'c', maxMessages: 100 })
    t.same(
      got.map((m) => m.record.id),
      ['kept-0', 'kept-1', 'kept-2', 'new-0', 'new-1', 'new-2'],
    )
  },
)

t.test('replication acks - acked travels as an optional trailing field of REPL_FETCH', async (t) => {
  const base = { token: 'x', slaveId: 'h:1', log: 0 as const, offset: 500, maxBytes: 10, waitMs: 0, epoch: 2 }
  const plain = encodeFetchRequest(base)
  t.equal(decodeFetchRequest(plain).acked, undefined, 'absent: the offset is the acknowledgement')
  t.equal(encodeFetchRequest({ ...base, acked: 500 }).length, plain.length, 'not sent when equal to offset')
  const piped = encodeFetchRequest({ ...base, acked: 300 })
  t.equal(piped.length, plain.length + 8, 'one i64 at the end; the fields before it unchanged')
  t.same(piped.subarray(0, plain.length), plain)
  t.equal(decodeFetchRequest(piped).acked, 300)
  t.throws(() => decodeFetchRequest(encodeFetchRequest({ ...base, acked: 501 })), /acked/)
})

t.test(
  'replication acks - a slave copies a backlog of many chunks byte for byte (pipelined fetches)',
  async (t) => {
    const mDir = freshDir(t)
    const sDir = freshDir(t)
    const master = new Broker({ ...BASE, dataDir: mDir, segmentBytes: 64 * 1024 }, { logger: silentLogger })
    t.teardown(() => master.close())
    const { port, address } = await master.start()
    const c = await RawClient.connect(port)
    t.teardown(() => c.close())
    for (let i = 0; i < 40; i++) {
      await send(
        c,
        Array.from({ length: 10 }, (_, j) => message('s', `b-${i}-${j}`, Buffer.alloc(900, i + j))),
      )
    }
    const slave = new Broker(
      {
        ...BASE,
        dataDir: sDir,
        role: 'slave',
        masterAddress: address,
        replicationFetchBytes: 8 * 1024,
        replicationFetchWaitMs: 100,
      },
      { logger: silentLogger },
    )
    t.teardown(() => slave.close())
    await slave.start()
    await until('slave caught up', () => caughtUp(master, slave), 30_000)
    await until('the master counts it all durable (the next fetch acknowledges the last chunk)', () => {
      const st = master.replicationStatus()
      return 'slaves' in st && st.slaves.some((x) => x.messageOffset === ends(master).m)
    })
    await slave.close()
    for (const dir of ['messagelog', 'actionlog']) {
      const a = segmentFiles(path.join(mDir, dir))
      const b = segmentFiles(path.join(sDir, dir))
      t.same([...b.keys()], [...a.keys()], `${dir}: same segments`)
      for (const [name, bytes] of b)
        t.ok(a.get(name)?.subarray(0, bytes.length).equals(bytes), `${dir}/${name}`)
    }
  },
)

t.test(
  'replication acks - a fetch parked while the master cuts its log is told to cut, not given spliced bytes',
  async (t) => {
    // The master's next message-log fdatasync is held, then fails: the batch is rejected and cut off.
    let hold: Promise<void> | undefined
    let release = () => {}
    const eio = Object.assign(new Error('EIO: injected fdatasync failure'), { code: 'EIO' })
    const io: FsIo = {
      ...nodeFsIo,
      fdatasync: async (fd) => {
        if (hold !== undefined && pathOf(fd).includes('/messagelog/')) {
          await hold
          throw eio
        }
        return nodeFsIo.fdatasync(fd)
      },
    }
    const { port, end } = await startWithIo(t, { flush: 'sync', replication: 'async' }, io)
    const slave = await RawClient.connect(port)
    t.teardown(() => slave.close())
    const p = await RawClient.connect(port)
    t.teardown(() => p.close())
    await send(p, [message('s', 'before')])
    const e0 = end()
    t.equal((await fetchAt(slave, 0, 0)).data.length, e0, 'the slave copied everything')
    await fetchAt(slave, 0, e0)

    hold = new Promise<void>((r) => {
      release = r
    })
    const lost = send(p, [message('s', 'lost', Buffer.alloc(100, 1))])
    await until('the doomed batch written', () => end() > e0)
    const e1 = end()
    const copied = await fetchAt(slave, 0, e0)
    t.equal(copied.data.length, e1 - e0, 'the slave copied it before the master synced it')
    // The slave's next fetch waits at its end; meanwhile the master cuts and writes a longer record.
    const parked = fetchAt(slave, 0, e1, { waitMs: 5_000 })
    await new Promise((r) => setTimeout(r, 50))
    const h = hold
    hold = undefined
    release()
    await h
    const [r] = await lost
    t.not(r?.status, 0, 'the batch whose fdatasync failed is refused')
    await until('the master cut its log', () => end() === e0)
    await send(p, [message('s', 'after', Buffer.alloc(400, 2))])
    t.ok(end() > e1, "the master's new record passes the slave's end")
    const res = await parked
    t.equal(res.kind, 1, 'TRUNCATE')
    t.equal(res.offset, e0, 'to where the master cut')
  },
)
