import { toQmqError } from '../../common/errors'
import type { Logger } from '../../common/logger'
import type {
  ServerHeartbeatRequest,
  ServerHeartbeatResponse,
  ServerLoad,
  ServerReplication,
  GroupKind,
} from '../../common/meta/types'

/**
 * Registers the broker with the metaserver and keeps it alive: a heartbeat at start, then every
 * `heartbeatIntervalMs` (the metaserver's answer wins over the configured default). A failed
 * heartbeat is logged once per outage and retried at the next tick; the broker keeps serving
 * clients meanwhile (they work on cached routes). On close, one 'offline' heartbeat (best effort)
 * takes the group out of routes at once.
 *
 * The answer also carries read-only marks, handed to `onReadOnly` (SEND then refuses those subjects).
 */
export interface HeartbeatClient {
  heartbeat(req: ServerHeartbeatRequest): Promise<ServerHeartbeatResponse>
}

export interface MetaHeartbeatOptions {
  group: string
  /** The group's kind (default 'broker'; the delay server heartbeats through this too). */
  kind?: GroupKind | undefined
  role: 'master' | 'slave'
  address: string
  httpAddress: string | undefined
  intervalMs: number
  load: () => ServerLoad
  onReadOnly: (all: boolean, subjects: readonly string[]) => void
  /** Replication report sent with each heartbeat (replicated groups). */
  replication?: () => ServerReplication | undefined
  /** Every answer, with the time its heartbeat was sent (a master's lease runs from then). */
  onAnswer?: (res: ServerHeartbeatResponse, sentAt: number) => void
}

export class MetaHeartbeat {
  private readonly client: HeartbeatClient
  private readonly options: MetaHeartbeatOptions
  private readonly log: Logger
  private timer: NodeJS.Timeout | undefined
  private intervalMs: number
  private stopped = false
  private inFlight: Promise<void> | undefined
  private failing = false
  /** reportNow() was called while a heartbeat was in flight: the next one goes at once. */
  private soon = false
  /** The last `reportSeq` sent (ServerReplication.reportSeq). */
  private reportSeq = 0
  /** How far `reportSeq` jumps after this server's own report was refused as stale (doubles). */
  private staleJump = 0
  lastOkAt = 0
  lastError: string | undefined

  constructor(client: HeartbeatClient, options: MetaHeartbeatOptions, log: Logger) {
    this.client = client
    this.options = options
    this.intervalMs = options.intervalMs
    this.log = log.child({ component: 'meta-heartbeat' })
  }

  /** Sends the first heartbeat and starts the loop; the promise settles once the first one did. */
  start(): Promise<void> {
    return this.tick()
  }

  /**
   * Sends the next heartbeat now (right after the one in flight, if any) instead of at the next tick:
   * a master's in-sync set shrank and writes wait until the metaserver stored the smaller one.
   */
  reportNow(): void {
    if (this.stopped) return
    if (this.inFlight !== undefined) {
      this.soon = true
      return
    }
    if (this.timer !== undefined) clearTimeout(this.timer)
    this.timer = undefined
    void this.tick()
  }

  private tick(): Promise<void> {
    if (this.stopped) return Promise.resolve()
    this.soon = false
    const sent = this.send('online')
    this.inFlight = sent.finally(() => {
      this.inFlight = undefined
      if (this.stopped) return
      this.timer = setTimeout(() => void this.tick(), this.soon ? 0 : this.intervalMs)
      this.timer.unref()
    })
    return sent
  }

  private request(state: 'online' | 'offline'): ServerHeartbeatRequest {
    const req: ServerHeartbeatRequest = {
      group: this.options.group,
      kind: this.options.kind ?? 'broker',
      role: this.options.role,
      address: this.options.address,
      state,
      load: this.options.load(),
    }
    if (this.options.httpAddress !== undefined) req.httpAddress = this.options.httpAddress
    const replication = this.options.replication?.()
    if (replication !== undefined) {
      if (replication.inSyncSlaves !== undefined) {
        // A master's report: later than every one before it (a retry of this request keeps it).
        this.reportSeq = Math.max(Date.now(), this.reportSeq + 1)
        replication.reportSeq = this.reportSeq
      }
      req.replication = replication
    }
    return req
  }

  private async send(state: 'online' | 'offline'): Promise<void> {
    try {
      const sentAt = Date.now()
      const res = await this.client.heartbeat(this.request(state))
      this.lastOkAt = Date.now()
      this.lastError = undefined
      this.staleJump = 0
      if (this.failing) this.log.info('metaserver reachable again')
      this.failing = false
      if (Number.isFinite(res.heartbeatIntervalMs) && res.heartbeatIntervalMs > 0) {
        this.intervalMs = Math.max(100, res.heartbeatIntervalMs)
      }
      this.options.onReadOnly(
        res.readOnly === true,
        Array.isArray(res.readOnlySubjects) ? res.readOnlySubjects : [],
      )
      if (state === 'online') this.options.onAnswer?.(res, sentAt)
    } catch (err) {
      const e = toQmqError(err, 'QMQ_ERR_METASERVER_UNAVAILABLE')
      this.lastError = e.message
      if (e.code === 'QMQ_ERR_STALE_REPORT' && state === 'online') {
        // This very report, the newest this process made, is older than one the metaserver stored:
        // an earlier run of this server reported with a clock ahead of this one's. Jump ahead (1 s,
        // then doubling) and report again at once until it is accepted.
        this.staleJump = this.staleJump === 0 ? 1_000 : this.staleJump * 2
        this.reportSeq += this.staleJump
        this.soon = true
      }
      if (!this.failing)
        this.log.warn({ code: e.code, reason: e.message }, 'metaserver heartbeat failed; still serving')
      this.failing = true
    }
  }

  /**
   * Stops the loop and sends one 'offline' heartbeat (errors ignored) unless `offline` is false (a
   * broker changing role: it stays in its group).
   */
  async stop(offline = true): Promise<void> {
    if (this.stopped) return
    this.stopped = true
    if (this.timer !== undefined) clearTimeout(this.timer)
    if (this.inFlight !== undefined) await this.inFlight
    if (offline) await this.send('offline')
  }
}
