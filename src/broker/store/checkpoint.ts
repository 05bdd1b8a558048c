import fs from 'node:fs'
import path from 'node:path'
import type { GroupSnapshot } from './consumer-state'
import { fsyncDir } from './fs-io'

/**
 * The checkpoint: `checkpoint/checkpoint.json`, replaced atomically (write `.tmp`, fsync, rename,
 * fsync the directory). Recovery loads it, then replays the message log from `messageLogOffset`
 * and the action log from `actionLogOffset`.
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

export function readCheckpoint(dir: string): Checkpoint | undefined {
  const file = checkpointPath(dir)
  if (!fs.existsSync(file)) return undefined
  const parsed = JSON.parse(fs.readFileSync(file, 'utf8')) as Checkpoint
  if (parsed.version !== CHECKPOINT_VERSION)
    throw new Error(`checkpoint version ${parsed.version} is not supported`)
  return parsed
}

export async function writeCheckpoint(dir: string, cp: Checkpoint): Promise<void> {
  fs.mkdirSync(dir, { recursive: true })
  const file = checkpointPath(dir)
  const tmp = `${file}.tmp`
  const fh = await fs.promises.open(tmp, 'w')
  try {
    await fh.writeFile(JSON.stringify(cp))
    await fh.sync()
  } finally {
    await fh.close()
  }
  await fs.promises.rename(tmp, file)
  fsyncDir(dir)
}
