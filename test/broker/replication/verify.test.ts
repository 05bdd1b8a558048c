import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import type { Test } from 'tap'
import t from 'tap'
import { Broker } from '../../../src/broker/broker'
import { type FollowerOptions, ReplicationFollower } from '../../../src/broker/replication/follower'
import { type FsIo, nodeFsIo } from '../../../src/broker/store'
import { createMessageStore } from '../../../src/broker/store/file-message-store'
import { ERROR_CODES } from '../../../src/common/error-codes'
import { silentLogger } from '../../../src/common/logger'
import { RequestCode } from '../../../src/common/protocol/codes'
import { encodeErrorBody } from '../../../src/common/protocol/commands'
import { encodeFrame, FLAG_RESPONSE, FrameDecoder } from '../../../src/common/protocol/frame'
import { decodeFetchRequest, type FetchRequest } from '../../../src/common/protocol/replication'
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
 * A slave verifies every chunk it receives before writing it (replication/chunk-verifier.ts): bytes
 * damaged on the way (here: flipped by the master's read path) are refused and fetched again, never
 * written; the copy catches up once the damage stops.
 */

const SECRET = 'replication-verify-test-secret'
/** Bytes of the frame of a 700-byte message `m-<i>` (i < 10) of topic `orders`. */
const FRAME = 783

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
  const master = Buffer.concat(
    fs
      .readdirSync(masterDir)
      .sort()
      .map((f) => fs.readFileSync(path.join(masterDir, f))),
  )
  t.ok(copy.equals(master), 'the copy is the master log byte for byte')
})

/**
 * A master whose message log holds damage its recovery stepped over (kept in place): 20 records of
 * 700 bytes written (the first ten FRAME bytes each), `damage` done to the segment's bytes, restarted.
 * Returns it with the damaged segment's path.
 */
async function startDamagedMaster(t: Test, damage: (segment: Buffer) => void) {
  const dataDir = tempDir(t, 'qmq-repl-verify-damaged-')
  const first = new Broker({ ...BASE, dataDir }, { logger: silentLogger })
  const { port } = await first.start()
  const c = await RawClient.connect(port)
  for (let i = 0; i < 20; i++) await sendOk(c, [message('orders', `m-${i}`, Buffer.alloc(700, i + 1))])
  await c.close()
  await first.close()
  const segDir = path.join(dataDir, 'messagelog')
  const seg = path.join(segDir, fs.readdirSync(segDir).sort()[0] as string)
  const bytes = fs.readFileSync(seg)
  t.equal(bytes.readUInt32BE(FRAME), FRAME, 'records are FRAME bytes apart')
  damage(bytes)
  fs.writeFileSync(seg, bytes)
  const m = await startMaster(t, nodeFsIo, dataDir)
  await sendOk(m.c, [message('orders', 'after', Buffer.alloc(700, 0x7f))])
  return { ...m, seg }
}

/**
 * Copies master `m` into a fresh slave dir through a follower (of `address`, default the master's;
 * `extra` follower options) until the copy reached the master's message-log end. Returns the chunk
 * refusals it reported (`<log>:<copied as it is>`), the copy of the master's first segment and the
 * slave's data dir.
 */
async function copyToSlave(
  t: Test,
  m: { address: string; seg: string; mend: () => number },
  name: string,
  extra: Partial<FollowerOptions> = {},
  address = m.address,
): Promise<{ refused: string[]; copy: Buffer; copyDir: string }> {
  const refused: string[] = []
  const copyDir = tempDir(t, `qmq-repl-verify-${name}-slave-`)
  const follower = new ReplicationFollower(
    {
      ...followerOptions(copyDir, address),
      ...extra,
      onChunkRefused: (log, copied) => refused.push(`${log}:${copied}`),
    },
    silentLogger,
  )
  await follower.start()
  t.teardown(() => follower.close())
  await until('the copy caught up', () => follower.status().messageOffset === m.mend())
  await follower.close()
  return {
    refused,
    copy: fs.readFileSync(path.join(copyDir, 'messagelog', path.basename(m.seg))),
    copyDir,
  }
}

t.test(
  'verify - damage stored in the master log (stepped over by its recovery) is copied as it is',
  async (t) => {
    // A byte of a record body in the middle of the log rots on disk.
    const m = await startDamagedMaster(t, (b) => flip(b, Math.floor(b.length / 2), 0x01))
    const seg = m.seg

    const { refused, copy, copyDir } = await copyToSlave(t, m, 'damaged')
    const fromMessageLog = refused.filter((r) => r.startsWith('message'))
    t.equal(fromMessageLog.at(-1), 'message:true', 'copied as the master holds it in the end')
    t.equal(
      fromMessageLog.filter((r) => r === 'message:true').length,
      1,
      'once: the copy resyncs past the damage',
    )
    t.ok(fromMessageLog.length >= 3, 'after the same bytes were refused repeatedly')
    t.ok(copy.equals(fs.readFileSync(seg)), 'the copy is the master log byte for byte, damage included')
    t.equal(
      consumeLogBytes(path.join(copyDir, 'consumelog')),
      0,
      'the consume logs were dropped before the damaged bytes were copied (a promotion rebuilds them)',
    )
  },
)

/** Bytes of the consume logs' files under `dir`, a consumelog/ (its layout marker left out). */
function consumeLogBytes(dir: string): number {
  if (!fs.existsSync(dir)) return 0
  let n = 0
  for (const e of fs.readdirSync(dir, { withFileTypes: true, recursive: true }))
    if (e.isFile() && e.parentPath !== dir) n += fs.statSync(path.join(e.parentPath, e.name)).size
  return n
}

function flip(b: Buffer, at: number, mask: number): void {
  b[at] = (b[at] as number) ^ mask
}

t.test(
  'verify - two damaged ranges in one fetch window, one claiming more than a fetch, are both copied as they are',
  async (t) => {
    // Review finding: a damaged entry whose length field claims more bytes than one fetch is held
    // over several fetches before it is refused, and each of those fetches (holding, handing nothing
    // out) counted as a good chunk and restarted the count of identical refusals: the slave fetched
    // the same damaged range again for ever. Here in one 4 KiB window: the length of the fifth record
    // (claiming 8 KiB more) and a body byte of the seventh.
    const m = await startDamagedMaster(t, (b) => {
      flip(b, 4 * FRAME + 2, 0x20)
      flip(b, 6 * FRAME + 400, 0x01)
    })
    const { refused, copy } = await copyToSlave(t, m, 'two-damages')
    const copied = refused.filter((r) => r === 'message:true').length
    t.equal(copied, 2, 'each damaged range copied as the master holds it, once')
    t.ok(
      copy.equals(fs.readFileSync(m.seg)),
      'the copy is the master log byte for byte, both damages included',
    )
  },
)

/**
 * A master that predates the `acked` field of REPL_FETCH, played by a proxy in front of a current
 * one: a fetch carrying `acked` is refused as such a master refuses it (QMQ_ERR_PAYLOAD_MALFORMED,
 * trailing bytes); every other frame is passed on whole, so the master behind takes each fetch's
 * offset as the slave's acknowledgement, as an old master does. `onFetch` sees each fetch passed on.
 */
async function oldMasterProxy(t: Test, masterAddress: string, onFetch: (f: FetchRequest) => void) {
  const [host, port] = masterAddress.split(':') as [string, string]
  const sockets = new Set<net.Socket>()
  let refusedAcked = 0
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(port), host)
    sockets.add(client).add(upstream)
    const close = () => {
      client.destroy()
      upstream.destroy()
    }
    client.on('error', close).on('close', close)
    upstream.on('error', close).on('close', close)
    const fromMaster = new FrameDecoder()
    upstream.on('data', (chunk: Buffer) => {
      for (const f of fromMaster.push(chunk)) client.write(encodeFrame(f, f.body))
    })
    const fromSlave = new FrameDecoder()
    client.on('data', (chunk: Buffer) => {
      for (const f of fromSlave.push(chunk)) {
        if (f.code === RequestCode.REPL_FETCH) {
          const req = decodeFetchRequest(f.body)
          if (req.acked !== undefined) {
            refusedAcked++
            const status = ERROR_CODES.QMQ_ERR_PAYLOAD_MALFORMED.status
            const body = encodeErrorBody('REPL_FETCH request: trailing bytes')
            client.write(
              encodeFrame({ flags: FLAG_RESPONSE, code: f.code, status, requestId: f.requestId }, body),
            )
            continue
          }
          onFetch(req)
        }
        upstream.write(encodeFrame(f, f.body))
      }
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    for (const s of sockets) s.destroy()
    await new Promise<void>((resolve) => server.close(() => resolve()))
  })
  const { port: proxyPort } = server.address() as net.AddressInfo
  return { address: `127.0.0.1:${proxyPort}`, refusedAcked: () => refusedAcked }
}

/**
 * The slave's message-log I/O with a slow fdatasync (so an acknowledgement sent before it ends is
 * seen), tracking the log end each completed fdatasync made durable.
 */
function slowSyncIo(): { io: FsIo; synced: () => number } {
  const ends = new Map<number, number>()
  let synced = 0
  const note = (fd: number, position: number, n: number) => {
    const p = pathOf(fd)
    if (!p.includes('/messagelog/')) return
    const end = Number.parseInt(path.basename(p), 10) + position + n
    ends.set(fd, Math.max(ends.get(fd) ?? 0, end))
  }
  const io: FsIo = {
    ...writeObservingIo(note),
    fdatasync: async (fd) => {
      const end = ends.get(fd)
      if (end === undefined) return nodeFsIo.fdatasync(fd)
      await new Promise((r) => setTimeout(r, 40))
      await nodeFsIo.fdatasync(fd)
      synced = Math.max(synced, end)
    },
  }
  return { io, synced: () => synced }
}

t.test(
  'verify - against a master that predates `acked`, damaged bytes copied as they are are synced before the next ask',
  async (t) => {
    // Review finding: the copy of the master's damaged bytes skipped the "sync before asking" step of
    // the one-chunk-at-a-time mode, so the next fetch's offset (an old master's acknowledgement)
    // acknowledged bytes still unsynced on the slave.
    const m = await startDamagedMaster(t, (b) => flip(b, Math.floor(b.length / 2), 0x01))
    // The ends of the master's records (the damage is in a record body: every length reads). A fetch
    // acknowledges every record that ends at or before its offset (a begun entry the slave holds in
    // memory, not yet written, puts the offset inside a record: not acknowledged).
    const log = fs.readFileSync(m.seg)
    const recordEnds: number[] = []
    for (let p = 0; p < log.length; p += log.readUInt32BE(p)) recordEnds.push(p + log.readUInt32BE(p))
    const disk = slowSyncIo()
    const early: string[] = []
    const proxy = await oldMasterProxy(t, m.address, (f) => {
      const synced = disk.synced()
      const unsynced = recordEnds.filter((e) => e > synced && e <= f.offset)
      if (f.log === 0 && unsynced.length > 0)
        early.push(`asked from ${f.offset} (records ending ${unsynced.join()}), synced to ${synced}`)
    })
    const { refused, copy } = await copyToSlave(t, m, 'old-master', { io: disk.io }, proxy.address)
    t.ok(proxy.refusedAcked() >= 1, 'the slave first sent `acked`, refused by the old master')
    t.ok(refused.includes('message:true'), 'the damaged bytes were copied as the master holds them')
    t.same(early, [], 'every fetch acknowledged only bytes fdatasynced on the slave')
    t.ok(copy.equals(fs.readFileSync(m.seg)), 'the copy is the master log byte for byte')
  },
)
