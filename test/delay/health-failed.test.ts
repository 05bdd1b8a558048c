import t from 'tap'
import type { FsIo } from '../../src/broker/store/fs-io'
import { ManualClock } from '../../src/common/clock'
import { delayed, FakeSender, send, T0 } from './helpers/delay-helpers'
import { delayDir, FaultyIo, fdPath, startDelay } from './helpers/start-delay'

/**
 * A delay server whose message log failed closed (a batch whose fdatasync failed could not be cut
 * off: SENDs are refused until restart) answers 503 on /health with the reason, not 200.
 */
t.test('delay /health answers 503 with a reason once the message log failed closed', async (t) => {
  const { dir, closers } = delayDir(t)
  const clock = new ManualClock(T0)
  const faults = new FaultyIo()
  let failNext = false
  const onMessageLog = (fd: number) => /\/message\/\d+\.log$/.test(fdPath(fd))
  const eio = (what: string) => Object.assign(new Error(`EIO: injected ${what} failure`), { code: 'EIO' })
  const io: FsIo = {
    ...faults.io,
    fdatasync: (fd) =>
      failNext && onMessageLog(fd) ? Promise.reject(eio('fdatasync')) : faults.io.fdatasync(fd),
    ftruncate: (fd, len) =>
      failNext && onMessageLog(fd) ? Promise.reject(eio('ftruncate')) : faults.io.ftruncate(fd, len),
  }
  const a = await startDelay(closers, dir, clock, new FakeSender(), { httpPort: 0, fsync: true }, io)
  const url = `http://127.0.0.1:${a.server.httpPort as number}/health`
  t.same(
    (await send(a.client, [delayed('before', T0 + 5_000)])).map((r) => r.status),
    [0],
  )
  const ok = await fetch(url)
  t.equal(ok.status, 200, 'healthy before the failure')
  t.equal(((await ok.json()) as { status: string }).status, 'ok')

  failNext = true
  const refused = await send(a.client, [delayed('lost', T0 + 5_000)])
  t.not(refused[0]?.status, 0, 'the SEND whose fdatasync failed is refused')
  failNext = false
  const still = await send(a.client, [delayed('after', T0 + 5_000)])
  t.not(still[0]?.status, 0, 'the log failed closed: later SENDs are refused too')

  const bad = await fetch(url)
  t.equal(bad.status, 503, '/health answers 503')
  const body = (await bad.json()) as { status: string; reason?: string }
  t.equal(body.status, 'failed')
  t.match(body.reason, /QMQ_ERR_STORE_FAILED/)
})
