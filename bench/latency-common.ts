/**
 * Pieces of the broker benchmarks over the wire protocol (bench/broker-throughput.ts,
 * bench/replication.ts): PULL requests, SEND batches, and publish-to-deliver latency at a fixed rate.
 * Not a benchmark by itself (bench/run.ts skips *-common.ts).
 */
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { RequestCode } from '../src/common/protocol/codes'
import {
  decodeSendResponse,
  encodeAckRequest,
  encodePullRequest,
  encodeSendRequest,
  type PullRequest,
  StartPosition,
} from '../src/common/protocol/commands'
import { encodeRecord } from '../src/common/record'
import { RawClient } from '../test/helpers/raw-client'

/** The body of a record of about 1 KiB. */
export const LATENCY_BODY = Buffer.alloc(1024 - 80, 0x61)

export function pullReq(
  p: Partial<PullRequest> & { subject: string; group: string; consumerId: string },
): Buffer {
  return encodePullRequest({
    maxMessages: 1000,
    maxBytes: 0,
    timeoutMs: 0,
    broadcast: false,
    atMostOnce: false,
    tagsAll: false,
    start: StartPosition.EARLIEST,
    startTime: 0,
    tags: [],
    ...p,
  })
}

export async function sendBatch(c: RawClient, records: Buffer[]): Promise<void> {
  const res = decodeSendResponse(await c.call(RequestCode.SEND, encodeSendRequest(records)))
  for (const r of res) if (r.status !== 0) throw new Error(`send failed: ${r.status} ${r.message}`)
}

/** Sequence and message id of each record of a PULL answer, read without decoding the records. */
export function pulledIds(body: Buffer): { sequence: number; id: string }[] {
  const count = body.readUInt32BE(0)
  const out: { sequence: number; id: string }[] = []
  let rec = 4 + count * 10
  for (let i = 0, o = 4; i < count; i++, o += 10) {
    const idLength = body.readUInt16BE(rec + 28)
    out.push({
      sequence: body.readUInt32BE(o) * 0x1_0000_0000 + body.readUInt32BE(o + 4),
      id: body.toString('utf8', rec + 32, rec + 32 + idLength),
    })
    rec += body.readUInt32BE(rec)
  }
  return out
}

export function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] ?? Number.NaN
}

let latencyRuns = 0

/**
 * Sends at `rate` msgs/s for `seconds`; a long-polling consumer measures publish-to-deliver latency.
 * Returns the samples (ms), sorted.
 */
export async function latency(
  port: number,
  rate: number,
  seconds: number,
  body: Buffer = LATENCY_BODY,
): Promise<number[]> {
  const subject = 'latency'
  const producer = await RawClient.connect(port)
  const consumer = await RawClient.connect(port)
  const sentAt = new Map<string, number>()
  const samples: number[] = []
  // Create the group at the end of the subject before producing.
  await consumer.call(
    RequestCode.PULL,
    pullReq({ subject, group: 'lat', consumerId: 'c', start: StartPosition.LATEST }),
  )
  let producing = true
  const acks: Promise<Buffer>[] = []
  // BENCH_LOOP_STATS=1: the client's own event-loop delay, SEND round trips and pacing gaps (to tell
  // a tail made by this process from one made by the broker).
  const diag = process.env.BENCH_LOOP_STATS === '1'
  const loop = diag ? monitorEventLoopDelay({ resolution: 1 }) : undefined
  loop?.enable()
  const sendRtt: number[] = []
  const gaps: number[] = []
  const total = Math.floor(rate * seconds)
  const consumerLoop = (async () => {
    while (producing || samples.length < total) {
      const body = await consumer.call(
        RequestCode.PULL,
        pullReq({ subject, group: 'lat', consumerId: 'c', timeoutMs: 500, start: StartPosition.LATEST }),
      )
      const now = performance.now()
      const msgs = pulledIds(body)
      if (msgs.length === 0 && !producing) break
      for (const m of msgs) {
        const t0 = sentAt.get(m.id)
        if (t0 !== undefined) samples.push(now - t0)
      }
      // Acks are pipelined (not awaited), as the SDK does: the next PULL goes out at once.
      if (msgs.length > 0)
        acks.push(
          consumer.call(
            RequestCode.ACK,
            encodeAckRequest({
              subject,
              group: 'lat',
              consumerId: 'c',
              broadcast: false,
              sequences: msgs.map((m) => m.sequence),
            }),
          ),
        )
    }
    await Promise.all(acks)
  })()
  // Encoded ahead: the bench process must keep the pace without competing with the broker for CPU.
  const now0 = Date.now()
  // Ids unique to this call: a broker measured again must neither dedupe them nor hand back an
  // earlier call's message under a matching id.
  const prefix = `lat-${process.pid}-${latencyRuns++}-`
  const prepared = Array.from({ length: total }, (_, i) =>
    encodeRecord({ id: `${prefix}${i}`, subject, createdAt: now0, tags: [], properties: new Map(), body }),
  )
  const started = performance.now()
  let sent = 0
  const pending: Promise<void>[] = []
  while (sent < total) {
    const due = Math.min(total, Math.floor(((performance.now() - started) / 1000) * rate))
    if (due > sent) {
      const recs: Buffer[] = []
      const at = performance.now()
      for (; sent < due; sent++) {
        recs.push(prepared[sent] as Buffer)
        sentAt.set(`${prefix}${sent}`, at)
      }
      const p = sendBatch(producer, recs)
      if (diag) void p.then(() => sendRtt.push(performance.now() - at))
      pending.push(p)
    }
    const before = performance.now()
    // Paced by a 1 ms timer (what is due goes out as one SEND, as the SDK batches): spinning on
    // setImmediate would burn a core the broker needs on a small machine and measure the starvation.
    await new Promise((r) => setTimeout(r, 1))
    if (diag) gaps.push(performance.now() - before)
  }
  await Promise.all(pending)
  producing = false
  await consumerLoop
  producer.destroy()
  consumer.destroy()
  if (loop !== undefined) {
    loop.disable()
    const pct = (a: number[]) => {
      a.sort((x, y) => x - y)
      return [0.5, 0.9, 0.99, 0.999, 1].map((p) => +percentile(a, p === 1 ? 0.99999 : p).toFixed(2))
    }
    const ms = (n: number) => +(n / 1e6).toFixed(2)
    process.stderr.write(
      `${JSON.stringify({
        clientLoopDelayMs: [50, 90, 99, 99.9].map((p) => ms(loop.percentile(p))).concat(ms(loop.max)),
        sendRttMs_p50_p90_p99_p999_max: pct(sendRtt),
        paceGapMs_p50_p90_p99_p999_max: pct(gaps),
      })}\n`,
    )
  }
  return samples.sort((a, b) => a - b)
}
