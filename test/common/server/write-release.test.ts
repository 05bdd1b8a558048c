import t, { type Test } from 'tap'
import { QmqError } from '../../../src/common/errors'
import { silentLogger } from '../../../src/common/logger'
import { FLAG_ONEWAY, type Frame } from '../../../src/common/protocol/frame'
import type { ResponseBody, ServerConnection } from '../../../src/common/server/connection'
import { TcpServer } from '../../../src/common/server/tcp-server'
import { RawClient } from '../../helpers/raw-client'

/**
 * The write-completion hook of the shared server connection (ServerConnection.afterWrite): a handler's
 * release runs exactly once, only after the socket is done with the answer's bytes (a client that does
 * not read keeps them pending), or when the answer is not written (error, one-way, close).
 */

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** Larger than loopback's socket buffers (a few MiB), within the client's 16 MiB frame limit. */
const BIG = 12 * 1024 * 1024

interface Events {
  released: number[]
  /** Unsent bytes of the connection when each release ran. */
  pendingAtRelease: number[]
}

async function server(
  t: Test,
  answer: (frame: Frame, conn: ServerConnection, ev: Events) => Promise<ResponseBody>,
): Promise<{ port: number; ev: Events; conns: ServerConnection[] }> {
  const ev: Events = { released: [], pendingAtRelease: [] }
  const conns: ServerConnection[] = []
  const s = new TcpServer(
    {
      host: '127.0.0.1',
      port: 0,
      maxConnections: 16,
      maxPartialFrameBytes: 1024 * 1024,
      maxFrameBytes: 1024 * 1024,
      maxInFlight: 16,
      writeHighWaterBytes: 1024 * 1024,
      idleTimeoutMs: 0,
      firstFrameTimeoutMs: 0,
      frameTimeoutMs: 0,
    },
    {
      handle: (frame, conn) => answer(frame, conn, ev),
      onConnection: (conn) => conns.push(conn),
    },
    silentLogger,
  )
  const { port } = await s.listen()
  t.teardown(() => s.close(100))
  return { port, ev, conns }
}

/** Attaches a release numbered `id` to `frame`, noting when it ran and what was still unsent. */
function attach(frame: Frame, conn: ServerConnection, ev: Events, id: number): void {
  conn.afterWrite(frame, () => {
    ev.released.push(id)
    ev.pendingAtRelease.push(conn.pendingWriteBytes)
  })
}

async function until(cond: () => boolean, ms = 10_000): Promise<boolean> {
  const end = Date.now() + ms
  while (!cond() && Date.now() < end) await sleep(10)
  return cond()
}

t.test('write release - runs once, after a slow reader took the whole answer', async (t) => {
  const body = Buffer.alloc(BIG, 7)
  const { port, ev, conns } = await server(t, async (frame, conn, ev) => {
    attach(frame, conn, ev, frame.requestId)
    // Parts as a PULL answer has them: a table and views.
    return [body.subarray(0, 10), body.subarray(10, BIG / 2), Buffer.alloc(0), body.subarray(BIG / 2)]
  })
  const c = await RawClient.connect(port, '127.0.0.1', { copyBodies: false })
  t.teardown(() => c.destroy())
  c.socket.pause()
  const answer = c.request(1)
  await until(() => (conns[0]?.pendingWriteBytes ?? 0) > 0)
  await sleep(300)
  t.ok((conns[0]?.pendingWriteBytes ?? 0) > 0, 'the answer is still queued: the client reads nothing')
  t.same(ev.released, [], 'not released while bytes of the answer wait to be sent')
  c.socket.resume()
  const got = await answer
  t.equal(got.body.length, BIG, 'the whole answer arrived')
  t.ok(await until(() => ev.released.length > 0), 'released once the answer was sent')
  await sleep(100)
  t.same(ev.released, [1], 'exactly once')
  t.same(ev.pendingAtRelease, [0], 'nothing of it was unsent then')
})

t.test('write release - answers written back to back are released in order, each once', async (t) => {
  const { port, ev } = await server(t, async (frame, conn, ev) => {
    attach(frame, conn, ev, frame.requestId)
    return frame.requestId % 2 === 0 ? Buffer.alloc(100, 1) : [Buffer.alloc(4), Buffer.alloc(300_000, 2)]
  })
  const c = await RawClient.connect(port)
  t.teardown(() => c.destroy())
  await Promise.all(Array.from({ length: 20 }, () => c.request(1)))
  t.ok(await until(() => ev.released.length === 20))
  await sleep(50)
  t.same(
    ev.released,
    Array.from({ length: 20 }, (_, i) => i + 1),
    'one release per answer',
  )
})

t.test('write release - a connection closed mid-write releases its queued answer once', async (t) => {
  const { port, ev, conns } = await server(t, async (frame, conn, ev) => {
    attach(frame, conn, ev, frame.requestId)
    return [Buffer.alloc(BIG, 3)]
  })
  const c = await RawClient.connect(port)
  c.socket.pause()
  void c.request(1).catch(() => undefined)
  await until(() => (conns[0]?.pendingWriteBytes ?? 0) > 0)
  await sleep(100)
  t.same(ev.released, [], 'held while queued')
  c.destroy()
  t.ok(await until(() => ev.released.length > 0), 'released after the close')
  await conns[0]?.whenClosed()
  await sleep(100)
  t.same(ev.released, [1], 'exactly once')
})

t.test('write release - the server destroying the socket mid-write releases once', async (t) => {
  const { port, ev, conns } = await server(t, async (frame, conn, ev) => {
    attach(frame, conn, ev, frame.requestId)
    return [Buffer.alloc(BIG, 3)]
  })
  const c = await RawClient.connect(port)
  t.teardown(() => c.destroy())
  c.socket.pause()
  void c.request(1).catch(() => undefined)
  await until(() => (conns[0]?.pendingWriteBytes ?? 0) > 0)
  t.same(ev.released, [])
  conns[0]?.destroy()
  await conns[0]?.whenClosed()
  await sleep(100)
  t.same(ev.released, [1], 'exactly once, by the close')
})

t.test('write release - an error answer, a one-way frame, a closed connection release at once', async (t) => {
  let finishLate: (() => void) | undefined
  const { port, ev, conns } = await server(t, async (frame, conn, ev) => {
    attach(frame, conn, ev, frame.requestId)
    // Two releases on one frame run one after the other.
    if (frame.requestId === 1) attach(frame, conn, ev, 100)
    if (frame.requestId === 1) throw new QmqError('QMQ_ERR_INVALID_ARGUMENT', 'no')
    if (frame.requestId === 3) {
      await new Promise<void>((resolve) => {
        finishLate = resolve
      })
    }
    return [Buffer.alloc(4), Buffer.alloc(100_000)]
  })
  const c = await RawClient.connect(port)
  t.teardown(() => c.destroy())
  const failed = await c.request(1)
  t.not(failed.status, 0, 'an error answer')
  t.same(ev.released, [1, 100], 'released (both, in order) before the error answer arrived')
  void c.request(2, [], { flags: FLAG_ONEWAY }).catch(() => undefined)
  t.ok(await until(() => ev.released.length === 3), 'a one-way frame is released (nothing written)')
  void c.request(3).catch(() => undefined)
  await until(() => finishLate !== undefined)
  conns[0]?.destroy()
  await conns[0]?.whenClosed()
  t.same(ev.released, [1, 100, 2], 'the frame in flight is not released before it is answered')
  finishLate?.()
  t.ok(await until(() => ev.released.length === 4), 'answered after the close: released, not written')
  t.same(ev.released, [1, 100, 2, 3])
})
