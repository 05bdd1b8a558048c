/**
 * Route queries per second against metaservers in other processes: one on SQLite, then two sharing
 * one PostgreSQL (issue 15; skipped with a note when the PostgreSQL server binaries are absent).
 *
 *   node --import tsx bench/metaserver-route.ts
 *
 * Starts each metaserver as a child process (tsx), registers a few broker groups, places some subjects,
 * then sends GET /meta/route from this process over undici keep-alive connections for a few seconds
 * (with two metaservers, half of the connections to each). Route answers come from memory in both
 * cases; the figure shows what the second process adds on this machine, not database speed.
 * Knobs (environment): BENCH_DURATION_MS (5000), BENCH_CONNECTIONS (8), BENCH_PIPELINING (4),
 * BENCH_SUBJECTS (100), BENCH_GROUPS (4).
 * Prints JSON lines: { bench, metric, value, unit }.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { Pool } from 'undici'
import { silentLogger } from '../src/common/logger'
import { MetaClient } from '../src/common/meta/meta-client'
import { startMetaserver } from '../src/metaserver/main'
import { type Postgres, startPostgres } from '../test/helpers/postgres'

/** The bench's own cluster secret (the child metaserver and this client share the source). */
const CLUSTER_SECRET = 'bench-cluster-secret-0123456789'

const env = (name: string, fallback: number): number => {
  const v = Number(process.env[name])
  return Number.isFinite(v) && v > 0 ? v : fallback
}

async function serve(dataDir: string, store: string | undefined): Promise<void> {
  const m = await startMetaserver(
    { port: 0, dataDir, clusterSecret: CLUSTER_SECRET, ...(store === undefined ? {} : { store }) },
    { logger: silentLogger },
  )
  process.stdout.write(`${JSON.stringify({ url: m.url })}\n`)
  const stop = () => {
    m.close().finally(() => process.exit(0))
  }
  process.on('SIGTERM', stop)
  process.on('disconnect', stop)
  process.stdin.on('end', stop)
  process.stdin.resume()
}

async function startChild(dataDir: string, store?: string): Promise<{ child: ChildProcess; url: string }> {
  const args = ['--import', 'tsx', __filename, '--serve', dataDir, ...(store === undefined ? [] : [store])]
  const child = spawn(process.execPath, args, { stdio: ['pipe', 'pipe', 'inherit'] })
  const lines = createInterface({ input: child.stdout! })
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('metaserver child did not start within 20 s')), 20_000)
    child.once('exit', (code) => reject(new Error(`metaserver child exited with ${code}`)))
    lines.once('line', (line) => {
      clearTimeout(timer)
      resolve((JSON.parse(line) as { url: string }).url)
    })
  })
  return { child, url }
}

function stopChild(child: ChildProcess): Promise<void> {
  child.stdin?.end()
  return new Promise<void>((resolve) => {
    if (child.exitCode !== null) return resolve()
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      resolve()
    }, 5_000)
    child.once('exit', () => {
      clearTimeout(timer)
      resolve()
    })
  })
}

const line = (metric: string, value: number | string, unit: string) =>
  process.stdout.write(`${JSON.stringify({ bench: 'metaserver-route', metric, value, unit })}\n`)

/** Registers groups and places subjects through `urls[0]`, then measures routes on every URL at once. */
async function measure(urls: string[]): Promise<{ qps: number; errors: number }> {
  const durationMs = env('BENCH_DURATION_MS', 5_000)
  const connections = env('BENCH_CONNECTIONS', 8)
  const pipelining = env('BENCH_PIPELINING', 4)
  const subjectCount = env('BENCH_SUBJECTS', 100)
  const groupCount = env('BENCH_GROUPS', 4)
  const clients = urls.map((url) => new MetaClient({ url, clusterSecret: CLUSTER_SECRET }))
  const pools: Pool[] = []
  try {
    for (let i = 0; i < groupCount; i++) {
      // Every metaserver hears every group (as brokers' heartbeats would reach one of them each).
      for (const client of clients)
        await client.heartbeat({
          group: `bench-${i}`,
          kind: 'broker',
          role: 'master',
          address: `127.0.0.1:${21000 + i}`,
        })
    }
    const paths: string[] = []
    for (let i = 0; i < subjectCount; i++) {
      const subject = `bench.subject.${i}`
      for (const client of clients) await client.route({ subject, kind: 'producer' })
      paths.push(`/meta/route?subject=${subject}&kind=${i % 2 === 0 ? 'producer' : 'consumer'}&group=cg`)
    }
    const perServer = Math.max(1, Math.round(connections / urls.length))
    for (const url of urls)
      pools.push(new Pool(url, { connections: perServer, pipelining, keepAliveTimeout: 30_000 }))
    let done = 0
    let errors = 0
    const worker = async (pool: Pool, seed: number, deadline: number): Promise<void> => {
      let i = seed
      while (Date.now() < deadline) {
        const res = await pool.request({ method: 'GET', path: paths[i++ % paths.length]! })
        await res.body.text()
        if (res.statusCode === 200) done++
        else errors++
      }
    }
    const run = (ms: number) => {
      const deadline = Date.now() + ms
      return Promise.all(
        pools.flatMap((pool) =>
          Array.from({ length: perServer * pipelining }, (_, k) => worker(pool, k, deadline)),
        ),
      )
    }
    await run(500) // warm-up: connections open, JIT warm
    done = 0
    errors = 0
    const started = Date.now()
    await run(durationMs)
    const elapsedS = (Date.now() - started) / 1000
    return { qps: Math.round(done / elapsedS), errors }
  } finally {
    await Promise.all(pools.map((p) => p.close()))
    await Promise.all(clients.map((c) => c.close()))
  }
}

async function main(): Promise<void> {
  const dataDir = mkdtempSync(join(tmpdir(), 'qmq-bench-meta-'))
  try {
    const { child, url } = await startChild(join(dataDir, 'sqlite'))
    try {
      const r = await measure([url])
      line('route_queries_per_second', r.qps, 'queries/s')
      line('route_query_errors', r.errors, 'count')
    } finally {
      await stopChild(child)
    }
    let pg: Postgres
    try {
      pg = await startPostgres()
    } catch (err) {
      line('postgres_2_skipped', String((err as Error).message).split('\n')[0] ?? 'no PostgreSQL', 'note')
      return
    }
    const children: ChildProcess[] = []
    try {
      const urls: string[] = []
      for (let i = 0; i < 2; i++) {
        const c = await startChild(join(dataDir, `pg-${i}`), pg.url)
        children.push(c.child)
        urls.push(c.url)
      }
      const r = await measure(urls)
      line('route_queries_per_second_postgres_2', r.qps, 'queries/s')
      line('route_query_errors_postgres_2', r.errors, 'count')
    } finally {
      await Promise.all(children.map(stopChild))
      await pg.close()
    }
  } finally {
    rmSync(dataDir, { recursive: true, force: true })
  }
}

if (process.argv[2] === '--serve') {
  serve(process.argv[3] ?? join(tmpdir(), 'qmq-bench-meta'), process.argv[4]).catch((err) => {
    process.stderr.write(`${String(err)}\n`)
    process.exit(1)
  })
} else {
  main().catch((err) => {
    process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`)
    process.exit(1)
  })
}
