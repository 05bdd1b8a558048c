import type { ServerHeartbeatResponse } from '../../common/meta/types'
import type { ReplicationSource } from './source'

/**
 * The in-sync set a replicated master's heartbeat carries to the metaserver, handed back to its
 * ReplicationSource once the answer shows the metaserver stored it (brokers and delay servers alike).
 * Heartbeats go one at a time, so one set is in flight at most:
 *
 *   build the report   clear(), then (a master) set = report(source)    source.reportInSync()
 *   answer             accepted(res, role, source): the set, if this is still a master that the
 *                      answer keeps master                              source.reportAccepted(set)
 *
 * The metaserver answers a master only once its report is stored, so from then on slaves that left
 * the set are no longer waited for. A heartbeat that carried no set (a slave's, or one built while
 * closing) hands nothing over: `clear` forgets the previous heartbeat's.
 */
export class InSyncReport {
  private sent: string[] | undefined

  /** A heartbeat's report is being built: the previous heartbeat's set is forgotten. */
  clear(): void {
    this.sent = undefined
  }

  /** The in-sync set this heartbeat carries (ReplicationSource.reportInSync), kept for its answer. */
  report(source: ReplicationSource): string[] {
    const ids = source.reportInSync()
    this.sent = ids
    return ids
  }

  /**
   * The metaserver answered the heartbeat in flight: a server acting as master in `role` that the
   * answer keeps master hands the set the heartbeat carried to `source` (ReplicationSource.reportAccepted).
   */
  accepted(
    res: ServerHeartbeatResponse,
    role: 'master' | 'slave',
    source: ReplicationSource | undefined,
  ): void {
    const sent = this.sent
    this.sent = undefined
    if (sent !== undefined && role === 'master' && (res.role ?? 'master') === 'master')
      source?.reportAccepted(sent)
  }
}
