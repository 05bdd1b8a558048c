import path from 'node:path'

/**
 * The directories of a broker's data dir, shared by the file store and by a slave's copy of its
 * master's logs (replication/follower.ts), which must land where the store will look on promotion.
 */
export interface StoreDirs {
  message: string
  consume: string
  action: string
  checkpoint: string
  /** Per-minute counts of this server (history.ts); not replicated: each server counts its own. */
  history: string
}

export function storeDirs(root: string): StoreDirs {
  return {
    message: path.join(root, 'messagelog'),
    consume: path.join(root, 'consumelog'),
    action: path.join(root, 'actionlog'),
    checkpoint: path.join(root, 'checkpoint'),
    history: path.join(root, 'history'),
  }
}
