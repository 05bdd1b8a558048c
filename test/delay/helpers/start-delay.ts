import fs from 'node:fs'
import path from 'node:path'
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
 * records every fdatasync that succeeded and every positional write (by path). The broker store's fault-injection seam (FsIo).
 */
export class FaultyIo {
  failing: RegExp | undefined
  readonly synced: string[] = []
  readonly failed: string[] = []
  /** Files of every positional `write` through the layer (rewrites after a failed fdatasync). */
  readonly written: string[] = []
  /** While set, every fdatasync waits for it (to observe what happens meanwhile). */
  gate: Promise<void> | undefined
  readonly io: FsIo = {
    ...nodeFsIo,
    write: (fd, buffer, position) => {
      this.written.push(fdPath(fd))
      return nodeFsIo.write(fd, buffer, position)
    },
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

/**
 * Closes the server (the last closer) after taking a copy of its message log, then makes the data dir
 * look like a crash before any schedule log was synced: that copy, no schedule or dispatch data, and a
 * checkpoint at 0 (the whole message log is replayed at the next start). A copy is taken while the
 * server runs because a clean close would checkpoint and delete the segments.
 */
export async function crashBeforeSchedules(dir: string, closers: (() => Promise<void>)[]): Promise<void> {
  const saved = path.join(dir, 'saved')
  fs.cpSync(path.join(dir, 'message'), saved, { recursive: true })
  await (closers.pop() as () => Promise<void>)()
  fs.rmSync(path.join(dir, 'message'), { recursive: true })
  fs.renameSync(saved, path.join(dir, 'message'))
  for (const d of ['schedule', 'dispatch']) {
    fs.rmSync(path.join(dir, d), { recursive: true })
    fs.mkdirSync(path.join(dir, d))
  }
  fs.writeFileSync(path.join(dir, 'checkpoint.json'), JSON.stringify({ messageLogOffset: 0 }))
}
