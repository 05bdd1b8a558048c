/**
 * Not a test by itself: the producer process of test/e2e/replication-partition.fault.ts, started in a
 * network namespace (`ip netns exec NS node --import tsx partition-producer.ts CONFIG`). It sends
 * batches of fresh messages to EVERY broker address it is given, on `lanes` lanes (connections) each,
 * whatever the metaserver says the master is, so that any broker willing to acknowledge a write gets
 * the chance to. It never resends: a refused or unanswered batch is dropped (it may still be stored:
 * that is the unacknowledged tail the test expects a former master to truncate).
 *
 * stdout, one JSON object per line (the test's record of what was acknowledged, by whom, when):
 *   {"ready":true}
 *   {"ack":"<broker host:port>","t0":<ms sent>,"t1":<ms answered>,"ids":["<id>",...]}
 *   {"refused":"<broker>","t1":<ms>,"status":<status>,"message":"..."}  (status -1: no answer)
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
  /** Batches in flight per broker, each on its own connection. */
  lanes: number
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
  // A refusal is printed when it differs from the previous one, or 500 ms after the last printed one.
  let lastRefusal = ''
  let lastPrinted = 0
  const refused = (line: { status: number; message: string }) => {
    const key = `${line.status} ${line.message}`
    const t1 = Date.now()
    if (key !== lastRefusal || t1 - lastPrinted >= 500) {
      out({ refused: broker, t1, ...line })
      lastPrinted = t1
    }
    lastRefusal = key
  }
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
        refused({ status: refusal.status, message: refusal.message })
        await sleep(100)
      }
    } catch (err) {
      client?.destroy()
      client = undefined
      refused({ status: -1, message: String(err) })
      await sleep(100)
    }
    await sleep(config.pauseMs)
  }
  client?.destroy()
}

const lanes = config.brokers.flatMap((b) => Array.from({ length: config.lanes }, () => lane(b)))
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
