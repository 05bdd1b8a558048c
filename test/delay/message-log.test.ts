import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { ManualClock } from '../../src/common/clock'
import { decodeSendRequest, encodeSendRequest } from '../../src/common/protocol/commands'
import { delayed, FakeSender, send, T0, waitFor } from './helpers/delay-helpers'
import type { FsIo } from '../../src/broker/store/fs-io'
import { crashBeforeSchedules, delayDir, FaultyIo, fdPath, startDelay } from './helpers/start-delay'

/**
 * The delay server's message log is a SegmentLog (src/broker/store/segment-log.ts): its I/O goes
 * through the store's FsIo, and it keeps the on-disk format of earlier versions (bare records).
 */

const settle = () => new Promise((r) => setTimeout(r, 150))

t.test(
  'delay - a failed fdatasync of the message log refuses the batch and cuts it from the log',
  async (t) => {
    const { dir, closers } = delayDir(t)
    const clock = new ManualClock(T0)
    const faults = new FaultyIo()
    // The next fdatasync of a message-log segment fails once (EIO); the cut that follows succeeds.
    const failures: string[] = []
    let failNext = false
    const io: FsIo = {
      ...faults.io,
      fdatasync: async (fd) => {
        const file = fdPath(fd)
        if (failNext && /\/message\/\d+\.log$/.test(file)) {
          failNext = false
          failures.push(file)
          throw Object.assign(new Error(`EIO: i/o error, fdatasync (injected) ${file}`), { code: 'EIO' })
        }
        await faults.io.fdatasync(fd)
      },
    }
    const a = await startDelay(closers, dir, clock, new FakeSender(), { checkpointIntervalMs: 600_000 }, io)
    t.same(
      (await send(a.client, [delayed('before', T0 + 5_000)])).map((r) => r.status),
      [0],
    )
    failNext = true
    const refused = await send(a.client, [delayed('lost', T0 + 5_000)])
    t.not(refused[0]?.status, 0, 'the SEND whose fdatasync failed is refused')
    t.equal(failures.length, 1, 'the message-log fdatasync went through the injected FsIo')
    t.same(
      (await send(a.client, [delayed('after', T0 + 5_000)])).map((r) => r.status),
      [0],
      'the next SEND is stored',
    )
    await crashBeforeSchedules(dir, closers)

    const sender = new FakeSender()
    const b = await startDelay(closers, dir, clock, sender)
    t.same(b.server.store.recoveryReports, [], 'no damage: the refused record was cut, not left behind')
    clock.set(T0 + 6_000)
    await waitFor(() => sender.delivered.length >= 2, 10_000, 'two deliveries')
    await settle()
    t.same(sender.ids().sort(), ['after', 'before'], 'the refused message is never delivered')
  },
)

t.test('delay - a message log written as bare records (the format of earlier versions) opens', async (t) => {
  const { dir, closers } = delayDir(t)
  const clock = new ManualClock(T0)
  fs.mkdirSync(path.join(dir, 'message'), { recursive: true })
  const records = ['old1', 'old2', 'old3'].map((id) => delayed(id, T0 + 5_000))
  // Two segments named by the base offset of their first byte, records back to back.
  fs.writeFileSync(path.join(dir, 'message', `${'0'.repeat(20)}.log`), Buffer.concat(records.slice(0, 2)))
  const base = (records[0] as Buffer).length + (records[1] as Buffer).length
  fs.writeFileSync(path.join(dir, 'message', `${String(base).padStart(20, '0')}.log`), records[2] as Buffer)
  const sender = new FakeSender()
  const a = await startDelay(closers, dir, clock, sender)
  t.same(a.server.store.recoveryReports, [])
  t.equal(a.server.store.stats().pending, 3)
  clock.set(T0 + 6_000)
  await waitFor(() => sender.delivered.length >= 3, 10_000, 'three deliveries')
  t.same(sender.ids().sort(), ['old1', 'old2', 'old3'])
})

t.test(
  "delay - a SEND's records end where its own records end, not the log: what sync replication waits for",
  async (t) => {
    const { dir, closers } = delayDir(t)
    const clock = new ManualClock(T0)
    const a = await startDelay(closers, dir, clock, new FakeSender(), { checkpointIntervalMs: 600_000 })
    const store = a.server.store
    const items = (...ids: string[]) =>
      decodeSendRequest(Buffer.concat(encodeSendRequest(ids.map((id) => delayed(id, T0 + 5_000)))))
    const start = store.messageSegmentLog?.endOffset ?? -1
    // Two requests in one group-commit batch: the first one's records end before the second's.
    const [first, second] = await Promise.all([store.accept(items('a1', 'a2')), store.accept(items('b1'))])
    const logEnd = store.messageSegmentLog?.endOffset ?? -1
    const [a1, a2] = items('a1', 'a2').map((i) => i.bytes.length)
    t.same(first?.results, [undefined, undefined])
    t.equal(first?.end, start + (a1 ?? 0) + (a2 ?? 0), "the first request's own end")
    t.equal(second?.end, logEnd, "the second request's records are the batch's last")
    t.ok((first?.end ?? 0) < logEnd, 'the first request does not wait for the second one')
    const tooFar = decodeSendRequest(
      Buffer.concat(encodeSendRequest([delayed('far', T0 + 10 * 365 * 86_400_000)])),
    )
    const none = await store.accept(tooFar)
    t.equal(none.results[0]?.code, 'QMQ_ERR_DELAY_TOO_FAR')
    t.equal(none.end, 0, 'nothing stored: no end to wait for')
  },
)
