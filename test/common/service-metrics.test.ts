import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import t from 'tap'
import { createLogger } from '../../src/common/logger'
import { DelayServer } from '../../src/delay/delay-server'
import { startCluster } from '../helpers/cluster'
import { CLUSTER_SECRET } from '../metaserver/helpers'

/** Issue 19 item 10: every service's /metrics has Node's process metrics and a version metric. */

const VERSION = (require('../../package.json') as { version: string }).version

t.test('broker, delay server and metaserver metrics: process metrics and qmq_build_info', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'qmq-svc-metrics-'))
  const cluster = await startCluster({ dir, brokers: 1, delay: true })
  t.teardown(async () => {
    await cluster.close()
    rmSync(dir, { recursive: true, force: true })
  })
  const services = {
    broker: cluster.brokers[0]?.registry,
    delay: cluster.delay?.registry,
    metaserver: cluster.metaserver.registry,
  }
  for (const [name, registry] of Object.entries(services)) {
    const text = (await registry?.metrics()) ?? ''
    t.match(
      text,
      new RegExp(`^qmq_build_info\\{[^}]*version="${VERSION.replace(/\./g, '\\.')}"[^}]*\\} 1$`, 'm'),
      `${name}: version`,
    )
    t.match(text, /^process_cpu_user_seconds_total\{/m, `${name}: process metrics`)
    t.match(text, /^nodejs_heap_size_used_bytes\{/m, `${name}: Node metrics`)
  }
})

t.test('the delay server start line gives its metrics address, as the brokers do', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'qmq-delay-line-'))
  const lines: string[] = []
  const destination = new Writable({
    write(chunk, _enc, cb) {
      lines.push(...String(chunk).split('\n').filter(Boolean))
      cb()
    },
  })
  const delay = new DelayServer(
    { group: 'delay-1', port: 0, httpPort: 0, dataDir: join(dir, 'delay'), clusterSecret: CLUSTER_SECRET },
    { logger: createLogger({ destination, env: false }) },
  )
  await delay.start()
  t.teardown(async () => {
    await delay.close()
    rmSync(dir, { recursive: true, force: true })
  })
  const started = lines
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .find((l) => l.msg === 'delay server started')
  t.ok(started, 'start line logged')
  t.equal(started?.httpAddress, `127.0.0.1:${delay.httpPort}`)
  t.equal(started?.metrics, `http://127.0.0.1:${delay.httpPort}/metrics`)
})
