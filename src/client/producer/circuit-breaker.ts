/**
 * Per-group circuit breaker (after QMQ's CircuitBreaker): `failureThreshold` consecutive failures
 * open it for `openMs`; then it is half-open and lets one probe through at a time; the probe's
 * success closes it, its failure opens it again. While open, the producer skips the group
 * (and fails with QMQ_ERR_CIRCUIT_OPEN only when every group of a subject is open).
 */
export interface CircuitBreakerOptions {
  failureThreshold: number
  openMs: number
}

export type CircuitState = 'closed' | 'open' | 'half-open'

export class CircuitBreaker {
  private failures = 0
  private openedAt = 0
  private opened = false
  private probing = false

  constructor(
    private readonly options: CircuitBreakerOptions,
    private readonly now: () => number = Date.now,
  ) {}

  get state(): CircuitState {
    if (!this.opened) return 'closed'
    return this.now() - this.openedAt >= this.options.openMs ? 'half-open' : 'open'
  }

  /** May a request go to this group now? In half-open state this takes the single probe slot. */
  tryAcquire(): boolean {
    const s = this.state
    if (s === 'closed') return true
    if (s === 'open' || this.probing) return false
    this.probing = true
    return true
  }

  /** Whether tryAcquire() would say yes, without taking the probe slot. */
  get available(): boolean {
    const s = this.state
    return s === 'closed' || (s === 'half-open' && !this.probing)
  }

  onSuccess(): void {
    this.failures = 0
    this.opened = false
    this.probing = false
  }

  /** The request taken by tryAcquire() ended with no verdict (it was never sent): frees the probe slot. */
  release(): void {
    this.probing = false
  }

  onFailure(): void {
    this.probing = false
    if (this.opened) {
      this.openedAt = this.now()
      return
    }
    if (++this.failures >= this.options.failureThreshold) {
      this.opened = true
      this.openedAt = this.now()
    }
  }
}
