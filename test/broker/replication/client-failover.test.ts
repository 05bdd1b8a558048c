import type { Test } from 'tap'
import t from 'tap'
import { Broker, type BrokerOptions } from '../../../src/broker/broker'
import { type Message, MessageConsumerProvider, MessageProducerProvider } from '../../../src/client'
import { silentLogger } from '../../../src/common/logger'
import { RawClient } from '../../helpers/raw-client'
import { startReplicationMetaserver, tempDir, waitUntil } from '../../helpers/replication'
import { message, sendOk } from '../server/ops'

/**
 * The SDK follows a failover (issue 14) as soon as the metaserver routes the promoted master: the
 * producer's first acknowledged send and the consumer's first delivery after the master's loss come
 * within a small bound of that moment (not after a reconnect backoff, an open circuit breaker or the
 * 30 s route refresh). Twice: the second failover promotes the first master again, on the address the
 * clients failed to reach during the first one.
 */

const SECRET = 'client-failover-cluster-secret-01'
const TOKEN = 'client-failover-admin-token'
/**
 * The SDK's share: from the later of the metaserver routing the new master and the new master
 * acknowledging a SEND sent straight to it, to the SDK's first acknowledgement (or delivery).
 */
const FOLLOW_BOUND_MS = 1_000

const FAST: Partial<BrokerOptions> = {
  port: 0,
  httpPort: -1,
  clusterSecret: SECRET,
  heartbeatIntervalMs: 100,
  replicationInSyncLagMs: 1_500,
  replicationAckTimeoutMs: 3_000,
  replicationFetchWaitMs: 100,
  checkpointIntervalMs: 200,
}

function freshDir(t: Test): string {
  return tempDir(t, 'qmq-client-failover-')
}

function until(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  return waitUntil(what, cond, timeoutMs, 10)
}

t.test('client failover - producer and consumer follow the promoted master at once', async (t) => {
  const { meta, admin } = await startReplicationMetaserver(t, {
    dataDir: freshDir(t),
    clusterSecret: SECRET,
    adminToken: TOKEN,
    heartbeatTimeoutMs: 3_000,
  })
  const nodes = {
    a: new Broker(
      { ...FAST, dataDir: freshDir(t), group: 'g1', metaserver: meta.url },
      { logger: silentLogger },
    ),
    b: new Broker(
      { ...FAST, dataDir: freshDir(t), group: 'g1', role: 'slave', metaserver: meta.url },
      { logger: silentLogger },
    ),
  }
  t.teardown(() => Promise.all([nodes.a.close(), nodes.b.close()]))
  await nodes.a.start()
  await nodes.b.start()
  const inSync = async (master: Broker, slave: Broker): Promise<boolean> => {
    if (!master.isRunning || !slave.isRunning || slave.currentRole !== 'slave') return false
    const g = await admin.getGroup('g1').catch(() => undefined)
    const m = g?.servers.find((s) => s.role === 'master')
    return (
      g?.alive === true &&
      m?.address === master.addresses.address &&
      m.replication?.inSyncSlaves?.includes(slave.addresses.address) === true
    )
  }
  await until('the slave in sync', () => inSync(nodes.a, nodes.b))

  // Default client options, as an application has them.
  const producer = new MessageProducerProvider({ appCode: 'failover-test', metaServer: meta.url })
  await producer.init()
  const consumer = new MessageConsumerProvider({ appCode: 'failover-test', metaServer: meta.url })
  const consumed = new Map<string, number>()
  consumer.addListener('orders', 'cg', (m: Message) => {
    if (!consumed.has(m.getMessageId())) consumed.set(m.getMessageId(), performance.now())
  })
  await consumer.start()
  t.teardown(() => consumer.close())
  t.teardown(() => producer.close())

  // 4 senders, one message in flight each, as the replication bench runs them.
  const sent: { id: string; sentAt: number; ackedAt: number }[] = []
  let sending = true
  const lanes = Array.from({ length: 4 }, async () => {
    while (sending) {
      const m = producer.generateMessage('orders')
      const sentAt = performance.now()
      try {
        await producer.sendMessage(m)
        sent.push({ id: m.getMessageId(), sentAt, ackedAt: performance.now() })
      } catch {
        await new Promise((r) => setTimeout(r, 20))
      }
    }
  })
  t.teardown(async () => {
    sending = false
    await Promise.all(lanes)
  })

  let [master, slave]: ['a' | 'b', 'a' | 'b'] = ['a', 'b']
  for (const round of [1, 2]) {
    const before = sent.length
    await until('sends acknowledged before the loss', () => sent.length >= before + 50)
    const dead = nodes[master]
    const next = nodes[slave]
    const nextAddress = next.addresses.address
    const nextPort = next.addresses.port
    // The master goes silent (no 'offline'; its connections close): the metaserver promotes the
    // slave after the heartbeat timeout.
    const lostAt = performance.now()
    await dead.close({ offline: false })
    let routedAt = 0
    await until('the metaserver routing the promoted slave', async () => {
      const g = await admin.getGroup('g1').catch(() => undefined)
      if (g?.alive !== true || g.address !== nextAddress) return false
      routedAt = performance.now()
      return true
    })
    // The servers' share: the promoted master's first acknowledgement of a SEND straight to it.
    let servedAt = 0
    await until('the promoted master acknowledging a SEND', async () => {
      const c = await RawClient.connect(nextPort).catch(() => undefined)
      if (c === undefined) return false
      try {
        await sendOk(c, [message('probe', `probe-${round}-${Date.now()}`)])
        servedAt = performance.now()
        return true
      } catch {
        return false
      } finally {
        c.destroy()
      }
    })
    const ready = Math.max(routedAt, servedAt)
    const since = (at: number) =>
      `${Math.round(at - ready)} ms after the new master was routed and serving (routed ${Math.round(routedAt - lostAt)} ms, serving ${Math.round(servedAt - lostAt)} ms after the loss)`
    await until('an acknowledgement of a message sent after the loss', () =>
      sent.some((x) => x.sentAt >= lostAt),
    )
    const after = sent.filter((x) => x.sentAt >= lostAt)
    const firstAck = Math.min(...after.map((x) => x.ackedAt))
    t.ok(firstAck - ready <= FOLLOW_BOUND_MS, `round ${round}: the producer acknowledged ${since(firstAck)}`)
    await until('a message sent after the loss consumed', () => after.some((x) => consumed.has(x.id)))
    const firstConsumed = Math.min(
      ...after.filter((x) => consumed.has(x.id)).map((x) => consumed.get(x.id) as number),
    )
    t.ok(
      firstConsumed - ready <= FOLLOW_BOUND_MS,
      `round ${round}: the consumer got a message sent after the loss ${since(firstConsumed)}`,
    )
    // The lost master comes back on its address and follows the new one (the next round promotes it).
    await dead.start()
    await until('the former master back in sync as the slave', () => inSync(next, dead))
    ;[master, slave] = [slave, master]
  }

  sending = false
  await Promise.all(lanes)
  await until('every acknowledged message consumed', () => sent.every((x) => consumed.has(x.id)))
  t.pass(`${sent.length} acknowledged messages, all consumed`)
})
