import fs from 'node:fs'
import type { Test } from 'tap'
import t from 'tap'
import type { FsIo } from '../../../src/broker/store'
import { nodeFsIo } from '../../../src/broker/store'
import type { FileMessageStore } from '../../../src/broker/store/file-message-store'
import { ManualClock } from '../../../src/common/clock'
import { isQmqError } from '../../../src/common/errors'
import { createLogger } from '../../../src/common/logger'
import { createRegistry, type Registry } from '../../../src/common/metrics'
import { bodyOf, open, pullOpts, rec } from './helpers'

/**
 * Defect 10 of issue 12: failure paths that lied or duplicated. I/O faults are injected through the
 * store's FsIo (as disk-full.test.ts does), per log: the file descriptor's path says which log it is.
 */
type LogName = 'messagelog' | 'actionlog'

function logOf(fd: number): string {
  try {
    return fs.readlinkSync(`/proc/self/fd/${fd}`)
  } catch {
    return ''
  }
}

const eio = (what: string) => Object.assign(new Error(`EIO: injected ${what} failure`), { code: 'EIO' })

/**
 * Fails the next `n` fdatasyncs / ftruncates of one log; `torn`: the next `n` writevs write their first
 * half, then fail (a disk that failed mid-batch).
 */
function faultyIo() {
  const faults = {
    sync: { messagelog: 0, actionlog: 0 } as Record<LogName, number>,
    truncate: { messagelog: 0, actionlog: 0 } as Record<LogName, number>,
    torn: { messagelog: 0, actionlog: 0 } as Record<LogName, number>,
  }
  const take = (kind: 'sync' | 'truncate' | 'torn', fd: number): boolean => {
    const path = logOf(fd)
    for (const log of ['messagelog', 'actionlog'] as const) {
      if (path.includes(`/${log}/`) && faults[kind][log] > 0) {
        faults[kind][log]--
        return true
      }
    }
    return false
  }
  const io: FsIo = {
    ...nodeFsIo,
    fdatasync: (fd) => (take('sync', fd) ? Promise.reject(eio('fdatasync')) : nodeFsIo.fdatasync(fd)),
    ftruncate: (fd, len) =>
      take('truncate', fd) ? Promise.reject(eio('ftruncate')) : nodeFsIo.ftruncate(fd, len),
    writev: async (fd, buffers, position) => {
      if (!take('torn', fd)) return nodeFsIo.writev(fd, buffers, position)
      const all = Buffer.concat(buffers)
      await nodeFsIo.write(fd, all.subarray(0, all.length >> 1), position)
      throw eio('writev (half written)')
    },
  }
  return { faults, io }
}

async function until(cond: () => boolean | Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + 10_000
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 5))
  }
}

async function metricValue(registry: Registry, name: string, labels: Record<string, string> = {}) {
  const m = await registry.getSingleMetric(name)?.get()
  const v = m?.values.find((x) => Object.entries(labels).every(([k, l]) => x.labels[k] === l))
  return v?.value
}

function capture() {
  const lines: Record<string, unknown>[] = []
  const logger = createLogger({
    level: 'warn',
    env: false,
    destination: { write: (s: string) => lines.push(JSON.parse(s) as Record<string, unknown>) },
  })
  return { lines, logger }
}

/**
 * After the message log failed closed: every append is refused with QMQ_ERR_STORE_FAILED (one that
 * is acknowledged anyway goes into `acked`), with an error line and qmq_store_failed{log="message"} 1.
 */
async function appendsRefused(
  t: Test,
  store: FileMessageStore,
  registry: Registry,
  lines: Record<string, unknown>[],
  acked: Map<number, string>,
  bodies: string[],
): Promise<void> {
  for (const body of bodies) {
    try {
      const [r] = await store.append([rec('s', { body })])
      acked.set(r?.sequence as number, body)
      t.fail(`append of ${body} acknowledged with sequence ${r?.sequence}`)
    } catch (err) {
      t.ok(isQmqError(err, 'QMQ_ERR_STORE_FAILED'), `${body}: refused with QMQ_ERR_STORE_FAILED`)
    }
  }
  t.equal(await metricValue(registry, 'qmq_store_failed', { log: 'message' }), 1, 'qmq_store_failed 1')
  t.ok(
    lines.some((l) => l.level === 'error' && /refus/i.test(String(l.msg))),
    'an error line says appends are refused',
  )
}

/**
 * Reopens `dir` after a crash: every acknowledged message kept its sequence, no sequence twice, and
 * appends go on after the last one. Returns the bodies the reopened store holds.
 */
async function reopenedKeeps(t: Test, dir: string, acked: Map<number, string>): Promise<string[]> {
  const store = await open(dir, { checkpointIntervalMs: 3_600_000 })
  t.teardown(() => store.close())
  const all = await store.pull(pullOpts('s', 'fresh', 'c'))
  const bySeq = new Map(all.map((m) => [m.sequence, bodyOf(m.record)]))
  for (const [seq, body] of acked) t.equal(bySeq.get(seq), body, `acknowledged ${body} kept sequence ${seq}`)
  t.equal(new Set(all.map((m) => m.sequence)).size, all.length, 'no sequence twice')
  const [again] = await store.append([rec('s', { body: 'after reopen' })])
  t.equal(again?.sequence, all.length, 'appends work again after a reopen, sequences continue')
  return all.map((m) => bodyOf(m.record))
}

t.test(
  "store - actionFlush 'sync': a failed fdatasync after a good write does not write the batch twice",
  async (t) => {
    const dir = t.testdir()
    const { faults, io } = faultyIo()
    let store: FileMessageStore = await open(dir, {
      io,
      actionFlush: 'sync',
      checkpointIntervalMs: 3_600_000,
    })
    await store.append([rec('s', { body: 'm0' })])
    faults.sync.actionlog = 1
    const got = await store.pull(pullOpts('s', 'g', 'c'))
    t.same(
      got.map((m) => [m.sequence, m.deliveryCount]),
      [[0, 1]],
    )
    await until(() => faults.sync.actionlog === 0 && store.alog.pendingCount === 0, 'the retried write')
    await store.abandon() // a crash: the replay of the action log rebuilds the state
    store = await open(dir, { actionFlush: 'sync', checkpointIntervalMs: 3_600_000 })
    t.teardown(() => store.close())
    const held = await store.pull(pullOpts('s', 'g', 'c', { resumeHeld: true }))
    t.same(
      held.map((m) => [m.sequence, m.deliveryCount]),
      [[0, 1]],
      'one delivery recorded, not two',
    )
  },
)

t.test(
  "store - flush 'sync': when a rejected batch cannot be cut off, appends stop instead of reusing its sequences",
  async (t) => {
    const dir = t.testdir()
    const { faults, io } = faultyIo()
    const registry = createRegistry()
    const { lines, logger } = capture()
    const store: FileMessageStore = await open(dir, { io, registry, logger, checkpointIntervalMs: 3_600_000 })
    const acked = new Map<number, string>()
    const [first] = await store.append([rec('s', { id: 'keep', body: 'kept' })])
    acked.set(first?.sequence as number, 'kept')

    faults.sync.messagelog = 1
    faults.truncate.messagelog = 1
    await t.rejects(store.append([rec('s', { id: 'a', body: 'rejected' })]), { code: 'QMQ_ERR_STORE_IO' })
    t.equal(faults.truncate.messagelog, 0, 'the cut was tried and failed')

    // Everything after that: refused, with a stable code, a log line and a metric.
    await appendsRefused(t, store, registry, lines, acked, ['after-1', 'after-2'])
    // Consumers keep working from what was stored.
    const seen = await store.pull(pullOpts('s', 'g', 'c'))
    t.same(
      seen.map((m) => bodyOf(m.record)),
      ['kept'],
    )
    await store.abandon() // a crash: recovery scans the message log, rejected batch included
    const bodies = await reopenedKeeps(t, dir, acked)
    t.ok(
      bodies.every((b) => ['kept', 'rejected', 'after reopen'].includes(b)),
      'at most the rejected message comes back (maybe stored), nothing else',
    )
  },
)

t.test(
  'store - when a failed write cannot be cut off, appends stop instead of writing over its records',
  async (t) => {
    const dir = t.testdir()
    const { faults, io } = faultyIo()
    const registry = createRegistry()
    const { lines, logger } = capture()
    const store: FileMessageStore = await open(dir, {
      io,
      registry,
      logger,
      checkpointIntervalMs: 3_600_000,
    })
    const acked = new Map<number, string>()
    const [first] = await store.append([rec('s', { id: 'keep', body: 'kept' })])
    acked.set(first?.sequence as number, 'kept')

    // A batch of four: half of it reaches the file (two whole records), then the write fails and so
    // does the cut that should undo it.
    faults.torn.messagelog = 1
    faults.truncate.messagelog = 1
    const failed = ['f1', 'f2', 'f3', 'f4'].map((body) => rec('s', { id: body, body }))
    await t.rejects(store.append(failed), { code: 'QMQ_ERR_STORE_IO' })
    t.equal(faults.truncate.messagelog, 0, 'the cut was tried and failed')

    // A shorter batch written over those bytes would leave the failed batch's later records after
    // it, where a recovery finds them: refused instead.
    await appendsRefused(t, store, registry, lines, acked, ['after'])
    await store.abandon() // a crash
    await reopenedKeeps(t, dir, acked)
  },
)

t.test(
  "store - actionFlush 'sync': when a batch whose fdatasync failed cannot be cut off, consumer writes stop",
  async (t) => {
    const dir = t.testdir()
    const { faults, io } = faultyIo()
    const registry = createRegistry()
    const { lines, logger } = capture()
    let store: FileMessageStore = await open(dir, {
      io,
      registry,
      logger,
      actionFlush: 'sync',
      checkpointIntervalMs: 3_600_000,
    })
    await store.append([rec('s', { body: 'm0' }), rec('s', { body: 'm1' })])
    faults.sync.actionlog = 1
    faults.truncate.actionlog = 1
    await store.pull(pullOpts('s', 'g', 'c', { maxMessages: 1 }))
    await until(
      async () => (await metricValue(registry, 'qmq_store_failed', { log: 'action' })) === 1,
      'failed',
    )
    t.ok(
      lines.some((l) => l.level === 'error'),
      'logged',
    )
    await t.rejects(store.ack('s', 'g', 'c', [0]), { code: 'QMQ_ERR_STORE_FAILED' })
    await t.rejects(store.pull(pullOpts('s', 'g', 'c')), { code: 'QMQ_ERR_STORE_FAILED' })
    t.same(
      (await store.append([rec('s', { body: 'm2' })])).map((r) => r.sequence),
      [2],
      'producers are not affected',
    )
    await store.close()
    store = await open(dir, { actionFlush: 'sync', checkpointIntervalMs: 3_600_000 })
    t.teardown(() => store.close())
    const got = await store.pull(pullOpts('s', 'g', 'c', { resumeHeld: true }))
    t.ok(
      got.every((m) => m.deliveryCount === 1),
      'after a reopen: no delivery counted twice',
    )
  },
)

t.test("store - flush 'async': background fdatasync errors are logged and counted", async (t) => {
  const dir = t.testdir()
  const { faults, io } = faultyIo()
  const registry = createRegistry()
  const { lines, logger } = capture()
  const store = await open(dir, {
    io,
    registry,
    logger,
    flush: 'async',
    flushIntervalMs: 10,
    checkpointIntervalMs: 3_600_000,
  })
  t.teardown(() => store.close())
  faults.sync.messagelog = 1
  faults.sync.actionlog = 1
  await store.append([rec('s', { body: 'm0' })])
  await store.pull(pullOpts('s', 'g', 'c'))
  for (const log of ['message', 'action']) {
    await until(
      async () => ((await metricValue(registry, 'qmq_store_sync_errors_total', { log })) ?? 0) >= 1,
      `qmq_store_sync_errors_total{log="${log}"}`,
    )
  }
  t.ok(
    lines.filter((l) => l.level === 'error' && /fdatasync/.test(String(l.msg))).length >= 2,
    'one error line per failed background fdatasync',
  )
})

t.test('store - the dedupe cap shortens the window: the metric says so and a line is logged', async (t) => {
  const clock = new ManualClock()
  const registry = createRegistry()
  const { lines, logger } = capture()
  const store = await open(t.testdir(), {
    clock,
    registry,
    logger,
    dedupeWindowMs: 600_000,
    dedupeMaxEntries: 10,
    checkpointIntervalMs: 3_600_000,
  })
  t.teardown(() => store.close())
  for (let i = 0; i < 10; i++) {
    await store.append([rec('s', { id: `id${i}` })])
    clock.advance(1000)
  }
  store.sweep()
  t.equal(await metricValue(registry, 'qmq_store_dedupe_window_seconds'), 600, 'the full window')
  await store.append([rec('s', { id: 'id10' })]) // at 10 s: id0 (stored at 0 s) forgotten early
  store.sweep()
  t.equal(await metricValue(registry, 'qmq_store_dedupe_window_seconds'), 10, 'what is left: 10 s')
  t.ok(
    lines.some((l) => l.level === 'warn' && /dedupe window/.test(String(l.msg))),
    'the shrinking is logged',
  )
  const [r] = await store.append([rec('s', { id: 'id0' })])
  t.equal(r?.duplicate, false, 'a resend of id0 (older than the effective window) is stored again')
  clock.advance(600_000)
  store.sweep()
  t.equal(await metricValue(registry, 'qmq_store_dedupe_window_seconds'), 600, 'back to the full window')
})

t.test('store - a dedupe rebuild limited by dedupeRebuildMaxBytes shows in the metric', async (t) => {
  const dir = t.testdir()
  const opts = { segmentBytes: 4096, dedupeRebuildMaxBytes: 8192, checkpointIntervalMs: 3_600_000 }
  let store = await open(dir, opts)
  for (let i = 0; i < 60; i++) await store.append([rec('s', { id: `id${i}`, body: 'x'.repeat(200) })])
  await store.close()
  const registry = createRegistry()
  const { lines, logger } = capture()
  store = await open(dir, { ...opts, registry, logger })
  t.teardown(() => store.close())
  store.sweep()
  const w = (await metricValue(registry, 'qmq_store_dedupe_window_seconds')) as number
  t.ok(w < 600, `effective window ${w} s < 600 s`)
  t.ok(
    lines.some((l) => l.level === 'warn' && /dedupe/.test(String(l.msg))),
    'logged',
  )
  const [r] = await store.append([rec('s', { id: 'id0', body: 'again' })])
  t.equal(r?.duplicate, false, 'id0 was outside the rebuilt window')
})
