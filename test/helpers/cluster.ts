import { join } from 'node:path'
import { Broker } from '../../src/broker/broker'
import { silentLogger } from '../../src/common/logger'
import { MetaClient } from '../../src/common/meta/meta-client'
import { DelayServer } from '../../src/delay/delay-server'
import { Metaserver } from '../../src/metaserver/main'
import { CLUSTER_SECRET } from '../metaserver/helpers'

/**
 * A whole local cluster in this process, for tests: one metaserver (or several on a shared
 * PostgreSQL store), N broker groups (one master each)
 * and optionally one delay group, all on OS-chosen ports under `dir`, registered and alive when
 * startCluster() resolves. Timings are shortened (heartbeats every 200 ms, a silent group leaves
 * routes after 1.5 s, nack backoff from 50 ms).
 */
export interface ClusterOptions {
  dir: string
  brokers?: number
  delay?: boolean
  /** Extra broker options (e.g. { retryBaseMs: 20 }). */
  broker?: Record<string, unknown>
  /** The metaservers' store: a postgres:// URL (default: SQLite under `dir`). */
  metaStore?: string
  /** How many metaservers (default 1; more than one needs `metaStore`). */
  metaservers?: number
  /** Extra metaserver options (e.g. { adminToken }). */
  metaserver?: Record<string, unknown>
}

export interface Cluster {
  metaserver: Metaserver
  /** Every metaserver (the first is `metaserver`). */
  metaservers: Metaserver[]
  brokers: Broker[]
  delay: DelayServer | undefined
  /** The discovery URL clients are configured with. */
  metaUrl: string
  meta: MetaClient
  /** Waits until the metaserver lists `n` alive groups of a kind. */
  waitAlive(kind: 'broker' | 'delay', n: number, timeoutMs?: number): Promise<void>
  close(): Promise<void>
}

export async function startCluster(options: ClusterOptions): Promise<Cluster> {
  const metaservers: Metaserver[] = []
  for (let i = 0; i < (options.metaservers ?? 1); i++) {
    const m = new Metaserver(
      {
        port: 0,
        dataDir: join(options.dir, 'meta'),
        ...(options.metaStore === undefined ? {} : { store: options.metaStore }),
        clusterSecret: CLUSTER_SECRET,
        heartbeatIntervalMs: 200,
        heartbeatTimeoutMs: 1_500,
        ...options.metaserver,
      },
      { logger: silentLogger },
    )
    await m.start()
    metaservers.push(m)
  }
  // Every metaserver registered: the first one's /meta/address lists them all.
  await Promise.all(metaservers.map((m) => m.beat()))
  const metaserver = metaservers[0] as Metaserver
  const metaUrl = `${metaserver.url}/meta/address`
  const brokers: Broker[] = []
  for (let i = 0; i < (options.brokers ?? 2); i++) {
    const b = new Broker(
      {
        group: `broker-${String.fromCharCode(97 + i)}`,
        port: 0,
        httpPort: -1,
        dataDir: join(options.dir, `broker-${i}`),
        metaserver: metaUrl,
        clusterSecret: CLUSTER_SECRET,
        heartbeatIntervalMs: 200,
        retryBaseMs: 50,
        retryMaxMs: 2_000,
        ...options.broker,
      },
      { logger: silentLogger },
    )
    await b.start()
    brokers.push(b)
  }
  let delay: DelayServer | undefined
  if (options.delay) {
    delay = new DelayServer(
      {
        group: 'delay-1',
        port: 0,
        dataDir: join(options.dir, 'delay'),
        metaserver: metaUrl,
        clusterSecret: CLUSTER_SECRET,
        routeTtlMs: 200,
      },
      { logger: silentLogger },
    )
    await delay.start()
  }
  const meta = new MetaClient({ url: metaUrl, timeoutMs: 1_000 })
  const cluster: Cluster = {
    metaserver,
    metaservers,
    brokers,
    delay,
    metaUrl,
    meta,
    async waitAlive(kind, n, timeoutMs = 10_000) {
      const end = Date.now() + timeoutMs
      for (;;) {
        const groups = await meta.listGroups().catch(() => [])
        if (groups.filter((g) => g.kind === kind && g.alive).length >= n) return
        if (Date.now() > end) throw new Error(`fewer than ${n} alive ${kind} groups after ${timeoutMs} ms`)
        await new Promise((r) => setTimeout(r, 50))
      }
    },
    async close() {
      await meta.close()
      if (delay) await delay.close()
      await Promise.all(brokers.map((b) => (b.isRunning ? b.close() : undefined)))
      for (const m of metaservers) await m.close()
    },
  }
  await cluster.waitAlive('broker', brokers.length)
  if (delay) await cluster.waitAlive('delay', 1)
  return cluster
}
