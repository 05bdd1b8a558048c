import fs from 'node:fs'
import path from 'node:path'
import { type ChunkPiece, ChunkRefused, ChunkVerifier } from '../../broker/replication/chunk-verifier'
import type { ReplicationFollower } from '../../broker/replication/follower'
import type { ScanCheck } from '../../broker/store/segment-log'
import { fsyncDirAsync, writeFileAtomic } from '../../common/durable-file'
import { checkDataMeta, META_VERSION_MARKERS } from '../store/data-meta'
import { QmqError, toQmqError } from '../../common/errors'
import type { Logger } from '../../common/logger'
import { RequestCode } from '../../common/protocol/codes'
import { bucketFileName, DISPATCH_DIR, DISPATCH_SUFFIX, SCHEDULE_DIR, SCHEDULE_SUFFIX } from '../store/bucket'
import { CancelLog } from '../store/cancel-log'
import { checkFrame as checkDeadLetter } from '../store/dead-letters'
import { checkEntry as checkDispatchEntry } from '../store/dispatch-log'
import { checkFrame as checkScheduleFrame } from '../store/schedule-log'
import type { ReplicaManifest } from '../store/delay-store'
import {
  CancelsKind,
  decodeCancelsResponse,
  decodeFileResponse,
  decodeManifestResponse,
  encodeCancelsRequest,
  encodeFileRequest,
  encodeManifestRequest,
} from './wire'

/**
 * The delay slave's copy of its master's derived files and cancels (the message log is copied by
 * the generic follower, broker/replication/follower.ts, as a broker slave copies its own). It runs
 * as the follower's side loop, on the follower's connection.
 *
 * Rounds (every `intervalMs`): ask the master's last checkpoint manifest (delay-store.ts
 * ReplicaManifest); once the message-log copy reaches the manifest's checkpoint, copy the dead-letter
 * log, then each bucket's schedule log and then its dispatch log up to the manifest's sizes (each
 * file fdatasynced), record what is held (`replication/delay-mirror.json`), adopt the checkpoint
 * (`checkpoint.json`, the store's own file), then delete the buckets the master dropped and the
 * message-log segments below the checkpoint. The order makes a promotion safe at any moment: the
 * ordinary recovery (replay of the message log from the adopted checkpoint; a bucket skips records it
 * already holds) finds every pending message, because every record below the checkpoint is in a
 * copied schedule log and every record after it is in the copied message log. Copied files only ever
 * hold records below the copied message log's end (the round waits for it), so no offset a promoted
 * master writes again is ever skipped. Delivered marks that did not reach the slave mean redeliveries
 * (at-least-once), never a loss; a dead letter is copied before the dispatch entry that parked it.
 *
 * Identity: a bucket file is copied by appending to what the slave holds, as long as it is the same
 * bucket (same first frame's message-log offset); a bucket dropped and created again is copied anew.
 * The dead-letter log is copied anew whenever the master runs a new process (it may rewrite it at
 * start). A data dir that starts as a slave without `delay-mirror.json` (a former master, or a copy
 * interrupted before its first round) first drops every derived file it has: they may hold what the
 * new master never had. A promotion deletes `delay-mirror.json` (the dir is then the master's own).
 *
 * Cancels: a second loop long-polls the master's cancels (wire.ts DELAY_REPL_CANCELS) and records
 * them in the slave's own cancel log (durable before the next request acknowledges them), so a cancel
 * acknowledged under `sync` survives the master's loss.
 */
export interface DelayMirrorOptions {
  dataDir: string
  slaveId: string
  clusterSecret: string
  bucketMinutes: number
  /** How often the master's manifest is asked for. */
  intervalMs: number
  /** How long a cancels request waits on the master for new cancels. */
  waitMs: number
  /** Bytes asked for per file request. */
  chunkBytes: number
  /** Tombstones older than this are dropped at open (the store's rule). */
  tombstoneKeepMs: number
  /**
   * Where the message-log copy may be cut after adopting `checkpoint` (default: the checkpoint): the
   * store's rule, which keeps the segments that rebuild its dedupe window (store/dedupe-window.ts).
   */
  messageKeepFrom?: ((checkpoint: number) => number) | undefined
  /** Bounds the schedule logs' records (their check). */
  maxMessageBytes: number
  /** A received chunk of a derived file failed verification and was refused (the metrics). */
  onChunkRefused?: ((file: 'dead_letters' | 'schedule' | 'dispatch') => void) | undefined
  log: Logger
}

export interface DelayMirrorStatus {
  /** The checkpoint this slave holds (-1 = none yet). */
  checkpoint: number
  /** The master's last manifest checkpoint. */
  masterCheckpoint: number
  /** When the last round completed (0 = never). */
  adoptedAt: number
  buckets: number
  /** Cancels durable here, as the master's sequence of its run. */
  cancelSeq: number
  lastError: string | undefined
}

interface State {
  runId: string
  checkpoint: number
  deadLetterBytes: number
  /** start -> [firstMsgOffset, scheduleBytes, dispatchBytes] */
  buckets: Map<number, [number, number, number]>
}

export const MIRROR_FILE = 'delay-mirror.json'
const DEAD_LETTER_FILE = 'deadletter.log'
const CHECKPOINT_FILE = 'checkpoint.json'
/** The longest wait before a full round while drops repeat (roundLoop). */
const MAX_DROP_BACKOFF_MS = 60_000

/** The data dir becomes the master's own: a later start as slave copies everything again. */
export function forgetMirror(dataDir: string): void {
  fs.rmSync(path.join(dataDir, 'replication', MIRROR_FILE), { force: true })
}

export class DelayMirror {
  private readonly opts: DelayMirrorOptions
  private readonly log: Logger
  private state: State = { runId: '', checkpoint: -1, deadLetterBytes: 0, buckets: new Map() }
  private cancels: CancelLog | undefined
  private masterCheckpoint = -1
  private adoptedAt = 0
  private cancelSeq = -1
  private lastError: string | undefined
  /** Bumped by `forget`: a round that started before it records and adopts nothing. */
  private generation = 0
  /** A round is copying (its files may hold what a cut or another master makes wrong). */
  private copying = false
  /**
   * The copy was dropped (`forget`): the next round starts at once, so that its manifest request
   * (adopted -1) tells the master this slave holds no checkpoint now. Until the master heard it, it may
   * still count this slave in sync and the metaserver may still promote it (docs/replication.md).
   */
  private roundSoon = false
  /** The wait before the full round after the next drop (0: at once); see roundLoop. */
  private dropBackoffMs = 0
  /** Counted by tests: full rounds started. */
  roundsStarted = 0
  private wakeRound: (() => void) | undefined

  constructor(opts: DelayMirrorOptions) {
    this.opts = opts
    this.log = opts.log.child({ component: 'delay-mirror' })
  }

  /** Before the follower starts: the data dir holds only what a completed round recorded. */
  prepare(): void {
    const dir = this.opts.dataDir
    for (const d of [
      dir,
      path.join(dir, SCHEDULE_DIR),
      path.join(dir, DISPATCH_DIR),
      path.join(dir, 'replication'),
    ])
      fs.mkdirSync(d, { recursive: true })
    this.checkMeta()
    const recorded = readState(dir)
    if (recorded === undefined) {
      this.log.warn(
        'slave: no copy recorded in this data dir; its derived files are dropped and copied again',
      )
      this.dropDerived()
    } else {
      this.state = recorded
      // Bytes copied after the last recorded round go (copied again): every file is cut to its record.
      const keep = new Set<string>()
      for (const [start, [, sched, disp]] of recorded.buckets) {
        const s = bucketFileName(start, SCHEDULE_SUFFIX)
        const d = bucketFileName(start, DISPATCH_SUFFIX)
        keep.add(`${SCHEDULE_DIR}/${s}`)
        keep.add(`${DISPATCH_DIR}/${d}`)
        const entry = recorded.buckets.get(start) as [number, number, number]
        entry[1] = cutTo(path.join(dir, SCHEDULE_DIR, s), sched)
        entry[2] = cutTo(path.join(dir, DISPATCH_DIR, d), disp)
      }
      for (const d of [SCHEDULE_DIR, DISPATCH_DIR]) {
        for (const f of fs.readdirSync(path.join(dir, d)))
          if (!keep.has(`${d}/${f}`)) fs.rmSync(path.join(dir, d, f), { force: true })
      }
      this.state.deadLetterBytes = cutTo(path.join(dir, DEAD_LETTER_FILE), recorded.deadLetterBytes)
    }
    const cancels = new CancelLog(path.join(dir, 'cancel.log'), this.log)
    cancels.open(Date.now(), this.opts.tombstoneKeepMs)
    this.cancels = cancels
  }

  /**
   * The follower cut the message-log copy back to `offset`. An adopted checkpoint past it names
   * records this copy no longer holds, and the copied files hold them: the next master may write other
   * records at those offsets, which a promoted replay starting at the checkpoint would skip. A round
   * copying meanwhile may be copying such records. Either way everything derived is dropped and copied
   * again from the master followed now.
   */
  onCut(kind: number, offset: number): void {
    if (kind !== 0) return
    if (offset >= this.state.checkpoint && !this.copying) return
    this.forget(`the message-log copy was cut back to ${offset} (checkpoint ${this.state.checkpoint})`)
  }

  /**
   * The follower follows another master: the files copied so far (and those of a round in progress)
   * are another master's, compared by sizes and first offsets that the new one need not share.
   */
  onMasterChange(master: string | undefined, epoch: number): void {
    if (this.state.checkpoint < 0 && !this.copying && this.state.buckets.size === 0) return
    this.forget(`following another master (${master ?? 'unknown'}, epoch ${epoch})`)
  }

  /** Drops what this dir recorded, adopted and copied (as `prepare` does with no recorded copy). */
  private forget(why: string): void {
    this.log.warn({ why }, 'slave: dropping the copied derived files; they are copied again')
    this.generation++
    this.state = { runId: '', checkpoint: -1, deadLetterBytes: 0, buckets: new Map() }
    // The record first: a restart meanwhile drops whatever is left (prepare), never adopts it.
    fs.rmSync(path.join(this.opts.dataDir, 'replication', MIRROR_FILE), { force: true })
    this.dropDerived()
    this.roundSoon = true
    this.wakeRound?.()
  }

  /** Deletes the adopted checkpoint and every copied derived file (not the cancel log). */
  private dropDerived(): void {
    const dir = this.opts.dataDir
    fs.rmSync(path.join(dir, CHECKPOINT_FILE), { force: true })
    for (const d of [SCHEDULE_DIR, DISPATCH_DIR]) {
      if (!fs.existsSync(path.join(dir, d))) continue
      for (const f of fs.readdirSync(path.join(dir, d))) fs.rmSync(path.join(dir, d, f), { force: true })
    }
    fs.rmSync(path.join(dir, DEAD_LETTER_FILE), { force: true })
  }

  /** The follower's side loop: rounds and cancels until it stops; then the cancel log is closed. */
  async run(f: ReplicationFollower): Promise<void> {
    try {
      await Promise.all([this.roundLoop(f), this.cancelLoop(f)])
    } finally {
      await this.cancels?.close()
      this.cancels = undefined
    }
  }

  /** Closes the cancel log prepare() opened, when run() never will (the follower failed to start). */
  async close(): Promise<void> {
    await this.cancels?.close()
    this.cancels = undefined
  }

  status(): DelayMirrorStatus {
    return {
      checkpoint: this.state.checkpoint,
      masterCheckpoint: this.masterCheckpoint,
      adoptedAt: this.adoptedAt,
      buckets: this.state.buckets.size,
      cancelSeq: this.cancelSeq,
      lastError: this.lastError,
    }
  }

  /**
   * A slave's data dir is format 2 (data-meta.ts): the log it copies may receive refusal markers at
   * any time, and an older version must not open it and deliver them.
   */
  private checkMeta(): void {
    checkDataMeta(this.opts.dataDir, this.opts.bucketMinutes, META_VERSION_MARKERS)
  }

  private async roundLoop(f: ReplicationFollower): Promise<void> {
    while (f.active) {
      try {
        this.roundSoon = false
        this.roundsStarted++
        this.copying = true
        await this.round(f)
        this.lastError = undefined
      } catch (err) {
        if (!f.active) return
        const e = toQmqError(err)
        if (e.message !== this.lastError)
          this.log.warn({ err: e.message }, 'slave: copying the derived files failed')
        this.lastError = e.message
      } finally {
        this.copying = false
      }
      if (!this.roundSoon) {
        await Promise.race([
          f.pause(this.opts.intervalMs),
          new Promise<void>((resolve) => {
            this.wakeRound = resolve
          }),
        ])
        this.wakeRound = undefined
        if (!this.roundSoon) {
          this.dropBackoffMs = 0 // a round interval without a drop
          continue
        }
      }
      // Dropped: one full round at once; while drops repeat (a failing disk: each failed sync cuts the
      // copy), the master is told at once that this slave holds no checkpoint, and the next full round
      // waits a round interval, doubling up to MAX_DROP_BACKOFF_MS.
      const wait = this.dropBackoffMs
      this.dropBackoffMs = Math.min(Math.max(2 * wait, this.opts.intervalMs), MAX_DROP_BACKOFF_MS)
      if (wait === 0) continue
      await this.tellDropped(f)
      await f.pause(wait)
    }
  }

  /** A manifest request alone (adopted -1 after a drop): the master counts this slave out of sync. */
  private async tellDropped(f: ReplicationFollower): Promise<void> {
    const o = this.opts
    try {
      await f.request(
        RequestCode.DELAY_REPL_MANIFEST,
        encodeManifestRequest({ token: o.clusterSecret, slaveId: o.slaveId, adopted: this.state.checkpoint }),
      )
    } catch (err) {
      if (f.active)
        this.log.warn({ err: toQmqError(err).message }, 'slave: telling the master of a drop failed')
    }
  }

  private async round(f: ReplicationFollower): Promise<void> {
    const o = this.opts
    const generation = this.generation
    /** Nothing dropped meanwhile (`forget`): this round's files are still the ones to record. */
    const current = () => f.active && this.generation === generation
    const res = decodeManifestResponse(
      await f.request(
        RequestCode.DELAY_REPL_MANIFEST,
        encodeManifestRequest({ token: o.clusterSecret, slaveId: o.slaveId, adopted: this.state.checkpoint }),
      ),
    )
    if (res.bucketMinutes !== o.bucketMinutes)
      throw new QmqError(
        'QMQ_ERR_CONFIG_INVALID',
        `the master's bucketMinutes is ${res.bucketMinutes}, this slave's ${o.bucketMinutes}: they must be equal`,
      )
    const m = res.manifest
    this.masterCheckpoint = m.checkpoint
    // Copied files must only hold records the copied message log holds (see the class comment).
    if (f.copyEnd(0) < m.checkpoint || !f.active) return
    if (!current()) return
    if (m.checkpoint === this.state.checkpoint && res.runId === this.state.runId && this.same(m)) {
      this.adoptedAt = Date.now()
      return
    }
    const dir = o.dataDir
    // Dead letters first: a dispatch entry of a parked frame is never held without its dead letter.
    const dl = path.join(dir, DEAD_LETTER_FILE)
    if (res.runId !== this.state.runId) {
      await this.copyWhole(f, DEAD_LETTER_FILE, dl, m.deadLetterBytes)
    } else {
      await this.copyRange(f, DEAD_LETTER_FILE, dl, this.state.deadLetterBytes, m.deadLetterBytes)
    }
    if (!current()) return
    this.state.deadLetterBytes = m.deadLetterBytes
    const listed = new Set<number>()
    for (const [start, first, sched, disp] of m.buckets) {
      if (!current()) return
      listed.add(start)
      const sName = `${SCHEDULE_DIR}/${bucketFileName(start, SCHEDULE_SUFFIX)}`
      const dName = `${DISPATCH_DIR}/${bucketFileName(start, DISPATCH_SUFFIX)}`
      let held = this.state.buckets.get(start)
      if (held === undefined || held[0] !== first) {
        // A new bucket, or one dropped and created again on the master: copied from its start.
        fs.rmSync(path.join(dir, sName), { force: true })
        fs.rmSync(path.join(dir, dName), { force: true })
        held = [first, 0, 0]
        this.state.buckets.set(start, held)
      }
      const s = await this.copyRange(f, sName, path.join(dir, sName), held[1], sched)
      if (!current()) return
      if (s < 0) continue // dropped on the master meanwhile: gone from its next manifest
      held[1] = s
      const d = await this.copyRange(f, dName, path.join(dir, dName), held[2], disp)
      if (!current()) return
      if (d >= 0) held[2] = d
    }
    await fsyncDirAsync(path.join(dir, SCHEDULE_DIR))
    await fsyncDirAsync(path.join(dir, DISPATCH_DIR))
    // Checked again: the copy may have been cut below the checkpoint while the files were copied.
    if (!current() || f.copyEnd(0) < m.checkpoint) return
    // Everything the checkpoint covers is durable here: record it, then adopt it.
    const dropped = [...this.state.buckets.keys()].filter((s) => !listed.has(s))
    for (const s of dropped) this.state.buckets.delete(s)
    this.state.runId = res.runId
    this.state.checkpoint = m.checkpoint
    await writeState(dir, this.state)
    await writeFileAtomic(path.join(dir, CHECKPOINT_FILE), JSON.stringify({ messageLogOffset: m.checkpoint }))
    if (this.generation !== generation) {
      // A cut or another master while the record was written: it must not stay.
      this.forget('the copy changed while its round was recorded')
      return
    }
    for (const s of dropped) {
      fs.rmSync(path.join(dir, SCHEDULE_DIR, bucketFileName(s, SCHEDULE_SUFFIX)), { force: true })
      fs.rmSync(path.join(dir, DISPATCH_DIR, bucketFileName(s, DISPATCH_SUFFIX)), { force: true })
    }
    f.deleteCopyBefore(0, this.opts.messageKeepFrom?.(m.checkpoint) ?? m.checkpoint)
    this.adoptedAt = Date.now()
  }

  /** The manifest names exactly what is held. */
  private same(m: ReplicaManifest): boolean {
    if (m.deadLetterBytes !== this.state.deadLetterBytes || m.buckets.length !== this.state.buckets.size)
      return false
    for (const [start, first, sched, disp] of m.buckets) {
      const h = this.state.buckets.get(start)
      if (h === undefined || h[0] !== first || h[1] !== sched || h[2] !== disp) return false
    }
    return true
  }

  /**
   * Makes `file` hold the master's bytes [0, to) given that it holds [0, from) already: appends what
   * is missing (fdatasynced), cuts what is past `to`. Returns the size held, -1 when the master no
   * longer has the file.
   */
  private async copyRange(
    f: ReplicationFollower,
    name: string,
    file: string,
    from: number,
    to: number,
  ): Promise<number> {
    if (from === to && (to === 0 || fs.existsSync(file))) return to
    const [kind, check] = this.fileCheck(name)
    // Every chunk is verified before it is written (chunk-verifier.ts): a refused one fails the round,
    // which is tried again after the round interval; what the round wrote is all verified.
    const verifier = new ChunkVerifier(check)
    const fh = await fs.promises.open(file, fs.constants.O_RDWR | fs.constants.O_CREAT)
    try {
      if (from > to) {
        await fh.truncate(to)
        await fh.datasync()
        return to
      }
      await fh.truncate(from)
      let at = from
      /** End of what is written (`at` less what the verifier holds). */
      let written = from
      while (at < to) {
        const res = decodeFileResponse(
          await f.request(
            RequestCode.DELAY_REPL_FILE,
            encodeFileRequest({
              token: this.opts.clusterSecret,
              slaveId: this.opts.slaveId,
              name,
              offset: at,
              maxBytes: Math.min(this.opts.chunkBytes, to - at),
            }),
          ),
        )
        if (res.size < 0) return -1
        if (res.data.length === 0)
          throw new QmqError(
            'QMQ_ERR_INTERNAL',
            `the master's ${name} is shorter (${res.size}) than its manifest says (${to})`,
          )
        let good: ChunkPiece[]
        try {
          good = verifier.push(at, res.data, at + res.data.length >= to)
        } catch (err) {
          if (err instanceof ChunkRefused) {
            this.opts.onChunkRefused?.(kind)
            this.log.warn({ file: name, offset: err.offset, reason: err.message }, 'slave: refused a chunk')
          }
          throw err
        }
        // (All verified: without acceptDamaged, no piece is anything else.)
        for (const { data: piece } of good) {
          let w = 0
          while (w < piece.length) {
            const { bytesWritten } = await fh.write(piece, w, piece.length - w, written + w)
            w += bytesWritten
          }
          written += piece.length
        }
        at += res.data.length
      }
      await fh.datasync()
      return to
    } finally {
      await fh.close()
    }
  }

  /** The check of a copied file's entries (its store's own), by its name on the master. */
  private fileCheck(name: string): ['dead_letters' | 'schedule' | 'dispatch', ScanCheck] {
    if (name === DEAD_LETTER_FILE) return ['dead_letters', checkDeadLetter]
    if (name.startsWith(`${DISPATCH_DIR}/`)) return ['dispatch', checkDispatchEntry]
    const max = this.opts.maxMessageBytes
    return ['schedule', (b, p, e) => checkScheduleFrame(b, p, e, max)]
  }

  /** Replaces `file` with the master's [0, size) (temp file, fdatasync, rename). */
  private async copyWhole(f: ReplicationFollower, name: string, file: string, size: number): Promise<void> {
    const tmp = `${file}.copy`
    fs.writeFileSync(tmp, '')
    const got = await this.copyRange(f, name, tmp, 0, size)
    if (got < 0) {
      fs.rmSync(tmp, { force: true })
      throw new QmqError('QMQ_ERR_INTERNAL', `the master has no ${name}`)
    }
    await fs.promises.rename(tmp, file)
    await fsyncDirAsync(path.dirname(file))
  }

  private async cancelLoop(f: ReplicationFollower): Promise<void> {
    let runId = ''
    let after = -1
    let snapshot = false
    while (f.active) {
      try {
        const res = decodeCancelsResponse(
          await f.request(
            RequestCode.DELAY_REPL_CANCELS,
            encodeCancelsRequest({
              token: this.opts.clusterSecret,
              slaveId: this.opts.slaveId,
              runId,
              after: Math.max(after, 0),
              snapshot,
              waitMs: this.opts.waitMs,
            }),
          ),
        )
        const cancels = this.cancels
        if (cancels === undefined || !f.active) return
        // Durable before the next request acknowledges them (group commit: one write, one fdatasync).
        await Promise.all(res.entries.map((e) => cancels.add([e.id], e.at)))
        runId = res.runId
        snapshot = res.kind === CancelsKind.SNAPSHOT
        if (res.kind !== CancelsKind.SNAPSHOT) after = res.seq
        this.cancelSeq = after
      } catch (err) {
        if (!f.active) return
        this.lastError = toQmqError(err).message
        // The master moves its snapshot on as it answers a page: after a lost answer or a page not
        // written here, asking for the next page would skip this one's tombstones (cancelled messages
        // delivered after a promotion). Another run id makes the master start the snapshot over.
        if (snapshot) {
          runId = ''
          snapshot = false
        }
        // follower.request dropped the connection and waited; a failed local write waits here.
        if (!(err instanceof QmqError)) await f.pause(1_000)
      }
    }
  }
}

/** Cuts `file` to at most `size` bytes; returns the size it holds (0 when missing). */
function cutTo(file: string, size: number): number {
  let actual: number
  try {
    actual = fs.statSync(file).size
  } catch {
    return 0
  }
  if (actual > size) {
    fs.truncateSync(file, size)
    return size
  }
  return actual
}

// <dataDir>/replication/delay-mirror.json:
//   { "version": 1, "runId": "...", "checkpoint": N, "deadLetterBytes": N,
//     "buckets": [[start, firstMsgOffset, scheduleBytes, dispatchBytes], ...] }
function readState(dataDir: string): State | undefined {
  try {
    const v = JSON.parse(fs.readFileSync(path.join(dataDir, 'replication', MIRROR_FILE), 'utf8')) as {
      runId?: unknown
      checkpoint?: unknown
      deadLetterBytes?: unknown
      buckets?: unknown
    }
    if (
      typeof v.runId !== 'string' ||
      !Number.isSafeInteger(v.checkpoint) ||
      !Number.isSafeInteger(v.deadLetterBytes) ||
      !Array.isArray(v.buckets)
    )
      return undefined
    const buckets = new Map<number, [number, number, number]>()
    for (const b of v.buckets as unknown[]) {
      if (!Array.isArray(b) || b.length !== 4 || !b.every(Number.isSafeInteger)) return undefined
      const [start, first, sched, disp] = b as number[]
      buckets.set(start as number, [first as number, sched as number, disp as number])
    }
    return {
      runId: v.runId,
      checkpoint: v.checkpoint as number,
      deadLetterBytes: v.deadLetterBytes as number,
      buckets,
    }
  } catch {
    return undefined
  }
}

async function writeState(dataDir: string, s: State): Promise<void> {
  const buckets = [...s.buckets].map(([start, [first, sched, disp]]) => [start, first, sched, disp])
  await writeFileAtomic(
    path.join(dataDir, 'replication', MIRROR_FILE),
    `${JSON.stringify({ version: 1, runId: s.runId, checkpoint: s.checkpoint, deadLetterBytes: s.deadLetterBytes, buckets })}\n`,
  )
}
