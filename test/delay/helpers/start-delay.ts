import fs from 'node:fs'
import type { Test } from 'tap'
import type { FsIo } from '../../../src/broker/store/fs-io'
import { nodeFsIo } from '../../../src/broker/store/fs-io'
import type { ManualClock } from '../../../src/common/clock'
import { silentLogger } from '../../../src/common/logger'
import { type DelayOptions, DelayServer } from '../../../src/delay/delay-server'
import type { Sender } from '../../../src/delay/dispatch/sender'
import { RawClient } from '../../helpers/raw-client'
import { DELAY_TEST_SECRET } from './delay-helpers'

/** In-process delay servers for tests (not a test file). */

/** A data dir whose servers are closed (teardown registered first) before tap removes the dir. */
export function delayDir(t: Test): { dir: string; closers: (() => Promise<void>)[] } {
  const closers: (() => Promise<void>)[] = []
  t.teardown(async () => {
    for (const c of closers.reverse()) await c()
  })
  return { dir: t.testdir(), closers }
}

export async function startDelay(
  closers: (() => Promise<void>)[],
  dataDir: string,
  clock: ManualClock,
  sender: Sender,
  options: Partial<DelayOptions> = {},
  io?: FsIo,
): Promise<{ server: DelayServer; client: RawClient }> {
  const server = new DelayServer(
    {
      port: 0,
      dataDir,
      bucketMinutes: 1,
      loadAheadMs: 10_000,
      tickMs: 5,
      checkpointIntervalMs: 50,
      clusterSecret: DELAY_TEST_SECRET,
      ...options,
    },
    { clock, logger: silentLogger, sender, routes: { groups: async () => [] }, ...(io ? { io } : {}) },
  )
  await server.start()
  const client = await RawClient.connect(server.port)
  let closed = false
  const close = async () => {
    if (closed) return
    closed = true
    await client.close()
    await server.close()
  }
  closers.push(close)
  return { server, client }
}

/** The path a descriptor of this process refers to (Linux /proc), for fault injection by file. */
export function fdPath(fd: number): string {
  try {
    return fs.readlinkSync(`/proc/self/fd/${fd}`)
  } catch {
    return ''
  }
}

/**
 * An fs layer whose fdatasync fails with EIO for files matching `failing` while it is set, and
 * records every fdatasync that succeeded (by path). The broker store's fault-injection seam (FsIo).
 */
export class FaultyIo {
  failing: RegExp | undefined
  readonly synced: string[] = []
  readonly failed: string[] = []
  /** While set, every fdatasync waits for it (to observe what happens meanwhile). */
  gate: Promise<void> | undefined
  readonly io: FsIo = {
    ...nodeFsIo,
    fdatasync: async (fd) => {
      const file = fdPath(fd)
      if (this.gate) await this.gate
      if (this.failing?.test(file)) {
        this.failed.push(file)
        throw Object.assign(new Error(`EIO: i/o error, fdatasync (injected) ${file}`), { code: 'EIO' })
      }
      await nodeFsIo.fdatasync(fd)
      this.synced.push(file)
    },
  }
}
