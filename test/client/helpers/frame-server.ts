import { createServer, type Server, type Socket } from 'node:net'
import { encodeErrorBody } from '../../../src/common/protocol/commands'
import { encodeFrame, FLAG_RESPONSE, type Frame, FrameDecoder } from '../../../src/common/protocol/frame'

/** A raw frame server for transport tests: `onFrame` decides what (and when) to answer. */
export interface FrameServer {
  server: Server
  address: string
  sockets: Set<Socket>
  close(): Promise<void>
}

export type Reply = (status: number, body?: Buffer) => void

export async function startFrameServer(
  onFrame: (frame: Frame, reply: Reply, socket: Socket) => void,
  port = 0,
): Promise<FrameServer> {
  const sockets = new Set<Socket>()
  const server = createServer((socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    socket.on('error', () => {})
    const decoder = new FrameDecoder()
    socket.on('data', (chunk) => {
      for (const frame of decoder.push(chunk)) {
        const body = Buffer.from(frame.body)
        const reply: Reply = (status, replyBody) => {
          if (socket.destroyed) return
          const b = status === 0 ? (replyBody ?? Buffer.alloc(0)) : encodeErrorBody(`status ${status}`)
          socket.write(
            encodeFrame({ flags: FLAG_RESPONSE, code: frame.code, status, requestId: frame.requestId }, b),
          )
        }
        onFrame({ ...frame, body }, reply, socket)
      }
    })
  })
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve))
  const addr = server.address()
  if (addr === null || typeof addr === 'string') throw new Error('no address')
  return {
    server,
    address: `127.0.0.1:${addr.port}`,
    sockets,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy()
        server.close(() => resolve())
      }),
  }
}
