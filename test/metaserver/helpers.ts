import type { Test } from 'tap'
import { ManualClock } from '../../src/common/clock'
import { silentLogger } from '../../src/common/logger'
import { MetaClient } from '../../src/common/meta/meta-client'
import type { ServerHeartbeatRequest } from '../../src/common/meta/types'
import { Metaserver } from '../../src/metaserver/main'

export const TOKEN = 'test-token'
/** The cluster secret of test clusters (brokers and delay servers send it with their heartbeats). */
export const CLUSTER_SECRET = 'test-cluster-secret-0123456789'
export const HEARTBEAT_TIMEOUT_MS = 10_000

/**
 * An in-process metaserver with an admin token and the cluster secret, a hand-driven clock and a client
 * that uses both (it heartbeats like a broker and writes like an operator);
 * both are closed at teardown. `dataDir` defaults to a fresh t.testdir() (pass one to restart on it).
 */
export async function startWithClient(
  t: Test,
  options: { dataDir?: string; clock?: ManualClock; extra?: Record<string, unknown> } = {},
) {
  const clock = options.clock ?? new ManualClock()
  const server = new Metaserver(
    {
      port: 0,
      dataDir: options.dataDir ?? t.testdir(),
      adminToken: TOKEN,
      clusterSecret: CLUSTER_SECRET,
      heartbeatTimeoutMs: HEARTBEAT_TIMEOUT_MS,
      ...options.extra,
    },
    { clock, logger: silentLogger },
  )
  await server.start()
  const client = new MetaClient({ url: server.url, adminToken: TOKEN, clusterSecret: CLUSTER_SECRET })
  t.teardown(async () => {
    await client.close()
    await server.close()
  })
  return { server, client, clock }
}

/** A broker master's heartbeat from 127.0.0.1:port. */
export function hb(
  group: string,
  port: number,
  extra: Partial<ServerHeartbeatRequest> = {},
): ServerHeartbeatRequest {
  return { group, kind: 'broker', role: 'master', address: `127.0.0.1:${port}`, ...extra }
}
