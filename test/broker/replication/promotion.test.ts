import fs from 'node:fs'
import type { Test } from 'tap'
import t from 'tap'
import { Broker, type BrokerOptions } from '../../../src/broker/broker'
import type { FileMessageStore } from '../../../src/broker/store/file-message-store'
import { isQmqError } from '../../../src/common/errors'
import { silentLogger } from '../../../src/common/logger'
import type { HistoryAnswer, MessageAnswer } from '../../../src/common/protocol/query'
import { RawClient } from '../../helpers/raw-client'
import { tempDir, waitUntil, writeEpochOneAtEnd } from '../../helpers/replication'
import { ack, message, pull, sendOk } from '../server/ops'

/** What a data dir that was a master serves after it was a slave and is promoted again. */

const SECRET = 'replication-promotion-test-secret'

const BASE: Partial<BrokerOptions> = {
  port: 0,
  httpPort: -1,
  clusterSecret: SECRET,
  replicationInSyncLagMs: 1_500,
  replicationFetchWaitMs: 100,
  checkpointIntervalMs: 200,
}

function freshDir(t: Test): string {
  return tempDir(t, 'qmq-repl-promo-')
}

function until(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  return waitUntil(what, cond, timeoutMs, 20)
}

function broker(t: Test, extra: Partial<BrokerOptions>): Broker {
  const b = new Broker({ ...BASE, dataDir: freshDir(t), ...extra }, { logger: silentLogger })
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

/** Query by id, retried while the promoted store builds its index (QMQ_ERR_INDEX_BUILDING). */
async function byId(b: Broker, id: string): Promise<MessageAnswer> {
  const deadline = Date.now() + 15_000
  for (;;) {
    try {
      return (await store(b).query({ op: 'message', id }, 'g1')) as MessageAnswer
    } catch (err) {
      if (!isQmqError(err) || err.code !== 'QMQ_ERR_INDEX_BUILDING' || Date.now() > deadline) throw err
      await new Promise((r) => setTimeout(r, 20))
    }
  }
}

t.test(
  'promotion - a former master rejoined as a slave answers queries from the copied log, not its old index',
  async (t) => {
    // X writes alone; Y starts from a copy of X's data dir and becomes master of epoch 1. X meanwhile
    // stored, delivered and acked records Y never got (its index and trace hold them), then follows Y.
    const x = broker(t, {})
    await x.start()
    const cx = await RawClient.connect(x.addresses.port)
    for (let i = 0; i < 10; i++) await sendOk(cx, [message('s', `common-${i}`, Buffer.alloc(300, i))])
    await cx.close()
    await x.close()
    const yDir = freshDir(t)
    fs.cpSync(x.options.dataDir, yDir, { recursive: true })
    await x.start()
    const cx2 = await RawClient.connect(x.addresses.port)
    for (let i = 0; i < 5; i++) await sendOk(cx2, [message('s', `lost-${i}`, Buffer.alloc(700, i))])
    const got = await pull(cx2, { subject: 's', group: 'g', consumerId: 'c', maxMessages: 100 })
    t.equal(got.length, 15)
    await ack(cx2, { subject: 's', group: 'g', consumerId: 'c', sequences: got.map((m) => m.sequence) })
    await cx2.close()
    await x.close()

    writeEpochOneAtEnd(yDir)
    const y = broker(t, { dataDir: yDir })
    await y.start()
    const cy = await RawClient.connect(y.addresses.port)
    t.teardown(() => cy.close())
    // Sequences 10..12, at offsets X's lost records had.
    for (let i = 0; i < 3; i++) await sendOk(cy, [message('s', `new-${i}`)])

    const xs = broker(t, { dataDir: x.options.dataDir, role: 'slave', masterAddress: y.addresses.address })
    await xs.start()
    await until('former master caught up', () => caughtUp(y, xs))
    await xs.close()

    const xm = broker(t, { dataDir: x.options.dataDir })
    await xm.start()
    for (let i = 0; i < 3; i++) {
      const found = await byId(xm, `new-${i}`)
      t.equal(found.messages.length, 1, `new-${i} is found`)
      t.same(
        found.events.map((e) => e.type).filter((e) => e !== 'sent' && e !== 'stored'),
        [],
        `new-${i}: no trace of the lost record that had its sequence`,
      )
    }
    t.same((await byId(xm, 'lost-0')).messages, [], 'a record cut away is not found')
    t.equal((await byId(xm, 'common-3')).messages.length, 1, 'a replicated record is found')
    const h = (await store(xm).query(
      { op: 'history', from: 0, to: Date.now() + 60_000, subject: 's' },
      'g1',
    )) as HistoryAnswer
    const counted = h.series.flatMap((s) => s.points).reduce((n, p) => n + (p.produced ?? 0), 0)
    t.equal(counted, 0, 'no per-minute counts of what it did as the former master')
  },
)
