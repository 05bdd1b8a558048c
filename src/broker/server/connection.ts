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
}
