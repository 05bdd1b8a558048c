import { randomBytes } from 'node:crypto'
import t from 'tap'
import { RequestCode } from '../../../src/common/protocol/codes'
import {
  decodePullResponse,
  encodePullRequest,
  type PulledMessage,
} from '../../../src/common/protocol/commands'
import {
  decodeFetchResponse,
  encodeFetchRequest,
  FetchKind,
  ReplicatedLog,
} from '../../../src/common/protocol/replication'
import { FileMessageStore } from '../../../src/broker/store/file-message-store'
import type { ReadBufferPool } from '../../../src/broker/store/read-pool'
import { RawClient } from '../../helpers/raw-client'
import { message, pullRequest, sendOk } from './ops'
import { startBroker } from './start-broker'

/**
 * Cold PULLs served from the read pool (store/read-pool.ts) while the pool is exhausted and recycled:
 * consumers pulling at full speed, and slow readers whose answers stay queued in the broker (they do
 * not read their socket for a while). Every delivered body is compared byte for byte with what was
 * sent: a read buffer handed back before its answer left the socket would be overwritten by another
 * pull's read and its queued answer would carry wrong bytes.
 */

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

const SUBJECT = 'pool.cold'
const MESSAGES = 900
/** ~1 MiB of records per pull: the pool's 1-2 MiB classes. */
const PER_PULL = 100

t.test('read pool - cold pulls from several consumers and slow readers get the bytes sent', async (t) => {
  const b = await startBroker(t, {
    hotCacheBytes: 0, // every pull reads the log
    readPoolBytes: 3 * 1024 * 1024, // two or three free buffers at most: exhausted at once
    writeHighWaterBytes: 16 * 1024 * 1024, // a slow reader keeps several answers queued
    maxInFlightPerConnection: 32,
    idleTimeoutMs: 120_000,
  })
  const store = b.broker.messageStore
  if (!(store instanceof FileMessageStore)) throw new Error('a file store')
  const pool: ReadBufferPool = store.readPool

  // Bodies of 4-16 KiB, random bytes: a record of another pull never passes for this one.
  const sent = new Map<string, Buffer>()
  const producer = await RawClient.connect(b.port)
  t.teardown(() => producer.destroy())
  for (let i = 0; i < MESSAGES; i += 50) {
    const batch = []
    for (let k = i; k < i + 50; k++) {
      const body = randomBytes(4096 + Math.floor(Math.random() * 12 * 1024))
      sent.set(`m${k}`, body)
      batch.push(message(SUBJECT, `m${k}`, body))
    }
    await sendOk(producer, batch)
  }

  let checked = 0
  const problems: string[] = []
  const check = (who: string, msgs: PulledMessage[]) => {
    for (const m of msgs) {
      const want = sent.get(m.record.id)
      const body = m.record.body
      if (want === undefined || !Buffer.isBuffer(body) || !want.equals(body)) {
        if (problems.length < 5) problems.push(`${who}: ${m.record.id} (seq ${m.sequence}) differs`)
      }
      checked++
    }
  }
  /** The answer's messages; a record that fails its CRC check (wrong bytes) is a problem noted. */
  const decode = (who: string, body: Buffer): PulledMessage[] => {
    try {
      return decodePullResponse(body)
    } catch (err) {
      problems.push(`${who}: ${(err as Error).message}`)
      return []
    }
  }
  const pullBody = (group: string, consumerId: string) =>
    encodePullRequest(pullRequest({ subject: SUBJECT, group, consumerId, maxMessages: PER_PULL }))

  /** Pulls a fresh group until it got every message, one PULL at a time. */
  const fast = async (name: string, rounds: number) => {
    const c = await RawClient.connect(b.port)
    try {
      for (let r = 0; r < rounds; r++) {
        let got = 0
        while (got < MESSAGES) {
          const res = await c.request(RequestCode.PULL, pullBody(`${name}-g${r}`, name))
          if (res.status !== 0) throw new Error(`${name}: status ${res.status} ${res.message}`)
          const msgs = decode(name, res.body)
          if (msgs.length === 0) throw new Error(`${name}: an empty pull before the end (${problems})`)
          check(name, msgs)
          got += msgs.length
        }
      }
    } finally {
      c.destroy()
    }
  }

  let maxInUse = 0
  /**
   * Pipelines PULLs of a fresh group without reading its socket for `stallMs` (the answers queue up in
   * the broker, their read buffers held), then reads and checks them all.
   */
  const slow = async (name: string, rounds: number, stallMs: number) => {
    const c = await RawClient.connect(b.port)
    try {
      for (let r = 0; r < rounds; r++) {
        c.socket.pause()
        const answers = []
        for (let k = 0; k < MESSAGES / PER_PULL; k++)
          answers.push(c.request(RequestCode.PULL, pullBody(`${name}-g${r}`, name)))
        await sleep(stallMs)
        maxInUse = Math.max(maxInUse, pool.stats.inUse)
        c.socket.resume()
        let got = 0
        for (const a of answers) {
          const res = await a
          if (res.status !== 0) throw new Error(`${name}: status ${res.status} ${res.message}`)
          const msgs = decode(name, res.body)
          check(name, msgs)
          got += msgs.length
        }
        if (got !== MESSAGES) throw new Error(`${name}: ${got} of ${MESSAGES} messages (${problems})`)
      }
    } finally {
      c.destroy()
    }
  }

  await Promise.all([
    fast('fast1', 4),
    fast('fast2', 4),
    fast('fast3', 4),
    slow('slow1', 3, 400),
    slow('slow2', 3, 250),
  ])
  t.same(problems, [], 'every body delivered as sent')
  t.equal(checked, MESSAGES * (3 * 4 + 2 * 3), 'every message checked')
  t.ok(pool.stats.reused > 0, `buffers were reused (${pool.stats.reused} reuses)`)
  t.ok(
    maxInUse * 1024 * 1024 > pool.maxFreeBytes,
    `the pool was exhausted: ${maxInUse} buffers held by queued answers at once`,
  )
  t.ok(pool.stats.fresh > 3, `fresh buffers were made when it was empty (${pool.stats.fresh})`)
  // Every answer was written or its connection closed: every buffer came back, none twice.
  t.ok(await until(() => pool.stats.inUse === 0), `every buffer released (${pool.stats.inUse} held)`)
  t.equal(pool.stats.overReleased, 0, 'none released twice')
  t.ok(pool.idleBytes <= pool.maxFreeBytes, 'free buffers within the bound')
})

t.test('read pool - REPL_FETCH answers queued behind slow slaves carry the log bytes', async (t) => {
  const secret = 'read-pool-test-cluster-secret-0123'
  const b = await startBroker(t, {
    clusterSecret: secret,
    replication: 'async',
    readPoolBytes: 3 * 1024 * 1024,
    writeHighWaterBytes: 16 * 1024 * 1024,
    maxInFlightPerConnection: 32,
    idleTimeoutMs: 120_000,
  })
  const store = b.broker.messageStore
  if (!(store instanceof FileMessageStore)) throw new Error('a file store')
  const pool = store.readPool
  const producer = await RawClient.connect(b.port)
  t.teardown(() => producer.destroy())
  for (let i = 0; i < 240; i += 40) {
    await sendOk(
      producer,
      Array.from({ length: 40 }, (_, k) => message('pool.fetch', `f${i + k}`, randomBytes(32 * 1024))),
    )
  }
  const log = store.mlog.log
  const end = log.endOffset
  // What the slaves must get, read apart from the pool.
  const want = await log.read(log.startOffset, end - log.startOffset)
  const CHUNK = 1024 * 1024
  const fetchBody = (slaveId: string, offset: number, epoch: number) =>
    encodeFetchRequest({
      token: secret,
      slaveId,
      log: ReplicatedLog.MESSAGE,
      offset,
      maxBytes: CHUNK,
      waitMs: 0,
      epoch,
    })
  const probe = await RawClient.connect(b.port)
  t.teardown(() => probe.destroy())
  const epoch = decodeFetchResponse(
    await probe.call(RequestCode.REPL_FETCH, fetchBody('probe', end, 0)),
  ).epoch

  const problems: string[] = []
  let chunks = 0
  const check = (who: string, body: Buffer) => {
    const f = decodeFetchResponse(body)
    if (f.kind !== FetchKind.DATA) throw new Error(`${who}: answer kind ${f.kind}`)
    const expected = want.subarray(f.offset - log.startOffset, f.offset - log.startOffset + f.data.length)
    if (f.data.length === 0 || !expected.equals(f.data)) problems.push(`${who}: bytes at ${f.offset} differ`)
    chunks++
    return f.offset + f.data.length
  }
  /** Fetches the whole log a chunk at a time, `rounds` times. */
  const fast = async (name: string, rounds: number) => {
    const c = await RawClient.connect(b.port)
    try {
      for (let r = 0; r < rounds; r++) {
        let at = log.startOffset
        while (at < end) at = check(name, await c.call(RequestCode.REPL_FETCH, fetchBody(name, at, epoch)))
      }
    } finally {
      c.destroy()
    }
  }
  /** Asks for every chunk at once, reads nothing for `stallMs`, then checks them all. */
  const slow = async (name: string, rounds: number, stallMs: number) => {
    const c = await RawClient.connect(b.port)
    try {
      for (let r = 0; r < rounds; r++) {
        c.socket.pause()
        const answers = []
        for (let at = log.startOffset; at < end; at += CHUNK)
          answers.push(c.call(RequestCode.REPL_FETCH, fetchBody(name, at, epoch)))
        await sleep(stallMs)
        c.socket.resume()
        for (const a of answers) check(name, await a)
      }
    } finally {
      c.destroy()
    }
  }
  await Promise.all([fast('fast1', 4), fast('fast2', 4), slow('slow1', 3, 400), slow('slow2', 3, 250)])
  t.same(problems, [], 'every chunk as in the log')
  const perPass = Math.ceil((end - log.startOffset) / CHUNK)
  t.equal(chunks, perPass * (2 * 4 + 2 * 3), 'every chunk checked')
  t.ok(
    pool.stats.reused > 0 && pool.stats.fresh > 3,
    `reused ${pool.stats.reused}, fresh ${pool.stats.fresh}`,
  )
  t.ok(await until(() => pool.stats.inUse === 0), `every buffer released (${pool.stats.inUse} held)`)
  t.equal(pool.stats.overReleased, 0, 'none released twice')
})

async function until(cond: () => boolean, ms = 5_000): Promise<boolean> {
  const end = Date.now() + ms
  while (!cond() && Date.now() < end) await sleep(10)
  return cond()
}
