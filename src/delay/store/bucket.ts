import path from 'node:path'
import type { FsIo } from '../../broker/store/fs-io'
import { DispatchLog } from './dispatch-log'
import { FRAME_HEADER_BYTES, ScheduleLog } from './schedule-log'

/**
 * One time bucket: its schedule log, its dispatch log and the counters the store keeps for it.
 *
 * States: 'disk' (only on disk; new frames are only written), 'loading' (the loader is reading the
 * frames present when it started into the wheel; frames appended meanwhile go straight to the wheel),
 * 'loaded'
 * (every pending frame is in the wheel, the due queue or in flight).
 */
export type BucketState = 'disk' | 'loading' | 'loaded'

export const SCHEDULE_DIR = 'schedule'
export const DISPATCH_DIR = 'dispatch'
export const SCHEDULE_SUFFIX = '.sched'
export const DISPATCH_SUFFIX = '.disp'

export function bucketFileName(start: number, suffix: string): string {
  return `${String(start).padStart(13, '0')}${suffix}`
}

export class Bucket {
  readonly start: number
  readonly end: number
  /** Index in the store's slot table; the wheel's `x` of this bucket's entries. */
  readonly slot: number
  readonly schedule: ScheduleLog
  readonly dispatch: DispatchLog
  state: BucketState = 'disk'
  /** Frames in the schedule log. */
  total = 0
  /** Frames delivered (acknowledged by a broker) or skipped as cancelled. */
  done = 0
  /** Highest message-log offset filed here (replay skips records at or below it). */
  maxMsgOffset = -1
  /** Message-log offset of its first frame (-1: none yet): who this bucket is, for a slave's copy. */
  firstMsgOffset = -1
  /** Has unsynced appends in its schedule or dispatch log. */
  dirty = false
  /** ms the last load took (metrics). */
  loadMs = 0

  constructor(
    dataDir: string,
    start: number,
    widthMs: number,
    slot: number,
    scheduleBytes: number,
    maxMessageBytes: number,
    io?: FsIo,
  ) {
    this.start = start
    this.end = start + widthMs
    this.slot = slot
    this.schedule = new ScheduleLog(
      path.join(dataDir, SCHEDULE_DIR, bucketFileName(start, SCHEDULE_SUFFIX)),
      scheduleBytes,
      maxMessageBytes,
      io,
    )
    this.dispatch = new DispatchLog(
      path.join(dataDir, DISPATCH_DIR, bucketFileName(start, DISPATCH_SUFFIX)),
      io,
    )
  }

  get pending(): number {
    return this.total - this.done
  }
}

/** Fields of the record inside a schedule-log frame (see record.ts for offsets). */
const REC = FRAME_HEADER_BYTES

export function frameScheduleAt(frame: Buffer): number {
  return frame.readInt32BE(REC + 20) * 0x1_0000_0000 + frame.readUInt32BE(REC + 24)
}

export function recordScheduleAt(record: Buffer): number {
  return record.readInt32BE(20) * 0x1_0000_0000 + record.readUInt32BE(24)
}

/** [start, end) of the id bytes inside a record starting at `at`. */
export function recordIdRange(buf: Buffer, at: number): [number, number] {
  const idLength = buf.readUInt16BE(at + 28)
  return [at + 32, at + 32 + idLength]
}
