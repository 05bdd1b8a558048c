import { QmqError } from '../../common/errors'
import type { Logger } from '../../common/logger'
import type { ServerHeartbeatResponse } from '../../common/meta/types'

/**
 * A replicated master's lease with the metaserver (fencing, docs/replication.md), for brokers and
 * delay servers alike: every heartbeat answer that keeps this server master renews it for `leaseMs`
 * from the moment that heartbeat was *sent* (the metaserver promotes a slave only after
 * heartbeatTimeoutMs = 2 x leaseMs of silence, measured from when it last heard it). A master whose
 * lease ran out acknowledges no writes (QMQ_ERR_NOT_MASTER, retriable): it checks before storing a
 * request and again before answering it.
 */
export class MasterLease {
  private until = 0

  /**
   * Applies a heartbeat answer sent at `sentAt` to a server acting as `role`: renews the lease, or
   * returns the role the metaserver gives when it differs (the caller switches; the lease is gone).
   */
  answer(
    res: ServerHeartbeatResponse,
    sentAt: number,
    role: 'master' | 'slave',
  ): 'master' | 'slave' | undefined {
    const given = res.role ?? role
    if (given === role) {
      if (role === 'master')
        this.until = res.leaseMs === undefined ? Number.POSITIVE_INFINITY : sentAt + res.leaseMs
      return undefined
    }
    this.until = 0
    return given
  }

  /**
   * Applies a heartbeat answer (answer()) and, when the metaserver gives another role, starts the
   * change on the next turn of the event loop (not inside the heartbeat's own callback): `switchRole`
   * with the answer's epoch (else `epoch`), its failure logged. Returns the change in progress (the
   * caller holds it so that one runs at a time, and forgets it in `done`), or undefined.
   */
  changeRole(
    res: ServerHeartbeatResponse,
    sentAt: number,
    role: 'master' | 'slave',
    epoch: number,
    switchRole: (role: 'master' | 'slave', epoch: number) => Promise<void>,
    log: Logger,
    done: () => void,
  ): Promise<void> | undefined {
    const next = this.answer(res, sentAt, role)
    if (next === undefined) return undefined
    const at = res.epoch ?? epoch
    return new Promise<void>((resolve) => setImmediate(resolve))
      .then(() => switchRole(next, at))
      .catch((err: unknown) => log.error({ err: String(err) }, 'role change failed'))
      .finally(done)
  }

  revoke(): void {
    this.until = 0
  }

  /** Throws unless a replicated master holds its lease (an unreplicated group needs none). */
  check(replicated: boolean, now = Date.now()): void {
    if (!replicated || now <= this.until) return
    throw new QmqError(
      'QMQ_ERR_NOT_MASTER',
      'this master cannot renew its lease with the metaserver: it acknowledges no writes (a slave may be promoted)',
    )
  }
}
