import { MIN_RECORD_BYTES, readRecordHeader } from '../../common/record'
import { type Checkpoint, loadCheckpoint } from './checkpoint'
import { ConsumeLog } from './consume-log'
import { checkConsumeLog, type LostRange } from './consume-repair'
import { ConsumerState } from './consumer-state'
import type { FileMessageStore } from './file-message-store'
import { FRAME_BYTES, readFrame } from './message-log'
import type { SkippedRange } from './segment-log'
import type { RecoveryReport } from './types'

/**
 * Recovery on open:
 * 1. Load the checkpoint (message-log offset M, action-log offset A, consume-log lengths, consumer state).
 * 2. Cut every consume log to its checkpointed length; one that is shorter than that (missing, or
 *    damaged) is rebuilt from the start of the message log.
 * 3. Scan the message log from M (or its start, for rebuilds), verifying every frame and record CRC.
 *    A damaged range is stepped over: the scan resynchronises on the next valid frame and keeps every
 *    record after it; the range is reported (`skipped`). Only damage after which nothing valid follows
 *    in its segment (a torn tail) is truncated (`truncated`). Each record after M re-creates its
 *    consume-log entry; a sequence that later records show was assigned but whose record was lost
 *    becomes a hole (`lostMessages`). The same scan, started earlier within the dedupe window (bounded
 *    by dedupeRebuildMaxBytes, whole segments), refills the dedupe index (frame checks only).
 * 3b. Check each consume log's entries from before M against the message log (consume-repair.ts):
 *    entries whose record lies in a damaged range become holes (`lostMessages`); damaged entries are
 *    rebuilt from the message log (`repairedConsumeLogs`).
 * 4. Restore consumer state and replay the action log from A (CRC-checked, torn tail truncated).
 *    Actions that refer to messages lost with an unsynced tail ('async') are clamped away.
 * 5. Every consumer gets a fresh lease from now.
 */
export async function recoverStore(store: FileMessageStore): Promise<RecoveryReport> {
  const t0 = Date.now()
  const o = store.options
  const now = store.clock.now()
  const loaded = loadCheckpoint(store.dirs.checkpoint)
  const cp: Checkpoint | undefined = loaded.checkpoint
  if (loaded.source === 'previous') {
    store.log.warn({ problems: loaded.problems }, 'checkpoint unusable; recovering from the previous one')
  } else if (loaded.source === 'none' && store.alog.log.startOffset > 0) {
    // No usable checkpoint while the action log's first segments are gone: the consumer progress they
    // held (acks, hand-outs, retry times before that point) cannot be rebuilt.
    store.log.error(
      { problems: loaded.problems, actionLogStart: store.alog.log.startOffset },
      'no usable checkpoint and the action log does not start at 0: consumer progress before it is lost',
    )
  }
  const M = cp?.messageLogOffset ?? 0
  const rebuild = new Set<string>()
  const rebuilt: string[] = []
  /** Per subject: consume-log length kept from before the replay (the entries checkConsumeLog checks). */
  const kept = new Map<string, number>()
  const names = new Set([...ConsumeLog.discover(store.dirs.consume), ...Object.keys(cp?.subjects ?? {})])
  for (const name of names) {
    const s = store.subjectsIndex.getOrCreate(name)
    const expected = cp ? (cp.subjects[name] ?? 0) : 0
    if (!cp && s.consume.fileEntries > 0) {
      rebuild.add(name)
      rebuilt.push(name)
      await s.consume.truncate(0)
    } else if (s.consume.fileEntries < expected) {
      rebuild.add(name)
      rebuilt.push(name)
      store.log.warn(
        { subject: name, entries: s.consume.fileEntries, expected },
        'consume log is short; rebuilding it from the message log',
      )
      await s.consume.truncate(0)
    } else {
      await s.consume.truncate(expected)
      kept.set(name, expected)
    }
  }
  const mlog = store.mlog
  // Where the dedupe window starts: the first segment written within the window, then whole
  // segments dropped from the front until at most dedupeRebuildMaxBytes remain to scan.
  let dedupeFrom = Number.POSITIVE_INFINITY
  // A segment written within the window but past the limit: its ids are forgotten (the effective
  // window starts at the first record scanned; see DedupeIndex.forgetBefore).
  let dedupeShort = false
  if (store.dedupe.enabled) {
    const segs = mlog.log.segments()
    const end = mlog.log.endOffset
    for (const seg of segs) {
      if (seg.mtimeMs < Date.now() - o.dedupeWindowMs) continue // mtimes are wall-clock
      if (end - seg.base > o.dedupeRebuildMaxBytes) {
        if (seg.size > 0) dedupeShort = true
        continue
      }
      dedupeFrom = seg.base
      break
    }
  }
  const replayFrom = rebuild.size > 0 || !cp ? 0 : M
  const scanFrom = Math.min(replayFrom, dedupeFrom)
  let replayedRecords = 0
  const dedupeLimit = now - o.dedupeWindowMs
  const skipped: SkippedRange[] = []
  const lostMessages: { subject: string; first: number; last: number }[] = []
  // Sequences missing before a subject's first record when the scan starts at the log's start went
  // with retention, not with damage.
  const retainedFrom = replayFrom <= mlog.log.startOffset && mlog.log.startOffset > 0
  /** Per subject: end of its last record replayed. */
  const lastEnd = new Map<string, number>()
  const truncated = await mlog.recover(
    scanFrom,
    (buf, pos, length, offset) => {
      const f = readFrame(buf, pos)
      const h = readRecordHeader(buf, pos + FRAME_BYTES, { verify: false, end: pos + length })
      if (dedupeShort && offset >= dedupeFrom) {
        store.dedupe.forgetBefore(f.storedAt)
        dedupeShort = false
      }
      if (offset >= dedupeFrom && f.storedAt >= dedupeLimit) {
        // The first copy wins (a later one was stored when the first had left the window).
        const rec = pos + FRAME_BYTES
        store.dedupe.findOrAdd(buf, rec, f.seq, f.storedAt)
      }
      if (offset < replayFrom || (offset < M && !rebuild.has(h.subject))) return
      visitReplay(h.subject, f, offset, length)
    },
    replayFrom,
    (range) => skipped.push(range),
  )
  function visitReplay(
    subject: string,
    f: ReturnType<typeof readFrame>,
    offset: number,
    length: number,
  ): void {
    const s = store.subjectsIndex.getOrCreate(subject)
    if (f.seq < s.consume.nextSeq) return
    const gap = f.seq - s.consume.nextSeq
    if (gap > 0 && !(retainedFrom && s.consume.nextSeq === 0)) {
      // Sequences lost in damage lie between this subject's previous record and this one, each in at
      // least a minimal frame: a larger jump means this "frame" is not one (resynchronisation landed
      // on bytes inside a message body that look like a frame). It is ignored.
      const since = lastEnd.get(subject) ?? (rebuild.has(subject) ? 0 : M)
      if (gap > (offset - since) / (FRAME_BYTES + MIN_RECORD_BYTES)) {
        store.log.error(
          { subject, offset, seq: f.seq, expected: s.consume.nextSeq },
          'message log: ignored a frame whose sequence cannot follow the records before it',
        )
        return
      }
      lostMessages.push({ subject, first: s.consume.nextSeq, last: f.seq - 1 })
    }
    lastEnd.set(subject, offset + length)
    s.consume.fillTo(f.seq)
    s.consume.push(offset + FRAME_BYTES, length - FRAME_BYTES, f.storedAt, f.tagMask)
    replayedRecords++
  }
  if (dedupeShort) store.dedupe.forgetBefore(now) // nothing scanned at all
  for (const t of truncated) {
    store.log.warn(t, 'message log: dropped a torn or corrupt tail')
  }
  for (const r of skipped) {
    store.log.error(r, 'message log: skipped a damaged range; resynchronised on the next valid frame')
  }
  const lostRanges: LostRange[] = [
    ...skipped.map((r) => ({ from: r.logOffset, to: r.logOffset + r.bytes })),
    ...truncated.map((t) => ({ from: t.logOffset, to: t.logOffset + t.droppedBytes })),
  ]
  const repairedConsumeLogs: RecoveryReport['repairedConsumeLogs'] = []
  const logEnd = mlog.log.endOffset
  for (const s of store.subjectsIndex.map.values()) {
    if (logEnd < M && s.consume.nextSeq > 0) {
      // The checkpointed part of the log itself was damaged: entries pointing past the end go.
      const cut = await s.consume.search((e) => e.offset + e.size > logEnd)
      if (cut < s.consume.nextSeq) {
        store.log.warn(
          { subject: s.name, from: cut, to: s.consume.nextSeq },
          'consume log cut to the message log end',
        )
        await s.consume.truncate(cut)
      }
    }
    const upTo = kept.get(s.name) ?? 0
    if (upTo > s.consume.startSeq) {
      const checked = await checkConsumeLog(mlog, s.consume, upTo, lostRanges)
      for (const r of checked.repaired) {
        repairedConsumeLogs.push({ subject: s.name, ...r })
        store.log.error(
          { subject: s.name, ...r },
          'consume log: damaged entries rebuilt from the message log',
        )
      }
      for (const r of checked.lost) lostMessages.push({ subject: s.name, ...r })
    }
    s.nextSeq = s.consume.nextSeq
    s.lowSeq = s.consume.startSeq
    // Sequences whose messages were deleted by retention (or never rebuilt) are not readable.
    if (s.consume.nextSeq > s.lowSeq) {
      const first = await s.consume.search((e) => e.offset >= mlog.log.startOffset)
      s.lowSeq = first
    }
    await s.consume.flush()
  }

  // Consumer state: checkpoint + action replay.
  store.state = cp ? ConsumerState.restore(cp.groups) : new ConsumerState()
  let replayedActions = 0
  const actionTruncs = await store.alog.recover(cp?.actionLogOffset ?? 0, (a) => {
    store.state.apply(a)
    replayedActions++
  })
  for (const t of actionTruncs) store.log.warn(t, 'action log: dropped a torn or corrupt tail')
  for (const g of store.state.all()) {
    const next = store.subjectsIndex.get(g.subject)?.consume.nextSeq ?? 0
    if (g.cursor > next) g.cursor = next
    for (const [id, c] of g.broadcast) if (c > next) g.broadcast.set(id, next)
    for (const seq of [...g.inflight.keys()]) if (seq >= next) g.drop(seq, now)
    // Order-key queues from the inflight entries (their head times start now).
    g.rebuildKeys(now)
    // Dead letters past the log end were lost with its tail; those below lowSeq lost their message
    // to retention (which prunes them live too).
    const low = store.subjectsIndex.get(g.subject)?.lowSeq ?? 0
    for (const seq of [...g.dead.keys()]) if (seq >= next || seq < low) g.dead.delete(seq)
    for (const c of g.consumers.values()) c.leaseUntil = now + o.leaseMs
    g.promoteDue(now)
  }
  lostMessages.sort((a, b) => (a.subject < b.subject ? -1 : a.subject > b.subject ? 1 : a.first - b.first))
  for (const l of lostMessages) store.log.error(l, 'messages lost to damage in the message log')
  const report: RecoveryReport = {
    checkpoint: loaded.source,
    checkpointProblems: loaded.problems,
    truncated,
    skipped: skipped.map(({ file, offset, logOffset, bytes, reason }) => ({
      file,
      offset,
      logOffset,
      bytes,
      reason,
    })),
    lostMessages,
    rebuiltConsumeLogs: rebuilt,
    repairedConsumeLogs,
    replayedFrom: Math.max(replayFrom, mlog.log.startOffset),
    replayedRecords,
    replayedActions,
    durationMs: Date.now() - t0,
  }
  store.log.info(
    {
      checkpoint: cp ? { messageLogOffset: cp.messageLogOffset, actionLogOffset: cp.actionLogOffset } : null,
      truncated: truncated.length,
      skipped: skipped.length,
      lostMessages: lostMessages.length,
      rebuiltConsumeLogs: rebuilt.length,
      repairedConsumeLogs: repairedConsumeLogs.length,
      replayedFrom: report.replayedFrom,
      replayedRecords,
      replayedActions,
      durationMs: report.durationMs,
    },
    'store recovered',
  )
  return report
}
