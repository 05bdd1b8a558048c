import fs from 'node:fs'
import os from 'node:os'
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
  decodeFetchResponse,
  encodeFetchRequest,
  type FetchResponse,
  type ReplicatedLogValue,
} from '../../../src/common/protocol/replication'
import { RawClient } from '../../helpers/raw-client'
import { message, send } from '../server/ops'

/**
 * What a master counts as a slave's acknowledgement. The slave here is this test, speaking REPL_FETCH
 * itself, so it decides exactly which offset it claims to hold durably.
 */

const SECRET = 'replication-acks-test-secret'

const BASE: Partial<BrokerOptions> = {
  port: 0,
  httpPort: -1,
  clusterSecret: SECRET,
  replicationInSyncLagMs: 60_000,
  replicationAckTimeoutMs: 10_000,
  checkpointIntervalMs: 3_600_000,
}

function freshDir(t: Test): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qmq-repl-acks-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  return dir
}

function pathOf(fd: number): string {
  try {
    return fs.readlinkSync(`/proc/self/fd/${fd}`)
  } catch {
    return ''
  }
}

async function until(what: string, cond: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 10))
  }
}

/** A hand-driven slave: one REPL_FETCH at a time, claiming `offset` as its durable end. */
async function fetchAt(
  c: RawClient,
  log: ReplicatedLogValue,
  offset: number,
  opts: { slaveId?: string; epoch?: number; waitMs?: number } = {},
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
  let store: FileMessageStore | undefined
  const broker = new Broker(
    { ...BASE, flush: 'sync', dataDir: freshDir(t) },
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
  const end = () => (store as FileMessageStore).mlog.log.endOffset

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
  // The slave holds the first SEND's records (not the second's): the first is answered.
  await fetchAt(slave, 0, e1)
  await until('the first SEND answered', () => firstDone, 3_000).catch(() => {})
  t.ok(firstDone, 'the first SEND is answered once a slave holds its own records')
  t.notOk(secondDone, 'the second SEND still waits: the slave does not hold it')
  t.same(await first, [{ status: 0, message: '' }])
  await fetchAt(slave, 0, e2)
  t.same(await second, [{ status: 0, message: '' }], 'answered once the slave holds it too')
})
