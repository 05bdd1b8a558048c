import { QmqError } from '../../common/errors'
import type { Logger } from '../../common/logger'
import { silentLogger } from '../../common/logger'
import type { MetaClient } from '../../common/meta/meta-client'
import type { ClientKind, RouteGroup, RouteQuery } from '../../common/meta/types'
import { Backoff, isRetriable, sleep } from '../retry'

/**
 * Routes from the metaserver, cached per (kind, subject, consumer group).
 *
 * - A cached route is answered at once; every `refreshIntervalMs` all cached routes are asked for
 *   again in the background, and `refresh()` asks at once when a client finds a group unreachable
 *   (a failover moves its master: clients follow as soon as the metaserver routes the new one). A
 *   route is asked for at most once per `minRefreshGapMs`: refreshes wanted sooner join one made at
 *   the end of the gap, so any number of failing sends costs the metaserver a few requests a second.
 *   A failed refresh keeps the cached route: with the metaserver down, clients keep working on what
 *   they know.
 * - The first lookup of a route retries retriable failures with backoff for at most
 *   `firstLookupTimeoutMs`, then fails with a clear QmqError (QMQ_ERR_METASERVER_UNAVAILABLE or
 *   QMQ_ERR_NO_ROUTE) naming the subject: it never hangs.
 * - Delay-producer routes do not depend on the subject: one entry serves every subject.
 */
export interface RouteCacheOptions {
  meta: MetaClient
  clientId: string
  refreshIntervalMs: number
  firstLookupTimeoutMs: number
  /** Least time between two lookups of one route (default MIN_REFRESH_GAP_MS). */
  minRefreshGapMs?: number
  logger?: Logger
}

export const MIN_REFRESH_GAP_MS = 200

/** `before`: the route's groups until this change. */
export type RouteListener = (
  query: RouteQuery,
  groups: readonly RouteGroup[],
  before: readonly RouteGroup[],
) => void

interface Entry {
  query: RouteQuery
  groups: RouteGroup[] | undefined
  inflight: Promise<RouteGroup[]> | undefined
  /** When the last lookup of this route started (ms since epoch; 0: never). */
  askedAt: number
  /** A refresh waiting for the end of the gap (joined by the refreshes wanted meanwhile). */
  delayed: Promise<RouteGroup[]> | undefined
}

function sameGroups(a: readonly RouteGroup[], b: readonly RouteGroup[]): boolean {
  if (a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) {
    const x = a[i] as RouteGroup
    const y = b[i] as RouteGroup
    if (x.name !== y.name || x.address !== y.address || x.state !== y.state) return false
  }
  return true
}

export class RouteCache {
  private readonly entries = new Map<string, Entry>()
  private readonly listeners = new Set<RouteListener>()
  private readonly log: Logger
  private readonly abort = new AbortController()
  private timer: NodeJS.Timeout | undefined
  /** Refreshes waiting for the end of their gap: close() ends the waits. */
  private readonly waits = new Map<() => void, NodeJS.Timeout>()
  private closed = false

  constructor(private readonly options: RouteCacheOptions) {
    this.log = options.logger ?? silentLogger
  }

  static key(kind: ClientKind, subject: string, group?: string): string {
    return kind === 'delay-producer' ? 'delay-producer' : `${kind}\u0000${subject}\u0000${group ?? ''}`
  }

  /** The route's groups (cached when known). */
  get(kind: ClientKind, subject: string, group?: string): Promise<RouteGroup[]> {
    const entry = this.entry(kind, subject, group)
    if (entry.groups !== undefined) return Promise.resolve(entry.groups)
    entry.inflight ??= this.firstLookup(entry).finally(() => {
      entry.inflight = undefined
    })
    return entry.inflight
  }

  /** The cached groups, without asking anyone. */
  peek(kind: ClientKind, subject: string, group?: string): RouteGroup[] | undefined {
    return this.entries.get(RouteCache.key(kind, subject, group))?.groups
  }

  /**
   * Asks the metaserver again: now, or at the end of the route's minRefreshGapMs (one lookup in
   * flight or waiting per route; callers meanwhile share it). Resolves with the new groups, or the
   * cached ones when the metaserver cannot answer (never rejects once a route is cached).
   */
  refresh(kind: ClientKind, subject: string, group?: string): Promise<RouteGroup[]> {
    const entry = this.entry(kind, subject, group)
    if (entry.groups === undefined) return this.get(kind, subject, group)
    if (entry.inflight !== undefined) return entry.inflight
    if (entry.delayed !== undefined) return entry.delayed
    const wait = entry.askedAt + (this.options.minRefreshGapMs ?? MIN_REFRESH_GAP_MS) - Date.now()
    if (wait > 0) {
      entry.delayed = new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          this.waits.delete(resolve)
          resolve()
        }, wait)
        timer.unref()
        this.waits.set(resolve, timer)
      }).then(() => {
        entry.delayed = undefined
        if (this.closed) return entry.groups as RouteGroup[]
        return this.refresh(kind, subject, group)
      })
      return entry.delayed
    }
    entry.inflight = this.fetch(entry)
      .catch((err: unknown) => {
        this.log.debug({ err: (err as Error).message, subject }, 'route refresh failed; keeping cached route')
        return entry.groups as RouteGroup[]
      })
      .finally(() => {
        entry.inflight = undefined
      })
    return entry.inflight
  }

  /** Called with every route that changed after a refresh. */
  onChange(listener: RouteListener): () => void {
    this.listeners.add(listener)
    return () => this.listeners.delete(listener)
  }

  close(): void {
    this.closed = true
    this.abort.abort()
    if (this.timer !== undefined) clearInterval(this.timer)
    this.timer = undefined
    for (const [resolve, timer] of this.waits) {
      clearTimeout(timer)
      resolve()
    }
    this.waits.clear()
  }

  // ------------------------------------------------------------------ internals

  private entry(kind: ClientKind, subject: string, group?: string): Entry {
    if (this.closed) throw new QmqError('QMQ_ERR_CLIENT_CLOSED', 'client is closed')
    const key = RouteCache.key(kind, subject, group)
    let entry = this.entries.get(key)
    if (entry === undefined) {
      const query: RouteQuery = { subject, kind, clientId: this.options.clientId }
      if (group !== undefined) query.group = group
      entry = { query, groups: undefined, inflight: undefined, askedAt: 0, delayed: undefined }
      this.entries.set(key, entry)
      this.startTimer()
    }
    return entry
  }

  private startTimer(): void {
    if (this.timer !== undefined) return
    this.timer = setInterval(() => this.refreshAll(), this.options.refreshIntervalMs)
    this.timer.unref()
  }

  private refreshAll(): void {
    for (const entry of this.entries.values()) {
      if (entry.groups === undefined) continue
      this.refresh(entry.query.kind, entry.query.subject, entry.query.group).catch(() => {})
    }
  }

  private async fetch(entry: Entry): Promise<RouteGroup[]> {
    entry.askedAt = Date.now()
    const res = await this.options.meta.route(entry.query)
    const groups = Array.isArray(res.groups) ? res.groups : []
    if (groups.length === 0) {
      throw new QmqError(
        'QMQ_ERR_NO_ROUTE',
        `metaserver answered no group for subject ${entry.query.subject}`,
      )
    }
    const before = entry.groups
    entry.groups = groups
    if (before !== undefined && !sameGroups(before, groups)) {
      for (const l of this.listeners) {
        try {
          l(entry.query, groups, before)
        } catch (err) {
          this.log.error(err as Error, 'route listener failed')
        }
      }
    }
    return groups
  }

  private async firstLookup(entry: Entry): Promise<RouteGroup[]> {
    const deadline = Date.now() + this.options.firstLookupTimeoutMs
    const backoff = new Backoff({ initialMs: 50, maxMs: 1_000 })
    let lastErr: unknown
    for (;;) {
      try {
        return await this.fetch(entry)
      } catch (err) {
        lastErr = err
        if (!isRetriable(err) || this.closed) break
        const wait = Math.min(backoff.next(), deadline - Date.now())
        if (wait <= 0) break
        await sleep(wait, this.abort.signal)
        if (Date.now() >= deadline) break
      }
    }
    const { subject, kind, group } = entry.query
    const what = `${kind} route of subject ${subject}${group !== undefined ? ` (consumer group ${group})` : ''}`
    const cause = lastErr instanceof Error ? lastErr.message : String(lastErr)
    if (lastErr instanceof QmqError && !lastErr.retriable) {
      throw new QmqError(lastErr.code, `cannot get the ${what}: ${cause}`, { cause: lastErr })
    }
    const code =
      lastErr instanceof QmqError && lastErr.code === 'QMQ_ERR_NO_ROUTE'
        ? 'QMQ_ERR_NO_ROUTE'
        : 'QMQ_ERR_METASERVER_UNAVAILABLE'
    throw new QmqError(
      code,
      `cannot get the ${what} within ${this.options.firstLookupTimeoutMs} ms: ${cause}`,
      { cause: lastErr, details: { subject, kind, group } },
    )
  }
}
