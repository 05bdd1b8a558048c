import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import type { Test } from 'tap'
import type { Broker, BrokerOptions } from '../../src/broker/broker'
import { writeEpochs } from '../../src/broker/replication/epochs'
import type { FollowerOptions } from '../../src/broker/replication/follower'
import { type FsIo, nodeFsIo } from '../../src/broker/store/fs-io'
import { silentLogger } from '../../src/common/logger'
import { MetaClient } from '../../src/common/meta/meta-client'
import type { DelayServer } from '../../src/delay/delay-server'
import { Metaserver } from '../../src/metaserver/main'

/**
 * Shared set-up of the in-process replication tests (test/broker/replication): temp dirs, polling
 * waits and a metaserver with an admin client. Each test keeps its own broker options and timings;
 * test/helpers/cluster.ts is the whole-cluster variant with fixed (200 ms) heartbeats.
 */

/** A fresh directory under os.tmpdir(), removed at the test's teardown. */
export function tempDir(t: Test, prefix: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  return dir
}

/**
 * Whether a replicated master (broker or delay server) still holds its metaserver lease: the check it
 * makes before storing any write passes (it throws QMQ_ERR_NOT_MASTER once the lease ran out).
 */
export function holdsLease(server: Broker | DelayServer): boolean {
  try {
    ;(server as unknown as { checkLease(): void }).checkLease()
    return true
  } catch {
    return false
  }
}

/** Polls `cond` every `pollMs` until it holds; throws `timed out waiting for <what>` after `timeoutMs`. */
export async function waitUntil(
  what: string,
  cond: () => boolean | Promise<boolean>,
  timeoutMs: number,
  pollMs: number,
): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, pollMs))
  }
}

export interface ReplicationMetaserverOptions {
  dataDir: string
  clusterSecret: string
  adminToken: string
  /** Silence after which a master is failed over (its lease is half of it). */
  heartbeatTimeoutMs: number
}

/**
 * An in-process metaserver (port 0, heartbeats every 100 ms) and an admin client of it, both closed
 * at the test's teardown.
 */
export async function startReplicationMetaserver(
  t: Test,
  options: ReplicationMetaserverOptions,
): Promise<{ meta: Metaserver; admin: MetaClient }> {
  const meta = new Metaserver(
    {
      port: 0,
      dataDir: options.dataDir,
      adminToken: options.adminToken,
      clusterSecret: options.clusterSecret,
      heartbeatIntervalMs: 100,
      heartbeatTimeoutMs: options.heartbeatTimeoutMs,
    },
    { logger: silentLogger },
  )
  await meta.start()
  t.teardown(() => meta.close())
  const admin = new MetaClient({
    url: meta.url,
    adminToken: options.adminToken,
    clusterSecret: options.clusterSecret,
  })
  t.teardown(() => admin.close())
  return { meta, admin }
}

/** The bytes of every file in `dir` (a log directory: its end offset). */
function dirBytes(dir: string): number {
  return fs.readdirSync(dir).reduce((n, f) => n + fs.statSync(path.join(dir, f)).size, 0)
}

/**
 * Marks a (copied, closed) broker data dir as master of epoch 1 from the end of its logs: opened, it
 * writes past what it holds as a promoted master would.
 */
export function writeEpochOneAtEnd(dataDir: string): void {
  const m = dirBytes(path.join(dataDir, 'messagelog'))
  const a = dirBytes(path.join(dataDir, 'actionlog'))
  writeEpochs(dataDir, { epoch: 1, history: [{ epoch: 1, messageOffset: m, actionOffset: a }] })
}

/**
 * Broker options the in-process replication tests start from (then `options`): port 0, no HTTP port,
 * the test's cluster secret, a slave in sync for 60 s of lag, 10 s for a slave's ack, no timed
 * checkpoint.
 */
export function replicationTestBroker(
  secret: string,
  options: Partial<BrokerOptions> = {},
): Partial<BrokerOptions> {
  return {
    port: 0,
    httpPort: -1,
    clusterSecret: secret,
    replicationInSyncLagMs: 60_000,
    replicationAckTimeoutMs: 10_000,
    checkpointIntervalMs: 3_600_000,
    ...options,
  }
}

/** Options of a ReplicationFollower driven directly by a test: 4 KiB fetches, no timed checkpoint. */
export function testFollowerOptions(
  dataDir: string,
  secret: string,
  findMaster: () => Promise<string | undefined>,
  retryMs: number,
): FollowerOptions {
  return {
    dataDir,
    slaveId: 'test-slave:1',
    clusterSecret: secret,
    findMaster,
    maxMessageBytes: 1024 * 1024,
    fetchBytes: 4096,
    fetchWaitMs: 100,
    retryMs,
    checkpointIntervalMs: 3_600_000,
    maxFrameBytes: 16 * 1024 * 1024,
    epoch: 0,
  }
}

/**
 * The store's file I/O, telling `note` of every completed write (writev and write: descriptor,
 * position, bytes written); spread it and override what else a test needs (its fdatasync).
 */
export function writeObservingIo(note: (fd: number, position: number, n: number) => void): FsIo {
  return {
    ...nodeFsIo,
    writev: async (fd, buffers, position) => {
      const n = await nodeFsIo.writev(fd, buffers, position)
      note(fd, position, n)
      return n
    },
    write: async (fd, buffer, position) => {
      const n = await nodeFsIo.write(fd, buffer, position)
      note(fd, position, n)
      return n
    },
  }
}
