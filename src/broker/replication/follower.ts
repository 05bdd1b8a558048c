import fs from 'node:fs'
import { Connection } from '../../client/transport/connection'
import { CLUSTER_APP } from '../../common/auth/credentials'
import { QmqError, toQmqError } from '../../common/errors'
import type { Logger } from '../../common/logger'
import { RequestCode } from '../../common/protocol/codes'
import type { ClientTlsOptions } from '../../common/tls'
import {
  decodeCheckpointResponse,
  decodeFetchResponse,
  encodeCheckpointRequest,
  encodeFetchRequest,
  FetchKind,
  REPLICATED_LOG_NAMES,
  type ReplicatedLogValue,
} from '../../common/protocol/replication'
import { crc32c } from '../../common/crc32c'
import { checkAction } from '../store/action-log'
import { indexDirs } from '../store/index-log'
import { type Checkpoint, loadCheckpoint, writeCheckpoint } from '../store/checkpoint'
import type { FsIo } from '../store/fs-io'
import { checkFrame } from '../store/message-log'
import { type ScanCheck, SegmentLog } from '../store/segment-log'
import { storeDirs } from '../store/store-dirs'
import { type ChunkPiece, ChunkRefused, ChunkVerifier } from './chunk-verifier'
import { type EpochStart, isEpochStart, readEpochs, writeEpochs } from './epochs'
import { SlaveConsumeLogs } from './slave-consume'

/**
 * The slave's side of replication: copies its master's message log and action log into the same
 * directories the file store uses (store-dirs.ts), byte for byte, at the same offsets and with the
 * same segment boundaries, through the one segmented log (segment-log.ts `appendCopied`), and
 * fdatasyncs each copy; what is fdatasynced is its acknowledgement (`acked` of the next fetch, see
 * common/protocol/replication.ts; while catching up, the next fetch overlaps the write and fdatasync).
 * It also installs the master's checkpoint once both logs reach the offsets it names, and then deletes
 * what the master's retention deleted.
 *
 * The consume logs are kept current from the copied message log (slave-consume.ts), so that the
 * store's ordinary recovery, when the slave is opened as a master (promotion), replays only what
 * follows the installed checkpoint; everything else derived (consumer state, dedupe index) is rebuilt
 * from these logs and the checkpoint by that recovery. A slave deletes its message index, trace and
 * per-minute counts at start (the promoted store rebuilds the index).
 */
export interface FollowerOptions {
  dataDir: string
  /** The slave's advertised `host:port` (its identity on the master). */
  slaveId: string
  clusterSecret: string
  /** Where the master is now (`host:port`), or undefined when not known yet. */
  findMaster: () => Promise<string | undefined>
  maxMessageBytes: number
  /** Bytes asked for per fetch. */
  fetchBytes: number
  /** How long a fetch waits on the master for new bytes. */
  fetchWaitMs: number
  /** Wait after a failed fetch or master lookup. */
  retryMs: number
  /** How often the master's checkpoint is installed. */
  checkpointIntervalMs: number
  maxFrameBytes: number
  /** The epoch this data dir last acted in (epochs.ts). */
  epoch: number
  /** TLS towards the master (the broker's client side of its TLS files); undefined: plain TCP. */
  tls?: ClientTlsOptions | undefined
  /** What is copied; default the broker's (message and action logs, its checkpoint). */
  layout?: FollowerLayout | undefined
  /** The copies' file I/O (tests inject faults); default node's. */
  io?: FsIo | undefined
  /** Entries per consume-log segment (the store's `consumeLogSegmentEntries`); default 1,000,000. */
  consumeLogSegmentEntries?: number | undefined
  /**
   * A received chunk failed verification and was refused (`copied`: refused the same way
   * DAMAGE_REPEATS times, it was then copied as the master holds it). For the metrics.
   */
  onChunkRefused?: ((log: 'message' | 'action', copied: boolean) => void) | undefined
}

/**
 * What a follower copies besides the generic part (log copies, epochs, the connection): the broker's
 * layout is its message and action logs plus its checkpoint (`checkpointLoop`); the delay server's
 * (src/delay/replication/) is its message log plus its derived files, copied by its own side loop.
 */
export interface FollowerLayout {
  /**
   * The logs copied byte for byte, each a SegmentLog directory, checked with `check` at start and
   * every received chunk before it is written (chunk-verifier.ts).
   */
  logs: readonly { kind: ReplicatedLogValue; dir: string; check: ScanCheck }[]
  /** Runs beside the copy loops while the follower runs (on its connection: `request`). */
  sideLoop(follower: ReplicationFollower): Promise<void>
  /**
   * The copy of log `kind` was cut back to `offset` (the master's TRUNCATE or RESET, or a chunk that
   * failed to sync): what the layout derived from bytes past it may be another master's. Synchronous,
   * called before the copy asks for anything more.
   */
  onCut?(kind: ReplicatedLogValue, offset: number): void
  /** The follower now follows another master (another address, or a new epoch) than before. */
  onMasterChange?(master: string | undefined, epoch: number): void
}

export interface FollowerStatus {
  master: string | undefined
  connected: boolean
  /** Durable ends of the copies. */
  messageOffset: number
  actionOffset: number
  /** The master's log ends as of its last answer. */
  masterMessageEnd: number
  masterActionEnd: number
  lastFetchAt: number
  /** When both copies last held everything the master had (0 = never). */
  caughtUpAt: number
  epoch: number
  lastError: string | undefined
  /** Chunks refused since start because an entry failed its check (chunk-verifier.ts). */
  refusedChunks: number
}

interface LogCopy {
  kind: ReplicatedLogValue
  /** The log's entry check: every received chunk passes it before it is written. */
  check: ScanCheck
  /** The epoch this copy follows: adopted from the master once it needs no cut (source.ts). */
  epoch: number
  log: SegmentLog
  /** End of what is written and fdatasynced (the acknowledgement; the log may hold more, syncing). */
  durable: number
  masterStart: number
  masterEnd: number
}

export class ReplicationFollower {
  private readonly opts: FollowerOptions
  private readonly log: Logger
  private readonly dirs: ReturnType<typeof storeDirs>
  private copies: LogCopy[] | undefined
  private master: string | undefined
  private conn: Connection | undefined
  /**
   * The lookup of the master and its connection, while one runs: every loop asking for a connection
   * meanwhile waits for this one (each making its own would leave all but the last open, unowned).
   */
  private connecting: Promise<Connection | undefined> | undefined
  private running = false
  private loops: Promise<void>[] = []
  private sleepers = new Set<() => void>()
  private lastFetchAt = 0
  private caughtUpAt = 0
  private epoch = 0
  private lastError: string | undefined
  private installed: Checkpoint | undefined
  /** Fetches carry `acked` and overlap the write of the previous chunk (off for a master predating it). */
  private pipelining = true
  private history: EpochStart[] = []
  /** The broker layout's consume logs, kept current from the message-log copy (slave-consume.ts). */
  private consume: SlaveConsumeLogs | undefined
  private refusedChunks = 0

  constructor(opts: FollowerOptions, log: Logger) {
    this.opts = opts
    this.log = log.child({ component: 'replication' })
    this.dirs = storeDirs(opts.dataDir)
  }

  /** Opens the copies (cutting torn tails), then starts copying in the background. */
  async start(): Promise<void> {
    if (this.running) return
    const layout = this.opts.layout
    if (layout === undefined) {
      // The message index with its lifecycle trace and the per-minute counts are the master's
      // business: a data dir that was a master holds them for its own log, which this copy may cut (a
      // tail past the new epoch, or one the master lost) and fill again at the same offsets and
      // sequences. Kept, they would point at records that are gone, miss the copied ones (the index
      // resumes from its own end) and give new messages the trace of old ones. A promoted slave builds
      // its index from the copied log. (Consume logs are kept, and cut with the copy: slave-consume.ts.)
      const index = indexDirs(this.opts.dataDir)
      for (const dir of [index.log, index.runs, this.dirs.history]) {
        if (!fs.existsSync(dir)) continue
        this.log.warn({ dir }, 'slave: dropping what this data dir held as a master (rebuilt on promotion)')
        fs.rmSync(dir, { recursive: true, force: true })
      }
    }
    const max = this.opts.maxMessageBytes
    const specs = layout?.logs ?? [
      { kind: 0, dir: this.dirs.message, check: (b, p, e) => checkFrame(b, p, e, max, true) },
      { kind: 1, dir: this.dirs.action, check: checkAction },
    ]
    const copies: LogCopy[] = []
    for (const spec of specs) {
      const log = SegmentLog.open({
        dir: spec.dir,
        segmentBytes: Number.MAX_SAFE_INTEGER,
        ...(this.opts.io !== undefined ? { io: this.opts.io } : {}),
      })
      const cuts = await log.recover(log.startOffset, spec.check, () => undefined)
      const name = REPLICATED_LOG_NAMES[spec.kind]
      for (const c of cuts) this.log.warn({ log: name, ...c }, 'slave copy: dropped a torn tail')
      copies.push({
        kind: spec.kind,
        check: spec.check,
        epoch: this.opts.epoch,
        log,
        durable: log.endOffset,
        masterStart: 0,
        masterEnd: 0,
      })
    }
    this.copies = copies
    this.epoch = this.opts.epoch
    this.history = readEpochs(this.opts.dataDir).history
    this.running = true
    if (layout !== undefined) {
      this.loops = [...copies.map((c) => this.copyLoop(c)), layout.sideLoop(this)]
      return
    }
    const [message, action] = copies as [LogCopy, LogCopy]
    this.installed = loadCheckpoint(this.dirs.checkpoint).checkpoint
    if (
      this.installed !== undefined &&
      (this.installed.messageLogOffset > message.log.endOffset ||
        this.installed.actionLogOffset > action.log.endOffset)
    ) {
      // A checkpoint naming bytes this copy lost (a former master's tail): the master's replaces it.
      this.log.warn('slave: local checkpoint is ahead of the copied logs; dropped until the master sends one')
      fs.rmSync(this.dirs.checkpoint, { recursive: true, force: true })
      this.installed = undefined
    }
    // --- slave consume logs (slave-consume.ts) ---
    this.consume = new SlaveConsumeLogs(
      {
        root: this.dirs.consume,
        maxMessageBytes: max,
        entriesPerSegment: this.opts.consumeLogSegmentEntries ?? 1_000_000,
        io: this.opts.io,
      },
      this.log,
    )
    await this.consume.open(message.log, this.installed)
    // ---
    this.loops = [this.copyLoop(message), this.copyLoop(action), this.checkpointLoop()]
  }

  /** Running (a side loop stops when this turns false). */
  get active(): boolean {
    return this.running
  }

  /** Durable end of the copy of log `kind` (0 when it is not copied). */
  copyEnd(kind: ReplicatedLogValue): number {
    return this.copies?.find((c) => c.kind === kind)?.durable ?? 0
  }

  /** The first byte the copy of a log holds (0 without a copy). */
  copyStart(kind: ReplicatedLogValue): number {
    return this.copies?.find((c) => c.kind === kind)?.log.startOffset ?? 0
  }

  /** Deletes the copy's segments wholly below `offset` (a side loop following the master's retention). */
  deleteCopyBefore(kind: ReplicatedLogValue, offset: number): void {
    this.copies?.find((c) => c.kind === kind)?.log.deleteBefore(offset)
  }

  /**
   * One request to the master on the follower's connection (side loops). Throws when there is no
   * master to ask or the request failed (the connection is then dropped and looked up again), after
   * waiting `retryMs`: a side loop may retry at once.
   */
  async request(code: number, body: Buffer): Promise<Buffer> {
    const conn = await this.connection()
    if (conn === undefined) {
      await this.sleep(this.opts.retryMs)
      throw new QmqError('QMQ_ERR_NOT_MASTER', 'no master known yet')
    }
    try {
      return (await conn.request(code, body)).body
    } catch (err) {
      if (this.running) await this.dropConnection(err, conn)
      throw err
    }
  }

  /** Waits `ms`, or less when the follower closes. */
  pause(ms: number): Promise<void> {
    return this.sleep(ms)
  }

  /** Stops copying; what was copied stays (and is what a promotion recovers from). */
  async close(): Promise<void> {
    if (!this.running) return
    this.running = false
    for (const wake of [...this.sleepers]) wake()
    const conn = this.conn
    this.conn = undefined
    await conn?.close()
    await Promise.allSettled(this.loops)
    this.loops = []
    await this.consume?.close()
    this.consume = undefined
    if (this.copies !== undefined) {
      for (const c of this.copies) c.log.close()
      this.copies = undefined
    }
  }

  status(): FollowerStatus {
    const m = this.copies?.find((c) => c.kind === 0)
    const a = this.copies?.find((c) => c.kind === 1)
    return {
      master: this.master,
      connected: this.conn?.connected ?? false,
      messageOffset: m?.durable ?? 0,
      actionOffset: a?.durable ?? 0,
      masterMessageEnd: m?.masterEnd ?? 0,
      masterActionEnd: a?.masterEnd ?? 0,
      lastFetchAt: this.lastFetchAt,
      caughtUpAt: this.caughtUpAt,
      epoch: this.epoch,
      lastError: this.lastError,
      refusedChunks: this.refusedChunks,
    }
  }

  /** The connection to the master, looked up and opened once for all loops asking at the same time. */
  private connection(): Promise<Connection | undefined> {
    if (this.conn !== undefined) return Promise.resolve(this.conn)
    if (this.connecting === undefined) {
      const connecting = this.connect().finally(() => {
        if (this.connecting === connecting) this.connecting = undefined
      })
      this.connecting = connecting
    }
    return this.connecting
  }

  private async connect(): Promise<Connection | undefined> {
    const master = await this.opts.findMaster()
    if (master === undefined || !this.running) return undefined
    if (master !== this.master) {
      this.log.info({ master }, 'slave: following master')
      if (this.master !== undefined) this.opts.layout?.onMasterChange?.(master, this.epoch)
    }
    this.master = master
    this.conn = new Connection({
      address: master,
      requestTimeoutMs: this.opts.fetchWaitMs + 10_000,
      maxFrameBytes: this.opts.maxFrameBytes,
      reconnectMaxMs: this.opts.retryMs,
      ...(this.opts.tls !== undefined ? { tls: this.opts.tls } : {}),
      // The master's AuthGate (auth on) refuses REPL_FETCH without an AUTH first: servers
      // authenticate to each other as the cluster app with the cluster secret.
      auth: { appCode: CLUSTER_APP, token: this.opts.clusterSecret },
    })
    return this.conn
  }

  /**
   * A failed request on `failed`: the master may have moved; look it up again before the next one.
   * Only `failed` is dropped: another loop may already have dropped it and opened a newer connection,
   * which stays.
   */
  private async dropConnection(err: unknown, failed: Connection | undefined): Promise<void> {
    const e = toQmqError(err)
    if (e.message !== this.lastError)
      this.log.warn({ err: e.message, master: this.master }, 'slave: fetch failed')
    this.lastError = e.message
    if (failed !== undefined && this.conn === failed) this.conn = undefined
    await failed?.close()
    await this.sleep(this.opts.retryMs)
  }

  /**
   * Copies one log. While the master has more than one chunk beyond what it sent (catching up), the
   * next fetch is sent while the previous chunk is written: `offset` asks past it, `acked` says what
   * is durable (common/protocol/replication.ts). Chunks are fdatasynced in the background, in groups
   * (ChunkWriter), so a catching-up copy is not held to one fdatasync per chunk. At the master's end it
   * writes and syncs first, then asks, so a `sync` SEND is acknowledged with the next fetch, not one
   * later.
   */
  private async copyLoop(copy: LogCopy): Promise<void> {
    const name = REPLICATED_LOG_NAMES[copy.kind]
    const log = copy.log
    const consume = copy.kind === 0 ? this.consume : undefined
    const writer = new ChunkWriter(copy, () => this.noteCaughtUp(), consume)
    // Every chunk is verified before a byte of it is written; an entry it begins is held until the
    // chunks that complete it came (`wanted` is past the held bytes, the log's end before them).
    const verifier = new ChunkVerifier(copy.check)
    /** The master segment the held bytes are in. */
    let heldBase = 0
    /** Refusals in a row (the backoff), and of the very same bytes (damage stored on the master). */
    let refusedInRow = 0
    let sameRefusals = 0
    let lastRefused = ''
    // Written but not yet fdatasynced: at most this much before the loop waits for a sync (a disk
    // slower than the network would otherwise fill the page cache with dirty bytes).
    const maxUnsynced = UNSYNCED_FETCHES * this.opts.fetchBytes
    /** Next byte to ask for: the log's end plus the chunk being written. */
    let wanted = log.endOffset
    /** The connection of the last request (the one to drop when it fails). */
    let conn: Connection | undefined
    try {
      while (this.running) {
        conn = undefined
        try {
          // A chunk whose write or fdatasync failed is cut off before anything more is copied: the
          // kernel may have dropped its pages (marked clean, never written), so a later good fdatasync
          // would acknowledge bytes that are not on disk. Cut back to what is durable, as the master's
          // store cuts its log on a failed fdatasync, and ask for the rest again.
          if (writer.failure !== undefined) {
            await writer.drain()
            this.log.warn(
              { log: name, from: log.endOffset, to: copy.durable },
              'slave: cutting a chunk that failed to sync; copying it again',
            )
            await log.truncate(copy.durable)
            await log.sync()
            writer.failure = undefined
            verifier.reset()
            wanted = log.endOffset
            await this.cutDerived(copy.kind, copy.durable)
          }
          conn = await this.connection()
          if (conn === undefined) {
            await this.sleep(this.opts.retryMs)
            continue
          }
          const frame = await conn.request(
            RequestCode.REPL_FETCH,
            encodeFetchRequest({
              token: this.opts.clusterSecret,
              slaveId: this.opts.slaveId,
              log: copy.kind,
              offset: wanted,
              maxBytes: this.opts.fetchBytes,
              waitMs: this.opts.fetchWaitMs,
              epoch: copy.epoch,
              acked: this.pipelining ? copy.durable : undefined,
            }),
          )
          if (!this.running) return
          const res = decodeFetchResponse(frame.body)
          this.lastFetchAt = Date.now()
          this.lastError = undefined
          copy.masterStart = res.start
          copy.masterEnd = res.end
          if (res.kind === FetchKind.TRUNCATE) {
            verifier.reset()
            await writer.synced()
            if (res.offset < log.endOffset) {
              this.log.warn(
                { log: name, from: log.endOffset, to: res.offset },
                'slave: cutting the copy back to the master',
              )
              await log.truncate(Math.max(res.offset, log.startOffset))
              await log.sync()
              copy.durable = log.endOffset
              this.dropCheckpointPast()
              await this.cutDerived(copy.kind, log.endOffset)
            }
            wanted = log.endOffset
            continue
          }
          if (res.kind === FetchKind.RESET) {
            verifier.reset()
            await writer.synced()
            this.log.warn(
              { log: name, held: log.endOffset, masterStart: res.start },
              'slave: the master no longer holds what follows this copy; copying again from its start',
            )
            await log.truncate(log.startOffset)
            await log.truncate(res.offset)
            log.deleteBefore(res.offset)
            await log.sync()
            copy.durable = log.endOffset
            await this.cutDerived(copy.kind, log.endOffset)
            wanted = log.endOffset
            continue
          }
          if (res.epoch > copy.epoch) this.adoptEpoch(copy, res.epoch, res.history)
          if (res.data.length === 0) {
            await writer.synced()
            this.noteCaughtUp()
            continue
          }
          // A gap between the master's segments: the chunk starts at the next segment.
          const at = res.segmentBase > wanted ? res.segmentBase : wanted
          if (res.offset !== at)
            throw new QmqError(
              'QMQ_ERR_INTERNAL',
              `master sent ${name} bytes at ${res.offset}, asked for ${at}`,
            )
          const end = res.offset + res.data.length
          /** What to write (contiguous, in the master segment `base`): verified, or damage as held. */
          let pieces: ChunkPiece[]
          let base = res.segmentBase
          try {
            if (verifier.held === 0) heldBase = res.segmentBase
            pieces = verifier.push(res.offset, res.data, end >= res.end)
            if (pieces.length > 0) {
              // The copy moved on. (A chunk only held, its entry begun, proves nothing: a damaged
              // entry claiming more bytes than a fetch is held over several before it is refused, and
              // must still count as refused again, or it is fetched for ever.)
              refusedInRow = 0
              sameRefusals = 0
              lastRefused = ''
            }
            wanted = end
          } catch (err) {
            if (!(err instanceof ChunkRefused)) throw err
            refusedInRow++
            this.refusedChunks++
            const key = `${err.offset}:${err.bytes.length}:${crc32c(err.bytes)}`
            sameRefusals = key === lastRefused ? sameRefusals + 1 : 1
            lastRefused = key
            this.lastError = err.message
            if (sameRefusals < DAMAGE_REPEATS) {
              this.opts.onChunkRefused?.(name, false)
              this.log.warn(
                { log: name, offset: err.offset, master: this.master, refusedInRow, reason: err.message },
                'slave: refused a chunk that failed verification; fetching it again',
              )
              wanted = err.offset
              await this.sleep(Math.min(this.opts.retryMs * 2 ** (refusedInRow - 1), 16 * this.opts.retryMs))
              continue
            }
            // The very same bytes refused again and again: not a fault on the way but the master's
            // stored bytes (a range its recovery stepped over keeps its place in the log). Copied as
            // they are, so the copy stays the master's byte for byte and a promoted slave's recovery
            // steps over the same range; refusing for ever would leave the group without a slave.
            pieces = verifier.acceptDamaged(err, end >= res.end)
            const copied = pieces.reduce((n, p) => n + p.data.length, 0)
            this.log.error(
              { log: name, offset: err.badAt, copied, reason: err.message },
              'slave: the master holds these damaged bytes; copying them as they are',
            )
            this.opts.onChunkRefused?.(name, true)
            sameRefusals = 0
            lastRefused = ''
            // (Unverified pieces: ChunkWriter stops the consume logs before it writes them.)
            base = heldBase
            wanted = err.offset + copied + verifier.held
          }
          if (pieces.length > 0) {
            // The pieces are contiguous: a completed held entry, then this chunk's entries.
            // Writes stay in order: this chunk is written once the previous one is (synced or not).
            await writer.written()
            writer.write(base, pieces)
          }
          // The next fetch acknowledges: without `acked` (a master predating it) its offset does, so
          // what was written is synced before asking; so it is when caught up with the master (a
          // `sync` SEND is then acknowledged by the next fetch, not one later). The same for the
          // master's damaged bytes copied as they are.
          if (!this.pipelining || wanted >= res.end) await writer.synced()
          else if (log.endOffset - copy.durable > maxUnsynced) await writer.synced()
        } catch (err) {
          if (!this.running) return
          if (this.pipelining && err instanceof QmqError && err.code === 'QMQ_ERR_PAYLOAD_MALFORMED') {
            // A master that predates `acked` refuses it (trailing bytes): ask one chunk at a time.
            this.pipelining = false
            this.log.warn(
              { err: err.message },
              'slave: the master refuses pipelined fetches; one chunk at a time',
            )
          }
          await writer.drain()
          verifier.reset()
          wanted = log.endOffset
          await this.dropConnection(err, conn)
        }
      }
    } finally {
      await writer.drain()
    }
  }

  /** What was derived from the copy of log `kind` past `offset` goes (the copy was cut there). */
  private async cutDerived(kind: ReplicatedLogValue, offset: number): Promise<void> {
    this.opts.layout?.onCut?.(kind, offset)
    if (kind === 0) await this.consume?.cut(offset)
  }

  private noteCaughtUp(): void {
    const copies = this.copies ?? []
    if (copies.length > 0 && copies.every((c) => c.durable >= c.masterEnd)) this.caughtUpAt = Date.now()
  }

  /**
   * A copy that needed no cut follows the master's epoch; once both do, the data dir records the
   * epoch and the master's history (it is this dir's history if it is promoted).
   */
  private adoptEpoch(copy: LogCopy, epoch: number, history: Buffer): void {
    copy.epoch = epoch
    if (history.length > 0) {
      try {
        const parsed: unknown = JSON.parse(history.toString('utf8'))
        if (Array.isArray(parsed)) this.history = parsed.filter(isEpochStart)
      } catch {
        this.log.warn('slave: the master sent an unreadable epoch history')
      }
    }
    const copies = this.copies ?? []
    if (copies.every((c) => c.epoch === epoch) && epoch > this.epoch) {
      this.epoch = epoch
      this.opts.layout?.onMasterChange?.(this.master, epoch)
      writeEpochs(this.opts.dataDir, { epoch, history: this.history })
      this.log.info({ epoch }, 'slave: following the master of a new epoch')
    }
  }

  /** A checkpoint naming bytes this copy no longer holds goes (the master's next one replaces it). */
  private dropCheckpointPast(): void {
    if (this.opts.layout !== undefined) return // the layout's side loop keeps its own checkpoint
    const [m, a] = this.copies ?? []
    const cp = this.installed ?? loadCheckpoint(this.dirs.checkpoint).checkpoint
    if (cp === undefined || m === undefined || a === undefined) return
    if (cp.messageLogOffset <= m.log.endOffset && cp.actionLogOffset <= a.log.endOffset) return
    fs.rmSync(this.dirs.checkpoint, { recursive: true, force: true })
    this.installed = undefined
  }

  /** Installs the master's checkpoint once the copies hold what it names; then follows its retention. */
  private async checkpointLoop(): Promise<void> {
    while (this.running) {
      await this.sleep(this.opts.checkpointIntervalMs)
      if (!this.running) return
      try {
        const conn = this.conn
        const copies = this.copies
        if (conn === undefined || copies === undefined) continue
        const frame = await conn.request(
          RequestCode.REPL_CHECKPOINT,
          encodeCheckpointRequest(this.opts.clusterSecret),
        )
        const raw = decodeCheckpointResponse(frame.body)
        if (raw.length === 0) continue
        const cp = JSON.parse(raw.toString('utf8')) as Checkpoint
        const [m, a] = copies as [LogCopy, LogCopy]
        if (cp.messageLogOffset > m.durable || cp.actionLogOffset > a.durable) continue
        if (this.installed !== undefined && cp.createdAt <= this.installed.createdAt) continue
        const previous = this.installed
        await this.consume?.beforeInstall(cp)
        await writeCheckpoint(this.dirs.checkpoint, cp)
        this.installed = cp
        // As the master: message segments go with its retention, actions before the previous
        // checkpoint are no longer needed (that one is recovery's fallback).
        if (m.masterStart > m.log.startOffset) m.log.deleteBefore(m.masterStart)
        if (previous !== undefined) a.log.deleteBefore(Math.min(previous.actionLogOffset, a.masterStart))
      } catch (err) {
        this.log.warn({ err: toQmqError(err).message }, 'slave: installing the master checkpoint failed')
      }
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const wake = () => {
        clearTimeout(timer)
        this.sleepers.delete(wake)
        resolve()
      }
      const timer = setTimeout(wake, ms)
      this.sleepers.add(wake)
    })
  }
}

/**
 * The same bytes (same offset, length and CRC32C) refused this many times in a row are the master's
 * stored bytes, not a fault on the way: they are copied as they are (logged as an error, counted).
 */
const DAMAGE_REPEATS = 3

/** A catching-up copy holds at most this many fetches' bytes written and not yet fdatasynced. */
const UNSYNCED_FETCHES = 8

/**
 * Writes one copy's chunks in order and fdatasyncs them in the background. A chunk is written as soon
 * as the previous one is written (not synced), and its fdatasync is `SegmentLog.sync()`, which shares
 * one fdatasync among the calls made while one runs: the disk's sync latency is paid once per group
 * of chunks, not once per chunk (with a 4 MiB chunk per fdatasync the copy could not go faster than
 * the disk syncs 4 MiB writes one after the other).
 *
 * Invariant: `copy.durable` (the acknowledgement the next fetch carries) only moves to the end of the
 * log as it was when a `sync()` that then succeeded was called; SegmentLog.sync covers every write
 * completed before its call. After a failed write or fdatasync, `failure` is set and nothing moves
 * `durable` any more (a later good fdatasync may not cover pages the kernel dropped) until the loop
 * cut the copy back to `durable` and cleared it.
 */
class ChunkWriter {
  /** The write of the last chunk queued, and the fdatasync after it: both always resolve. */
  private lastWrite: Promise<void> = Promise.resolve()
  private lastSync: Promise<void> = Promise.resolve()
  failure: unknown = undefined

  constructor(
    private readonly copy: LogCopy,
    private readonly onDurable: () => void,
    /**
     * The message log's consume logs (slave-consume.ts): told of each verified piece once written,
     * and stopped before the first unverified one is (the only place they learn of either).
     */
    private readonly consume?: SlaveConsumeLogs | undefined,
  ) {}

  /**
   * Queues one chunk's pieces (ChunkVerifier's), contiguous (a gap on the master first): written once
   * the previous chunk is, then synced.
   */
  write(segmentBase: number, pieces: readonly ChunkPiece[]): void {
    const log = this.copy.log
    this.lastWrite = this.lastWrite.then(async () => {
      if (this.failure !== undefined) return
      try {
        if (segmentBase > log.endOffset) await log.truncate(segmentBase)
        for (const { data, verified } of pieces) {
          if (!verified)
            this.consume?.abandon(
              `damaged message-log bytes copied as the master holds them at ${log.endOffset}`,
            )
          const at = await log.appendCopied(segmentBase, data)
          if (verified) this.consume?.written(at, data)
        }
      } catch (err) {
        this.failure ??= err
        return
      }
      const end = log.endOffset
      // Later calls of sync() resolve no earlier than this one: the last one set is the last to end.
      this.lastSync = log.sync().then(
        () => {
          if (this.failure !== undefined || end <= this.copy.durable) return
          this.copy.durable = end
          this.onDurable()
        },
        (err: unknown) => {
          this.failure ??= err
        },
      )
    })
  }

  /** Resolves once every chunk queued is written (not synced); throws a failure so far. */
  async written(): Promise<void> {
    await this.lastWrite
    if (this.failure !== undefined) throw this.failure
  }

  /** Resolves once every chunk queued is written and fdatasynced; throws a failure so far. */
  async synced(): Promise<void> {
    await this.lastWrite
    await this.lastSync
    if (this.failure !== undefined) throw this.failure
  }

  /** Waits for everything queued, whatever the outcome (the loop then looks at `failure`). */
  async drain(): Promise<void> {
    await this.lastWrite
    await this.lastSync
  }
}
