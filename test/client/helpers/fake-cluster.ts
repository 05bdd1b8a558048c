import { createServer as createHttpServer, type Server as HttpServer } from 'node:http'
import { createServer, type Server, type Socket } from 'node:net'
import type { RouteGroup } from '../../../src/common/meta/types'
import { RequestCode } from '../../../src/common/protocol/codes'
import {
  decodeAckRequest,
  decodeHeartbeatRequest,
  decodeNackRequest,
  decodePullRequest,
  decodeSendRequest,
  encodeCountResponse,
  encodeErrorBody,
  encodePullResponse,
  encodeSendResponse,
  type PullEntry,
  type PullRequest,
  StartPosition,
} from '../../../src/common/protocol/commands'
import { encodeFrame, FLAG_RESPONSE, FrameDecoder } from '../../../src/common/protocol/frame'
import { decodeRecord, type MessageRecord } from '../../../src/common/record'

/**
 * In-memory stand-ins for a broker (or delay server) and a metaserver, speaking the real wire
 * protocol and HTTP API. They let the SDK's tests pin client behaviour (batching, failover, retries,
 * dead letters, close) precisely and fast; test/client/cluster.test.ts runs against the real servers.
 */

interface Stored {
  seq: number
  bytes: Buffer
  record: MessageRecord
}

interface GroupState {
  cursor: number
  held: Map<number, number> // seq -> deliveryCount
  redeliver: { seq: number; dueAt: number; count: number }[]
}

export interface FakeBrokerOptions {
  name: string
  /** Base nack backoff (ms); doubles per delivery. */
  nackBaseMs?: number
  /** Delay server: hold a delayed record until its schedule time, then "dispatch" it (see onDue). */
  delay?: boolean
  onDue?: (bytes: Buffer) => void
}

export class FakeBroker {
  readonly name: string
  address = ''
  private server: Server | undefined
  private port = 0
  private readonly sockets = new Set<Socket>()
  readonly subjects = new Map<string, Stored[]>()
  readonly groups = new Map<string, GroupState>()
  readonly seenIds = new Set<string>()
  readonly deadLetters: { subject: string; group: string; record: MessageRecord }[] = []
  readonly acks: { subject: string; group: string; seq: number }[] = []
  readonly nacks: { subject: string; group: string; seq: number; deadLetter: boolean }[] = []
  readonly heartbeats: { consumerId: string; subjects: string[] }[] = []
  readonly pulls: PullRequest[] = []
  sendRequests = 0
  /** Status to answer SEND with (0 = store). */
  sendStatus = 0
  private waiters: (() => void)[] = []
  private readonly nackBaseMs: number

  constructor(private readonly options: FakeBrokerOptions) {
    this.name = options.name
    this.nackBaseMs = options.nackBaseMs ?? 50
  }

  async start(): Promise<this> {
    const server = createServer((s) => this.onSocket(s))
    await new Promise<void>((resolve) => server.listen(this.port, '127.0.0.1', resolve))
    const a = server.address()
    if (a === null || typeof a === 'string') throw new Error('no address')
    this.port = a.port
    this.address = `127.0.0.1:${a.port}`
    this.server = server
    return this
  }

  /** Stops listening and drops every connection; state is kept (a restart keeps the data). */
  async stop(): Promise<void> {
    const server = this.server
    this.server = undefined
    for (const s of this.sockets) s.destroy()
    for (const w of this.waiters.splice(0)) w()
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()))
  }

  get routeGroup(): RouteGroup {
    return { name: this.name, address: this.address, state: 'rw' }
  }

  /** Open client connections. */
  get connections(): number {
    return this.sockets.size
  }

  get running(): boolean {
    return this.server !== undefined
  }

  /** Every stored record of a subject. */
  stored(subject: string): MessageRecord[] {
    return (this.subjects.get(subject) ?? []).map((s) => s.record)
  }

  private onSocket(socket: Socket): void {
    this.sockets.add(socket)
    socket.on('close', () => this.sockets.delete(socket))
    socket.on('error', () => {})
    const decoder = new FrameDecoder()
    socket.on('data', (chunk) => {
      for (const f of decoder.push(chunk)) {
        const body = Buffer.from(f.body)
        const reply = (status: number, payload: Buffer | Buffer[]): void => {
          if (socket.destroyed) return
          const b = Buffer.isBuffer(payload) ? payload : Buffer.concat(payload)
          socket.write(encodeFrame({ flags: FLAG_RESPONSE, code: f.code, status, requestId: f.requestId }, b))
        }
        try {
          this.handle(f.code, body, reply)
        } catch (err) {
          reply(7, encodeErrorBody((err as Error).message))
        }
      }
    })
  }

  private handle(
    code: number,
    body: Buffer,
    reply: (status: number, payload: Buffer | Buffer[]) => void,
  ): void {
    switch (code) {
      case RequestCode.SEND: {
        this.sendRequests++
        const items = decodeSendRequest(body)
        const results = items.map((item) => {
          if (item.error) return { status: item.error.status, message: item.error.message }
          if (this.sendStatus !== 0) return { status: this.sendStatus, message: 'fake refusal' }
          const record = decodeRecord(item.bytes)
          if (this.seenIds.has(record.id)) return { status: 0, message: '' }
          this.seenIds.add(record.id)
          if (this.options.delay) {
            const wait = Math.max(0, (record.scheduleAt ?? 0) - Date.now())
            const bytes = Buffer.from(item.bytes)
            setTimeout(() => this.options.onDue?.(bytes), wait).unref()
          } else this.append(Buffer.from(item.bytes), record)
          return { status: 0, message: '' }
        })
        reply(0, encodeSendResponse(results))
        return
      }
      case RequestCode.PULL: {
        const req = decodePullRequest(body)
        this.pulls.push(req)
        const deadline = Date.now() + req.timeoutMs
        const attempt = (): void => {
          const entries = this.take(req)
          if (entries.length > 0 || Date.now() >= deadline || !this.running) {
            reply(0, encodePullResponse(entries))
            return
          }
          let done = false
          const wake = (): void => {
            if (done) return
            done = true
            clearTimeout(timer)
            attempt()
          }
          const timer = setTimeout(wake, Math.max(1, Math.min(deadline - Date.now(), this.nextDue() ?? 1e9)))
          this.waiters.push(wake)
        }
        attempt()
        return
      }
      case RequestCode.ACK: {
        const a = decodeAckRequest(body)
        const st = this.groups.get(this.gkey(a.subject, a.group, a.broadcast ? a.consumerId : ''))
        let n = 0
        for (const seq of a.sequences) {
          if (st?.held.delete(seq)) {
            n++
            this.acks.push({ subject: a.subject, group: a.group, seq })
          }
        }
        reply(0, encodeCountResponse(n))
        return
      }
      case RequestCode.NACK: {
        const a = decodeNackRequest(body)
        const st = this.groups.get(this.gkey(a.subject, a.group, a.broadcast ? a.consumerId : ''))
        let n = 0
        for (const seq of a.sequences) {
          const count = st?.held.get(seq)
          if (st === undefined || count === undefined) continue
          st.held.delete(seq)
          n++
          this.nacks.push({ subject: a.subject, group: a.group, seq, deadLetter: a.deadLetter })
          const stored = this.subjects.get(a.subject)?.[seq]
          if (a.deadLetter) {
            if (stored) this.deadLetters.push({ subject: a.subject, group: a.group, record: stored.record })
          } else {
            const wait = a.retryAfterMs > 0 ? a.retryAfterMs : this.nackBaseMs * 2 ** (count - 1)
            st.redeliver.push({ seq, dueAt: Date.now() + wait, count: count + 1 })
          }
        }
        reply(0, encodeCountResponse(n))
        this.wakeAll()
        return
      }
      case RequestCode.HEARTBEAT: {
        const h = decodeHeartbeatRequest(body)
        this.heartbeats.push({ consumerId: h.consumerId, subjects: h.subscriptions.map((s) => s.subject) })
        reply(0, Buffer.alloc(0))
        return
      }
      case RequestCode.PING:
        reply(0, Buffer.alloc(0))
        return
      default:
        reply(2, encodeErrorBody(`unknown request ${code}`))
    }
  }

  /** Appends a record as if a producer (or the delay server) sent it. */
  append(bytes: Buffer, record: MessageRecord = decodeRecord(bytes)): void {
    let list = this.subjects.get(record.subject)
    if (list === undefined) {
      list = []
      this.subjects.set(record.subject, list)
    }
    list.push({ seq: list.length, bytes, record })
    this.wakeAll()
  }

  private wakeAll(): void {
    for (const w of this.waiters.splice(0)) w()
  }

  private nextDue(): number | undefined {
    let min: number | undefined
    for (const st of this.groups.values()) {
      for (const r of st.redeliver) {
        const d = r.dueAt - Date.now()
        min = min === undefined ? d : Math.min(min, d)
      }
    }
    return min === undefined ? undefined : Math.max(1, min)
  }

  private gkey(subject: string, group: string, instance: string): string {
    return `${subject}|${group}|${instance}`
  }

  private take(req: PullRequest): PullEntry[] {
    const list = this.subjects.get(req.subject) ?? []
    const key = this.gkey(req.subject, req.group, req.broadcast ? req.consumerId : '')
    let st = this.groups.get(key)
    if (st === undefined) {
      st = { cursor: req.start === StartPosition.EARLIEST ? 0 : list.length, held: new Map(), redeliver: [] }
      this.groups.set(key, st)
    }
    const out: PullEntry[] = []
    const now = Date.now()
    st.redeliver.sort((a, b) => a.dueAt - b.dueAt)
    while (out.length < req.maxMessages && st.redeliver.length > 0 && (st.redeliver[0]?.dueAt ?? 0) <= now) {
      const r = st.redeliver.shift() as { seq: number; count: number }
      const s = list[r.seq] as Stored
      st.held.set(r.seq, r.count)
      out.push({ sequence: r.seq, deliveryCount: r.count, record: s.bytes })
    }
    while (out.length < req.maxMessages && st.cursor < list.length) {
      const s = list[st.cursor++] as Stored
      if (req.tags.length > 0) {
        const has = (t: string): boolean => s.record.tags.includes(t)
        const ok = req.tagsAll ? req.tags.every(has) : req.tags.some(has)
        if (!ok) continue
      }
      if (!req.atMostOnce) st.held.set(s.seq, 1)
      out.push({ sequence: s.seq, deliveryCount: 1, record: s.bytes })
    }
    return out
  }
}

/** A metaserver stand-in: /meta/address, /meta/route, /meta/client/heartbeat. */
export class FakeMetaserver {
  url = ''
  private server: HttpServer | undefined
  private port = 0
  readonly clientHeartbeats: unknown[] = []
  routeRequests = 0

  constructor(
    private readonly brokers: () => FakeBroker[],
    private readonly delays: () => FakeBroker[] = () => [],
  ) {}

  async start(): Promise<this> {
    const server = createHttpServer((req, res) => {
      const u = new URL(req.url ?? '/', 'http://x')
      const send = (status: number, body: unknown): void => {
        res.writeHead(status, { 'content-type': 'application/json' })
        res.end(JSON.stringify(body))
      }
      let raw = ''
      req.on('data', (c: Buffer) => {
        raw += c.toString()
      })
      req.on('end', () => {
        if (u.pathname === '/meta/address') return send(200, { addresses: [`http://127.0.0.1:${this.port}`] })
        if (u.pathname === '/meta/route') {
          this.routeRequests++
          const kind = u.searchParams.get('kind')
          const list = (kind === 'delay-producer' ? this.delays() : this.brokers()).filter((b) => b.running)
          if (list.length === 0) {
            return send(503, { code: 'QMQ_ERR_NO_ROUTE', status: 200, message: 'no group', retriable: true })
          }
          const subject = u.searchParams.get('subject') ?? ''
          return send(200, {
            subject,
            routeSubject: subject,
            kind,
            groups: list.map((b) => b.routeGroup),
            version: 1,
            updatedAt: 0,
            serverTime: Date.now(),
          })
        }
        if (u.pathname === '/meta/client/heartbeat') {
          this.clientHeartbeats.push(JSON.parse(raw))
          return send(200, {
            heartbeatIntervalMs: 20_000,
            clientTimeoutMs: 60_000,
            routes: [],
            serverTime: Date.now(),
          })
        }
        send(404, { code: 'QMQ_ERR_NOT_FOUND', status: 27, message: 'not found', retriable: false })
      })
    })
    await new Promise<void>((resolve) => server.listen(this.port, '127.0.0.1', resolve))
    const a = server.address()
    if (a === null || typeof a === 'string') throw new Error('no address')
    this.port = a.port
    this.url = `http://127.0.0.1:${a.port}/meta/address`
    this.server = server
    return this
  }

  async stop(): Promise<void> {
    const s = this.server
    this.server = undefined
    if (s) {
      s.closeAllConnections()
      await new Promise<void>((resolve) => s.close(() => resolve()))
    }
  }
}

/** Two broker groups, one delay group (which "dispatches" due messages to broker A) and a metaserver. */
export async function startFakeCluster(options: { nackBaseMs?: number } = {}) {
  const a = await new FakeBroker({ name: 'broker-a', nackBaseMs: options.nackBaseMs }).start()
  const b = await new FakeBroker({ name: 'broker-b', nackBaseMs: options.nackBaseMs }).start()
  const d = await new FakeBroker({ name: 'delay-1', delay: true, onDue: (bytes) => a.append(bytes) }).start()
  const meta = await new FakeMetaserver(
    () => [a, b],
    () => [d],
  ).start()
  return {
    a,
    b,
    d,
    meta,
    async close() {
      await Promise.all([a.stop(), b.stop(), d.stop(), meta.stop()])
    },
  }
}
