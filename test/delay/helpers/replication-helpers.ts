import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import type { Test } from 'tap'
import type { DelayOptions, DelayServer } from '../../../src/delay/delay-server'
import { DELAY_TEST_SECRET } from './delay-helpers'

/** Setup shared by the in-process delay replication tests (replication*, dedupe). */

/**
 * Fast replication timings for a master/slave pair with a metaserver: checkpoints every 100 ms and
 * 64 KiB message-log segments, so rounds and segment deletion happen within a test's few seconds.
 */
export const FAST_REPLICATION: Partial<DelayOptions> = {
  port: 0,
  clusterSecret: DELAY_TEST_SECRET,
  bucketMinutes: 1,
  loadAheadMs: 10_000,
  tickMs: 5,
  checkpointIntervalMs: 100,
  replicationFetchWaitMs: 100,
  replicationInSyncLagMs: 1_500,
  replicationAckTimeoutMs: 3_000,
  segmentBytes: 64 * 1024,
}

/** A new temp dir named `qmq-<name>-…`, removed when `t` ends. */
export function freshDir(t: Test, name: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `qmq-${name}-`))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  return dir
}

/** A slave's data dir beside `aDir` (`<aDir>-slave`), created empty and removed when `t` ends. */
export function slaveDirBeside(t: Test, aDir: string): string {
  const bDir = path.join(path.dirname(aDir), `${path.basename(aDir)}-slave`)
  fs.rmSync(bDir, { recursive: true, force: true }) // an interrupted run's
  fs.mkdirSync(bDir, { recursive: true })
  t.teardown(() => fs.rmSync(bDir, { recursive: true, force: true }))
  return bDir
}

/** Polls `cond` every `stepMs` until it holds; throws `timed out waiting for <what>` after `timeoutMs`. */
export async function until(
  what: string,
  cond: () => boolean | Promise<boolean>,
  timeoutMs = 20_000,
  stepMs = 5,
): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, stepMs))
  }
}

/** The master's view of slave `slave` (its replication status row), if it has one. */
export function slaveSeenBy(master: DelayServer, slave: DelayServer) {
  const r = master.replicationStatus()
  return 'slaves' in r ? r.slaves.find((s) => s.id === slave.address) : undefined
}
