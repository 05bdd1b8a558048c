import type { Logger } from '../common/logger'
import type { ClientHeartbeatRequest, ClientInfo, ClientKind } from '../common/meta/types'
import type { MetaserverOptions } from './options'
import type { MetaStore, StoredClient } from './store'

/**
 * Which producers and consumers are online for which subjects and consumer groups (QMQ's
 * CLIENT_REGISTER). One entry per (clientId, kind, subject, consumerGroup). Entries are written
 * through to the store (at most once per lastSeenWriteIntervalMs each) and dropped after
 * clientTimeoutMs of silence or at once on an 'offline' heartbeat.
 */

export interface ClientFilter {
  subject?: string
  consumerGroup?: string
  kind?: ClientKind
}

interface ClientState extends StoredClient {
  /** lastSeenAt as last written to the store (-1 = never). */
  persistedAt: number
}

function clientKey(c: Pick<StoredClient, 'clientId' | 'kind' | 'subject' | 'consumerGroup'>): string {
  return `${c.clientId}\u0000${c.kind}\u0000${c.subject}\u0000${c.consumerGroup}`
}

export class ClientRegistry {
  private readonly clients = new Map<string, ClientState>()

  constructor(
    private readonly options: Readonly<MetaserverOptions>,
    private readonly store: MetaStore,
    private readonly log: Logger,
  ) {}

  /** Takes stored entries (at start, or from a shared store): the later last-seen wins. */
  merge(stored: readonly StoredClient[]): void {
    for (const c of stored) {
      const key = clientKey(c)
      const mine = this.clients.get(key)
      if (mine === undefined || c.lastSeenAt > mine.lastSeenAt)
        this.clients.set(key, { ...c, persistedAt: c.lastSeenAt })
    }
  }

  async record(req: ClientHeartbeatRequest, now: number): Promise<void> {
    const offline = req.state === 'offline'
    for (const sub of req.subscriptions) {
      const entry: ClientState = {
        clientId: req.clientId,
        kind: req.kind,
        subject: sub.subject,
        consumerGroup: sub.consumerGroup ?? '',
        appCode: req.appCode ?? '',
        lastSeenAt: now,
        persistedAt: -1,
      }
      const key = clientKey(entry)
      if (offline) {
        if (this.clients.delete(key))
          this.log.info({ clientId: req.clientId, subject: sub.subject }, 'client went offline')
        await this.store.deleteClient(entry)
        continue
      }
      const old = this.clients.get(key)
      if (old === undefined) {
        this.log.info(
          {
            clientId: req.clientId,
            kind: req.kind,
            subject: sub.subject,
            consumerGroup: entry.consumerGroup,
          },
          'client online',
        )
      } else entry.persistedAt = old.persistedAt
      this.clients.set(key, entry)
      if (
        old === undefined ||
        old.appCode !== entry.appCode ||
        now - entry.persistedAt >= this.options.lastSeenWriteIntervalMs
      ) {
        await this.store.upsertClient(entry)
        entry.persistedAt = now
      }
    }
  }

  /** Drops entries silent for clientTimeoutMs; answers how many. */
  async expire(now: number): Promise<number> {
    const before = now - this.options.clientTimeoutMs
    let n = 0
    for (const [key, c] of this.clients) {
      if (c.lastSeenAt < before) {
        this.clients.delete(key)
        n++
      }
    }
    await this.store.deleteClientsSeenBefore(before)
    return n
  }

  countOnline(now: number): number {
    let n = 0
    for (const c of this.clients.values()) if (now - c.lastSeenAt <= this.options.clientTimeoutMs) n++
    return n
  }

  list(filter: ClientFilter, now: number): ClientInfo[] {
    const out: ClientInfo[] = []
    for (const c of this.clients.values()) {
      if (filter.subject !== undefined && c.subject !== filter.subject) continue
      if (filter.consumerGroup !== undefined && c.consumerGroup !== filter.consumerGroup) continue
      if (filter.kind !== undefined && c.kind !== filter.kind) continue
      out.push({
        clientId: c.clientId,
        appCode: c.appCode,
        kind: c.kind,
        subject: c.subject,
        consumerGroup: c.consumerGroup,
        online: now - c.lastSeenAt <= this.options.clientTimeoutMs,
        lastSeenAt: c.lastSeenAt,
      })
    }
    return out.sort((a, b) =>
      a.subject + a.consumerGroup + a.clientId < b.subject + b.consumerGroup + b.clientId ? -1 : 1,
    )
  }
}
