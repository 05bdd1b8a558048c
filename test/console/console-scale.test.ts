import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { chromium } from 'playwright-core'
import t from 'tap'
import { startCluster } from '../helpers/cluster'

/**
 * The console with 10,000 subjects and 10,000 consumer groups: the API answers one page of them
 * (searched and paged by the metaserver), and the browser renders a page of 50 rows with the total.
 * The times are printed (comments), not asserted: they depend on the machine.
 */
const CHROMIUM = process.env.QMQ_CHROMIUM ?? '/usr/bin/chromium'
const N = 10_000

t.test(
  'console - 10,000 subjects and 10,000 consumer groups: paged and searched on the server',
  async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'qmq-console-scale-'))
    const cluster = await startCluster({ dir, brokers: 1, broker: { flush: 'async' } })
    t.teardown(async () => {
      await cluster.close()
      rmSync(dir, { recursive: true, force: true })
    })
    const svc = cluster.metaserver.service
    let started = Date.now()
    for (let i = 0; i < N; i++) {
      await svc.route(`scale.subject.${String(i).padStart(5, '0')}`, 'producer')
      // Let heartbeats in: the store is synchronous, and a silent broker group would leave the routes.
      if (i % 200 === 0) await new Promise((r) => setImmediate(r))
    }
    t.comment(`${N} subjects routed in ${Date.now() - started} ms`)
    // 10,000 consumer groups of one subject on the broker (a cursor reset creates a group).
    const store = cluster.brokers[0]!.messageStore
    started = Date.now()
    for (let i = 0; i < N; i += 500) {
      const batch: Promise<void>[] = []
      for (let k = i; k < Math.min(N, i + 500); k++)
        batch.push(
          store.resetCursor('scale.subject.00000', `group-${String(k).padStart(5, '0')}`, {
            kind: 'earliest',
          }),
        )
      await Promise.all(batch)
    }
    t.comment(`${N} consumer groups made in ${Date.now() - started} ms`)

    const base = cluster.metaserver.url
    const timed = async (path: string) => {
      const s = performance.now()
      const r = await fetch(`${base}${path}`)
      const body = (await r.json()) as { total: number; items: unknown[] }
      t.comment(
        `GET ${path}: ${(performance.now() - s).toFixed(1)} ms, ${body.items.length} of ${body.total}`,
      )
      return body
    }
    const subjects = await timed('/console/api/subjects?limit=50&offset=9950')
    t.equal(subjects.total, N, 'every subject counted')
    t.equal(subjects.items.length, 50, 'one page of them sent')
    const found = await timed('/console/api/subjects?q=subject.0999')
    t.equal(found.total, 10, 'the search runs on the server (subject.09990 to subject.09999)')
    const groups = await timed('/console/api/consumer-groups?limit=50&fresh=1')
    t.equal(groups.total, N, 'every consumer group counted')
    t.equal(groups.items.length, 50)
    const again = await timed('/console/api/consumer-groups?limit=50&offset=5000')
    t.equal(again.items.length, 50, 'the next page comes from the cached backlog')
    const one = await timed('/console/api/consumer-groups?q=group-04242')
    t.equal(one.total, 1, 'a group found by search')

    const browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--no-sandbox',
        '--disable-background-networking',
        '--disable-gpu',
        '--disable-component-update',
        '--disable-sync',
        '--no-first-run',
      ],
    })
    t.teardown(() => browser.close())
    const page = await browser.newPage()
    for (const [hash, name, table] of [
      ['#/subjects', 'subjects', 'subjects-table'],
      ['#/groups', 'groups', 'groups-table'],
    ] as const) {
      const s = performance.now()
      await page.goto(`${base}/console/${hash}`)
      await page.locator(`[data-testid="page-${name}"][data-loading="false"]`).waitFor({ timeout: 20_000 })
      t.comment(`${name} page rendered in ${(performance.now() - s).toFixed(0)} ms`)
      t.equal(await page.locator(`[data-testid="${table}"] tbody tr`).count(), 50, `${name}: 50 rows`)
      t.match(await page.getByTestId('pager-range').innerText(), /1–50 of 10,000/, `${name}: the total`)
    }
  },
)
