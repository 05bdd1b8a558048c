/**
 * Route queries per second against a metaserver in another process.
 *
 *   node --import tsx bench/metaserver-route.ts
 *
 * Starts the metaserver as a child process (tsx), registers a few broker groups, places some subjects,
 * then sends GET /meta/route from this process over undici keep-alive connections for a few seconds.
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

/** The bench's own cluster secret (the child metaserver and this client share the source). */
const CLUSTER_SECRET = 'bench-cluster-secret-0123456789'

const env = (name: string, fallback: number): number => {
  const v = Number(process.env[name])
  return Number.isFinite(v) && v > 0 ? v : fallback
}

async function serve(dataDir: string): Promise<void> {
  const m = await startMetaserver(
    { port: 0, dataDir, clusterSecret: CLUSTER_SECRET },
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

async function startChild(dataDir: string): Promise<{ child: ChildProcess; url: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', __filename, '--serve', dataDir], {
    stdio: ['pipe', 'pipe', 'inherit'],
  })
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

async function main(): Promise<void> {
  const durationMs = env('BENCH_DURATION_MS', 5_000)
  const connections = env('BENCH_CONNECTIONS', 8)
  const pipelining = env('BENCH_PIPELINING', 4)
  const subjectCount = env('BENCH_SUBJECTS', 100)
  const groupCount = env('BENCH_GROUPS', 4)
  const dataDir = mkdtempSync(join(tmpdir(), 'qmq-bench-meta-'))
  const { child, url } = await startChild(dataDir)
  const client = new MetaClient({ url, clusterSecret: CLUSTER_SECRET })
  try {
    for (let i = 0; i < groupCount; i++) {
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
      await client.route({ subject, kind: 'producer' })
      paths.push(`/meta/route?subject=${subject}&kind=${i % 2 === 0 ? 'producer' : 'consumer'}&group=cg`)
    }

    const pool = new Pool(url, { connections, pipelining, keepAliveTimeout: 30_000 })
    let done = 0
    let errors = 0
    const worker = async (seed: number, deadline: number): Promise<void> => {
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
      return Promise.all(Array.from({ length: connections * pipelining }, (_, k) => worker(k, deadline)))
    }
    await run(500) // warm-up: connections open, JIT warm
    done = 0
    errors = 0
    const started = Date.now()
    await run(durationMs)
    const elapsedS = (Date.now() - started) / 1000
    await pool.close()
    const line = (metric: string, value: number, unit: string) =>
      process.stdout.write(`${JSON.stringify({ bench: 'metaserver-route', metric, value, unit })}\n`)
    line('route_queries_per_second', Math.round(done / elapsedS), 'queries/s')
    line('route_query_errors', errors, 'count')
  } finally {
    await client.close()
    child.stdin?.end()
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        child.kill('SIGKILL')
        resolve()
      }, 5_000)
      child.once('exit', () => {
        clearTimeout(timer)
        resolve()
      })
    })
    rmSync(dataDir, { recursive: true, force: true })
  }
}

if (process.argv[2] === '--serve') {
  serve(process.argv[3] ?? join(tmpdir(), 'qmq-bench-meta')).catch((err) => {
    process.stderr.write(`${String(err)}\n`)
    process.exit(1)
  })
} else {
  main().catch((err) => {
    process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`)
    process.exit(1)
  })
}
