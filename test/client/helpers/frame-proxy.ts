import { connect, createServer, type Server, type Socket } from 'node:net'
import { encodeFrame, type Frame, FrameDecoder } from '../../../src/common/protocol/frame'

/**
 * A TCP proxy in front of a real server for fault tests: client bytes go through as they are; each
 * frame the server sends back is passed to `onServerFrame`, which says how long to hold it (0 = at
 * once). Held frames are written later, after frames sent meanwhile (answers correlate by request id).
 */
export interface FrameProxy {
  address: string
  close(): Promise<void>
}

export async function startFrameProxy(
  target: { host: string; port: number },
  onServerFrame: (frame: Frame) => number,
): Promise<FrameProxy> {
  const sockets = new Set<Socket>()
  const timers = new Set<NodeJS.Timeout>()
  const server: Server = createServer((client) => {
    const upstream = connect(target.port, target.host)
    sockets.add(client)
    sockets.add(upstream)
    const end = () => {
      client.destroy()
      upstream.destroy()
    }
    for (const s of [client, upstream]) {
      s.on('error', end)
      s.on('close', () => {
        sockets.delete(s)
        end()
      })
    }
    client.pipe(upstream)
    const decoder = new FrameDecoder()
    upstream.on('data', (chunk: Buffer) => {
      for (const frame of decoder.push(chunk)) {
        const bytes = encodeFrame(frame, frame.body)
        const holdMs = onServerFrame(frame)
        if (holdMs <= 0) client.write(bytes)
        else {
          const t = setTimeout(() => {
            timers.delete(t)
            if (!client.destroyed) client.write(bytes)
          }, holdMs)
          timers.add(t)
        }
      }
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const a = server.address()
  if (a === null || typeof a === 'string') throw new Error('no address')
  return {
    address: `127.0.0.1:${a.port}`,
    close: () =>
      new Promise<void>((resolve) => {
        for (const t of timers) clearTimeout(t)
        for (const s of sockets) s.destroy()
        server.close(() => resolve())
      }),
  }
}
