import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { ManualClock } from '../../src/common/clock'
import { encodeRecord } from '../../src/common/record'
import { FRAME_HEADER_BYTES, ScheduleLog } from '../../src/delay/store/schedule-log'
import { delayed, FakeSender, send, T0 } from './helpers/delay-helpers'
import { delayDir, startDelay } from './helpers/start-delay'

// What the delay server keeps in memory per pending message (the bench's 10M-pending RSS figure
// rests on it): a buffered schedule-log frame is its own copy, not a view into the SEND request the
// record came in (which kept the whole request alive), and all buckets together buffer a bounded
// number of bytes, however many buckets the sends spread over.

t.test(
  'delay - a buffered schedule-log frame is a copy: the request buffer can be reused or freed',
  async (t) => {
    const file = path.join(t.testdir(), 'b.sched')
    const log = new ScheduleLog(file, 0)
    const request = Buffer.concat([delayed('a', T0 + 1), delayed('b', T0 + 2)])
    const first = request.subarray(0, request.readUInt32BE(0))
    const original = Buffer.from(first)
    const { offset, length } = log.append(first, 7)
    t.equal(log.bufferedBytes, length, 'buffered, not yet written')
    request.fill(0) // the request's buffer is reused (or freed) once the SEND is answered
    const frame = log.read(offset, length)
    t.same(frame.subarray(FRAME_HEADER_BYTES), original, 'the frame holds the record as it was appended')
    await log.close()
    const reopened = new ScheduleLog(file, -1)
    const got: Buffer[] = []
    const scan = await reopened.recover((f) => got.push(Buffer.from(f.frame.subarray(FRAME_HEADER_BYTES))))
    t.same(scan.damaged, [], 'the frame verifies on disk')
    t.same(got, [original])
    await reopened.close()
  },
)

t.test(
  'delay - sends spread over many buckets are written before the checkpoint once 4 MiB are buffered',
  async (t) => {
    const { dir, closers } = delayDir(t)
    const clock = new ManualClock(T0)
    const { server, client } = await startDelay(closers, dir, clock, new FakeSender(), {
      checkpointIntervalMs: 600_000, // no checkpoint during the test: only the store's own flushes write
    })
    const BUCKETS = 300 // one-minute buckets (test config), all far from the load window
    const body = 'x'.repeat(1_000)
    let frameBytes = 0
    let n = 0
    for (let batch = 0; batch < 12; batch++) {
      const records = Array.from({ length: 500 }, () => {
        const i = n++
        return encodeRecord({
          id: `m${i}`,
          subject: 'order.created',
          createdAt: T0,
          scheduleAt: T0 + 3_600_000 + (i % BUCKETS) * 60_000,
          tags: [],
          properties: new Map(),
          body,
        })
      })
      for (const r of records) frameBytes += FRAME_HEADER_BYTES + r.length
      const res = await send(client, records)
      t.ok(
        res.every((r) => r.status === 0),
        `batch ${batch} stored`,
      )
    }
    // ~6.2 MB over 300 buckets: ~21 KB each, under a bucket's own 64 KiB flush size.
    const scheduleDir = path.join(dir, 'schedule')
    let onDisk = 0
    for (const f of fs.readdirSync(scheduleDir)) onDisk += fs.statSync(path.join(scheduleDir, f)).size
    t.ok(
      frameBytes - onDisk <= 4 * 1024 * 1024,
      `at most 4 MiB of ${frameBytes} frame bytes still buffered (${frameBytes - onDisk})`,
    )
    t.equal(server.store.stats().pending, n, 'every message pending')
  },
)
