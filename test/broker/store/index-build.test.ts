import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import type { FsIo } from '../../../src/broker/store'
import { nodeFsIo } from '../../../src/broker/store'
import type { FileMessageStore } from '../../../src/broker/store/file-message-store'
import { isQmqError } from '../../../src/common/errors'
import { createLogger } from '../../../src/common/logger'
import type { ListAnswer, MessageAnswer } from '../../../src/common/protocol/query'
import { bodyOf, open, pullOpts, rec } from './helpers'

/**
 * A store whose message index lags behind its log (a promoted slave has none) serves at once and
 * builds the index in the background (index-build.ts); lookups that could miss records meanwhile are
 * refused with the retriable QMQ_ERR_INDEX_BUILDING.
 */

function pathOf(fd: number): string {
  try {
    return fs.readlinkSync(`/proc/self/fd/${fd}`)
  } catch {
    return ''
  }
}

async function until(what: string, cond: () => boolean, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 10))
  }
}

function dropIndex(dir: string): void {
  fs.rmSync(path.join(dir, 'indexlog'), { recursive: true, force: true })
  fs.rmSync(path.join(dir, 'indexrun'), { recursive: true, force: true })
}

const keyed = (i: number) =>
  rec('orders', { id: `m-${i}`, body: `body-${i}`, properties: { qmq_keys: `k-${i % 10}` } })

async function byId(store: FileMessageStore, id: string): Promise<MessageAnswer> {
  return (await store.query({ op: 'message', id }, 'g1')) as MessageAnswer
}

t.test('index build - the store serves before its index is built; queries say so meanwhile', async (t) => {
  const dir = t.testdir()
  let store = await open(dir, { segmentBytes: 16 * 1024 })
  for (let i = 0; i < 400; i += 50) {
    await store.append(Array.from({ length: 50 }, (_, j) => keyed(i + j)))
  }
  await store.close()
  dropIndex(dir)

  // Message-log reads are held from the moment the background build starts (its first line).
  let held = false
  const waiting: (() => void)[] = []
  const io: FsIo = {
    ...nodeFsIo,
    read: async (fd, buf, off, len, pos) => {
      if (held && pathOf(fd).includes('/messagelog/')) await new Promise<void>((r) => waiting.push(r))
      return nodeFsIo.read(fd, buf, off, len, pos)
    },
  }
  const logger = createLogger({
    level: 'info',
    env: false,
    destination: {
      write: (line: string) => {
        if (line.includes('building from the message log in the background')) held = true
      },
    },
  })
  store = await open(dir, { segmentBytes: 16 * 1024, io, logger })
  t.teardown(() => store.close())
  const index = store.index
  if (index === undefined) throw new Error('no index')
  t.ok(index.coveredEnd < store.mlog.log.endOffset, 'open() did not wait for the index to cover the log')
  t.ok(store.indexBuilding !== undefined, 'the store reports the index as being built')

  // Producers and consumers are served meanwhile.
  await store.append([rec('orders', { id: 'live-1', body: 'live', properties: { qmq_keys: 'k-live' } })])
  const got = await store.pull(pullOpts('fresh', 'g', 'c'))
  t.same(got, [], 'a pull is answered')
  await store.append([rec('fresh', { id: 'fresh-1', body: 'f' })])
  t.same(
    (await store.pull(pullOpts('fresh', 'g', 'c'))).map((m) => bodyOf(m.record)),
    ['f'],
    'a new message is delivered',
  )
  const err = await store.query({ op: 'key', key: 'k-3', limit: 100 }, 'g1').catch((e: unknown) => e)
  t.ok(isQmqError(err) && err.code === 'QMQ_ERR_INDEX_BUILDING', 'a key lookup is refused (retriable)')
  const err2 = await byId(store, 'm-399').catch((e: unknown) => e)
  t.ok(isQmqError(err2) && err2.code === 'QMQ_ERR_INDEX_BUILDING', 'so is an id not indexed yet')

  held = false
  for (const w of waiting.splice(0)) w()
  await until('index built', () => store.indexBuilding === undefined)
  t.equal(index.coveredEnd, store.mlog.log.endOffset, 'the index covers the log')
  for (const id of ['m-0', 'm-199', 'm-399', 'live-1', 'fresh-1']) {
    t.equal((await byId(store, id)).messages.length, 1, `${id} found once`)
  }
  const k3 = (await store.query({ op: 'key', key: 'k-3', limit: 100 }, 'g1')) as ListAnswer
  t.equal(k3.messages.length, 40, 'every message of a key')
  const live = (await store.query({ op: 'key', key: 'k-live', limit: 10 }, 'g1')) as ListAnswer
  t.same(
    live.messages.map((m) => m.id),
    ['live-1'],
    'a message stored during the build is indexed',
  )
  await store.append([rec('orders', { id: 'after-1', body: 'a' })])
  t.equal((await byId(store, 'after-1')).messages.length, 1, 'and so is one stored after it')
})

t.test('index build - a crash in the middle of a build resumes it with no gap', async (t) => {
  const dir = t.testdir()
  let store = await open(dir, { segmentBytes: 16 * 1024 })
  for (let i = 0; i < 400; i += 50) {
    await store.append(Array.from({ length: 50 }, (_, j) => keyed(i + j)))
  }
  await store.close()
  dropIndex(dir)
  // The build's first message-log read goes through; the next ones never end: it stops part way.
  let started = false
  let reads = 0
  const io: FsIo = {
    ...nodeFsIo,
    read: async (fd, buf, off, len, pos) => {
      if (started && pathOf(fd).includes('/messagelog/') && reads++ > 0) await new Promise<void>(() => {})
      return nodeFsIo.read(fd, buf, off, len, pos)
    },
  }
  const logger = createLogger({
    level: 'info',
    env: false,
    destination: {
      write: (line: string) => {
        if (line.includes('building from the message log in the background')) started = true
      },
    },
  })
  store = await open(dir, { segmentBytes: 16 * 1024, io, logger })
  t.ok(started, 'a build started')
  await until('partly built', () => (store.index?.coveredEnd ?? 0) > 0)
  await store.append([rec('orders', { id: 'during', body: 'd' })])
  await store.mlog.idle()
  await store.index?.flush()
  t.ok(store.indexBuilding !== undefined, 'the process dies in the middle of the build')
  await store.abandon()
  store = await open(dir, { segmentBytes: 16 * 1024 })
  t.teardown(() => store.close())
  await until('index built', () => store.indexBuilding === undefined)
  for (let i = 0; i < 400; i++) {
    if ((await byId(store, `m-${i}`)).messages.length !== 1) t.fail(`m-${i} not found once`)
  }
  t.equal((await byId(store, 'during')).messages.length, 1, 'the message stored during the build')
  const k7 = (await store.query({ op: 'key', key: 'k-7', limit: 100 }, 'g1')) as ListAnswer
  t.equal(k7.messages.length, 40)
})
