import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { AckWaiters } from '../../broker/replication/ack-waiters'
import type { ReplicationSource } from '../../broker/replication/source'
import { QmqError } from '../../common/errors'
import type { DelayStore } from '../store/delay-store'
import {
  type CancelEntry,
  type CancelsRequest,
  type CancelsResponse,
  CancelsKind,
  type FileRequest,
  type FileResponse,
  type ManifestRequest,
  type ManifestResponse,
} from './wire'

/**
 * The delay master's side of replication, beside the generic ReplicationSource (broker/replication/
 * source.ts) that ships its message log byte for byte and holds a SEND under `sync` until every
 * in-sync slave has its records durably:
 *
 * - Derived files. `manifest` answers the store's last checkpoint manifest (delay-store.ts
 *   ReplicaManifest); `file` answers bytes of a schedule, dispatch or dead-letter file. The slave copies
 *   each file up to the size the manifest names (every byte of it is durable here, and files only grow
 *   under one identity), then adopts the checkpoint.
 * - Cancels. Each cancel this master records gets a sequence number in this run (`runId`); a slave
 *   long-polls the cancels after the sequence it holds durably (its acknowledgement). Under `sync` a
 *   CANCEL is answered once every in-sync slave (at least one) acknowledged it (`waitCancelled`), as a
 *   SEND is: promotion ranks slaves by their message logs, not their cancels, so each candidate must
 *   hold every acknowledged cancel. A slave enters the in-sync set only holding every cancel
 *   acknowledged so far (`committed`). A slave of another
 *   run, or one that fell out of the ring of recent cancels, first reads every live tombstone (a
 *   snapshot, in pages) and then the cancels after the snapshot's sequence.
 * - In sync (`ready`, the generic source's slaveReady): besides its message-log copy being caught up,
 *   a slave must hold a checkpoint at or past the master's first retained message-log byte (so the
 *   copied files and the copied message log together hold every pending message) and have caught up
 *   with the cancels within the in-sync lag, holding at least `committed`.
 */
export interface DelayReplicationOptions {
  /** The generic source (its mode, in-sync lag and known slaves apply). */
  logs: ReplicationSource
  dataDir: string
  bucketMinutes: number
  inSyncLagMs: number
  ackTimeoutMs: number
  now?: () => number
}

interface SlaveCancels {
  /** Cancels durable on the slave (its last `after` for this run). */
  acked: number
  caughtUpAt: number
  /** The checkpoint it holds (manifest requests). */
  adopted: number
  snapshot: { entries: CancelEntry[]; pos: number; seq: number } | undefined
}

/** Recent cancels kept for slaves that reconnect (older ones: a snapshot). */
const RING_ENTRIES = 100_000
const SNAPSHOT_PAGE_ENTRIES = 50_000

export class DelayReplicationSource {
  readonly runId = randomBytes(8).toString('hex')
  private readonly opts: DelayReplicationOptions
  private readonly now: () => number
  private store: DelayStore | undefined
  private seq = 0
  private ring: (CancelEntry & { seq: number })[] = []
  private readonly slaves = new Map<string, SlaveCancels>()
  /** CANCELs waiting under `sync`, by cancel sequence. */
  private readonly waiters: AckWaiters
  private parked = new Set<() => void>()
  /** The highest cancel sequence acknowledged under `sync` in this run: every in-sync slave holds it. */
  private committed = 0
  /** While CANCELs wait: re-evaluates them as slaves drop out of sync (the others may hold them). */
  private recheckTimer: NodeJS.Timeout | undefined

  constructor(opts: DelayReplicationOptions) {
    this.opts = opts
    this.now = opts.now ?? Date.now
    this.waiters = new AckWaiters(opts.ackTimeoutMs)
    // A slave that left the in-sync set stops being counted once the metaserver stored a report
    // without it: CANCELs waiting on it go on. (Both sources live and die together.)
    opts.logs.onCountedChange(() => this.release())
  }

  attach(store: DelayStore): void {
    this.store = store
  }

  detach(): void {
    this.store = undefined
    if (this.recheckTimer !== undefined) clearInterval(this.recheckTimer)
    this.recheckTimer = undefined
    for (const wake of [...this.parked]) wake()
    this.waiters.rejectAll(new QmqError('QMQ_ERR_SHUTTING_DOWN'))
  }

  /** A slave may be promoted (see the class comment). */
  ready(slaveId: string): boolean {
    const s = this.slaves.get(slaveId)
    const start = this.store?.messageSegmentLog?.startOffset
    if (s === undefined || start === undefined) return false
    const cancelsOk = s.acked >= this.seq || this.now() - s.caughtUpAt <= this.opts.inSyncLagMs
    return s.adopted >= start && cancelsOk && s.acked >= this.committed
  }

  /** The checkpoint each slave holds (health). */
  adoptedBy(slaveId: string): number {
    return this.slaves.get(slaveId)?.adopted ?? -1
  }

  manifest(req: ManifestRequest): ManifestResponse {
    const manifest = this.store?.replicaManifest
    if (manifest === undefined) throw new QmqError('QMQ_ERR_SHUTTING_DOWN', 'no delay store open')
    this.slave(req.slaveId).adopted = req.adopted
    // The slave may have become ready (in sync): waiting SENDs and CANCELs may now count on it.
    this.opts.logs.recheck()
    this.release()
    return { runId: this.runId, bucketMinutes: this.opts.bucketMinutes, manifest }
  }

  async file(req: FileRequest): Promise<FileResponse> {
    if (this.store === undefined) throw new QmqError('QMQ_ERR_SHUTTING_DOWN', 'no delay store open')
    let fh: fs.promises.FileHandle
    try {
      fh = await fs.promises.open(path.join(this.opts.dataDir, req.name), 'r')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { size: -1, data: Buffer.alloc(0) }
      throw err
    }
    try {
      const size = (await fh.stat()).size
      const length = Math.max(0, Math.min(req.maxBytes, size - req.offset))
      const data = Buffer.allocUnsafe(length)
      let got = 0
      while (got < length) {
        const { bytesRead } = await fh.read(data, got, length - got, req.offset + got)
        if (bytesRead === 0) break
        got += bytesRead
      }
      return { size, data: data.subarray(0, got) }
    } finally {
      await fh.close()
    }
  }

  /** Records cancels this master stored durably; returns the sequence a slave must reach. */
  cancelled(ids: readonly string[], at: number): number {
    for (const id of ids) {
      this.ring.push({ id, at, seq: ++this.seq })
    }
    if (this.ring.length > RING_ENTRIES * 2) this.ring = this.ring.slice(-RING_ENTRIES)
    for (const wake of [...this.parked]) wake()
    return this.seq
  }

  /**
   * Under `sync` with a slave: resolves once every in-sync slave (at least one) holds the cancels up
   * to `seq` durably; degraded, at once.
   */
  waitCancelled(seq: number): Promise<void> {
    const logs = this.opts.logs
    if (!logs.requiresSlave) return Promise.resolve()
    if (logs.degraded || seq <= this.safeSeq()) {
      if (seq > this.committed) this.committed = seq
      return Promise.resolve()
    }
    if (this.store === undefined) return Promise.reject(new QmqError('QMQ_ERR_SHUTTING_DOWN'))
    const waiting = this.waiters.wait(seq)
    if (this.recheckTimer === undefined) {
      const every = Math.min(250, Math.max(10, Math.floor(this.opts.inSyncLagMs / 4)))
      this.recheckTimer = setInterval(() => this.release(), every)
    }
    return waiting
  }

  /**
   * The cancel sequence every counted slave (the in-sync ones, and those the metaserver may still
   * hold in sync: ReplicationSource.countedSlaves) holds durably; -1 with no slave in sync.
   */
  private safeSeq(): number {
    const logs = this.opts.logs
    if (!logs.anyInSync()) return -1
    let safe = Number.POSITIVE_INFINITY
    for (const id of logs.countedSlaves()) safe = Math.min(safe, this.slaves.get(id)?.acked ?? -1)
    return safe
  }

  /** Releases the waiting CANCELs every in-sync slave holds. */
  private release(): void {
    if (this.waiters.size > 0) {
      const safe = this.opts.logs.degraded ? Number.POSITIVE_INFINITY : this.safeSeq()
      this.committed = Math.max(this.committed, this.waiters.release(safe))
    }
    if (this.waiters.size > 0) this.opts.logs.reportIfLeaving()
    if (this.waiters.size === 0 && this.recheckTimer !== undefined) {
      clearInterval(this.recheckTimer)
      this.recheckTimer = undefined
    }
  }

  async cancels(req: CancelsRequest): Promise<CancelsResponse> {
    const store = this.store
    if (store === undefined) throw new QmqError('QMQ_ERR_SHUTTING_DOWN', 'no delay store open')
    const s = this.slave(req.slaveId)
    if (req.snapshot && s.snapshot !== undefined && req.runId === this.runId) return this.page(s)
    const first = this.ring.length > 0 ? (this.ring[0]?.seq ?? 1) : this.seq + 1
    if (req.runId !== this.runId || req.after > this.seq || req.after < first - 1) {
      // Another run, or fell out of the ring: every live tombstone first.
      const entries: CancelEntry[] = []
      for (const [id, at] of store.cancelTombstones()) entries.push({ id, at })
      s.snapshot = { entries, pos: 0, seq: this.seq }
      return this.page(s)
    }
    s.snapshot = undefined
    this.acknowledge(s, req.after)
    if (req.after === this.seq && req.waitMs > 0) {
      await new Promise<void>((resolve) => {
        const wake = () => {
          clearTimeout(timer)
          this.parked.delete(wake)
          resolve()
        }
        const timer = setTimeout(wake, req.waitMs)
        this.parked.add(wake)
      })
      if (this.store !== store) throw new QmqError('QMQ_ERR_SHUTTING_DOWN', 'delay store closed')
    }
    const entries: CancelEntry[] = []
    let seq = req.after
    for (const e of this.ring) {
      if (e.seq <= req.after) continue
      if (entries.length >= SNAPSHOT_PAGE_ENTRIES) break
      entries.push({ id: e.id, at: e.at })
      seq = e.seq
    }
    return { runId: this.runId, kind: CancelsKind.STREAM, seq, entries }
  }

  private page(s: SlaveCancels): CancelsResponse {
    const snap = s.snapshot as NonNullable<SlaveCancels['snapshot']>
    const entries = snap.entries.slice(snap.pos, snap.pos + SNAPSHOT_PAGE_ENTRIES)
    snap.pos += entries.length
    const last = snap.pos >= snap.entries.length
    if (last) s.snapshot = undefined
    return {
      runId: this.runId,
      kind: last ? CancelsKind.SNAPSHOT_END : CancelsKind.SNAPSHOT,
      seq: snap.seq,
      entries,
    }
  }

  private acknowledge(s: SlaveCancels, after: number): void {
    s.acked = after
    if (after >= this.seq) s.caughtUpAt = this.now()
    // The slave's readiness (its in-sync state) may have changed: SENDs and CANCELs may now be held.
    this.opts.logs.recheck()
    this.release()
  }

  private slave(id: string): SlaveCancels {
    let s = this.slaves.get(id)
    if (s === undefined) {
      s = { acked: -1, caughtUpAt: 0, adopted: -1, snapshot: undefined }
      this.slaves.set(id, s)
    }
    return s
  }
}
