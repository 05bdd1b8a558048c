import net from 'node:net'
import { decodeSendRequest, encodeErrorBody, encodeSendResponse } from '../../../src/common/protocol/commands'
import { RequestCode } from '../../../src/common/protocol/codes'
import { encodeFrame, FLAG_RESPONSE, FrameDecoder } from '../../../src/common/protocol/frame'

/** A stand-in broker for delay tests (not a test file): answers SEND with success and records ids. */
export class FakeBroker {
  readonly received: { id: string; scheduleAt: number; at: number }[] = []
  /** Per-record answer: a status to refuse the record with (0 or undefined = store it). */
  refuse: ((id: string, bytes: number) => number | undefined) | undefined
  private server: net.Server | undefined
  private readonly sockets = new Set<net.Socket>()
  port = 0

  async start(port = 0): Promise<this> {
    const server = net.createServer((s) => {
      this.sockets.add(s)
      s.on('close', () => this.sockets.delete(s))
      s.on('error', () => {})
      const dec = new FrameDecoder()
      s.on('data', (chunk) => {
        for (const f of dec.push(chunk)) {
          if (f.code !== RequestCode.SEND) {
            s.write(
              encodeFrame(
                { flags: FLAG_RESPONSE, code: f.code, status: 2, requestId: f.requestId },
                encodeErrorBody('no'),
              ),
            )
            continue
          }
          const items = decodeSendRequest(f.body)
          const now = Date.now()
          const results = items.map((it) => {
            const status = it.header ? (this.refuse?.(it.header.id, it.bytes.length) ?? 0) : 0
            if (status === 0 && it.header)
              this.received.push({ id: it.header.id, scheduleAt: it.header.scheduleAt, at: now })
            return { status, message: status === 0 ? '' : 'refused (test broker)' }
          })
          const body = encodeSendResponse(results)
          s.write(
            encodeFrame({ flags: FLAG_RESPONSE, code: f.code, status: 0, requestId: f.requestId }, body),
          )
        }
      })
    })
    this.server = server
    await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', () => resolve()))
    const a = server.address()
    this.port = typeof a === 'object' && a !== null ? a.port : 0
    return this
  }

  get address(): string {
    return `127.0.0.1:${this.port}`
  }

  uniqueIds(): Set<string> {
    return new Set(this.received.map((r) => r.id))
  }

  async stop(): Promise<void> {
    const server = this.server
    this.server = undefined
    if (server === undefined) return
    for (const s of this.sockets) s.destroy()
    await new Promise<void>((resolve) => server.close(() => resolve()))
  }
}
