import type { Test } from 'tap'
import { ManualClock } from '../../src/common/clock'
import { silentLogger } from '../../src/common/logger'
import { MetaClient } from '../../src/common/meta/meta-client'
import type { ServerHeartbeatRequest } from '../../src/common/meta/types'
import { Metaserver } from '../../src/metaserver/main'
import { type Postgres, startPostgres } from '../helpers/postgres'

export const TOKEN = 'test-token'
/** The cluster secret of test clusters (brokers and delay servers send it with their heartbeats). */
export const CLUSTER_SECRET = 'test-cluster-secret-0123456789'
export const HEARTBEAT_TIMEOUT_MS = 10_000

/** The metaserver suites run once per store: the embedded SQLite one and a real PostgreSQL. */
export type StoreKind = 'sqlite' | 'postgres'
export const STORE_KINDS: readonly StoreKind[] = ['sqlite', 'postgres']

/** Where a metaserver keeps its state: dataDir (SQLite's meta.db) or a PostgreSQL database URL. */
export interface StoreLocation {
  kind: StoreKind
  dataDir: string
  /** The `store` option: a postgres:// URL, undefined for SQLite. */
  store: string | undefined
}

let postgres: Promise<Postgres> | undefined
let databases = 0

/** One PostgreSQL server per test process, started on first use and stopped when the process's tests end. */
export function sharedPostgres(): Promise<Postgres> {
  if (postgres === undefined) {
    postgres = startPostgres()
    // tap is loaded here, not at the top: bench/ imports these helpers (through test/helpers/cluster.ts)
    // and must not start a TAP run.
    const { t: root } = require('tap') as typeof import('tap')
    root.teardown(async () => (await postgres)?.close())
  }
  return postgres
}

/** A new empty database on the shared PostgreSQL server; answers its URL. */
export async function freshDatabase(): Promise<string> {
  const pg = await sharedPostgres()
  const name = `meta_${process.pid}_${++databases}`
  const { Client } = await import('pg')
  const c = new Client({ connectionString: pg.url })
  await c.connect()
  try {
    await c.query(`CREATE DATABASE ${name}`)
  } finally {
    await c.end()
  }
  return pg.url.replace(/\/postgres$/, `/${name}`)
}

/** A fresh, empty store location of a kind (pass it again to restart a metaserver on the same state). */
export async function freshLocation(t: Test, kind: StoreKind): Promise<StoreLocation> {
  return { kind, dataDir: t.testdir(), store: kind === 'postgres' ? await freshDatabase() : undefined }
}

const byDir = new Map<string, Promise<StoreLocation>>()

/** The location of `kind` for a test directory: the same dataDir always gets the same database. */
export function locationFor(t: Test, kind: StoreKind, dataDir: string): Promise<StoreLocation> {
  let l = byDir.get(`${kind}:${dataDir}`)
  if (l === undefined) {
    l =
      kind === 'postgres'
        ? freshDatabase().then((store) => ({ kind, dataDir, store }))
        : Promise.resolve({ kind, dataDir, store: undefined })
    byDir.set(`${kind}:${dataDir}`, l)
  }
  void t
  return l
}

/** Metaserver options of a location. */
export function locationOptions(l: StoreLocation): Record<string, unknown> {
  return l.store === undefined ? { dataDir: l.dataDir } : { dataDir: l.dataDir, store: l.store }
}

/**
 * An in-process metaserver with an admin token and the cluster secret, a hand-driven clock and a client
 * that uses both (it heartbeats like a broker and writes like an operator);
 * both are closed at teardown. The store is `location` (pass one to restart on it), else a fresh one of
 * `kind` (default SQLite in `dataDir`, default a fresh t.testdir()).
 */
export async function startWithClient(
  t: Test,
  options: {
    dataDir?: string
    location?: StoreLocation
    kind?: StoreKind
    clock?: ManualClock
    extra?: Record<string, unknown>
  } = {},
) {
  const clock = options.clock ?? new ManualClock()
  const location =
    options.location ??
    (options.kind === 'postgres'
      ? await freshLocation(t, 'postgres')
      : { kind: 'sqlite' as const, dataDir: options.dataDir ?? t.testdir(), store: undefined })
  const server = new Metaserver(
    {
      port: 0,
      ...locationOptions(location),
      adminToken: TOKEN,
      clusterSecret: CLUSTER_SECRET,
      heartbeatTimeoutMs: HEARTBEAT_TIMEOUT_MS,
      ...options.extra,
    },
    { clock, logger: silentLogger, storeClock: false },
  )
  await server.start()
  const client = new MetaClient({ url: server.url, adminToken: TOKEN, clusterSecret: CLUSTER_SECRET })
  t.teardown(async () => {
    await client.close()
    await server.close()
  })
  return { server, client, clock, location }
}

/** A broker master's heartbeat from 127.0.0.1:port. */
export function hb(
  group: string,
  port: number,
  extra: Partial<ServerHeartbeatRequest> = {},
): ServerHeartbeatRequest {
  return { group, kind: 'broker', role: 'master', address: `127.0.0.1:${port}`, ...extra }
}
