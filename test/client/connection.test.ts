import t from 'tap'
import { isQmqError } from '../../src/common/errors'
import { createServer } from 'node:net'
import { encodeFrame, FLAG_RESPONSE, type Frame, FrameDecoder } from '../../src/common/protocol/frame'
import { Connection } from '../../src/client/transport/connection'
import { type Reply, startFrameServer } from './helpers/frame-server'

const echo = (frame: Frame, reply: Reply): void => reply(0, frame.body)

/** Polls `cond` every 5 ms (fixed sleeps are too short on a loaded machine). */
async function until(cond: () => boolean, what: string, ms = 10_000): Promise<void> {
  const end = Date.now() + ms
  while (!cond()) {
    if (Date.now() > end) throw new Error(`${what}: not met in ${ms} ms`)
    await new Promise((r) => setTimeout(r, 5))
  }
}

t.test('connection - correlates out-of-order responses by request id', async (t) => {
  const held: { frame: Frame; reply: Reply }[] = []
  const srv = await startFrameServer((frame, reply) => {
    held.push({ frame, reply })
    if (held.length === 3) for (const h of held.reverse()) h.reply(0, h.frame.body)
  })
  const c = new Connection({ address: srv.address })
  t.teardown(async () => {
    await c.close()
    await srv.close()
  })
  const answers = await Promise.all(
    ['a', 'b', 'c'].map((s) => c.request(7, Buffer.from(s)).then((f) => f.body.toString())),
  )
  t.same(answers, ['a', 'b', 'c'])
  t.equal(c.outstanding, 0)
})

t.test('connection - multi-part bodies and many requests in one turn are written together', async (t) => {
  let frames = 0
  const srv = await startFrameServer((frame, reply) => {
    frames++
    reply(0, frame.body)
  })
  const c = new Connection({ address: srv.address })
  t.teardown(async () => {
    await c.close()
    await srv.close()
  })
  const all = await Promise.all(
    Array.from({ length: 500 }, (_, i) => c.request(1, [Buffer.from(`${i}:`), Buffer.from('x'.repeat(i))])),
  )
  t.equal(frames, 500)
  t.equal(all[499]?.body.toString(), `499:${'x'.repeat(499)}`)
})

t.test('connection - an error status becomes the matching QmqError', async (t) => {
  const srv = await startFrameServer((_frame, reply) => reply(24))
  const c = new Connection({ address: srv.address })
  t.teardown(async () => {
    await c.close()
    await srv.close()
  })
  await t.rejects(c.request(1, Buffer.alloc(0)), { code: 'QMQ_ERR_BUSY', retriable: true })
})

t.test('connection - a request without an answer times out and a late answer is ignored', async (t) => {
  const replies: Reply[] = []
  const srv = await startFrameServer((_f, reply) => replies.push(reply))
  const c = new Connection({ address: srv.address })
  t.teardown(async () => {
    await c.close()
    await srv.close()
  })
  // Connected first: a request that times out while the connection is still being set up (a slow,
  // loaded machine) is never written, and there would be no late answer to send.
  const first = c.request(1, Buffer.from('w'))
  await until(() => replies.length === 1, 'the server got the first request')
  replies[0]?.(0, Buffer.from('w'))
  await first
  await t.rejects(c.request(1, Buffer.from('x'), { timeoutMs: 50 }), { code: 'QMQ_ERR_TIMEOUT' })
  t.equal(c.outstanding, 0)
  await until(() => replies.length === 2, 'the server got the request that timed out')
  replies[1]?.(0, Buffer.from('late'))
  // the connection still works after a late answer
  const srvReply = c.request(1, Buffer.from('y'))
  await until(() => replies.length === 3, 'the server got the next request')
  replies[2]?.(0, Buffer.from('ok'))
  t.equal((await srvReply).body.toString(), 'ok')
})

t.test('connection - at most maxInFlight requests are on the wire; the rest wait', async (t) => {
  let unanswered = 0
  let maxSeen = 0
  const srv = await startFrameServer((frame, reply) => {
    unanswered++
    maxSeen = Math.max(maxSeen, unanswered)
    setTimeout(() => {
      unanswered--
      reply(0, frame.body)
    }, 5)
  })
  const c = new Connection({ address: srv.address, maxInFlight: 3, maxPending: 17 })
  t.teardown(async () => {
    await c.close()
    await srv.close()
  })
  const ps = Array.from({ length: 20 }, (_, i) => c.request(1, Buffer.from(String(i))))
  t.equal(c.outstanding, 20)
  await t.rejects(c.request(1, Buffer.alloc(0)), { code: 'QMQ_ERR_TOO_MANY_IN_FLIGHT' })
  const out = await Promise.all(ps)
  t.equal(out.length, 20)
  t.equal(maxSeen, 3)
})

t.test(
  'connection - a dropped connection fails in-flight requests, then reconnects after a backoff',
  async (t) => {
    let drop = true
    const srv = await startFrameServer((frame, reply, socket) => {
      if (drop) socket.destroy()
      else reply(0, frame.body)
    })
    const c = new Connection({ address: srv.address, reconnectInitialMs: 50, reconnectMaxMs: 50 })
    t.teardown(async () => {
      await c.close()
      await srv.close()
    })
    const err = await c.request(1, Buffer.from('a')).catch((e: unknown) => e)
    t.ok(isQmqError(err, 'QMQ_ERR_CONNECTION_CLOSED'), 'in-flight request fails with CONNECTION_CLOSED')
    t.equal((err as { retriable: boolean }).retriable, true)
    // right after the drop: fail fast instead of waiting
    await t.rejects(c.request(1, Buffer.from('b')), { code: 'QMQ_ERR_CONNECTION' })
    drop = false
    await new Promise((r) => setTimeout(r, 60))
    t.equal((await c.request(1, Buffer.from('c'))).body.toString(), 'c')
    t.equal(c.connected, true)
  },
)

t.test('connection - connect refused is a retriable QMQ_ERR_CONNECTION', async (t) => {
  const srv = await startFrameServer(echo)
  const address = srv.address
  await srv.close()
  const c = new Connection({ address, reconnectInitialMs: 20, reconnectMaxMs: 40 })
  t.teardown(() => c.close())
  await t.rejects(c.request(1, Buffer.alloc(0)), { code: 'QMQ_ERR_CONNECTION', retriable: true })
  // comes back once a server listens again on the same port
  const port = Number(address.split(':')[1])
  const again = await startFrameServer(echo, port)
  t.teardown(() => again.close())
  await new Promise((r) => setTimeout(r, 60))
  t.equal((await c.request(1, Buffer.from('z'))).body.toString(), 'z')
})

t.test('connection - close() fails outstanding requests with QMQ_ERR_CLIENT_CLOSED', async (t) => {
  const srv = await startFrameServer(() => {})
  t.teardown(() => srv.close())
  const c = new Connection({ address: srv.address })
  const p = c.request(1, Buffer.alloc(0)).catch((e: unknown) => e)
  await new Promise((r) => setTimeout(r, 20))
  await c.close()
  t.ok(isQmqError(await p, 'QMQ_ERR_CLIENT_CLOSED'))
  await t.rejects(c.request(1, Buffer.alloc(0)), { code: 'QMQ_ERR_CLIENT_CLOSED' })
})

t.test('connection - an undecodable answer closes the connection', async (t) => {
  const srv = await startFrameServer((_f, _r, socket) => socket.write(Buffer.alloc(32, 0xff)))
  const c = new Connection({ address: srv.address })
  t.teardown(async () => {
    await c.close()
    await srv.close()
  })
  await t.rejects(c.request(1, Buffer.alloc(0)), { code: 'QMQ_ERR_BAD_MAGIC' })
})

t.test('connection - large answers read in place and small ones between them arrive intact', async (t) => {
  const bodyOf = (id: number): Buffer => {
    // Request ids 1, 4, 7, ... get 1.5 MiB answers, the others a few bytes.
    const b = Buffer.allocUnsafe(id % 3 === 1 ? 1_500_000 + id : 3 + id)
    for (let i = 0; i < b.length; i++) b[i] = (i * 31 + id) & 0xff
    return b
  }
  // The server writes its answers in pieces of 1 to 70 000 bytes, piece boundaries anywhere
  // (inside headers, several frames in one piece), with pauses so they arrive as separate reads.
  const server = createServer((socket) => {
    socket.on('error', () => {})
    const decoder = new FrameDecoder()
    socket.on('data', async (chunk) => {
      const answers = decoder
        .push(chunk)
        .map((f) =>
          encodeFrame(
            { flags: FLAG_RESPONSE, code: f.code, status: 0, requestId: f.requestId },
            bodyOf(f.requestId),
          ),
        )
      const stream = Buffer.concat(answers)
      let o = 0
      let n = 0
      while (o < stream.length && !socket.destroyed) {
        const k = 1 + ((n * 7919) % 70_000)
        socket.write(stream.subarray(o, o + k))
        o += k
        if (++n % 16 === 0) await new Promise((r) => setTimeout(r, 1))
      }
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const addr = server.address()
  if (addr === null || typeof addr === 'string') throw new Error('no address')
  const c = new Connection({ address: `127.0.0.1:${addr.port}`, requestTimeoutMs: 60_000 })
  t.teardown(async () => {
    await c.close()
    await new Promise((r) => server.close(r))
  })
  const frames = await Promise.all(Array.from({ length: 12 }, () => c.request(7, Buffer.from('q'))))
  for (const f of frames) {
    const want = bodyOf(f.requestId)
    if (!f.body.equals(want)) t.fail(`answer ${f.requestId} (${want.length} bytes) differs`)
  }
  t.same(
    frames.map((f) => f.body.length),
    frames.map((f) => bodyOf(f.requestId).length),
  )
})
