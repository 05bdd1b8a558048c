import fs from 'node:fs'
import path from 'node:path'
import type { GroupSnapshot } from './consumer-state'
import { fsyncDirAsync } from '../../common/durable-file'

/**
 * The checkpoint: `checkpoint/checkpoint.json`, replaced atomically (write `.tmp`, fsync, move the
 * current one to `checkpoint.prev.json`, rename, fsync the directory). Recovery loads it, then replays
 * the message log from `messageLogOffset` and the action log from `actionLogOffset`. When it cannot be
 * read (or a crash came between the two renames), recovery uses the previous one: the store keeps the
 * action log from the previous checkpoint's offset on, so that one is always complete too.
 *
 * Invariants when it is written:
 * - every message-log byte below `messageLogOffset` is on stable storage, and each subject's consume
 *   log holds (on stable storage) exactly the entries of those messages: `subjects[name]` entries;
 * - `groups` is the consumer state after applying every action below `actionLogOffset` and none
 *   after it (the checkpoint writes a MARK action at the snapshot instant; the offset is its end).
 */
export const CHECKPOINT_VERSION = 1

export interface Checkpoint {
  version: number
  createdAt: number
  messageLogOffset: number
  actionLogOffset: number
  /** Subject -> its next sequence (= consume-log entries covered). */
  subjects: Record<string, number>
  groups: GroupSnapshot[]
}

export function checkpointPath(dir: string): string {
  return path.join(dir, 'checkpoint.json')
}

export function previousCheckpointPath(dir: string): string {
  return path.join(dir, 'checkpoint.prev.json')
}

/** Reads one checkpoint file; undefined when it does not exist, throws when it cannot be used. */
function readCheckpointFile(file: string): Checkpoint | undefined {
  if (!fs.existsSync(file)) return undefined
  const parsed = JSON.parse(fs.readFileSync(file, 'utf8')) as Checkpoint
  if (parsed === null || typeof parsed !== 'object' || parsed.version !== CHECKPOINT_VERSION)
    throw new Error(`checkpoint version ${(parsed as Checkpoint | null)?.version} is not supported`)
  if (!Number.isSafeInteger(parsed.messageLogOffset) || !Number.isSafeInteger(parsed.actionLogOffset))
    throw new Error('checkpoint offsets are missing or invalid')
  if (!Array.isArray(parsed.groups) || typeof parsed.subjects !== 'object' || parsed.subjects === null)
    throw new Error('checkpoint state is missing')
  return parsed
}

export interface LoadedCheckpoint {
  checkpoint: Checkpoint | undefined
  /** Which file it came from ('none': neither exists or neither could be read). */
  source: 'current' | 'previous' | 'none'
  /** Why the current one (and the previous, if tried) could not be used. */
  problems: string[]
}

/** The newest usable checkpoint: the current one, else the previous one. */
export function loadCheckpoint(dir: string): LoadedCheckpoint {
  const problems: string[] = []
  const attempt = (file: string): Checkpoint | undefined => {
    try {
      const cp = readCheckpointFile(file)
      if (cp === undefined) problems.push(`${path.basename(file)} does not exist`)
      return cp
    } catch (err) {
      problems.push(`${path.basename(file)}: ${err instanceof Error ? err.message : String(err)}`)
      return undefined
    }
  }
  const current = attempt(checkpointPath(dir))
  if (current !== undefined) return { checkpoint: current, source: 'current', problems: [] }
  const previous = attempt(previousCheckpointPath(dir))
  if (previous !== undefined) return { checkpoint: previous, source: 'previous', problems }
  return { checkpoint: undefined, source: 'none', problems }
}

export async function writeCheckpoint(dir: string, cp: Checkpoint): Promise<void> {
  // Every step off the event loop (a checkpoint runs while the broker serves: a synchronous fsync of
  // the directory stalled every connection for as long as the disk took).
  await fs.promises.mkdir(dir, { recursive: true })
  const file = checkpointPath(dir)
  const tmp = `${file}.tmp`
  const fh = await fs.promises.open(tmp, 'w')
  try {
    await fh.writeFile(JSON.stringify(cp))
    await fh.sync()
  } finally {
    await fh.close()
  }
  // The current one becomes the previous one (recovery's fallback), then the new one takes its place.
  try {
    await fs.promises.rename(file, previousCheckpointPath(dir))
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
  await fs.promises.rename(tmp, file)
  await fsyncDirAsync(dir)
}
