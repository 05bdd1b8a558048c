import fs from 'node:fs'
import path from 'node:path'
import type { Test } from 'tap'
import t from 'tap'
import { Broker, type BrokerOptions } from '../../../src/broker/broker'
import { type Checkpoint, loadCheckpoint } from '../../../src/broker/store/checkpoint'
import type { ConsumeEntry } from '../../../src/broker/store/consume-log'
import type { FileMessageStore } from '../../../src/broker/store/file-message-store'
import { silentLogger } from '../../../src/common/logger'
import { RawClient } from '../../helpers/raw-client'
import { replicationTestBroker, tempDir, waitUntil, writeEpochOneAtEnd } from '../../helpers/replication'
import { message, pull, sendOk } from '../server/ops'

/**
 * A slave keeps its consume logs current from the copied message log (replication/slave-consume.ts):
 * opened as a store on promotion, it replays only what follows the checkpoint it installed, not the
 * whole backlog, and serves every message as the master does. Also after a cut of its copy (a former
 * master following the new one) and after a restart in the middle of a catch-up.
 */

const SECRET = 'replication-slave-consume-test-secret'
const SUBJECTS = ['orders', 'payments', 'audit.log', 'émoji-✓']

const BASE = replicationTestBroker(SECRET, {
  replicationFetchWaitMs: 100,
  checkpointIntervalMs: 200,
  // The master writes before and while the slave is away.
  degradedWrites: true,
})

function until(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 60_000): Promise<void> {
  return waitUntil(what, cond, timeoutMs, 20)
}

function broker(t: Test, extra: Partial<BrokerOptions>): Broker {
  const b = new Broker(
    { ...BASE, dataDir: tempDir(t, 'qmq-repl-slave-consume-'), ...extra },
    { logger: silentLogger },
  )
  t.teardown(() => b.close())
  return b
}

function store(b: Broker): FileMessageStore {
  return b.messageStore as FileMessageStore
}

function caughtUp(master: Broker, slave: Broker): boolean {
  const s = slave.replicationStatus()
  if (!('slave' in s)) return false
  const m = store(master)
  return s.slave.messageOffset === m.mlog.log.endOffset && s.slave.actionOffset === m.alog.log.endOffset
}

function installed(dataDir: string): Checkpoint | undefined {
  return loadCheckpoint(path.join(dataDir, 'checkpoint')).checkpoint
}

/** `count` messages spread over SUBJECTS, in batches, each with one of three tags. */
async function produce(c: RawClient, prefix: string, count: number): Promise<void> {
  const batch = 200
  for (let i = 0; i < count; i += batch) {
    const msgs = []
    for (let j = i; j < Math.min(count, i + batch); j++) {
      const subject = SUBJECTS[j % SUBJECTS.length] as string
      msgs.push(message(subject, `${prefix}-${j}`, Buffer.alloc(40 + (j % 90), j), [`t${j % 3}`]))
    }
    await sendOk(c, msgs)
  }
}

/** Every consume-log entry of every subject (sequence, offset, size, time, tags) and the bounds. */
async function consumeEntries(s: FileMessageStore): Promise<Record<string, unknown>> {
  const out: Record<string, unknown> = {}
  for (const name of [...s.subjectsIndex.map.keys()].sort()) {
    const subject = s.subjectsIndex.get(name)
    if (subject === undefined) continue
    const entries: ConsumeEntry[] = []
    for (let seq = subject.lowSeq; seq < subject.nextSeq; ) {
      const got = await subject.consume.read(seq, 4096)
      if (got.length === 0) break
      entries.push(...got)
      seq = (got[got.length - 1] as ConsumeEntry).seq + 1
    }
    out[name] = { lowSeq: subject.lowSeq, nextSeq: subject.nextSeq, entries }
  }
  return out
}

/** What a new group pulls from each subject with a tag filter: (sequence, id, tags), in order. */
async function pulled(b: Broker, group: string): Promise<string[]> {
  const c = await RawClient.connect(b.addresses.port)
  try {
    const out: string[] = []
    for (const subject of SUBJECTS) {
      for (;;) {
        const got = await pull(c, { subject, group, consumerId: 'c', maxMessages: 1000, tags: ['t1'] })
        if (got.length === 0) break
        for (const m of got) out.push(`${subject}/${m.sequence}/${m.record.id}/${m.record.tags.join(',')}`)
      }
    }
    return out
  } finally {
    await c.close()
  }
}

/** Closes the slave and opens its data dir as the master of epoch 1 (what a promotion opens). */
async function promote(t: Test, slave: Broker): Promise<{ promoted: Broker; cp: Checkpoint }> {
  await slave.close()
  const dataDir = slave.options.dataDir
  const cp = installed(dataDir)
  if (cp === undefined) throw new Error('the slave installed no checkpoint')
  writeEpochOneAtEnd(dataDir)
  const promoted = broker(t, { dataDir })
  await promoted.start()
  return { promoted, cp }
}

async function sameAsMaster(t: Test, master: Broker, promoted: Broker): Promise<void> {
  t.same(await consumeEntries(store(promoted)), await consumeEntries(store(master)), 'same consume logs')
  const want = await pulled(master, 'check')
  t.ok(want.length > 0)
  t.same(await pulled(promoted, 'check'), want, 'a new group pulls the same messages (tag filter)')
}

t.test('a promoted slave replays only past the checkpoint it installed, not its backlog', async (t) => {
  const total = 20_000
  const master = broker(t, {})
  await master.start()
  const c = await RawClient.connect(master.addresses.port)
  t.teardown(() => c.close())
  const slave = broker(t, { role: 'slave', masterAddress: master.addresses.address })
  await slave.start()
  await produce(c, 'm', total)
  await until('slave caught up', () => caughtUp(master, slave))
  const end = store(master).mlog.log.endOffset
  await until('master checkpoint installed', () => installed(slave.options.dataDir)?.messageLogOffset === end)

  const { promoted, cp } = await promote(t, slave)
  const report = store(promoted).recoveryReport
  t.equal(cp.messageLogOffset, end)
  t.equal(report?.replayedFrom, cp.messageLogOffset, 'replay starts at the installed checkpoint')
  t.same(report?.rebuiltConsumeLogs, [], 'no consume log rebuilt')
  t.equal(report?.replayedRecords, 0, 'nothing past the checkpoint to replay')
  await sameAsMaster(t, master, promoted)
})

t.test('a former master following the new one cuts its consume logs with its copy', async (t) => {
  // X writes alone; Y starts from a copy of X's data dir as master of epoch 1. X meanwhile stores
  // records Y never gets (its own consume logs hold them), then follows Y and is cut back.
  const x = broker(t, {})
  await x.start()
  const cx = await RawClient.connect(x.addresses.port)
  await produce(cx, 'common', 2_000)
  await cx.close()
  await x.close()
  const yDir = tempDir(t, 'qmq-repl-slave-consume-')
  fs.cpSync(x.options.dataDir, yDir, { recursive: true })
  await x.start()
  const cx2 = await RawClient.connect(x.addresses.port)
  await produce(cx2, 'lost', 1_000)
  await cx2.close()
  await x.close()

  writeEpochOneAtEnd(yDir)
  const y = broker(t, { dataDir: yDir })
  await y.start()
  const cy = await RawClient.connect(y.addresses.port)
  t.teardown(() => cy.close())
  // Sequences and offsets X's lost records had, with other records.
  await produce(cy, 'new', 500)

  const xs = broker(t, { dataDir: x.options.dataDir, role: 'slave', masterAddress: y.addresses.address })
  await xs.start()
  await until('former master caught up', () => caughtUp(y, xs))
  const end = store(y).mlog.log.endOffset
  await until('checkpoint installed', () => installed(xs.options.dataDir)?.messageLogOffset === end)

  const { promoted, cp } = await promote(t, xs)
  const report = store(promoted).recoveryReport
  t.ok(cp.messageLogOffset > 0)
  t.equal(report?.replayedFrom, cp.messageLogOffset, 'replay starts at the installed checkpoint')
  t.same(report?.rebuiltConsumeLogs, [])
  await sameAsMaster(t, y, promoted)
  const ids = (await pulled(promoted, 'ids')).map((s) => s.split('/')[2] ?? '')
  t.notOk(
    ids.some((id) => id.startsWith('lost-')),
    'no record cut away is served',
  )
  t.ok(
    ids.some((id) => id.startsWith('new-')),
    'the new master records are served',
  )
})

t.test('a slave restarted in the middle of a catch-up reopens its consume logs', async (t) => {
  // Out of sync soon after the slave stops: the master then writes alone.
  const master = broker(t, { replicationInSyncLagMs: 300 })
  await master.start()
  const c = await RawClient.connect(master.addresses.port)
  t.teardown(() => c.close())
  const slaveDir = tempDir(t, 'qmq-repl-slave-consume-')
  const slaveOptions = {
    dataDir: slaveDir,
    role: 'slave' as const,
    masterAddress: master.addresses.address,
    replicationFetchBytes: 16 * 1024,
  }
  let slave = broker(t, slaveOptions)
  await slave.start()
  await produce(c, 'a', 4_000)
  await until('slave caught up', () => caughtUp(master, slave))
  const first = store(master).mlog.log.endOffset
  await until('first checkpoint installed', () => installed(slaveDir)?.messageLogOffset === first)
  await slave.close()
  await until('slave out of sync', () => {
    const s = master.replicationStatus()
    return 'inSync' in s && !s.inSync
  })

  // A backlog the slave copies in small chunks; it stops half-way (a partial frame at its end, likely).
  await produce(c, 'b', 8_000)
  const target = first + (store(master).mlog.log.endOffset - first) / 2
  slave = broker(t, slaveOptions)
  await slave.start()
  await until('half the backlog copied', () => {
    const s = slave.replicationStatus()
    return 'slave' in s && s.slave.messageOffset >= target
  })
  await slave.close()

  slave = broker(t, slaveOptions)
  await slave.start()
  await until('slave caught up again', () => caughtUp(master, slave))
  const end = store(master).mlog.log.endOffset
  await until('last checkpoint installed', () => installed(slaveDir)?.messageLogOffset === end)

  const { promoted, cp } = await promote(t, slave)
  t.equal(store(promoted).recoveryReport?.replayedFrom, cp.messageLogOffset)
  t.same(store(promoted).recoveryReport?.rebuiltConsumeLogs, [])
  await sameAsMaster(t, master, promoted)
})
