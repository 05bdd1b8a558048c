import { connect, createServer, type Server, type Socket } from 'node:net'
import { parseAddress } from '../../../src/client/transport/connection'
import { encodeFrame, type Frame, FrameDecoder } from '../../../src/common/protocol/frame'

/**
 * A TCP proxy in front of a real broker that can hold answers: requests go through at once, and every
 * answer frame is passed to `holdMs(frame)`, which says how long to keep it (0 = forward now). Answers
 * are matched to requests by request id, so forwarding one late while later ones pass is what a slow
 * broker looks like to the client. `released` resolves when every held answer has been forwarded.
 */
export interface AnswerProxy {
  address: string
  /** Answers currently held. */
  held: number
  /** Resolves once nothing is held (at once when nothing is). */
  released(): Promise<void>
  close(): Promise<void>
}

export async function startAnswerProxy(
  target: string,
  holdMs: (answer: Frame) => number,
): Promise<AnswerProxy> {
  const { host, port } = parseAddress(target)
  const sockets = new Set<Socket>()
  const timers = new Set<NodeJS.Timeout>()
  let waiters: (() => void)[] = []
  const proxy: AnswerProxy = {
    address: '',
    held: 0,
    released() {
      if (proxy.held === 0) return Promise.resolve()
      return new Promise<void>((resolve) => waiters.push(resolve))
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const t of timers) clearTimeout(t)
        for (const s of sockets) s.destroy()
        server.close(() => resolve())
      }),
  }
  const release = (): void => {
    proxy.held--
    if (proxy.held === 0) {
      const w = waiters
      waiters = []
      for (const f of w) f()
    }
  }
  const server: Server = createServer((client) => {
    const upstream = connect({ host, port })
    sockets.add(client)
    sockets.add(upstream)
    const end = (): void => {
      client.destroy()
      upstream.destroy()
    }
    client.on('error', end)
    upstream.on('error', end)
    client.on('close', () => {
      sockets.delete(client)
      end()
    })
    upstream.on('close', () => {
      sockets.delete(upstream)
      end()
    })
    client.pipe(upstream)
    const decoder = new FrameDecoder()
    upstream.on('data', (chunk: Buffer) => {
      for (const f of decoder.push(chunk)) {
        const bytes = encodeFrame(f, Buffer.from(f.body))
        const ms = holdMs(f)
        if (ms <= 0) {
          client.write(bytes)
          continue
        }
        proxy.held++
        const timer = setTimeout(() => {
          timers.delete(timer)
          if (!client.destroyed) client.write(bytes)
          release()
        }, ms)
        timers.add(timer)
      }
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const a = server.address()
  if (a === null || typeof a === 'string') throw new Error('no address')
  proxy.address = `127.0.0.1:${a.port}`
  return proxy
}
