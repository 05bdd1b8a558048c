import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import type { Test } from 'tap'
import t from 'tap'
import { Broker } from '../../../src/broker/broker'
import { type FollowerOptions, ReplicationFollower } from '../../../src/broker/replication/follower'
import { type FsIo, nodeFsIo } from '../../../src/broker/store'
import { checkFrame } from '../../../src/broker/store/message-log'
import { silentLogger } from '../../../src/common/logger'
import { RawClient } from '../../helpers/raw-client'
import {
  replicationTestBroker,
  tempDir,
  testFollowerOptions,
  waitUntil,
  writeObservingIo,
} from '../../helpers/replication'
import { message, sendOk } from '../server/ops'

/**
 * The slave's copy loops (replication/follower.ts) driven directly against a real master: what it
 * acknowledges after a failed fdatasync, how it fdatasyncs a backlog, and how many connections its
 * loops open.
 */

const SECRET = 'replication-follower-test-secret'

const BASE = replicationTestBroker(SECRET, {
  // Writes succeed without a slave: the test writes before the follower starts.
  degradedWrites: true,
})

function freshDir(t: Test): string {
  return tempDir(t, 'qmq-repl-follower-')
}

function until(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  return waitUntil(what, cond, timeoutMs, 10)
}

function pathOf(fd: number): string {
  try {
    return fs.readlinkSync(`/proc/self/fd/${fd}`)
  } catch {
    return ''
  }
}

async function startMaster(t: Test) {
  const dataDir = freshDir(t)
  const broker = new Broker({ ...BASE, dataDir }, { logger: silentLogger })
  const { port, address } = await broker.start()
  t.teardown(() => broker.close())
  const c = await RawClient.connect(port)
  t.teardown(() => c.close())
  const mend = () =>
    (broker.messageStore as unknown as { mlog: { log: { endOffset: number } } }).mlog.log.endOffset
  return { broker, port, address, dataDir, c, mend }
}

function followerOptions(dataDir: string, findMaster: () => Promise<string | undefined>): FollowerOptions {
  return testFollowerOptions(dataDir, SECRET, findMaster, 50)
}

function messageLogBytes(dataDir: string): Buffer {
  const dir = path.join(dataDir, 'messagelog')
  return Buffer.concat(
    fs
      .readdirSync(dir)
      .sort()
      .map((f) => fs.readFileSync(path.join(dir, f))),
  )
}

/**
 * The copy's message-log fdatasync fails once, after the first good one. Like the kernel after a
 * writeback error, it drops what was written since the last good sync: those bytes read back as zeros
 * (what is on disk), and a later fdatasync succeeds without them.
 */
/**
 * An FsIo whose first message-log fdatasync after `arm()` fails, and zeroes what it would have made
 * durable (as a lost page cache would). Armed by the test once the backlog is copied: how many syncs
 * the backlog takes depends on how the chunks and the grouped syncs interleave (machine load).
 */
function failOneSync(): { io: FsIo; failures: () => number; arm: () => void } {
  const pending = new Map<number, { from: number; to: number }>()
  const note = (fd: number, position: number, n: number) => {
    const p = pending.get(fd)
    pending.set(fd, {
      from: Math.min(p?.from ?? position, position),
      to: Math.max(p?.to ?? 0, position + n),
    })
  }
  let armed = false
  let failed = 0
  const io: FsIo = {
    ...writeObservingIo(note),
    fdatasync: async (fd) => {
      const p = pending.get(fd)
      if (failed === 0 && armed && p !== undefined && pathOf(fd).includes('/messagelog/')) {
        failed++
        pending.delete(fd)
        await nodeFsIo.write(fd, Buffer.alloc(p.to - p.from), p.from)
        throw Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' })
      }
      await nodeFsIo.fdatasync(fd)
      pending.delete(fd)
    },
  }
  return {
    io,
    failures: () => failed,
    arm: () => {
      armed = true
    },
  }
}

t.test(
  'follower - a chunk whose fdatasync failed is copied again, never acknowledged as it is',
  async (t) => {
    const m = await startMaster(t)
    for (let i = 0; i < 30; i++) await sendOk(m.c, [message('orders', `m-${i}`, Buffer.alloc(700, i + 1))])

    const { io, failures, arm } = failOneSync()
    const dataDir = freshDir(t)
    const follower = new ReplicationFollower(
      { ...followerOptions(dataDir, async () => m.address), io },
      silentLogger,
    )
    await follower.start()
    t.teardown(() => follower.close())
    // The backlog's fdatasyncs are good; the first one of records sent after it fails.
    await until('the copy caught up', () => follower.status().messageOffset === m.mend())
    arm()
    for (let i = 30; i < 60; i++) await sendOk(m.c, [message('orders', `m-${i}`, Buffer.alloc(700, i + 1))])
    await until('the copy caught up again', () => follower.status().messageOffset === m.mend())
    t.equal(failures(), 1, 'one fdatasync failed')
    await follower.close()
    const master = messageLogBytes(m.dataDir)
    const copy = messageLogBytes(dataDir)
    t.equal(copy.length, master.length)
    t.ok(copy.equals(master), 'the acknowledged copy holds the master bytes (no zeros where the sync failed)')
  },
)

t.test(
  'follower - a backlog is fdatasynced in groups of chunks, and never acknowledged past what a sync covered',
  async (t) => {
    const m = await startMaster(t)
    // About 12 chunks of 4 KiB (followerOptions' fetchBytes).
    for (let i = 0; i < 60; i++) await sendOk(m.c, [message('orders', `m-${i}`, Buffer.alloc(700, i + 1))])
    const chunks = Math.ceil(m.mend() / 4096)
    // A slow disk: each message-log fdatasync takes 300 ms. Its file size when it started is what it
    // covers at most (every byte written before it).
    let syncs = 0
    let covered = 0
    let acknowledgedPastSync = 0
    const io: FsIo = {
      ...nodeFsIo,
      fdatasync: async (fd) => {
        if (!pathOf(fd).includes('/messagelog/')) return nodeFsIo.fdatasync(fd)
        const size = fs.fstatSync(fd).size
        await new Promise((r) => setTimeout(r, 300))
        await nodeFsIo.fdatasync(fd)
        syncs++
        covered = Math.max(covered, size)
      },
    }
    const dataDir = freshDir(t)
    const follower = new ReplicationFollower(
      { ...followerOptions(dataDir, async () => m.address), io },
      silentLogger,
    )
    const watch = setInterval(() => {
      if (follower.status().messageOffset > covered) acknowledgedPastSync++
    }, 2)
    t.teardown(() => clearInterval(watch))
    await follower.start()
    t.teardown(() => follower.close())
    await until('the copy caught up', () => follower.status().messageOffset === m.mend(), 30_000)
    clearInterval(watch)
    t.ok(chunks >= 10, `the backlog is ${chunks} chunks`)
    // One fdatasync per chunk (the copy's pace before) would be `chunks` of them.
    t.ok(syncs <= chunks / 2, `${syncs} fdatasyncs of the message log for ${chunks} chunks`)
    t.equal(acknowledgedPastSync, 0, 'the durable end never passed what an fdatasync covered')
    await follower.close()
    t.ok(messageLogBytes(dataDir).equals(messageLogBytes(m.dataDir)), 'the copy holds the master bytes')
  },
)

/** A TCP relay to the master counting the connections open through it. */
async function relay(t: Test, target: number) {
  const open = new Set<net.Socket>()
  const server = net.createServer((down) => {
    open.add(down)
    const up = net.connect(target, '127.0.0.1')
    down.pipe(up)
    up.pipe(down)
    const end = () => {
      open.delete(down)
      down.destroy()
      up.destroy()
    }
    down.on('close', end).on('error', end)
    up.on('close', end).on('error', end)
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  const port = (server.address() as net.AddressInfo).port
  t.teardown(() => {
    for (const s of open) s.destroy()
    server.close()
  })
  const cut = () => {
    for (const s of [...open]) s.destroy()
  }
  return { address: `127.0.0.1:${port}`, open, cut }
}

t.test('follower - its loops share one connection, also after the master moves', async (t) => {
  const m = await startMaster(t)
  for (let i = 0; i < 5; i++) await sendOk(m.c, [message('orders', `m-${i}`, 'x')])
  const r = await relay(t, m.port)
  // A slow lookup (a metaserver round trip): both copy loops ask for a connection meanwhile.
  let lookups = 0
  const findMaster = async () => {
    lookups++
    await new Promise((res) => setTimeout(res, 50))
    return r.address
  }
  const follower = new ReplicationFollower(followerOptions(freshDir(t), findMaster), silentLogger)
  await follower.start()
  t.teardown(() => follower.close())
  await until('the copy caught up', () => follower.status().messageOffset === m.mend())
  await new Promise((res) => setTimeout(res, 200))
  t.equal(r.open.size, 1, 'one connection to the master')

  // The master's connection breaks (a failover): every loop's request fails, the loops look it up again.
  r.cut()
  await sendOk(m.c, [message('orders', 'after', 'y')])
  await until('the copy caught up again', () => follower.status().messageOffset === m.mend())
  await new Promise((res) => setTimeout(res, 300))
  t.equal(r.open.size, 1, 'still one connection after the loops reconnected')
  t.ok(lookups >= 2, 'the master was looked up again')

  await follower.close()
  await until('connections closed', () => r.open.size === 0, 2_000).catch(() => {})
  t.equal(r.open.size, 0, 'no connection left open after close')
})

t.test('follower - a layout is told of a cut of its copy (a chunk that failed to sync)', async (t) => {
  const m = await startMaster(t)
  for (let i = 0; i < 30; i++) await sendOk(m.c, [message('orders', `m-${i}`, Buffer.alloc(700, i + 1))])
  const { io, failures, arm } = failOneSync()
  const dataDir = freshDir(t)
  const cuts: [number, number][] = []
  const follower = new ReplicationFollower(
    {
      ...followerOptions(dataDir, async () => m.address),
      io,
      layout: {
        logs: [
          {
            kind: 0,
            dir: path.join(dataDir, 'messagelog'),
            check: (b, p, e) => checkFrame(b, p, e, 1024 * 1024, true),
          },
        ],
        sideLoop: async () => {},
        onCut: (kind, offset) => {
          cuts.push([kind, offset])
        },
      },
    },
    silentLogger,
  )
  await follower.start()
  t.teardown(() => follower.close())
  await until('the copy caught up', () => follower.status().messageOffset === m.mend())
  arm()
  const before = m.mend()
  for (let i = 30; i < 60; i++) await sendOk(m.c, [message('orders', `m-${i}`, Buffer.alloc(700, i + 1))])
  await until('the copy caught up again', () => follower.status().messageOffset === m.mend())
  t.equal(failures(), 1)
  t.equal(cuts.length, 1, 'one cut reported')
  const [kind, offset] = cuts[0] as [number, number]
  t.equal(kind, 0)
  t.ok(offset >= before && offset < m.mend(), 'at the durable end before the failed chunk')
  await follower.close()
  t.ok(messageLogBytes(dataDir).equals(messageLogBytes(m.dataDir)), 'the copy holds the master bytes')
})
