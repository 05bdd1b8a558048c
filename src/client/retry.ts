import { QmqError } from '../common/errors'

/**
 * Backoff with jitter, shared by reconnects, pull loops, ack resends and producer retries.
 * Delay of attempt n (0-based) = min(maxMs, initialMs * multiplier^n), then "equal jitter": a random
 * point in [d * (1 - jitter), d]. With jitter 0.5 two clients that failed together retry apart.
 */
export interface BackoffOptions {
  initialMs: number
  maxMs: number
  multiplier?: number
  /** 0..1: share of the delay that is randomised (default 0.5). */
  jitter?: number
}

export function backoffDelay(attempt: number, options: BackoffOptions, random: () => number = Math.random) {
  const multiplier = options.multiplier ?? 2
  const jitter = Math.min(1, Math.max(0, options.jitter ?? 0.5))
  const base = Math.min(options.maxMs, options.initialMs * multiplier ** Math.max(0, attempt))
  return Math.round(base * (1 - jitter * random()))
}

/**
 * Longest wait of the consumer's pull and ack retries (and the default reconnectMaxMs): a server back
 * after a restart or a failover (issue 14) is used again within about this long.
 */
export const RETRY_MAX_MS = 1_000

/** A stateful backoff: `next()` grows, `reset()` after a success. */
export class Backoff {
  private attempt = 0
  constructor(
    private readonly options: BackoffOptions,
    private readonly random: () => number = Math.random,
  ) {}

  next(): number {
    return backoffDelay(this.attempt++, this.options, this.random)
  }

  reset(): void {
    this.attempt = 0
  }
}

/** Only QmqErrors that say so are retried: anything else (a bug, a bad argument) fails at once. */
export function isRetriable(err: unknown): boolean {
  return err instanceof QmqError && err.retriable
}

/**
 * Resolves after `ms`, or at once when `signal` aborts (never rejects). Owners abort their signal
 * on close(), so a sleeping retry never outlives the client that started it.
 */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve()
    const done = (): void => {
      clearTimeout(timer)
      signal?.removeEventListener('abort', done)
      resolve()
    }
    const timer = setTimeout(done, ms)
    signal?.addEventListener('abort', done, { once: true })
  })
}
