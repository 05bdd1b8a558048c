import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import {
  type ConsumedMessage,
  MessageConsumerProvider,
  MessageProducerProvider,
  QmqConsumer,
} from '../../src/client'
import { startCluster } from '../helpers/cluster'

/**
 * Defect 12 of issue 12: with `maxRetries: 3`, a handler that settles with its own `nack()` got a
 * fourth delivery (dead-lettered then, with DELIVERIES 4). docs/client.md: a failure on delivery
 * number maxRetries or later is a dead letter, and a manual nack is a failure like a throw.
 * Against the real servers: a metaserver and two broker groups (broker maxRetries left at 16).
 */
async function until(cond: () => Promise<boolean> | boolean, ms = 10_000, what = 'condition'): Promise<void> {
  const end = Date.now() + ms
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`${what} not met in ${ms} ms`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

for (const how of ['nack()', 'throw'] as const) {
  t.test(
    `client - maxRetries 3, every handler call ends in ${how}: 3 deliveries, dead letter with 3`,
    async (t) => {
      const dir = mkdtempSync(join(tmpdir(), 'qmq-maxretries-'))
      const cluster = await startCluster({ dir })
      const producer = new MessageProducerProvider({ appCode: 'p', metaServer: cluster.metaUrl })
      await producer.init()
      const consumer = new MessageConsumerProvider({
        appCode: 'c',
        metaServer: cluster.metaUrl,
        pullTimeoutMs: 300,
      })
      t.teardown(async () => {
        await consumer.close()
        await producer.close()
        await cluster.close()
        rmSync(dir, { recursive: true, force: true })
      })
      const counts: number[] = []
      class Handler {
        @QmqConsumer({ subject: 'retry.me', consumerGroup: 'g', maxRetries: 3, startFrom: 'earliest' })
        async onMessage(message: ConsumedMessage) {
          counts.push(message.getDeliveryCount())
          if (how === 'throw') throw new Error('boom')
          await message.nack()
        }
      }
      consumer.register(new Handler())
      await consumer.start()
      await producer.sendMessage(producer.generateMessage('retry.me'))
      const dead = async () => {
        const all = await Promise.all(
          cluster.brokers.map((b) => b.messageStore.listDeadLetters('retry.me', 'g')),
        )
        return all.flat()
      }
      await until(async () => (await dead()).length === 1, 15_000, 'a dead letter')
      t.same(counts, [1, 2, 3], 'the handler ran for deliveries 1, 2 and 3')
      t.same(
        (await dead()).map((d) => d.deliveryCount),
        [3],
        'dead-lettered with 3 deliveries',
      )
      // No further delivery comes.
      await new Promise((r) => setTimeout(r, 300))
      t.same(counts, [1, 2, 3])
    },
  )
}
