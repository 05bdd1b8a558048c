import fs from 'node:fs'
import path from 'node:path'
import type { Test } from 'tap'
import t from 'tap'
import { Broker } from '../../../src/broker/broker'
import { type FollowerOptions, ReplicationFollower } from '../../../src/broker/replication/follower'
import { type FsIo, nodeFsIo } from '../../../src/broker/store'
import { createMessageStore } from '../../../src/broker/store/file-message-store'
import { silentLogger } from '../../../src/common/logger'
import { RawClient } from '../../helpers/raw-client'
import {
  messageLogBytes,
  messageLogData,
  replicationTestBroker,
  tempDir,
  testFollowerOptions,
  waitUntil,
} from '../../helpers/replication'
import { message, sendOk } from '../server/ops'

/**
 * A slave verifies every chunk it receives before writing it (replication/chunk-verifier.ts): bytes
 * damaged on the way (here: flipped by the master's read path) are refused and fetched again, never
 * written; the copy catches up once the damage stops.
 */

const SECRET = 'replication-verify-test-secret'

const BASE = replicationTestBroker(SECRET, {
  degradedWrites: true,
})

function pathOf(fd: number): string {
  try {
    return fs.readlinkSync(`/proc/self/fd/${fd}`)
  } catch {
    return ''
  }
}

function until(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  return waitUntil(what, cond, timeoutMs, 10)
}

function followerOptions(dataDir: string, address: string): FollowerOptions {
  return testFollowerOptions(dataDir, SECRET, async () => address, 20)
}

/** A master whose message-log reads pass through `io`; `mend` is its message log's end. */
async function startMaster(t: Test, io: FsIo, dir?: string) {
  const dataDir = dir ?? tempDir(t, 'qmq-repl-verify-')
  let end = () => 0
  const broker = new Broker(
    { ...BASE, dataDir },
    {
      logger: silentLogger,
      createStore: (ctx) => {
        const store = createMessageStore({
          ...ctx.options,
          clock: ctx.clock,
          logger: ctx.logger,
          registry: ctx.registry,
          io,
        })
        end = () => store.mlog.log.endOffset
        return store
      },
    },
  )
  const { port, address } = await broker.start()
  t.teardown(() => broker.close())
  const c = await RawClient.connect(port)
  t.teardown(() => c.close())
  return { address, dataDir, c, mend: () => end() }
}

t.test('verify - a slave never writes bytes damaged on the way, and catches up once it stops', async (t) => {
  // The master's message-log reads flip one byte while `corrupt` is on, at another place each time
  // (a fault on the way, not damage stored on the master).
  let corrupt = false
  let flips = 0
  const masterIo: FsIo = {
    ...nodeFsIo,
    read: async (fd, buffer, offset, length, position) => {
      const n = await nodeFsIo.read(fd, buffer, offset, length, position)
      if (corrupt && n > 0 && pathOf(fd).includes('/messagelog/')) {
        flips++
        const i = offset + ((flips * 7919) % n)
        buffer[i] = (buffer[i] as number) ^ 0x10
      }
      return n
    },
  }
  const m = await startMaster(t, masterIo)
  const masterDir = path.join(m.dataDir, 'messagelog')
  // Small messages (several per 4 KiB chunk, some cut by a chunk's end) and larger than a chunk.
  for (let i = 0; i < 20; i++) await sendOk(m.c, [message('orders', `m-${i}`, Buffer.alloc(700, i + 1))])
  for (let i = 0; i < 3; i++)
    await sendOk(m.c, [message('orders', `big-${i}`, Buffer.alloc(10_000, 0x40 + i))])

  // Every write of the copy is compared with the master's bytes on disk at the same place.
  let writes = 0
  let badWrites = 0
  const check = (fd: number, bufs: Buffer[], position: number) => {
    const p = pathOf(fd)
    if (!p.includes('/messagelog/')) return
    writes++
    const data = Buffer.concat(bufs)
    const master = fs.readFileSync(path.join(masterDir, path.basename(p)))
    if (!master.subarray(position, position + data.length).equals(data)) badWrites++
  }
  const slaveIo: FsIo = {
    ...nodeFsIo,
    writev: async (fd, buffers, position) => {
      check(fd, buffers, position)
      return nodeFsIo.writev(fd, buffers, position)
    },
    write: async (fd, buffer, position) => {
      check(fd, [buffer], position)
      return nodeFsIo.write(fd, buffer, position)
    },
  }
  const refused: string[] = []
  const dataDir = tempDir(t, 'qmq-repl-verify-slave-')
  corrupt = true
  const follower = new ReplicationFollower(
    {
      ...followerOptions(dataDir, m.address),
      io: slaveIo,
      onChunkRefused: (log, copied) => refused.push(`${log}:${copied}`),
    },
    silentLogger,
  )
  await follower.start()
  t.teardown(() => follower.close())
  await until('damaged reads', () => flips >= 8)
  t.equal(badWrites, 0, 'no damaged byte written while every read is damaged')
  corrupt = false
  await until('the copy caught up', () => follower.status().messageOffset === m.mend())
  // And on, with new records.
  for (let i = 20; i < 30; i++) await sendOk(m.c, [message('orders', `m-${i}`, Buffer.alloc(700, i + 1))])
  await until('the copy caught up again', () => follower.status().messageOffset === m.mend())
  await follower.close()
  t.ok(writes > 0, 'the copy was written')
  t.equal(badWrites, 0, 'no write of the copy held a damaged byte')
  t.ok(
    refused.every((r) => r === 'message:false'),
    'every damaged chunk was refused (and fetched again), none copied',
  )
  t.ok(follower.status().refusedChunks >= 4, 'counted')
  t.ok(refused.length >= 4, 'reported to the metrics')
  const copy = Buffer.concat(
    fs
      .readdirSync(path.join(dataDir, 'messagelog'))
      .sort()
      .map((f) => fs.readFileSync(path.join(dataDir, 'messagelog', f))),
  )
  // The master's frames (its active segment keeps a zeroed tail past them).
  const master = messageLogBytes(masterDir)
  t.ok(copy.equals(master), 'the copy is the master log byte for byte')
})

t.test(
  'verify - damage stored in the master log (stepped over by its recovery) is copied as it is',
  async (t) => {
    const dataDir = tempDir(t, 'qmq-repl-verify-damaged-')
    const first = new Broker({ ...BASE, dataDir }, { logger: silentLogger })
    const { port } = await first.start()
    const c = await RawClient.connect(port)
    for (let i = 0; i < 20; i++) await sendOk(c, [message('orders', `m-${i}`, Buffer.alloc(700, i + 1))])
    await c.close()
    await first.close()
    // A byte of a record body in the middle of the log rots on disk.
    const segDir = path.join(dataDir, 'messagelog')
    const seg = path.join(segDir, fs.readdirSync(segDir).sort()[0] as string)
    const bytes = fs.readFileSync(seg)
    const at = Math.floor(messageLogData(bytes).length / 2) // the file may end in a zeroed tail
    bytes[at] = (bytes[at] as number) ^ 0x01
    fs.writeFileSync(seg, bytes)
    const m = await startMaster(t, nodeFsIo, dataDir)
    await sendOk(m.c, [message('orders', 'after', Buffer.alloc(700, 0x7f))])

    const refused: string[] = []
    const copyDir = tempDir(t, 'qmq-repl-verify-damaged-slave-')
    const follower = new ReplicationFollower(
      {
        ...followerOptions(copyDir, m.address),
        onChunkRefused: (log, copied) => refused.push(`${log}:${copied}`),
      },
      silentLogger,
    )
    await follower.start()
    t.teardown(() => follower.close())
    await until('the copy caught up', () => follower.status().messageOffset === m.mend())
    await follower.close()
    const fromMessageLog = refused.filter((r) => r.startsWith('message'))
    t.equal(fromMessageLog.at(-1), 'message:true', 'copied as the master holds it in the end')
    t.equal(
      fromMessageLog.filter((r) => r === 'message:true').length,
      1,
      'once: the copy resyncs past the damage',
    )
    t.ok(fromMessageLog.length >= 3, 'after the same bytes were refused repeatedly')
    const copy = fs.readFileSync(path.join(copyDir, 'messagelog', path.basename(seg)))
    t.ok(
      copy.equals(fs.readFileSync(seg).subarray(0, copy.length)),
      'the copy is the master log byte for byte, damage included',
    )
  },
)
