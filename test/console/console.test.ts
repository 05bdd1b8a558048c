import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { type Browser, chromium, type Page } from 'playwright-core'
import t from 'tap'
import { MessageConsumerProvider, MessageProducerProvider, TimeUnit } from '../../src/client'
import { silentLogger } from '../../src/common/logger'
import { Metaserver } from '../../src/metaserver/main'
import { startCluster } from '../helpers/cluster'
import { CLUSTER_SECRET } from '../metaserver/helpers'

/**
 * The web console in a real headless Chromium (Debian's `chromium`, driven by playwright-core)
 * against a live local cluster: every page loads, a cursor reset is refused without the admin token
 * and done with it, a dead letter is inspected and redriven, the delay page shows the pending hours,
 * and the token never shows in an address. Screenshots of each page go to QMQ_CONSOLE_SCREENSHOTS
 * (default: a temp dir; docs/console/*.png are copies of one run).
 */
const CHROMIUM = process.env.QMQ_CHROMIUM ?? '/usr/bin/chromium'
const TOKEN = 'console-admin-token-0123456789'
const SHOTS = process.env.QMQ_CONSOLE_SCREENSHOTS ?? join(tmpdir(), 'qmq-console-screenshots')

async function until(cond: () => Promise<boolean> | boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`${what} not met in ${ms} ms`)
    await new Promise((r) => setTimeout(r, 25))
  }
}

t.test('console - every page in a real browser against a live cluster', async (t) => {
  t.ok(
    existsSync(CHROMIUM),
    `${CHROMIUM} exists (apt-get install chromium; .ci/run installs it, QMQ_CHROMIUM points elsewhere)`,
  )
  const dir = mkdtempSync(join(tmpdir(), 'qmq-console-'))
  mkdirSync(SHOTS, { recursive: true })
  const cluster = await startCluster({ dir, delay: true, metaserver: { adminToken: TOKEN } })
  const producer = new MessageProducerProvider({ appCode: 'shop', metaServer: cluster.metaUrl })
  const consumer = new MessageConsumerProvider({ appCode: 'billing-app', metaServer: cluster.metaUrl })
  let browser: Browser | undefined
  t.teardown(async () => {
    await browser?.close()
    await consumer.close()
    await producer.close()
    await cluster.close()
    rmSync(dir, { recursive: true, force: true })
  })
  await producer.init()
  await consumer.init()

  // 20 orders; the billing group takes 5 and acks them (it exists on the brokers from then on).
  const ids: string[] = []
  for (let i = 0; i < 20; i++) {
    const m = producer.generateMessage('console.orders')
    m.setProperty('orderId', `o-${i}`)
    ids.push(m.getMessageId())
    await producer.sendMessage(m)
  }
  const billing = consumer.getOrCreatePullConsumer('console.orders', 'billing', { startFrom: 'earliest' })
  const ackedIds: string[] = []
  while (ackedIds.length < 5) {
    for (const m of await billing.pull(5 - ackedIds.length, 1_000)) {
      await m.ack()
      ackedIds.push(m.getMessageId())
    }
  }
  // Two dead letters of group `audit` on console.payments.
  const deadIds: string[] = []
  for (let i = 0; i < 2; i++) {
    const m = producer.generateMessage('console.payments')
    m.setProperty('reason', 'card declined')
    deadIds.push(m.getMessageId())
    await producer.sendMessage(m)
  }
  const audit = consumer.getOrCreatePullConsumer('console.payments', 'audit', { startFrom: 'earliest' })
  let dead = 0
  while (dead < 2) {
    for (const m of await audit.pull(2 - dead, 1_000)) {
      await m.nack({ deadLetter: true })
      dead++
    }
  }
  // An invoice found by its business key; its body and properties only with the admin token.
  const invoice = producer.generateMessage('console.invoices')
  invoice.setKeys('invoice-7')
  invoice.setProperty('customer', 'c-secret-42')
  invoice.setBody('secret invoice body')
  await producer.sendMessage(invoice)
  // A delayed message, due in 3 hours (the delay page's hour buckets).
  const later = producer.generateMessage('console.reminders')
  later.setDelayTime(3, TimeUnit.HOURS)
  await producer.sendMessage(later)

  const backlog = async (subject: string, group: string) => {
    const all = await Promise.all(cluster.brokers.map((b) => b.messageStore.backlog(subject, group)))
    return all.flat().reduce((s, e) => ({ pending: s.pending + e.pending, dead: s.dead + e.deadLettered }), {
      pending: 0,
      dead: 0,
    })
  }
  await until(async () => (await backlog('console.payments', 'audit')).dead === 2, 5_000, 'two dead letters')
  // Pulls take batches from each broker group: some of the 20 are in flight, the rest pending.
  const before = (await backlog('console.orders', 'billing')).pending
  t.ok(before < 20, `billing has ${before} pending (not handed out) before any reset`)

  browser = await chromium.launch({
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
  const page: Page = await browser.newPage({ viewport: { width: 1280, height: 800 } })
  const addresses: string[] = []
  const pageErrors: string[] = []
  page.on('request', (r) => addresses.push(r.url()))
  page.on('pageerror', (e) => pageErrors.push(e.message))
  const dialogs: string[] = []
  page.on('dialog', (d) => {
    dialogs.push(d.message())
    void d.accept()
  })
  const base = `${cluster.metaserver.url}/console/`

  /** Loads the console at `hash` in a fresh document and waits until the page has rendered. */
  async function open(hash: string, name: string): Promise<void> {
    await page.goto('about:blank')
    await page.goto(`${base}${hash}`)
    await page.locator(`[data-testid="page-${name}"][data-loading="false"]`).waitFor({ timeout: 15_000 })
  }
  const shot = (name: string) => page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true })

  // The page itself: served with a strict content security policy.
  const res = await page.goto(base)
  t.equal(res?.status(), 200, '/console/ is served')
  t.match(
    res?.headers()['content-security-policy'] ?? '',
    /script-src 'self'/,
    'with a content security policy',
  )

  await t.test('overview: groups, roles, liveness', async (t) => {
    await open('#/overview', 'overview')
    const groups = page.getByTestId('groups-table')
    for (const g of ['broker-a', 'broker-b', 'delay-1']) t.match(await groups.innerText(), g, `${g} listed`)
    t.match(await page.getByTestId('card-brokers').innerText(), /2 \/ 2/, 'both broker groups alive')
    t.match(await groups.innerText(), /master/, 'roles shown')
    await shot('overview')
  })

  await t.test('subjects: search, paging, a subject with its consumer groups', async (t) => {
    await open('#/subjects', 'subjects')
    t.match(await page.getByTestId('subjects-table').innerText(), /console\.orders/)
    await page.getByTestId('subject-search').fill('payments')
    await page.getByTestId('subject-search').press('Enter')
    await page.waitForURL(/q=payments/)
    await page.locator('[data-testid="page-subjects"][data-loading="false"]').waitFor()
    const rows = await page.getByTestId('subject-link').allInnerTexts()
    t.same(rows, ['console.payments'], 'search narrows the list on the server')
    await shot('subjects')
    await open('#/subject?subject=console.orders', 'subject')
    t.match(await page.getByTestId('subject-groups-table').innerText(), /billing/, 'the billing group')
    t.match(await page.getByTestId('subject-clients-table').innerText(), /billing-app/, 'the consumer app')
    await page.getByTestId('history-unavailable').or(page.getByTestId('history-charts')).waitFor()
    await shot('subject')
  })

  await t.test('messages: find a produced message by id and see its deliveries', async (t) => {
    // The query API (docs/query.md) may be missing from this metaserver: the page must then say so.
    const probe = await fetch(`${cluster.metaserver.url}/admin/history?subject=x&from=0&to=60000`)
    await probe.arrayBuffer()
    const queryApi = probe.status !== 404
    t.comment(queryApi ? 'the metaserver serves the query API' : 'the metaserver has no query API')
    // A message billing had and acked: the first one it pulled.
    const id = ackedIds[0] ?? ''
    await open(`#/messages?id=${encodeURIComponent(id)}`, 'messages')
    if (!queryApi) {
      t.ok(await page.getByTestId('query-unavailable').isVisible(), 'the page says the query API is missing')
      await shot('messages')
      return
    }
    await page.getByTestId('trace').waitFor()
    const types = await page
      .getByTestId('trace-event')
      .evaluateAll((els) => els.map((e) => e.getAttribute('data-type')))
    t.ok(types.includes('stored'), `stored in the timeline (${types.join(', ')})`)
    t.ok(types.includes('delivered'), 'a delivery in the timeline')
    t.ok(types.includes('acked'), 'the ack in the timeline')
    const trace = await page.getByTestId('trace').innerText()
    t.match(trace, /delivered · group billing/, 'delivered to billing')
    const consumers = await page.getByTestId('message-consumers').innerText()
    t.match(consumers, /billing\s+acked\s+1/, 'acked by billing after 1 delivery, in the consumers table')
    t.match(
      await page.getByTestId('body-withheld').first().innerText(),
      /hidden: enter the admin token/,
      'no token yet: body and properties hidden',
    )
    t.equal(await page.getByTestId('message-body').count(), 0, 'no body shown')
    await shot('messages')
    // The delayed message: scheduled by the delay group, due in 3 hours.
    await open(`#/messages?id=${encodeURIComponent(later.getMessageId())}`, 'messages')
    await page.getByTestId('trace').waitFor()
    t.match(await page.getByTestId('trace').innerText(), /scheduled .*on delay-1/, 'scheduled on delay-1')
    // By subject, newest first.
    await open('#/messages?subject=console.orders', 'messages')
    t.ok((await page.getByTestId('message-link').count()) >= 20, 'the subject lists its messages')
  })

  await t.test(
    'consumer groups: backlog, cursor reset refused without the token, done with it',
    async (t) => {
      await open('#/groups?q=billing', 'groups')
      t.match(await page.getByTestId('groups-table').innerText(), /billing/)
      t.equal(
        await page.getByTestId('backlog').first().innerText(),
        String(before),
        'backlog of billing shown',
      )
      // No token: refused by the metaserver, nothing moves.
      await page.getByTestId('reset-to').first().selectOption('earliest')
      await page.getByTestId('reset-button').first().click()
      await page.getByTestId('action-error').waitFor()
      t.match(await page.getByTestId('action-error').innerText(), /Refused/, 'refused without the token')
      t.equal((await backlog('console.orders', 'billing')).pending, before, 'the cursor did not move')
      // A wrong token: refused as well.
      await page.getByTestId('token-input').fill('not-the-token-000000')
      await page.getByTestId('token-save').click()
      await page.getByTestId('reset-button').first().click()
      await page.getByTestId('action-error').waitFor()
      t.match(await page.getByTestId('action-error').innerText(), /wrong admin token/)
      t.equal((await backlog('console.orders', 'billing')).pending, before, 'the cursor did not move')
      // The token: done.
      await page.getByTestId('token-input').fill(TOKEN)
      await page.getByTestId('token-save').click()
      t.equal(await page.getByTestId('token-state').innerText(), 'admin token set')
      await page.getByTestId('reset-button').first().click()
      await page.getByTestId('action-ok').waitFor()
      t.match(await page.getByTestId('action-ok').innerText(), /reset to earliest/)
      t.equal(
        (await backlog('console.orders', 'billing')).pending,
        20,
        'the cursor went back to the first message',
      )
      t.match(
        dialogs.at(-1) ?? '',
        /Move the cursor of billing on console\.orders to earliest/,
        'after a confirmation',
      )
      await open('#/groups?q=billing&fresh=1', 'groups')
      t.equal(await page.getByTestId('backlog').first().innerText(), '20', 'the page shows the new backlog')
      await shot('consumer-groups')
    },
  )

  await t.test('messages: found by business key, the body shown only with the token', async (t) => {
    const probe = await fetch(`${cluster.metaserver.url}/admin/messages?key=invoice-7`)
    await probe.arrayBuffer()
    if (probe.status === 404) {
      t.comment('the metaserver has no query API')
      return
    }
    await page.getByTestId('token-clear').click()
    t.equal(await page.getByTestId('token-state').innerText(), 'no admin token')
    await open('#/messages', 'messages')
    await page.getByTestId('message-key').fill('invoice-7')
    await page.getByTestId('message-key').press('Enter')
    await page.waitForURL(/key=invoice-7/)
    await page.locator('[data-testid="page-messages"][data-loading="false"]').waitFor()
    t.same(
      await page.getByTestId('message-link').allInnerTexts(),
      [invoice.getMessageId()],
      'found by its key',
    )
    await page.getByTestId('message-link').click()
    await page.waitForURL(/id=/)
    await page.locator('[data-testid="page-messages"][data-loading="false"]').waitFor()
    t.match(await page.getByTestId('message-view').innerText(), /keys invoice-7/)
    t.match(
      await page.getByTestId('body-withheld').innerText(),
      /hidden: enter the admin token/,
      'without the token: hidden',
    )
    t.notMatch(await page.locator('#main').innerText(), /secret/, 'nothing of body or properties on the page')
    await page.getByTestId('token-input').fill(TOKEN)
    await page.getByTestId('token-save').click()
    await page.getByTestId('message-body').waitFor({ state: 'attached' })
    t.equal(await page.getByTestId('body-withheld').count(), 0)
    t.equal(
      await page.getByTestId('message-body').textContent(),
      'secret invoice body',
      'with the token: the body',
    )
    t.match(await page.getByTestId('message-properties').textContent(), /c-secret-42/, 'and the properties')
    await shot('message-with-token')
  })

  await t.test('dead letters: properties and bodies only with the admin token', async (t) => {
    const dlq = `${base}api/dead-letters?subject=console.payments&group=audit`
    type Row = { id: string; properties?: Record<string, string>; body?: string; bodyWithheld?: boolean }
    const bare = (await (await fetch(dlq)).json()) as { items: Row[] }
    t.equal(bare.items.length, deadIds.length, 'listed without the token')
    t.ok(
      bare.items.every((d) => d.bodyWithheld === true && d.properties === undefined && d.body === undefined),
      'without the token: no properties, no body',
    )
    const wrong = await fetch(dlq, { headers: { authorization: 'Bearer not-the-token-000000' } })
    await wrong.arrayBuffer()
    t.equal(wrong.status, 401, 'a wrong token is refused')
    const full = (await (await fetch(dlq, { headers: { authorization: `Bearer ${TOKEN}` } })).json()) as {
      items: Row[]
    }
    t.ok(
      full.items.every((d) => d.bodyWithheld === undefined && d.properties !== undefined),
      'with the token: properties and bodies',
    )
  })

  await t.test('dead letters: browse, inspect, redrive', async (t) => {
    // Without a group picked: the groups that have dead letters.
    await open('#/dead-letters', 'dead-letters')
    t.same(
      await page.getByTestId('dlq-group-link').allInnerTexts(),
      ['audit'],
      'audit is the group with dead letters',
    )
    await page.getByTestId('dlq-group-link').click()
    await page.waitForURL(/group=audit/)
    await page.locator('[data-testid="page-dead-letters"][data-loading="false"]').waitFor()
    const ids = await page.getByTestId('dead-letter-id').allInnerTexts()
    t.same(ids.sort(), [...deadIds].sort(), 'both dead letters listed')
    await page.locator('[data-testid="dead-letter-details"] summary').first().click()
    t.match(
      await page.getByTestId('dead-letter-properties').first().innerText(),
      /card declined/,
      'inspected',
    )
    await shot('dead-letters')
    // Paging: each broker group lists after its own sequence (the page's "Next" link).
    type Listed = { items: { id: string; brokerGroup: string; sequence: number }[] }
    const dlq = `${base}api/dead-letters?subject=console.payments&group=audit`
    const all = (await (await fetch(dlq)).json()) as Listed
    const first = all.items[0]!
    const rest = (await (await fetch(`${dlq}&after.${first.brokerGroup}=${first.sequence}`)).json()) as Listed
    t.same(
      rest.items.map((d) => d.id),
      all.items.filter((d) => d.id !== first.id).map((d) => d.id),
      'a page after a sequence leaves it out',
    )
    await page.getByTestId('redrive-button').first().click()
    await page.getByTestId('action-ok').waitFor()
    t.match(await page.getByTestId('action-ok').innerText(), /Redrove 1/)
    t.equal((await backlog('console.payments', 'audit')).dead, 1, 'one dead letter left on the brokers')
    const again = await audit.pull(1, 5_000)
    t.equal(again.length, 1, 'the redriven message is delivered to the group again')
    t.ok(deadIds.includes(again[0]?.getMessageId() ?? ''), 'with its message id')
    await again[0]?.ack()
  })

  await t.test('delay groups: pending messages by hour', async (t) => {
    await open('#/delay', 'delay')
    t.match(await page.getByTestId('delay-group').first().innerText(), /delay-1/)
    t.match(await page.getByTestId('delay-buckets-table').innerText(), /\b1\b/, 'the delayed message counted')
    t.ok(await page.getByTestId('delay-chart').isVisible(), 'a chart of the hours')
    await shot('delay-groups')
  })

  t.same(pageErrors, [], 'no script error on any page')
  t.notOk(
    addresses.some((a) => a.includes(TOKEN) || decodeURIComponent(a).includes(TOKEN)),
    'the token never appears in an address the page loaded',
  )
  t.notOk(page.url().includes(TOKEN), 'nor in the page address')
})

t.test('console - off with console: false (404), the rest of the metaserver unchanged', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'qmq-console-off-'))
  const m = new Metaserver(
    { port: 0, dataDir: dir, clusterSecret: CLUSTER_SECRET, console: false },
    { logger: silentLogger },
  )
  await m.start()
  t.teardown(async () => {
    await m.close()
    rmSync(dir, { recursive: true, force: true })
  })
  for (const path of ['/console', '/console/', '/console/api/overview']) {
    const r = await fetch(`${m.url}${path}`)
    t.equal(r.status, 404, `${path} answers 404`)
    await r.arrayBuffer()
  }
  const health = await fetch(`${m.url}/health`)
  t.equal(health.status, 200, '/health still served')
  await health.arrayBuffer()
})
