import { ServerConnection } from '../../common/server/connection'

export type { ConnectionOptions, ResponseBody } from '../../common/server/connection'

/**
 * A broker client connection: the shared server connection loop (common/server/connection.ts: flow
 * control, frame deadline, partial-frame budget, idle timeouts) plus the broker's per-connection state.
 */
export class Connection extends ServerConnection {
  /**
   * Keys (subject, group, consumerId) that already pulled on this connection: a consumer's first pull
   * on a new connection asks the store to hand back what it still holds (resumeHeld).
   */
  readonly pulledKeys = new Set<string>()
  /** The last consumer that pulled here: its next pull (the usual one) needs no key string. */
  private lastPulled: { subject: string; group: string; consumerId: string } | undefined

  /** Records that a consumer pulls on this connection; true when it had pulled here before. */
  markPulled(subject: string, group: string, consumerId: string): boolean {
    const last = this.lastPulled
    if (last?.subject === subject && last.group === group && last.consumerId === consumerId) return true
    const key = `${subject}\u0000${group}\u0000${consumerId}`
    const had = this.pulledKeys.has(key)
    this.pulledKeys.add(key)
    this.lastPulled = { subject, group, consumerId }
    return had
  }
}
