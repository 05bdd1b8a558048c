/**
 * Not a test by itself: the producer process of test/e2e/replication-partition.fault.ts, started in a
 * network namespace (`ip netns exec NS node --import tsx partition-producer.ts CONFIG`). It sends
 * batches of fresh messages to EVERY broker address it is given, each on its own lane and connection,
 * whatever the metaserver says the master is, so that any broker willing to acknowledge a write gets
 * the chance to. It never resends: a refused or unanswered batch is dropped (it may still be stored:
 * that is the unacknowledged tail the test expects a former master to truncate).
 *
 * stdout, one JSON object per line (the test's record of what was acknowledged, by whom, when):
 *   {"ready":true}
 *   {"ack":"<broker host:port>","t0":<ms sent>,"t1":<ms answered>,"ids":["<id>",...]}
 *   {"refused":"<broker>","t1":<ms>,"n":<records>,"status":<status>,"message":"..."}   (first of a run)
 *   {"done":true}                                                 (after SIGTERM, lanes drained)
 * t0/t1 are Date.now() of this process (same machine clock as the test's). A broker decided an ack
 * somewhere in [t0, t1].
 */
import { RequestCode } from '../../src/common/protocol/codes'
import { decodeSendResponse, encodeSendRequest } from '../../src/common/protocol/commands'
import { encodeRecord } from '../../src/common/record'
import { RawClient } from './raw-client'

interface ProducerConfig {
  name: string
  brokers: string[]
  subject: string
  batch: number
  /** Pause between two batches of a lane (ms). */
  pauseMs: number
  /** A batch not answered within this long is given up and its connection dropped. */
  requestTimeoutMs: number
}

const config = JSON.parse(process.argv[2] ?? '{}') as ProducerConfig
let stopping = false
let seq = 0

function out(line: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(line)}\n`)
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms)
    }),
  ]).finally(() => clearTimeout(timer))
}

async function lane(broker: string): Promise<void> {
  const colon = broker.lastIndexOf(':')
  const host = broker.slice(0, colon)
  const port = Number(broker.slice(colon + 1))
  let client: RawClient | undefined
  let lastRefusal = ''
  while (!stopping) {
    try {
      client ??= await withTimeout(RawClient.connect(port, host), config.requestTimeoutMs)
      const ids: string[] = []
      const records = Array.from({ length: config.batch }, () => {
        const id = `${config.name}-${seq++}`
        ids.push(id)
        return encodeRecord({
          id,
          subject: config.subject,
          createdAt: Date.now(),
          tags: [],
          properties: new Map(),
          body: Buffer.from(id),
        })
      })
      const t0 = Date.now()
      const res = await withTimeout(
        client.request(RequestCode.SEND, encodeSendRequest(records)),
        config.requestTimeoutMs,
      )
      const t1 = Date.now()
      const results = res.status === 0 ? decodeSendResponse(res.body) : []
      const acked = ids.filter((_, i) => results[i]?.status === 0)
      if (acked.length > 0) {
        out({ ack: broker, t0, t1, ids: acked })
        lastRefusal = ''
      }
      if (acked.length < ids.length) {
        const refusal = results.find((r) => r.status !== 0) ?? { status: res.status, message: res.message }
        const key = `${refusal.status} ${refusal.message}`
        if (key !== lastRefusal)
          out({
            refused: broker,
            t1,
            n: ids.length - acked.length,
            status: refusal.status,
            message: refusal.message,
          })
        lastRefusal = key
        await sleep(100)
      }
    } catch (err) {
      client?.destroy()
      client = undefined
      const key = String(err)
      if (key !== lastRefusal) out({ refused: broker, t1: Date.now(), status: -1, message: key })
      lastRefusal = key
      await sleep(100)
    }
    await sleep(config.pauseMs)
  }
  client?.destroy()
}

const lanes = config.brokers.map((b) => lane(b))
process.on('SIGTERM', () => {
  stopping = true
  void Promise.all(lanes).then(() => {
    out({ done: true })
    process.exit(0)
  })
})
// The test holds our stdin open: when it dies, so do we.
process.stdin.on('end', () => process.exit(1))
process.stdin.resume()
out({ ready: true })
