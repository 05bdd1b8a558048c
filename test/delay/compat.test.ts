import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { ManualClock } from '../../src/common/clock'
import { FakeSender, T0, waitFor } from './helpers/delay-helpers'
import { delayDir, startDelay } from './helpers/start-delay'

/**
 * A data dir written by the delay server before its schedule, dispatch and dead-letter logs moved onto
 * SegmentLog (test/delay/fixtures/data-v1, written with BufferedFile at T0): the same files and frames,
 * so it opens as it is. In it: a0..a9 delivered (dispatch log), a10..a19 pending in the same bucket,
 * dl1 parked as a dead letter, b0..b9 with b3 cancelled, c0..c4 three hours out, d0..d4 sent last.
 */
const FIXTURE = path.join(__dirname, 'fixtures', 'data-v1')
const ids = (p: string, n: number) => Array.from({ length: n }, (_, i) => `${p}${i}`)
const PENDING = [
  ...ids('a', 20).slice(10),
  ...ids('b', 10).filter((id) => id !== 'b3'),
  ...ids('c', 5),
  ...ids('d', 5),
].sort()

for (const replay of [false, true]) {
  t.test(
    `delay - a data dir of the previous version recovers every pending message${replay ? ' (whole message log replayed)' : ''}`,
    async (t) => {
      const { dir, closers } = delayDir(t)
      fs.cpSync(FIXTURE, dir, { recursive: true })
      // Replaying the message log from 0 over the old schedule logs files nothing twice.
      if (replay) fs.writeFileSync(path.join(dir, 'checkpoint.json'), JSON.stringify({ messageLogOffset: 0 }))
      const clock = new ManualClock(T0 + 1_000)
      const sender = new FakeSender()
      const { server } = await startDelay(closers, dir, clock, sender)
      t.same(server.store.recoveryReports, [], 'nothing damaged')
      t.same(
        server.store.listDeadLetters(10).map((d) => d.status > 0),
        [true],
        'the dead letter is still listed',
      )
      t.ok(server.store.isCancelled('b3'), 'the tombstone is still there')
      for (const step of [60_000, 2 * 60_000 + 10, 5 * 60_000, 3 * 3_600_000 + 5 * 60_000]) {
        clock.set(T0 + step)
        await new Promise((r) => setTimeout(r, 50))
      }
      await waitFor(() => sender.delivered.length >= PENDING.length, 10_000, 'every pending message')
      await new Promise((r) => setTimeout(r, 100))
      t.same(
        sender.ids().sort(),
        PENDING,
        'exactly the pending messages, once each; none delivered before, none cancelled',
      )
      for (const d of sender.delivered) t.ok((d.scheduleAt as number) <= clock.now(), `${d.id} due`)
    },
  )
}
