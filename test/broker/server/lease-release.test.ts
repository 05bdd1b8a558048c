import t from 'tap'
import { createMessageStore } from '../../../src/broker/store'
import type { MessageStore, PullOptions, StoredMessage } from '../../../src/broker/store/types'
import { RequestCode } from '../../../src/common/protocol/codes'
import {
  decodePullResponse,
  encodePullRequest,
  encodeSendRequest,
  type PullRequest,
  StartPosition,
} from '../../../src/common/protocol/commands'
import { encodeRecord } from '../../../src/common/record'
import { RawClient } from '../../helpers/raw-client'
import { startBroker } from './start-broker'

/**
 * A PULL whose client is gone by the time its answer is ready: the messages it took are handed
 * back to the group at once, not after their lease (issue 12, defect 2).
 */
function pullReq(consumerId: string): PullRequest {
  return {
    subject: 'rel',
    group: 'g',
    consumerId,
    maxMessages: 10,
    maxBytes: 0,
    timeoutMs: 0,
    broadcast: false,
    atMostOnce: false,
    tagsAll: false,
    start: StartPosition.EARLIEST,
    startTime: 0,
    tags: [],
  }
}

async function until(cond: () => Promise<boolean> | boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`${what}: not met in ${ms} ms`)
    await new Promise((r) => setTimeout(r, 10))
  }
}

t.test(
  'lease release - messages of an answer whose connection closed go back to the group at once',
  async (t) => {
    // The store's pull for consumer 'gone' takes the messages, then waits for the test's go-ahead.
    let pulled!: () => void
    const pulledP = new Promise<void>((r) => {
      pulled = r
    })
    let go!: () => void
    const goP = new Promise<void>((r) => {
      go = r
    })
    const { broker, port } = await startBroker(
      t,
      { leaseMs: 60_000 },
      {
        createStore: (ctx) => {
          const inner = createMessageStore({ ...ctx.options, logger: ctx.logger, registry: ctx.registry })
          const gated = async (o: PullOptions): Promise<StoredMessage[]> => {
            const out = await inner.pull(o)
            if (o.consumerId === 'gone' && out.length > 0) {
              pulled()
              await goP
            }
            return out
          }
          return new Proxy(inner, {
            get(target, prop) {
              if (prop === 'pull') return gated
              const v = Reflect.get(target, prop) as unknown
              return typeof v === 'function' ? v.bind(target) : v
            },
          }) as MessageStore
        },
      },
    )
    const producer = await RawClient.connect(port)
    t.teardown(() => producer.close())
    const record = encodeRecord({
      id: 'rel-1',
      subject: 'rel',
      createdAt: Date.now(),
      tags: [],
      properties: new Map(),
    })
    await producer.call(RequestCode.SEND, encodeSendRequest([record]))

    const gone = await RawClient.connect(port)
    const answer = gone.request(RequestCode.PULL, encodePullRequest(pullReq('gone'))).catch(() => undefined)
    await pulledP
    gone.socket.resetAndDestroy() // RST: the broker's side closes (a FIN would be a half-close it still answers)
    await answer
    const connections = async () =>
      (await broker.registry.getSingleMetric('qmq_broker_connections')?.get())?.values[0]?.value
    await until(async () => (await connections()) === 1, 5_000, 'the broker saw the connection close')
    go()

    const other = await RawClient.connect(port)
    t.teardown(() => other.close())
    let got: ReturnType<typeof decodePullResponse> = []
    await until(
      async () => {
        got = decodePullResponse(await other.call(RequestCode.PULL, encodePullRequest(pullReq('other'))))
        return got.length > 0
      },
      5_000,
      'handed to another consumer long before the 60 s lease',
    )
    t.same(
      got.map((m) => [m.record.id, m.deliveryCount]),
      [['rel-1', 2]],
    )
  },
)
