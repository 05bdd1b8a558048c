/**
 * Time source injected into everything that schedules (leases, backoff, the delay wheel), so tests
 * can drive time by hand instead of sleeping.
 */
export interface Clock {
  /** Milliseconds since the Unix epoch. */
  now(): number
}

export const systemClock: Clock = { now: () => Date.now() }

/** A clock tests move by hand. */
export class ManualClock implements Clock {
  private ms: number
  constructor(startMs = 1_700_000_000_000) {
    this.ms = startMs
  }
  now(): number {
    return this.ms
  }
  advance(ms: number): number {
    this.ms += ms
    return this.ms
  }
  set(ms: number): void {
    this.ms = ms
  }
}
