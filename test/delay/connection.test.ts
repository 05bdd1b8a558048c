import { connect, type Socket } from 'node:net'
import t, { type Test } from 'tap'
import { ManualClock } from '../../src/common/clock'
import { ERROR_CODES } from '../../src/common/error-codes'
import { silentLogger } from '../../src/common/logger'
import type { Registry } from '../../src/common/metrics'
import { RequestCode } from '../../src/common/protocol/codes'
import { encodeSendRequest } from '../../src/common/protocol/commands'
import { encodeFrame, encodeFrameHeader, FrameDecoder } from '../../src/common/protocol/frame'
import { DelayServer, type DelayOptions } from '../../src/delay/delay-server'
import { RawClient } from '../helpers/raw-client'
import { settleWithin } from '../helpers/settle'
import { delayed, FakeSender, send, T0 } from './helpers/delay-helpers'

/** The delay server's TCP port runs the shared connection loop (common/server): its limits, tested here. */

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

async function startServer(t: Test, options: Partial<DelayOptions> = {}): Promise<DelayServer> {
  // The closing teardown is registered before t.testdir(): the server closes before its dir is removed.
  let server: DelayServer | undefined
  t.teardown(() => server?.close())
  const dataDir = t.testdir()
  server = new DelayServer(
    { port: 0, dataDir, bucketMinutes: 1, tickMs: 5, checkpointIntervalMs: 50, ...options },
    {
      clock: new ManualClock(T0),
      logger: silentLogger,
      sender: new FakeSender(),
      routes: { groups: async () => [] },
    },
  )
  await server.start()
  return server
}

async function metricValue(registry: Registry, name: string, labels: Record<string, string> = {}) {
  const m = registry.getSingleMetric(name)
  if (m === undefined) throw new Error(`no metric ${name}`)
  let sum = 0
  for (const v of (await m.get()).values) {
    if (Object.entries(labels).every(([k, want]) => v.labels[k] === want)) sum += v.value
  }
  return sum
}

async function until(cond: () => boolean | Promise<boolean>, ms = 10_000): Promise<boolean> {
  const end = Date.now() + ms
  while (Date.now() < end) {
    if (await cond()) return true
    await sleep(25)
  }
  return cond()
}

function rawSocket(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ port, host: '127.0.0.1' })
    s.on('error', () => {})
    s.once('connect', () => resolve(s))
    s.once('error', reject)
  })
}

t.test('delay connections - silent and idle connections are closed', async (t) => {
  const server = await startServer(t, { firstFrameTimeoutMs: 300, idleTimeoutMs: 600 })
  const silent = await Promise.all(Array.from({ length: 50 }, () => rawSocket(server.port)))
  const idle = await Promise.all(Array.from({ length: 20 }, () => RawClient.connect(server.port)))
  t.teardown(() => {
    for (const s of silent) s.destroy()
    for (const c of idle) c.destroy()
  })
  for (const c of idle) t.equal((await c.request(RequestCode.PING)).status, 0)
  t.ok(
    await until(() => silent.every((s) => s.destroyed || s.readableEnded)),
    'connections that never spoke closed',
  )
  t.ok(await until(() => idle.every((c) => c.isClosed)), 'idle connections closed')
  t.equal(
    await metricValue(server.registry, 'qmq_delay_connections_closed_total', { reason: 'first_frame' }),
    50,
  )
  t.equal(await metricValue(server.registry, 'qmq_delay_connections_closed_total', { reason: 'idle' }), 20)
  const fresh = await RawClient.connect(server.port)
  t.teardown(() => fresh.destroy())
  t.equal((await fresh.request(RequestCode.PING)).status, 0, 'still serving')
})

t.test('delay connections - a frame trickled a byte at a time is closed at the frame deadline', async (t) => {
  const server = await startServer(t, { frameTimeoutMs: 500, idleTimeoutMs: 120_000 })
  const c = await RawClient.connect(server.port)
  t.teardown(() => c.destroy())
  t.equal((await c.request(RequestCode.PING)).status, 0)
  const frame = encodeFrame({ code: RequestCode.PING, flags: 0, status: 0, requestId: 9 }, Buffer.alloc(300))
  let sent = 0
  const timer = setInterval(() => {
    if (!c.isClosed && sent < frame.length) c.writeRaw(frame.subarray(sent, ++sent))
  }, 100)
  t.teardown(() => clearInterval(timer))
  const outcome = await settleWithin(
    c.closed.then(() => 'closed'),
    10_000,
    'open',
  )
  clearInterval(timer)
  t.equal(outcome, 'closed')
  t.ok(sent < frame.length, `closed mid-frame (${sent} of ${frame.length} bytes)`)
  t.equal(c.unsolicited[0]?.status, ERROR_CODES.QMQ_ERR_FRAME_TIMEOUT.status)
})

t.test('delay connections - a partial-frame flood stays within the budget', async (t) => {
  const budget = 2 * 1024 * 1024
  const frameBytes = 1024 * 1024
  const server = await startServer(t, {
    maxFrameBytes: frameBytes,
    maxPartialFrameBytes: budget,
    frameTimeoutMs: 120_000,
    idleTimeoutMs: 120_000,
  })
  const held = 900 * 1024
  const attackers: RawClient[] = []
  t.teardown(() => {
    for (const a of attackers) a.destroy()
  })
  for (let i = 0; i < 10; i++) {
    const a = await RawClient.connect(server.port)
    attackers.push(a)
    t.equal((await a.request(RequestCode.PING)).status, 0)
    a.writeRaw(
      encodeFrameHeader({ code: RequestCode.SEND, flags: 0, status: 0, requestId: 5 }, frameBytes - 18),
    )
    a.writeRaw(Buffer.alloc(held - 18, 7))
    await until(
      async () => a.isClosed || (await metricValue(server.registry, 'qmq_delay_partial_frame_bytes')) > 0,
    )
    await sleep(20)
  }
  const fits = Math.floor(budget / held)
  t.ok(
    await until(() => attackers.filter((a) => a.isClosed).length >= attackers.length - fits),
    'the oldest partial frames were closed',
  )
  const partial = await metricValue(server.registry, 'qmq_delay_partial_frame_bytes')
  t.ok(partial <= budget, `partial-frame bytes ${partial} <= ${budget}`)
  t.ok(
    attackers
      .filter((a) => a.isClosed)
      .every((a) => a.unsolicited[0]?.status === ERROR_CODES.QMQ_ERR_FRAME_BUDGET.status),
    'each was told why',
  )
  const good = await RawClient.connect(server.port)
  t.teardown(() => good.destroy())
  const res = await send(
    good,
    Array.from({ length: 20 }, (_, i) => delayed(`g${i}`, T0 + 60_000)),
  )
  t.same(
    res.map((r) => r.status),
    res.map(() => 0),
    'a well-behaved client is served',
  )
})

t.test('delay connections - pipelined SENDs beyond the in-flight bound wait for a slot', async (t) => {
  const server = await startServer(t, { maxInFlightPerConnection: 2, writeHighWaterBytes: 16 * 1024 })
  const s = await rawSocket(server.port)
  t.teardown(() => s.destroy())
  const n = 400
  const frames: Buffer[] = []
  for (let i = 1; i <= n; i++) {
    const body = Buffer.concat(encodeSendRequest([delayed(`p${i}`, T0 + 60_000)]))
    frames.push(encodeFrame({ code: RequestCode.SEND, flags: 0, status: 0, requestId: i }, body))
  }
  const decoder = new FrameDecoder()
  const statuses: number[] = []
  s.on('data', (chunk: Buffer) => {
    for (const f of decoder.push(chunk)) statuses.push(f.status)
  })
  s.write(Buffer.concat(frames))
  let peak = 0
  while (statuses.length < n) {
    peak = Math.max(peak, await metricValue(server.registry, 'qmq_delay_connection_requests_in_flight'))
    await sleep(1)
  }
  t.ok(peak <= 2, `at most 2 SENDs handled at once (peak ${peak})`)
  t.ok(
    statuses.every((st) => st === 0),
    'all stored',
  )
})
