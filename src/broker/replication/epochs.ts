import fs from 'node:fs'
import path from 'node:path'
import { writeFileAtomicSync } from '../../common/durable-file'

/**
 * A broker data dir's epoch history, `<dataDir>/replication/epochs.json`:
 *
 *   { "version": 1, "epoch": 3, "history": [{ "epoch": 1, "messageOffset": 123, "actionOffset": 45 }, ...] }
 *
 * `epoch` is the epoch this data dir last acted in (as master, or as a slave that copied from a
 * master of that epoch). `history` says where each epoch began: the ends of the message and action
 * logs of the slave that was promoted, the moment its store opened as master. Everything a data dir
 * holds past the start of the first epoch later than its own was written by a master that lost its
 * place and was never acknowledged under `sync`: a returning former master cuts it (source.ts
 * answers TRUNCATE) before it copies from the new master. A slave adopts its master's history.
 */
export interface EpochStart {
  epoch: number
  messageOffset: number
  actionOffset: number
}

export interface EpochState {
  epoch: number
  history: EpochStart[]
}

const FILE = 'epochs.json'

export function epochsDir(dataDir: string): string {
  return path.join(dataDir, 'replication')
}

export function readEpochs(dataDir: string): EpochState {
  try {
    const v = JSON.parse(fs.readFileSync(path.join(epochsDir(dataDir), FILE), 'utf8')) as Partial<EpochState>
    const history = Array.isArray(v.history) ? v.history.filter(isEpochStart) : []
    return { epoch: Number.isSafeInteger(v.epoch) ? (v.epoch as number) : 0, history }
  } catch {
    return { epoch: 0, history: [] }
  }
}

export function writeEpochs(dataDir: string, state: EpochState): void {
  const dir = epochsDir(dataDir)
  fs.mkdirSync(dir, { recursive: true })
  writeFileAtomicSync(path.join(dir, FILE), `${JSON.stringify({ version: 1, ...state })}\n`)
}

export function isEpochStart(v: unknown): v is EpochStart {
  if (v === null || typeof v !== 'object') return false
  const e = v as Record<string, unknown>
  return (
    Number.isSafeInteger(e.epoch) &&
    Number.isSafeInteger(e.messageOffset) &&
    Number.isSafeInteger(e.actionOffset)
  )
}

/**
 * Where a copy that last followed (or led) `epoch` must be cut, for one log: the start of the first
 * later epoch in `history`; undefined when no later epoch is known.
 */
export function divergencePoint(
  history: readonly EpochStart[],
  epoch: number,
  log: 'message' | 'action',
): number | undefined {
  let first: EpochStart | undefined
  for (const h of history) if (h.epoch > epoch && (first === undefined || h.epoch < first.epoch)) first = h
  if (first === undefined) return undefined
  return log === 'message' ? first.messageOffset : first.actionOffset
}
