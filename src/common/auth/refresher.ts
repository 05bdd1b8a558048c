import type { Logger } from '../logger'
import type { AppCredential, CredentialCache } from './credentials'

/** Where a server gets the credentials from: the metaserver (MetaClient.credentials, cluster secret). */
export interface CredentialSource {
  credentials(): Promise<{ apps: AppCredential[] }>
}

export const DEFAULT_AUTH_REFRESH_MS = 2_000

/**
 * Keeps a server's CredentialCache current: asks the source every `intervalMs` (so a revocation takes
 * effect within about that time). A failed refresh keeps the last list (servers keep serving the
 * apps they know while the metaserver is away) and is logged once per failure streak.
 */
export class CredentialRefresher {
  private timer: NodeJS.Timeout | undefined
  private failing = false
  private stopped = false

  constructor(
    private readonly source: CredentialSource,
    private readonly cache: CredentialCache,
    private readonly intervalMs: number,
    private readonly log: Logger,
  ) {}

  /** Loads once (resolves either way), then keeps refreshing. */
  async start(): Promise<void> {
    await this.refresh()
    this.schedule()
  }

  async refresh(): Promise<boolean> {
    try {
      const { apps } = await this.source.credentials()
      if (!Array.isArray(apps)) throw new Error('answer has no apps list')
      this.cache.replace(apps)
      if (this.failing) this.log.info({ apps: apps.length }, 'credentials loaded again')
      this.failing = false
      return true
    } catch (err) {
      if (!this.failing)
        this.log.warn(
          { err: (err as Error).message, loaded: this.cache.loaded },
          'could not load application credentials from the metaserver; keeping the last ones',
        )
      this.failing = true
      return false
    }
  }

  private schedule(): void {
    if (this.stopped) return
    this.timer = setTimeout(() => {
      void this.refresh().finally(() => this.schedule())
    }, this.intervalMs)
    this.timer.unref()
  }

  stop(): void {
    this.stopped = true
    if (this.timer !== undefined) clearTimeout(this.timer)
  }
}
