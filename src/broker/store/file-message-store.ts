import { type Clock, systemClock } from '../../common/clock'
import { QmqError } from '../../common/errors'
import type { Logger } from '../../common/logger'
import { silentLogger } from '../../common/logger'
import type { Registry } from '../../common/metrics'
import { StartPosition } from '../../common/protocol/commands'
import { type Action, ACTION_FLAG_BROADCAST, ACTION_FLAG_SEQS, ActionLog, ActionType } from './action-log'
import { writeCheckpoint } from './checkpoint'
import { ConsumerState, type GroupState } from './consumer-state'
import { DedupeIndex } from './dedupe'
import type { FsIo } from './fs-io'
import { History } from './history'
import { IndexBuild } from './index-build'
import { IndexLog, TraceEvent, type TraceEventValue, type TraceInput } from './index-log'
import { type AppendItem, MessageLog } from './message-log'
import { type MessageStoreOptions, resolveMessageStoreOptions } from './options'
import { pullMessages } from './pull'
import { answerQuery } from './query'
import { ReadBufferPool } from './read-pool'
import type { HistoryAnswer, ListAnswer, MessageAnswer, QueryRequest } from '../../common/protocol/query'
import { recoverStore } from './recovery'
import { RetryAlarm } from './retry-alarm'
import { runRetention } from './retention'
import { createStoreMetrics, type StoreMetrics } from './store-metrics'
import { storeDirs } from './store-dirs'
import { migrateSubjectDirs } from './subject-dirs'
import { readSeqs, Subjects, type SubjectState } from './subjects'
import { tagMask } from './tag-hash'
import type {
  AppendInput,
  AppendResult,
  AvailableListener,
  BacklogInfo,
  CursorPosition,
  DeadLetter,
  HeartbeatResult,
  HeartbeatSubscription,
  MessageStore,
  NackOptions,
  PullOptions,
  RecoveryReport,
  StoredMessage,
  StoreFailure,
} from './types'

/**
 * The broker's file-based MessageStore (see types.ts for the contract, docs/storage.md for the
 * layouts and guarantees). Layout under `dataDir`:
 *   messagelog/<base>.log      message log (message-log.ts)
 *   consumelog/<subject>/...   one consume log per subject (consume-log.ts; names: subject-dirs.ts)
 *   actionlog/<base>.log       consumer progress (action-log.ts, consumer-state.ts)
 *   checkpoint/checkpoint.json (checkpoint.ts)
 */
export interface FileMessageStoreOptions extends Partial<MessageStoreOptions> {
  clock?: Clock
  /** Source of the retry jitter, in [0, 1); defaults to Math.random (tests pass a seeded one to replay). */
  random?: () => number
  logger?: Logger
  registry?: Registry
  /** Fault injection for tests; defaults to node:fs. */
  io?: FsIo
}

export class FileMessageStore implements MessageStore {
  readonly options: Readonly<MessageStoreOptions>
  readonly clock: Clock
  private readonly random: () => number
  readonly log: Logger
  readonly metrics: StoreMetrics
  readonly io: FsIo | undefined
  readonly dirs: { message: string; consume: string; action: string; checkpoint: string; history: string }
  mlog!: MessageLog
  alog!: ActionLog
  subjectsIndex!: Subjects
  state = new ConsumerState()
  /** Message index and lifecycle trace (undefined with `indexes: false`). */
  index: IndexLog | undefined
  /** Indexes what the message log holds past the index, in the background, after open. */
  private indexBuild: IndexBuild | undefined
  /** Per-minute counts (undefined with historyRetentionMs 0). */
  history: History | undefined
  /** This store's name in traces (the broker group); set by the broker. */
  serverName = ''
  readonly dedupe: DedupeIndex
  /** Buffers of pulls' disk reads and the replication source's fetch reads (read-pool.ts). */
  readonly readPool: ReadBufferPool
  recoveryReport: RecoveryReport | undefined
  /** Ends of the message and action logs right after recovery, before open() wrote anything (replication epochs). */
  recoveredEnds: { message: number; action: number } | undefined
  private listeners = new Set<AvailableListener>()
  private timers: NodeJS.Timeout[] = []
  private opened = false
  private closed = false
  private locks = new WeakMap<GroupState, Promise<unknown>>()
  private checkpointing: Promise<void> | undefined
  /** Appends made while a new subject's marker is written wait for this (in order); see `append`. */
  private appendGate: Promise<void> | undefined
  /** abandon() was called: nothing may be written any more. */
  private abandoned = false
  /** Action-log offset of the last checkpoint written (what the next one may delete up to). */
  private previousActionLogOffset = 0
  private retaining: Promise<number> | undefined
  private nextBroadcastPrune = 0
  /** The dedupe window was short at the last sweep (logged once per change). */
  private dedupeWindowShort = false
  /** Message-log offsets of records found corrupt on read (each is logged and counted once). */
  private readonly corruptSeen = new Set<number>()
  private readonly traceScratch: TraceInput = {
    event: TraceEvent.DELIVERED,
    subject: '',
    group: '',
    sequence: 0,
    consumer: '',
    deliveryCount: 0,
    time: 0,
    retryAt: undefined,
  }
  /** Wakes nacked messages when their redelivery time comes (between sweeps). */
  private readonly retryAlarm = new RetryAlarm(
    () => this.clock.now(),
    (g, now) => {
      if (this.closed || this.state.get(g.subject, g.group) !== g) return false
      if (g.promoteDue(now) > 0) this.notify(g.subject)
      return true
    },
  )

  constructor(options: FileMessageStoreOptions = {}) {
    const { clock, random, logger, registry, io, ...rest } = options
    this.options = resolveMessageStoreOptions(rest)
    this.clock = clock ?? systemClock
    this.random = random ?? Math.random
    this.log = (logger ?? silentLogger).child({ component: 'store' })
    this.metrics = createStoreMetrics(registry, {
      dedupeWindowSeconds: () => this.dedupe.effectiveWindowMs(this.clock.now()) / 1000,
    })
    this.io = io
    const root = this.options.dataDir
    this.dirs = storeDirs(root)
    this.dedupe = new DedupeIndex(this.options.dedupeWindowMs, this.options.dedupeMaxEntries)
    this.readPool = new ReadBufferPool(this.options.readPoolBytes)
  }

  async open(): Promise<RecoveryReport> {
    if (this.opened) throw new QmqError('QMQ_ERR_INTERNAL', 'store already opened')
    this.opened = true
    const o = this.options
    const ioOpt = this.io ? { io: this.io } : {}
    migrateSubjectDirs(this.dirs.consume, this.log)
    this.subjectsIndex = new Subjects({
      root: this.dirs.consume,
      entriesPerSegment: o.consumeLogSegmentEntries,
      cacheEntries: o.consumeLogCacheEntries,
      ...ioOpt,
    })
    this.mlog = new MessageLog({
      dir: this.dirs.message,
      segmentBytes: o.segmentBytes,
      flush: o.flush,
      hotCacheBytes: o.hotCacheBytes,
      readPool: this.readPool,
      maxMessageBytes: o.maxMessageBytes,
      now: () => this.clock.now(),
      observe: (what, s, b) => this.metrics.io(what, s, b),
      onSyncError: (err, background) => {
        this.metrics.syncFailed('message')
        if (background) {
          this.log.error(
            { err },
            'message log: background fdatasync failed; messages acknowledged since the last good one are not known to be on disk (retried every flushIntervalMs)',
          )
        } else this.log.error({ err }, 'message log: fdatasync failed; the unsynced batches are rejected')
      },
      onFailed: (err) => {
        this.metrics.failed('message')
        this.log.error({ err }, 'message log failed closed: appends are refused until the store is reopened')
      },
      onCorrupt: (offset, size) => this.corruptRecord(offset, size),
      hooks: {
        prepare: (items, storedAt) => this.prepare(items, storedAt),
        rollback: (items, mark) => this.rollback(items, mark),
        committed: (items) => this.committed(items),
      },
      ...ioOpt,
    })
    this.alog = new ActionLog({
      dir: this.dirs.action,
      segmentBytes: o.actionLogSegmentBytes,
      flush: o.actionFlush,
      onError: (err) => this.log.error({ err }, 'action log write failed; keeping the actions queued'),
      onSyncError: () => this.metrics.syncFailed('action'),
      onFailed: (err) => {
        this.metrics.failed('action')
        this.log.error(
          { err },
          'action log failed closed: pulls, acks, nacks and group changes are refused until the store is reopened',
        )
      },
      ...ioOpt,
    })
    const report = await recoverStore(this)
    // Subjects recovery found without a marker (their directory was created, the marker lost).
    const markers: Promise<void>[] = []
    for (const s of this.subjectsIndex.map.values()) {
      const m = s.consume.markerDurable()
      if (m !== undefined) markers.push(m)
    }
    await Promise.all(markers)
    this.recoveryReport = report
    if (o.indexes) {
      this.index = await IndexLog.open({
        dataDir: o.dataDir,
        segmentBytes: o.indexSegmentBytes,
        log: this.log,
        ...ioOpt,
      })
      // What the log holds past the index (all of it on a promoted slave) is indexed in the background.
      this.indexBuild = new IndexBuild(this.index, this.mlog, this.log)
    }
    if (o.historyRetentionMs > 0) {
      this.history = await History.open({
        dir: this.dirs.history,
        now: () => this.clock.now(),
        log: this.log,
        retentionMs: o.historyRetentionMs,
        ...ioOpt,
      })
    }
    this.recoveredEnds = { message: this.mlog.log.endOffset, action: this.alog.log.endOffset }
    const openedAt = this.clock.now()
    for (const g of this.state.all()) {
      // Lease deadlines are not persisted: every message held before the restart gets a fresh one.
      g.refreshLeases(openedAt + o.leaseMs)
      for (const q of g.keys.values()) q.since = openedAt // not persisted: blocked since the restart
      this.retryAlarm.watch(g)
      for (const id of g.broadcast.keys()) g.broadcastSeen.set(id, openedAt)
    }
    await this.checkpoint()
    this.mlog.startSyncTimer(o.flushIntervalMs)
    this.every(o.sweepIntervalMs, () => this.sweep())
    this.every(o.checkpointIntervalMs, () => {
      this.checkpoint().catch((err) => this.log.warn({ err }, 'checkpoint failed'))
    })
    this.every(o.retentionCheckIntervalMs, () => {
      this.runRetention().catch((err) => this.log.warn({ err }, 'retention failed'))
    })
    if (o.flush === 'async' || o.actionFlush === 'async') {
      this.every(o.flushIntervalMs, () => {
        if (o.actionFlush === 'async') {
          this.alog.sync().catch((err: unknown) => {
            this.metrics.syncFailed('action')
            this.log.error(
              { err },
              'action log: background fdatasync failed; consumer progress since the last good one is not known to be on disk (retried every flushIntervalMs)',
            )
          })
        }
      })
    }
    return report
  }

  private every(ms: number, fn: () => void): void {
    const t = setInterval(fn, ms)
    t.unref()
    this.timers.push(t)
  }

  private ensureOpen(): void {
    if (!this.opened || this.closed) throw new QmqError('QMQ_ERR_STORE_CLOSED')
  }

  failure(): StoreFailure | undefined {
    // The logs are assigned during open(): undefined before.
    const m = this.mlog?.failed
    if (m !== undefined) return { log: 'message', code: m.code, message: m.message }
    const a = this.alog?.failed
    if (a !== undefined) return { log: 'action', code: a.code, message: a.message }
    return undefined
  }

  /** For calls that record consumer progress: refused once the action log failed closed. */
  private ensureProgressWritable(): void {
    this.ensureOpen()
    if (this.alog.failed !== undefined) throw this.alog.failed
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.ensureOpen()
    for (const t of this.timers) clearInterval(t)
    await this.indexBuild?.stop()
    this.retryAlarm.close()
    await this.mlog.idle()
    try {
      await this.checkpoint()
    } catch (err) {
      this.log.warn({ err }, 'final checkpoint failed')
    }
    this.closed = true
    await this.mlog.close()
    await this.alog.close()
    this.subjectsIndex.close()
    await this.index?.close()
    await this.history?.close()
  }

  /**
   * Stops everything without flushing, syncing or checkpointing: what a crash leaves (tests,
   * benchmarks). From the call on, no write starts: actions queued for the action log, consume-log
   * entries still in memory and a checkpoint under way are never written (a kill -9 writes nothing
   * either). Resolves once the writes already in flight are over; a test that reopens the directory
   * awaits it, or the old store's last writes could land in files the new one has already read.
   */
  abandon(): Promise<void> {
    this.closed = true
    this.abandoned = true
    for (const t of this.timers) clearInterval(t)
    void this.indexBuild?.stop()
    this.retryAlarm.close()
    this.mlog.abandon()
    const settling: Promise<unknown>[] = [this.alog.abandon()]
    for (const s of this.subjectsIndex.map.values()) settling.push(s.consume.abandon())
    if (this.index) settling.push(this.index.abandon())
    if (this.history) settling.push(this.history.abandon())
    if (this.checkpointing) settling.push(this.checkpointing)
    return Promise.allSettled(settling).then(() => undefined)
  }

  /**
   * A record read for a pull failed its CRC: it is skipped (never served, as if retention had removed
   * it; the group's cursor passes it and a redelivery of it is dropped), logged and counted once.
   */
  private corruptRecord(offset: number, size: number): void {
    if (this.corruptSeen.has(offset)) return
    if (this.corruptSeen.size >= 100_000) this.corruptSeen.clear() // bound; at worst logged again
    this.corruptSeen.add(offset)
    this.metrics.corruptRecord()
    this.log.error({ offset, size }, 'message log: stored record fails its CRC; skipped, not served')
  }

  // ---- appends ----

  async append(records: readonly AppendInput[]): Promise<AppendResult[]> {
    this.ensureOpen()
    if (records.length === 0) return []
    const t0 = performance.now()
    const items: AppendItem[] = new Array(records.length)
    let subject: string | undefined
    /** New subjects' SUBJECT markers being written: awaited before the records join a batch. */
    let markers: Promise<void>[] | undefined
    for (let i = 0; i < records.length; i++) {
      const r = records[i] as AppendInput
      // A new subject's consume log is opened here, where a failure (a directory refused by
      // claimSubjectDir, mkdir errors, its marker's write) fails this append alone, not the batch it
      // would join.
      if (r.header.subject !== subject) {
        subject = r.header.subject
        const marker = this.subjectsIndex.getOrCreate(subject).consume.markerDurable()
        if (marker !== undefined) {
          markers ??= []
          markers.push(marker)
        }
      }
      items[i] = {
        record: r.bytes,
        subject: r.header.subject,
        tagMask: tagMask(r.header.tags),
        seq: -1,
        skip: false,
        offset: -1,
        storedAt: 0,
        end: -1,
      }
    }
    // A subject's first record is acknowledged only once its marker is durable (subject-dirs.ts).
    // While one is written, later appends (of any subject) queue behind it: appends join batches in
    // the order they were made.
    if (markers !== undefined || this.appendGate !== undefined) {
      const ready = Promise.all([this.appendGate, ...(markers ?? [])])
      // A failed marker fails its own append only.
      const gate: Promise<void> = ready.then(
        () => undefined,
        () => undefined,
      )
      this.appendGate = gate
      void gate.then(() => {
        if (this.appendGate === gate) this.appendGate = undefined
      })
      await ready
    }
    await this.mlog.append(items)
    this.metrics.appendSeconds((performance.now() - t0) / 1000)
    const out: AppendResult[] = new Array(items.length)
    for (let i = 0; i < items.length; i++) {
      const it = items[i] as AppendItem
      out[i] = { sequence: it.seq, duplicate: it.skip, end: it.end }
    }
    return out
  }

  /**
   * Sequences and dedupe, when a batch is formed. Every stored item enters the dedupe index at once
   * (so a duplicate in the same batch, or in a later batch formed while this one is being written,
   * is answered with this item's sequence; it is acknowledged after this batch, in log order). Returns
   * the dedupe index's mark for `rollback`.
   */
  private prepare(items: AppendItem[], storedAt: number): number {
    const dedupe = this.dedupe.enabled ? this.dedupe : undefined
    const mark = this.dedupe.mark
    let last: SubjectState | undefined
    for (const it of items) {
      const s =
        last !== undefined && last.name === it.subject ? last : this.subjectsIndex.getOrCreate(it.subject)
      last = s
      const seen = dedupe ? dedupe.findOrAdd(it.record, 0, s.nextSeq, storedAt) : -1
      if (seen >= 0) {
        it.skip = true
        it.seq = seen
        continue
      }
      it.skip = false
      it.seq = s.nextSeq++
    }
    return mark
  }

  private rollback(items: AppendItem[], mark: number): void {
    this.dedupe.rollbackTo(mark)
    for (const it of items) {
      if (it.skip) continue
      const s = this.subjectsIndex.get(it.subject)
      if (s && it.seq < s.nextSeq) s.nextSeq = it.seq
    }
  }

  private committed(items: AppendItem[]): void {
    // While the index is being built, the build indexes these records too, in log order.
    const indexLive = this.indexBuild?.live !== false
    let stored = 0
    let last: SubjectState | undefined
    // Subjects of the batch, in order of first appearance (usually one).
    const touched: SubjectState[] = []
    /** Per touched subject: messages and bytes stored (per-minute history). */
    const counts: number[] = []
    const bytes: number[] = []
    for (const it of items) {
      if (it.skip) continue
      let s = last
      if (s === undefined || s.name !== it.subject) {
        s = this.subjectsIndex.getOrCreate(it.subject)
        last = s
        if (!touched.includes(s)) touched.push(s)
      }
      s.consume.push(it.offset, it.record.length, it.storedAt, it.tagMask)
      if (indexLive) this.index?.addMessage(it.record, it.offset, it.storedAt, it.seq)
      const k = touched.indexOf(s)
      counts[k] = (counts[k] ?? 0) + 1
      bytes[k] = (bytes[k] ?? 0) + it.record.length
      stored++
    }
    this.metrics.appended(stored, items.length - stored)
    if (this.history) {
      for (let k = 0; k < touched.length; k++) {
        const name = (touched[k] as SubjectState).name
        this.history.add(name, '', 'produced', counts[k] ?? 0)
        this.history.add(name, '', 'bytes', bytes[k] ?? 0)
      }
    }
    for (const s of touched) {
      s.consume.flush().catch((err) => this.log.warn({ err, subject: s.name }, 'consume log write failed'))
      this.notify(s.name)
    }
  }

  // ---- consumption ----

  onAvailable(listener: AvailableListener): () => void {
    this.listeners.add(listener)
    return () => this.listeners.delete(listener)
  }

  notify(subject: string): void {
    for (const l of this.listeners) {
      try {
        l(subject)
      } catch (err) {
        this.log.warn({ err }, 'onAvailable listener threw')
      }
    }
  }

  /** Serializes pulls and cursor resets of one group (internal). */
  withLock<T>(g: GroupState, fn: () => Promise<T>): Promise<T> {
    const prev = this.locks.get(g) ?? Promise.resolve()
    const p = prev.then(fn, fn)
    this.locks.set(
      g,
      p.catch(() => undefined),
    )
    return p
  }

  /** Applies an action to the state and queues it for the action log. */
  record(a: Action): { affected: number; written: Promise<number> } {
    const affected = this.state.apply(a)
    const written = this.alog.write(a)
    // Failed writes stay queued and are retried in order; callers that care await `written`.
    written.catch(() => undefined)
    return { affected, written }
  }

  /**
   * `record` for callers that do not wait for the write (at-least-once hand-outs, expiries): no
   * promise per action. Returns the number of messages affected.
   */
  recordUnawaited(a: Action): number {
    const affected = this.state.apply(a)
    this.alog.enqueue(a)
    return affected
  }

  action(
    type: Action['type'],
    subject: string,
    group: string,
    consumerId: string,
    extra: Partial<Action> = {},
  ): Action {
    return {
      type,
      flags: 0,
      time: this.clock.now(),
      subject,
      group,
      consumerId,
      cursor: -1,
      seqs: [],
      ...extra,
    }
  }

  async startCursor(subject: string, start: number, startTime: number): Promise<number> {
    const s = this.subjectsIndex.get(subject)
    if (!s) return 0
    if (start === StartPosition.EARLIEST) return s.lowSeq
    if (start === StartPosition.TIMESTAMP) return s.consume.search((e) => e.storedAt >= startTime)
    return s.consume.nextSeq
  }

  /** See MessageStore.pull; the algorithm is in pull.ts. */
  pull(o: PullOptions): Promise<StoredMessage[]> {
    try {
      this.ensureProgressWritable()
    } catch (err) {
      return Promise.reject(err)
    }
    const p = pullMessages(this, o)
    if (!this.index && !this.history) return p
    return p.then((msgs) => {
      const now = this.clock.now()
      for (const m of msgs) {
        this.trace(TraceEvent.DELIVERED, o.subject, o.group, m.sequence, o.consumerId, m.deliveryCount, now)
      }
      return msgs
    })
  }

  /** Records one lifecycle event in the index and the per-minute counts. */
  trace(
    event: TraceEventValue,
    subject: string,
    group: string,
    sequence: number,
    consumer: string,
    deliveryCount: number,
    time: number,
    retryAt?: number,
  ): void {
    if (this.index !== undefined) {
      // One object for every trace: addTrace encodes it at once and keeps nothing of it.
      const t = this.traceScratch
      t.event = event
      t.subject = subject
      t.group = group
      t.sequence = sequence
      t.consumer = consumer
      t.deliveryCount = deliveryCount
      t.time = time
      t.retryAt = retryAt
      this.index.addTrace(t)
    }
    const field = HISTORY_FIELD[event]
    if (field !== undefined) this.history?.add(subject, group, field)
  }

  ack(
    subject: string,
    group: string,
    consumerId: string,
    sequences: readonly number[],
    broadcast = false,
  ): Promise<number> {
    // Not an async function (one per ACK): a throw still becomes the rejection.
    try {
      return this.ackNow(subject, group, consumerId, sequences, broadcast)
    } catch (err) {
      return Promise.reject(err)
    }
  }

  private ackNow(
    subject: string,
    group: string,
    consumerId: string,
    sequences: readonly number[],
    broadcast: boolean,
  ): Promise<number> {
    this.ensureProgressWritable()
    if (broadcast) return Promise.resolve(sequences.length)
    const g = this.state.get(subject, group)
    if (!g || sequences.length === 0) return Promise.resolve(0)
    const c = g.consumers.get(consumerId)
    const now = this.clock.now()
    if (c) c.leaseUntil = now + this.options.leaseMs
    for (const seq of sequences) {
      const f = g.inflight.get(seq)
      if (f) this.trace(TraceEvent.ACKED, subject, group, seq, consumerId, f.dc, now)
    }
    const releases = g.keyReleases
    const { affected, written } = this.record(
      this.action(ActionType.ACK, subject, group, consumerId, { seqs: [...sequences] }),
    )
    // Ordered messages: the next message of an acked key is deliverable now (long polls wake).
    if (g.keyReleases !== releases) this.notify(subject)
    // Answered once written; a failed write stays queued (retried in order) and answers too.
    const answer = () => affected
    return written.then(answer, answer)
  }

  /** Redeliver-after delay for a message delivered `dc` times: doubling from retryBaseMs, capped, jittered. */
  backoffMs(dc: number): number {
    const o = this.options
    const base = Math.min(o.retryBaseMs * 2 ** Math.max(0, dc - 1), o.retryMaxMs)
    return Math.max(0, Math.round(base * (1 + o.retryJitter * (2 * this.random() - 1))))
  }

  async nack(
    subject: string,
    group: string,
    consumerId: string,
    sequences: readonly number[],
    options: NackOptions = {},
  ): Promise<number> {
    this.ensureProgressWritable()
    const g = this.state.get(subject, group)
    if (!g) return 0
    const now = this.clock.now()
    const c = g.consumers.get(consumerId)
    if (c) c.leaseUntil = now + this.options.leaseMs
    const seqs: number[] = []
    const dueAts: number[] = []
    for (const seq of sequences) {
      const f = g.inflight.get(seq)
      if (!f || f.holder !== consumerId) continue
      seqs.push(seq)
      const dead = options.deadLetter === true || f.dc >= this.options.maxRetries
      const dueAt = dead ? -1 : now + (options.retryAfterMs ?? this.backoffMs(f.dc))
      dueAts.push(dueAt)
      this.trace(TraceEvent.NACKED, subject, group, seq, consumerId, f.dc, now, dead ? undefined : dueAt)
      if (dead) this.trace(TraceEvent.DEAD, subject, group, seq, consumerId, f.dc, now)
    }
    if (seqs.length === 0) return 0
    const releases = g.keyReleases
    const { affected, written } = this.record(
      this.action(ActionType.NACK, subject, group, consumerId, { seqs, dueAts }),
    )
    if (g.promoteDue(now) > 0 || g.keyReleases !== releases) this.notify(subject)
    this.retryAlarm.watch(g)
    await written.catch(() => undefined)
    return affected
  }

  heartbeat(consumerId: string, subscriptions: readonly HeartbeatSubscription[]): HeartbeatResult {
    const until = this.clock.now() + this.options.leaseMs
    let extended = 0
    for (const sub of subscriptions) {
      const g = this.state.get(sub.subject, sub.group)
      const c = g?.consumers.get(consumerId)
      if (!g || !c) continue
      c.leaseUntil = until
      extended += g.extend(consumerId, sub.sequences, until)
    }
    return { extended, leaseMs: this.options.leaseMs }
  }

  /**
   * Hands messages `consumerId` holds back to its group at once, as if their leases ended (the
   * server could not deliver the answer that carried them). Returns how many it held.
   */
  release(subject: string, group: string, consumerId: string, sequences: readonly number[]): number {
    this.ensureOpen()
    const g = this.state.get(subject, group)
    if (!g || sequences.length === 0) return 0
    const now = this.clock.now()
    for (const seq of sequences) {
      const f = g.inflight.get(seq)
      if (f && f.holder === consumerId)
        this.trace(TraceEvent.RELEASED, subject, group, seq, consumerId, f.dc, now)
    }
    const { affected } = this.record(
      this.action(ActionType.EXPIRE, subject, group, consumerId, {
        seqs: [...sequences],
        flags: ACTION_FLAG_SEQS,
      }),
    )
    if (affected > 0) this.notify(subject)
    return affected
  }

  /** Lease expiry and due retries of every group (the store's timer runs it; tests may call it). */
  sweep(): void {
    if (this.closed || !this.opened) return
    const now = this.clock.now()
    for (const g of this.state.all()) this.sweepGroup(g, now)
    this.dedupe.expire(now)
    this.watchDedupeWindow(now)
    const idle = this.options.broadcastIdleMs
    if (idle > 0 && now >= this.nextBroadcastPrune) {
      this.nextBroadcastPrune = now + Math.min(idle, 60_000)
      this.forgetIdleBroadcast(now - idle)
    }
  }

  /** Logs when the dedupe index stops covering dedupeWindowMs, and when it covers it again. */
  private watchDedupeWindow(now: number): void {
    if (!this.dedupe.enabled) return
    const effectiveWindowMs = this.dedupe.effectiveWindowMs(now)
    const short = effectiveWindowMs < this.options.dedupeWindowMs
    if (short && !this.dedupeWindowShort) {
      this.log.warn(
        {
          effectiveWindowMs,
          dedupeWindowMs: this.options.dedupeWindowMs,
          cause: this.dedupe.forgottenBy === 'rebuild' ? 'dedupeRebuildMaxBytes' : 'dedupeMaxEntries',
        },
        'dedupe window shorter than dedupeWindowMs: ids forgotten early are stored again if resent (qmq_store_dedupe_window_seconds)',
      )
    } else if (!short && this.dedupeWindowShort) {
      this.log.info({ dedupeWindowMs: this.options.dedupeWindowMs }, 'dedupe window whole again')
    }
    this.dedupeWindowShort = short
  }

  /**
   * Broadcast cursors of instances that stopped pulling before `before` (usually gone for good: a pod
   * replaced under a new name) are forgotten, or the group's backlog and retention would count from them
   * forever. An instance that comes back later starts again at the group's start position.
   */
  private forgetIdleBroadcast(before: number): void {
    for (const g of [...this.state.all()]) {
      for (const [id, seen] of [...g.broadcastSeen]) {
        if (seen >= before) continue
        this.record(this.action(ActionType.FORGET, g.subject, g.group, id, { flags: ACTION_FLAG_BROADCAST }))
        this.log.info(
          { subject: g.subject, group: g.group, consumerId: id, idleMs: this.options.broadcastIdleMs },
          'idle broadcast consumer forgotten',
        )
      }
    }
  }

  sweepGroup(g: GroupState, now: number): void {
    let n = g.promoteDue(now)
    const expired = g.expiredLeases(now)
    if (expired.length > 0) {
      const holders = new Set<string>()
      for (const s of expired) {
        const f = g.inflight.get(s)
        const h = f?.holder
        if (h !== undefined) holders.add(h)
        this.trace(TraceEvent.EXPIRED, g.subject, g.group, s, h ?? '', f?.dc ?? 0, now)
      }
      const { affected } = this.record(
        this.action(ActionType.EXPIRE, g.subject, g.group, '', { seqs: expired, flags: ACTION_FLAG_SEQS }),
      )
      n += affected
      this.log.info(
        { subject: g.subject, group: g.group, consumers: [...holders].slice(0, 10), messages: affected },
        'message leases expired; redelivering',
      )
    }
    g.pruneIdleConsumers(now)
    if (n > 0) this.notify(g.subject)
  }

  // ---- admin ----

  subjects(): string[] {
    return [...this.subjectsIndex.map.keys()].sort()
  }

  backlog(subject?: string, group?: string): BacklogInfo[] {
    const out: BacklogInfo[] = []
    for (const g of this.state.all()) {
      if (subject !== undefined && g.subject !== subject) continue
      if (group !== undefined && g.group !== group) continue
      const s = this.subjectsIndex.get(g.subject)
      const next = s ? s.consume.nextSeq : 0
      const { inFlight, retrying, waiting } = g.counts()
      const { keysBlocked, oldestBlockedSince } = g.blockedKeys()
      const now = this.clock.now()
      // A broadcast-only group never moves its group cursor: report its slowest consumer's.
      let cursor = g.cursor
      if (g.broadcastOnly) cursor = Math.min(...g.broadcast.values())
      out.push({
        subject: g.subject,
        group: g.group,
        pending: Math.max(0, next - Math.max(cursor, s ? s.lowSeq : 0)),
        inFlight,
        retrying,
        deadLettered: g.dead.size,
        maxSequence: next - 1,
        cursor,
        waiting,
        keysBlocked,
        oldestBlockedMs: keysBlocked > 0 ? Math.max(0, now - oldestBlockedSince) : 0,
      })
    }
    return out
  }

  async resetCursor(subject: string, group: string, position: CursorPosition): Promise<void> {
    this.ensureProgressWritable()
    const g = this.state.getOrCreate(subject, group)
    let written: Promise<number> | undefined
    await this.withLock(g, async () => {
      const start =
        position.kind === 'earliest'
          ? StartPosition.EARLIEST
          : position.kind === 'latest'
            ? StartPosition.LATEST
            : StartPosition.TIMESTAMP
      const cursor = await this.startCursor(
        subject,
        start,
        position.kind === 'timestamp' ? position.timeMs : 0,
      )
      // A broadcast group has one cursor per consumer id: the reset moves every one of them (and
      // leaves it broadcast-only: its group cursor would never move again, see backlog and retention).
      if (!g.broadcastOnly)
        written = this.record(this.action(ActionType.CURSOR, subject, group, '', { cursor })).written
      for (const id of [...g.broadcast.keys()]) {
        written = this.record(
          this.action(ActionType.CURSOR, subject, group, id, { cursor, flags: ACTION_FLAG_BROADCAST }),
        ).written
      }
    })
    await written
    this.notify(subject)
  }

  async listDeadLetters(
    subject: string,
    group: string,
    options: { limit?: number; afterSequence?: number } = {},
  ): Promise<DeadLetter[]> {
    this.ensureOpen()
    const g = this.state.get(subject, group)
    const s = this.subjectsIndex.get(subject)
    if (!g || !s) return []
    // Dead letters below lowSeq lost their message to retention (they are pruned by it); skip them
    // before the limit, or they would fill a page and hide the ones after them.
    const after = Math.max(options.afterSequence ?? -1, s.lowSeq - 1)
    const seqs = [...g.dead.keys()]
      .filter((q) => q > after)
      .sort((a, b) => a - b)
      .slice(0, options.limit ?? 100)
    const recs = await readSeqs(this.mlog, s, seqs)
    const out: DeadLetter[] = []
    for (let i = 0; i < seqs.length; i++) {
      const rec = recs[i]
      const d = g.dead.get(seqs[i] as number)
      if (!rec || !d) continue
      out.push({
        subject,
        group,
        sequence: seqs[i] as number,
        deliveryCount: d.dc,
        deadAt: d.deadAt,
        record: rec,
      })
    }
    return out
  }

  async redriveDeadLetters(subject: string, group: string, sequences?: readonly number[]): Promise<number> {
    this.ensureProgressWritable()
    const g = this.state.get(subject, group)
    if (!g) return 0
    const seqs = (sequences ?? [...g.dead.keys()]).filter((q) => g.dead.has(q)).sort((a, b) => a - b)
    if (seqs.length === 0) return 0
    const now = this.clock.now()
    for (const seq of seqs)
      this.trace(TraceEvent.REDRIVEN, subject, group, seq, '', g.dead.get(seq)?.dc ?? 0, now)
    const { affected, written } = this.record(this.action(ActionType.REDRIVE, subject, group, '', { seqs }))
    await written.catch(() => undefined)
    this.notify(subject)
    return affected
  }

  async forgetGroup(subject: string, group: string): Promise<boolean> {
    this.ensureProgressWritable()
    const g = this.state.get(subject, group)
    if (!g) return false
    return this.withLock(g, async () => {
      if (this.state.get(subject, group) !== g) return false // forgotten while waiting for the lock
      const now = this.clock.now()
      const active = [...g.consumers.entries()].filter(([, c]) => c.leaseUntil > now).map(([id]) => id)
      if (active.length > 0) {
        throw new QmqError(
          'QMQ_ERR_GROUP_ACTIVE',
          `group ${group} of ${subject} has ${active.length} active consumer(s) (${active.slice(0, 5).join(', ')}); ` +
            `stop them, or wait for their leases to end (leaseMs ${this.options.leaseMs})`,
          { details: { consumers: active.slice(0, 100) } },
        )
      }
      const { written } = this.record(this.action(ActionType.FORGET, subject, group, ''))
      await written
      return true
    })
  }

  // ---- query ----

  /**
   * The message index does not cover the whole log yet (built in the background after open): lookups
   * by id or key may miss messages; 0..1 = how much of the retained log it covers.
   */
  get indexBuilding(): { covered: number } | undefined {
    const b = this.indexBuild
    return b === undefined || b.live ? undefined : { covered: b.covered }
  }

  query(req: QueryRequest, server: string): Promise<MessageAnswer | ListAnswer | HistoryAnswer> {
    this.ensureOpen()
    this.serverName = server
    return answerQuery(this, req)
  }

  // ---- checkpoints and retention ----

  /** Writes a checkpoint now (also run by a timer and on close). */
  checkpoint(): Promise<void> {
    if (!this.checkpointing) {
      this.checkpointing = this.doCheckpoint().finally(() => {
        this.checkpointing = undefined
      })
    }
    return this.checkpointing
  }

  private async doCheckpoint(): Promise<void> {
    // The action log holds a batch it could not cut off: recovery replays it, no checkpoint skips it.
    if (this.alog.failed !== undefined) throw this.alog.failed
    // Snapshot instant (synchronous): message-log position with the consume-log lengths that match
    // it, the consumer state, and a MARK queued behind every action applied so far.
    const messageLogOffset = this.mlog.committedEnd
    const subjects: Record<string, number> = {}
    for (const s of this.subjectsIndex.map.values()) subjects[s.name] = s.consume.nextSeq
    const groups = this.state.snapshot()
    const mark = this.alog.write(this.action(ActionType.MARK, '', '', ''))
    await this.mlog.syncNow()
    for (const s of this.subjectsIndex.map.values()) await s.consume.sync()
    const actionLogOffset = await mark
    await this.alog.sync()
    await this.index?.sync()
    if (this.abandoned) return // a crash meanwhile: no checkpoint, nothing deleted
    await writeCheckpoint(this.dirs.checkpoint, {
      version: 1,
      createdAt: this.clock.now(),
      messageLogOffset,
      actionLogOffset,
      subjects,
      groups,
    })
    // Actions before the previous checkpoint are no longer needed (that one is recovery's fallback).
    if (this.previousActionLogOffset > 0) this.alog.log.deleteBefore(this.previousActionLogOffset)
    this.previousActionLogOffset = actionLogOffset
  }

  /** Runs retention now (also run by a timer); returns the number of segments deleted. */
  runRetention(): Promise<number> {
    if (!this.retaining) {
      this.retaining = runRetention(this).finally(() => {
        this.retaining = undefined
      })
    }
    return this.retaining
  }
}

const HISTORY_FIELD: Record<number, 'delivered' | 'acked' | 'nacked' | 'expired' | 'dead' | undefined> = {
  [TraceEvent.DELIVERED]: 'delivered',
  [TraceEvent.ACKED]: 'acked',
  [TraceEvent.NACKED]: 'nacked',
  [TraceEvent.EXPIRED]: 'expired',
  [TraceEvent.DEAD]: 'dead',
}

export function createMessageStore(options: FileMessageStoreOptions = {}): FileMessageStore {
  return new FileMessageStore(options)
}

/** Creates and opens a store; the recovery report is on `store.recoveryReport`. */
export async function openMessageStore(options: FileMessageStoreOptions = {}): Promise<FileMessageStore> {
  const store = new FileMessageStore(options)
  await store.open()
  return store
}
