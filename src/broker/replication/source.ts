import fs from 'node:fs'
import path from 'node:path'
import { writeFileAtomicSync } from '../../common/durable-file'
import { QmqError } from '../../common/errors'
import type { Logger } from '../../common/logger'
import {
  type FetchRequest,
  type FetchResponse,
  FetchKind,
  fetchAcked,
  REPLICATED_LOG_NAMES,
  type ReplicatedLogValue,
} from '../../common/protocol/replication'
import type { ReadBufferPool, ReadHold } from '../store/read-pool'
import type { SegmentLog } from '../store/segment-log'
import { AckWaiters } from './ack-waiters'
import { divergencePoint, type EpochStart, type EpochState, epochsDir, writeEpochs } from './epochs'

/**
 * The master's side of replication: answers slaves' REPL_FETCH requests from its own logs, tracks
 * what each slave holds durably, and (under `sync`) holds a SEND's answer until every in-sync slave
 * has it.
 *
 * Invariants:
 * - A slave's acknowledgement (a fetch's `acked`, else its offset; common/protocol/replication.ts):
 *   everything before it is written and fdatasynced on the slave. A SEND waiting under `sync` is
 *   released once at least one slave is in sync and every in-sync slave's message-log acknowledgement
 *   reaches the end of that SEND's own records (AppendResult.end; not the log's end, which later SENDs
 *   move on while this one waits). An out-of-sync slave's acknowledgement counts for nothing: the
 *   metaserver promotes only slaves the master reports in sync (the report is `status()`'s `inSync`,
 *   this very predicate), and "most data" ranks by the message log alone, so the rule that keeps
 *   every acknowledged write (a delay group's CANCELs too) across a promotion is: every candidate
 *   holds it. `committed` (the highest end released) keeps it true as slaves come and go: a slave
 *   enters the in-sync set only once it holds everything released so far.
 * - Bytes are shipped as soon as they are written (before the master's own fdatasync), so the two
 *   fdatasyncs overlap. When the master cuts its log (a failed fdatasync rejects its unsynced
 *   batches; segment-log.ts `truncated`), every slave that may hold bytes past the cut is told to
 *   cut too (TRUNCATE) on its next fetch, and its acknowledgements past the cut count for nothing
 *   until it did: new records written at the same offsets are never released by stale copies.
 *   The same after a restart, when the master knows nothing of what it shipped before: a slave's
 *   first fetch of a log past the end the store opened with (recovery may have cut an unsynced tail
 *   the slave had copied) is answered TRUNCATE to that end.
 * - A slave is in sync while it fetched within `inSyncLagMs`, within that time acknowledged
 *   everything the master had when it last answered it, has no cut pending, holds at least
 *   `committed`, and (`slaveReady`) whatever else promotion needs.
 * - The first slave seen is remembered in `<dataDir>/replication/slaves.json`: from then on the
 *   group has a slave, and `sync` refuses writes without an in-sync one (unless `degradedWrites`),
 *   also right after a master restart, before the slave reconnected.
 */
export type ReplicationMode = 'sync' | 'async'

export interface ReplicationSourceOptions {
  mode: ReplicationMode
  /** A SEND under `sync` waits this long for a slave's acknowledgement. */
  ackTimeoutMs: number
  /** A slave that has not caught up within this long is out of sync. */
  inSyncLagMs: number
  /** `sync` with no in-sync slave: keep acknowledging on the master alone (reported as degraded). */
  degradedWrites: boolean
  /** Where the list of known slaves is kept (`<dataDir>/replication`). */
  stateDir: string
  /** The group's epoch, carried on every answer, and where each epoch began (epochs.ts). */
  epoch: () => number
  history: () => readonly EpochStart[]
  now?: () => number
  /**
   * Beyond its log copies: whether a slave holds what it needs to be promoted (the delay server's
   * slave must also hold the derived files of a checkpoint, src/delay/replication/). Default: yes.
   */
  slaveReady?: (slaveId: string) => boolean
  /**
   * Asks for a heartbeat now (MetaHeartbeat.reportNow): a slave left the in-sync set while writes
   * wait, and they go on only once a report without it was accepted (`reportAccepted`).
   */
  requestReport?: () => void
}

export interface ReplicatedLogs {
  message: SegmentLog
  /** The broker's action log; a delay server replicates its message log alone. */
  action?: SegmentLog | undefined
  /** The store's checkpoint file (checkpoint.json), served to slaves. */
  checkpointFile: string
  /**
   * The logs' ends right after recovery, before the store wrote anything (its first checkpoint adds
   * a MARK to the action log); default: their ends now.
   */
  recoveredEnds?: { message: number; action: number } | undefined
  /** Buffers fetches read into when the caller passes a ReadHold (read-pool.ts); none = fresh ones. */
  readPool?: ReadBufferPool | undefined
}

interface LogProgress {
  /** Durable end on the slave (its last acknowledgement); -1 = never fetched. */
  acked: number
  /** When the slave last held everything the master had when it answered it. */
  caughtUpAt: number
  /** End of the master's log when it last answered this slave, and when. */
  answeredEnd: number
  answeredAt: number
  /** The master cut its log here since the slave last fetched: the slave must cut too. */
  mustCut: number | undefined
  /**
   * The slave fetched this log since the logs were attached (store opened). Until it did, whatever it
   * holds past `openedEnds` came from an earlier run of this master (or of another): bytes this
   * master may have lost (an unsynced tail cut by recovery after a crash) and since written again
   * differently. Its first fetch past that point is answered TRUNCATE.
   */
  verified: boolean
}

export interface SlaveStatus {
  id: string
  lastFetchAt: number
  inSync: boolean
  /** Durable ends on the slave. */
  messageOffset: number
  actionOffset: number
  /** Bytes the slave is behind the master's log ends. */
  lagBytes: number
  /** How long since the slave last held everything the master had (0 = now). */
  lagMs: number
}

interface SlaveState {
  id: string
  lastFetchAt: number
  logs: [LogProgress, LogProgress]
}

interface Parked {
  log: ReplicatedLogValue
  offset: number
  wake: () => void
}

const SLAVES_FILE = 'slaves.json'

export class ReplicationSource {
  private readonly opts: ReplicationSourceOptions
  private readonly log: Logger
  private readonly now: () => number
  private readonly slaves = new Map<string, SlaveState>()
  private readonly known: Set<string>
  private logs: ReplicatedLogs | undefined
  private unlisten: (() => void)[] = []
  /** SENDs waiting under `sync`, by the end of their records in the message log. */
  private readonly waiters: AckWaiters
  private parked = new Set<Parked>()
  private closed = false
  /**
   * Per log: its end right after the store's recovery, lowered by every cut since. A slave
   * holds nothing past it that this run of the master shipped until it fetched once (`verified`).
   */
  private openedEnds: [number, number] = [0, 0]
  /**
   * The highest message-log end a `sync` SEND was acknowledged at (released to its producer) in this
   * run, lowered by a cut: every in-sync slave holds it.
   */
  private committed = 0
  /** Wakes waiting SENDs when a lagging in-sync slave drops out of sync (the others may hold them). */
  private recheckTimer: NodeJS.Timeout | undefined
  /**
   * What the metaserver may hold as this master's in-sync set (the slaves it may promote): the set of
   * the last heartbeat it accepted (`reported`), and every set sent since whose heartbeat failed
   * (`unconfirmed`: it may have been stored all the same). A slave in either that is out of sync now
   * (`leaving`) is still counted for acknowledgements: writes wait for it until a report without it
   * was accepted. Kept across `attach` (the metaserver's view does not change with a store reopen).
   */
  private reported = new Set<string>()
  private unconfirmed = new Set<string>()
  /** The leaving set a report was last asked for (`requestReport`), to ask once per change. */
  private reportAskedFor = ''
  private readonly countedListeners = new Set<() => void>()

  constructor(opts: ReplicationSourceOptions, log: Logger) {
    this.opts = opts
    this.log = log.child({ component: 'replication' })
    this.now = opts.now ?? Date.now
    this.waiters = new AckWaiters(opts.ackTimeoutMs)
    this.known = new Set(readKnownSlaves(opts.stateDir))
  }

  get mode(): ReplicationMode {
    return this.opts.mode
  }

  /** The group has (had) a slave: `sync` applies. */
  get hasSlaves(): boolean {
    return this.known.size > 0
  }

  /** Starts serving the logs of an opened store (called on every store open). */
  attach(logs: ReplicatedLogs): void {
    this.detach()
    this.closed = false
    this.logs = logs
    // Progress seen by an earlier run (before a restart or role change) proves nothing now: each slave
    // starts over with its next fetch (and is told to cut what it holds past these ends).
    this.slaves.clear()
    this.committed = 0
    this.openedEnds = [
      logs.recoveredEnds?.message ?? logs.message.endOffset,
      logs.recoveredEnds?.action ?? logs.action?.endOffset ?? 0,
    ]
    const kinds: [ReplicatedLogValue, SegmentLog][] = [[0, logs.message]]
    if (logs.action !== undefined) kinds.push([1, logs.action])
    for (const [kind, seg] of kinds) {
      this.unlisten.push(
        seg.listen({
          appended: () => this.wake(kind),
          truncated: (offset) => this.cut(kind, offset),
        }),
      )
    }
  }

  /** Stops serving (store closing): parked fetches answer empty, waiting SENDs fail (retriable). */
  detach(): void {
    for (const u of this.unlisten) u()
    this.unlisten = []
    this.logs = undefined
    if (this.recheckTimer !== undefined) clearTimeout(this.recheckTimer)
    this.recheckTimer = undefined
    for (const p of [...this.parked]) p.wake()
    this.waiters.rejectAll(new QmqError('QMQ_ERR_SHUTTING_DOWN'))
  }

  close(): void {
    this.closed = true
    this.detach()
  }

  /** Writes need a slave's acknowledgement (`sync` with a slave, not degraded to the master alone). */
  get requiresSlave(): boolean {
    return this.opts.mode === 'sync' && this.hasSlaves
  }

  /**
   * True while `sync` writes go on without an in-sync slave (`degradedWrites`): none is in sync and
   * the metaserver holds none in sync either (a slave that just left is waited for until it does).
   */
  get degraded(): boolean {
    return this.requiresSlave && this.opts.degradedWrites && this.alone(this.now())
  }

  /**
   * Before a SEND is stored: under `sync` with no in-sync slave, refuses it (retriable) unless the
   * group may write alone.
   */
  checkWritable(): void {
    if (!this.requiresSlave || this.opts.degradedWrites || this.anyInSync()) return
    throw new QmqError('QMQ_ERR_NO_IN_SYNC_SLAVE')
  }

  /**
   * After a SEND's records were stored (the last of them ends at message-log offset `end`): resolves
   * when every in-sync slave (at least one) holds them durably; under `async`, without a slave, or
   * degraded, at once.
   */
  waitReplicated(end: number): Promise<void> {
    if (!this.requiresSlave) return Promise.resolve()
    const now = this.now()
    if (end <= this.safeEnd(now)) {
      this.commit(end)
      return Promise.resolve()
    }
    if (this.opts.degradedWrites && this.alone(now)) {
      this.commit(end)
      return Promise.resolve()
    }
    if (this.logs === undefined) return Promise.reject(new QmqError('QMQ_ERR_SHUTTING_DOWN'))
    const waiting = this.waiters.wait(end)
    this.scheduleRecheck(now)
    this.reportIfLeaving(now)
    return waiting
  }

  /**
   * The slaves a `sync` write waits for, and the ones the master reports in sync to the metaserver
   * (`status()`): one predicate, so that no slave counts for acknowledgements without being reported.
   */
  inSyncSlaves(): string[] {
    const now = this.now()
    const out: string[] = []
    for (const s of this.slaves.values()) if (this.inSync(s, now)) out.push(s.id)
    return out
  }

  /**
   * Every slave an acknowledgement needs: the in-sync ones, and those that left the in-sync set since
   * the metaserver last accepted a report naming them (it may still promote them).
   */
  countedSlaves(): string[] {
    const now = this.now()
    return [...this.inSyncSlaves(), ...this.leaving(now)]
  }

  /**
   * The in-sync set for a heartbeat about to be sent; once its answer came (this server still master),
   * the caller passes the same list to `reportAccepted`.
   */
  reportInSync(): string[] {
    const ids = this.inSyncSlaves()
    for (const id of ids) this.unconfirmed.add(id)
    return ids
  }

  /**
   * The metaserver stored `ids` as this master's in-sync set (its heartbeat was answered: a master's
   * report is stored before the answer, service.ts heartbeat). Heartbeats go one at a time, so no
   * later report is pending: slaves outside `ids` that left the set are no longer waited for.
   */
  reportAccepted(ids: readonly string[]): void {
    this.reported = new Set(ids)
    this.unconfirmed.clear()
    this.reportAskedFor = ''
    this.release(this.now())
    for (const l of this.countedListeners) l()
  }

  /** Calls `fn` whenever a slave stops being counted (`reportAccepted`); returns its removal. */
  onCountedChange(fn: () => void): () => void {
    this.countedListeners.add(fn)
    return () => this.countedListeners.delete(fn)
  }

  /**
   * Re-evaluates waiting SENDs after something `slaveReady` depends on changed (the delay source:
   * a slave adopted a checkpoint or acknowledged cancels).
   */
  recheck(): void {
    this.release(this.now())
  }

  /** The master's checkpoint file, for a slave that starts (or fell behind the action log's start). */
  checkpoint(): Buffer {
    const file = this.logs?.checkpointFile
    if (file === undefined) throw new QmqError('QMQ_ERR_SHUTTING_DOWN')
    try {
      return fs.readFileSync(file)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return Buffer.alloc(0)
      throw err
    }
  }

  /**
   * Answers one REPL_FETCH (the token was checked by the caller). With `hold`, the answer's data may
   * be read into a buffer of the logs' read pool owned by `hold` (valid until it is released).
   */
  async fetch(req: FetchRequest, hold?: ReadHold): Promise<FetchResponse> {
    const now = this.now()
    const slave = this.slave(req.slaveId, now)
    const progress = slave.logs[req.log]
    const logs = this.logs
    if (logs === undefined || this.closed) throw new QmqError('QMQ_ERR_SHUTTING_DOWN')
    const seg = req.log === 0 ? logs.message : logs.action
    if (seg === undefined)
      throw new QmqError(
        'QMQ_ERR_INVALID_ARGUMENT',
        `this master has no ${REPLICATED_LOG_NAMES[req.log]} log`,
      )
    const epoch = this.opts.epoch()
    const answer = (
      kind: FetchResponse['kind'],
      offset: number,
      segmentBase = offset,
      data: Buffer = EMPTY,
    ): FetchResponse => {
      progress.answeredEnd = seg.endOffset
      progress.answeredAt = this.now()
      return {
        kind,
        start: seg.startOffset,
        end: seg.endOffset,
        offset,
        segmentBase,
        epoch,
        data,
        history: req.epoch < epoch ? Buffer.from(JSON.stringify(this.opts.history())) : EMPTY,
      }
    }
    if (req.epoch > epoch) {
      // A slave of a later epoch asks an earlier master: this master lost its place.
      throw new QmqError('QMQ_ERR_NOT_MASTER', `this master is at epoch ${epoch}; the slave at ${req.epoch}`)
    }
    if (req.epoch < epoch) {
      // A copy from an earlier epoch (a former master): what it holds past the next epoch's start
      // was never acknowledged under sync; it cuts it first.
      const cut = divergencePoint(this.opts.history(), req.epoch, REPLICATED_LOG_NAMES[req.log])
      if (cut !== undefined && req.offset > cut) {
        this.log.warn(
          {
            slave: slave.id,
            log: REPLICATED_LOG_NAMES[req.log],
            slaveEnd: req.offset,
            cut,
            epoch: req.epoch,
          },
          'slave from an earlier epoch holds records past its end: it cuts them',
        )
        return answer(FetchKind.TRUNCATE, cut)
      }
    }
    if (progress.mustCut !== undefined) {
      const cut = progress.mustCut
      progress.mustCut = undefined
      if (req.offset > cut) {
        this.log.warn({ slave: slave.id, log: REPLICATED_LOG_NAMES[req.log], cut }, 'slave must cut its log')
        return answer(FetchKind.TRUNCATE, cut)
      }
    }
    if (!progress.verified) {
      const opened = this.openedEnds[req.log]
      if (req.offset > opened) {
        // Copied from an earlier run of this master: what it holds past the end this run started
        // from (after recovery) may be a tail this master lost, and new records may have been
        // written at those offsets since; it cuts back before copying on.
        this.log.warn(
          { slave: slave.id, log: REPLICATED_LOG_NAMES[req.log], slaveEnd: req.offset, cut: opened },
          'slave holds more than this master had when its store opened: it cuts back',
        )
        return answer(FetchKind.TRUNCATE, opened)
      }
      progress.verified = true
    }
    if (req.offset > seg.endOffset) {
      // The slave holds more than the master (the master lost an unsynced tail): it cuts back.
      this.log.warn(
        { slave: slave.id, log: REPLICATED_LOG_NAMES[req.log], slaveEnd: req.offset, end: seg.endOffset },
        'slave is ahead of the master; telling it to cut',
      )
      return answer(FetchKind.TRUNCATE, seg.endOffset)
    }
    this.acknowledge(slave, req.log, fetchAcked(req), now)
    if (req.offset < seg.startOffset) return answer(FetchKind.RESET, seg.startOffset)
    if (req.offset === seg.endOffset && req.waitMs > 0) {
      await this.park(req.log, req.offset, req.waitMs)
      if (this.logs !== logs) throw new QmqError('QMQ_ERR_SHUTTING_DOWN')
      const cut = progress.mustCut
      if (cut !== undefined && req.offset > cut) {
        // Cut while parked (and possibly written again past the slave's end): never splice.
        progress.mustCut = undefined
        return answer(FetchKind.TRUNCATE, cut)
      }
      if (seg.endOffset < req.offset) return answer(FetchKind.TRUNCATE, seg.endOffset)
    }
    if (req.offset >= seg.endOffset) return answer(FetchKind.DATA, req.offset)
    let at = seg.segmentAt(req.offset)
    let offset = req.offset
    if (at === undefined || at.end === offset) {
      // In a gap between segments (recovery may leave one): go on at the next segment.
      offset = seg.nextSegmentBase(req.offset + 1)
      at = seg.segmentAt(offset)
      if (at === undefined || offset >= seg.endOffset) return answer(FetchKind.DATA, req.offset)
    }
    const length = Math.min(req.maxBytes, at.end - offset)
    const pooled = hold === undefined ? undefined : logs.readPool?.take(length)
    let data: Buffer
    if (pooled === undefined) data = await seg.read(offset, length)
    else {
      hold?.add(pooled) // held from here: released with the hold even if the read fails
      data = pooled.buf.subarray(0, await seg.readInto(offset, pooled.buf, 0, length))
    }
    return answer(FetchKind.DATA, offset, at.base, data)
  }

  /** Every slave seen since start, with its progress. */
  status(): SlaveStatus[] {
    const now = this.now()
    const logs = this.logs
    const out: SlaveStatus[] = []
    for (const s of this.slaves.values()) {
      const [m, a] = s.logs
      const lagBytes =
        logs === undefined
          ? 0
          : Math.max(0, logs.message.endOffset - Math.max(m.acked, 0)) +
            Math.max(0, (logs.action?.endOffset ?? 0) - Math.max(a.acked, 0))
      out.push({
        id: s.id,
        lastFetchAt: s.lastFetchAt,
        inSync: this.inSync(s, now),
        messageOffset: m.acked,
        actionOffset: a.acked,
        lagBytes,
        lagMs:
          lagBytes === 0
            ? 0
            : Math.max(
                0,
                now - (logs?.action === undefined ? m.caughtUpAt : Math.min(m.caughtUpAt, a.caughtUpAt)),
              ),
      })
    }
    return out
  }

  anyInSync(): boolean {
    const now = this.now()
    for (const s of this.slaves.values()) if (this.inSync(s, now)) return true
    return false
  }

  /**
   * Slaves the metaserver may still hold in sync (`reported`, `unconfirmed`) that are out of sync now:
   * acknowledgements wait for them too.
   */
  private leaving(now: number): string[] {
    const out: string[] = []
    for (const set of [this.reported, this.unconfirmed]) {
      for (const id of set) {
        if (out.includes(id)) continue
        const s = this.slaves.get(id)
        if (s === undefined || !this.inSync(s, now)) out.push(id)
      }
    }
    return out
  }

  /** No slave is in sync, nor may the metaserver hold one in sync: degraded writes go on alone. */
  private alone(now: number): boolean {
    return !this.anyInSync() && this.leaving(now).length === 0
  }

  private inSync(s: SlaveState, now: number): boolean {
    const lag = this.opts.inSyncLagMs
    return (
      now - s.lastFetchAt <= lag &&
      now - s.logs[0].caughtUpAt <= lag &&
      s.logs[0].mustCut === undefined &&
      s.logs[0].acked >= this.committed &&
      (this.opts.slaveReady?.(s.id) ?? true)
    )
  }

  /**
   * The message-log end every counted slave holds durably (the in-sync ones and the `leaving` ones);
   * -1 with no slave in sync. A leaving slave this run knows nothing of (slaves are forgotten on
   * `attach`) holds nothing as far as this run knows.
   */
  private safeEnd(now: number): number {
    let end = -1
    for (const s of this.slaves.values()) {
      if (!this.inSync(s, now)) continue
      end = end < 0 ? s.logs[0].acked : Math.min(end, s.logs[0].acked)
    }
    if (end < 0) return end
    for (const id of this.leaving(now)) end = Math.min(end, this.slaves.get(id)?.logs[0].acked ?? -1)
    return end
  }

  private commit(end: number): void {
    if (end > this.committed) this.committed = end
  }

  /**
   * Releases the waiting SENDs every counted slave holds (all of them once degraded writes go on
   * alone), and asks for a report when a leaving slave holds the others back.
   */
  private release(now: number): void {
    if (this.waiters.size === 0) return
    const safe = this.opts.degradedWrites && this.alone(now) ? Number.POSITIVE_INFINITY : this.safeEnd(now)
    this.commit(this.waiters.release(safe))
    this.scheduleRecheck(now)
    if (this.waiters.size > 0) this.reportIfLeaving(now)
  }

  /**
   * While writes wait (SENDs here, a delay group's CANCELs too), a slave that left the in-sync set is
   * reported at once (`requestReport`, once per change) rather than at the next heartbeat.
   */
  reportIfLeaving(now = this.now()): void {
    const leaving = this.leaving(now).sort().join(',')
    if (leaving === '' || leaving === this.reportAskedFor) return
    this.reportAskedFor = leaving
    this.opts.requestReport?.()
  }

  /**
   * While SENDs wait on an in-sync slave that holds less than they need, wakes when that slave would
   * drop out of sync (it stopped fetching or catching up): the others may then release them.
   */
  private scheduleRecheck(now: number): void {
    if (this.recheckTimer !== undefined) clearTimeout(this.recheckTimer)
    this.recheckTimer = undefined
    if (this.waiters.size === 0) return
    const lowest = this.waiters.lowest()
    let at = Number.POSITIVE_INFINITY
    for (const s of this.slaves.values()) {
      if (s.logs[0].acked >= lowest || !this.inSync(s, now)) continue
      at = Math.min(at, Math.min(s.lastFetchAt, s.logs[0].caughtUpAt) + this.opts.inSyncLagMs + 1)
    }
    if (at === Number.POSITIVE_INFINITY) return
    this.recheckTimer = setTimeout(
      () => {
        this.recheckTimer = undefined
        this.release(this.now())
      },
      Math.max(1, at - now),
    )
  }

  private slave(id: string, now: number): SlaveState {
    let s = this.slaves.get(id)
    if (s === undefined) {
      s = { id, lastFetchAt: now, logs: [newProgress(), newProgress()] }
      this.slaves.set(id, s)
      this.log.info({ slave: id }, 'slave connected')
      if (!this.known.has(id)) {
        this.known.add(id)
        writeKnownSlaves(this.opts.stateDir, [...this.known])
      }
    }
    s.lastFetchAt = now
    return s
  }

  private acknowledge(s: SlaveState, log: ReplicatedLogValue, offset: number, now: number): void {
    const p = s.logs[log]
    p.acked = offset
    if (offset >= p.answeredEnd) p.caughtUpAt = p.answeredAt > 0 ? Math.max(p.caughtUpAt, p.answeredAt) : now
    const end = log === 0 ? this.logs?.message.endOffset : this.logs?.action?.endOffset
    if (end !== undefined && offset >= end) p.caughtUpAt = now
    // Any log: an acknowledgement moves this slave's in-sync state (and its message-log one may
    // release SENDs).
    this.release(now)
  }

  private cut(log: ReplicatedLogValue, offset: number): void {
    if (offset < this.openedEnds[log]) this.openedEnds[log] = offset
    // What was cut was never acknowledged to a producer past its own fdatasync; no slave need hold it.
    if (log === 0 && offset < this.committed) this.committed = offset
    for (const s of this.slaves.values()) {
      const p = s.logs[log]
      p.mustCut = p.mustCut === undefined ? offset : Math.min(p.mustCut, offset)
      if (p.acked > offset) p.acked = offset
    }
  }

  private park(log: ReplicatedLogValue, offset: number, waitMs: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const p: Parked = {
        log,
        offset,
        wake: () => {
          clearTimeout(timer)
          this.parked.delete(p)
          resolve()
        },
      }
      const timer = setTimeout(p.wake, waitMs)
      this.parked.add(p)
    })
  }

  private wake(log: ReplicatedLogValue): void {
    for (const p of [...this.parked]) if (p.log === log) p.wake()
  }
}

const EMPTY: Buffer = Buffer.alloc(0)

function newProgress(): LogProgress {
  return { acked: -1, caughtUpAt: 0, answeredEnd: 0, answeredAt: 0, mustCut: undefined, verified: false }
}

// <dataDir>/replication/slaves.json: { "version": 1, "slaves": ["host:port", ...] }
function readKnownSlaves(dir: string): string[] {
  try {
    const parsed = JSON.parse(fs.readFileSync(path.join(dir, SLAVES_FILE), 'utf8')) as { slaves?: unknown }
    return Array.isArray(parsed.slaves) ? parsed.slaves.filter((s): s is string => typeof s === 'string') : []
  } catch {
    return []
  }
}

/**
 * A broker promoted to master begins its term with no known slave: those it remembers from an earlier
 * term as master are not its slaves now (one of them became the master it replaces), and until one
 * fetches from it, it writes alone (docs/replication.md, Failover).
 */
export function forgetKnownSlaves(dir: string): void {
  if (readKnownSlaves(dir).length > 0) writeKnownSlaves(dir, [])
}

/**
 * A promoted server's first step as master (broker and delay server): records in the data dir's epoch
 * history where its epoch begins (the ends of its copied logs after recovery, epochs.ts) and forgets
 * the slaves of an earlier term (forgetKnownSlaves). Returns the new history.
 */
export function beginMasterTerm(dataDir: string, epochs: EpochState, start: EpochStart): EpochState {
  const next = {
    epoch: start.epoch,
    history: [...epochs.history.filter((h) => h.epoch < start.epoch), start],
  }
  writeEpochs(dataDir, next)
  forgetKnownSlaves(epochsDir(dataDir))
  return next
}

function writeKnownSlaves(dir: string, slaves: string[]): void {
  fs.mkdirSync(dir, { recursive: true })
  writeFileAtomicSync(path.join(dir, SLAVES_FILE), `${JSON.stringify({ version: 1, slaves })}\n`)
}
