import fs from 'node:fs'
import t from 'tap'
import type { FsIo } from '../../../src/broker/store'
import { nodeFsIo } from '../../../src/broker/store'
import { createMessageStore } from '../../../src/broker/store/file-message-store'
import { RawClient } from '../../helpers/raw-client'
import { message, send, sendOk } from './ops'
import { startBroker } from './start-broker'

/**
 * A broker whose store failed closed (a batch whose fdatasync failed could not be cut off the message
 * log: every append is refused until restart) answers 503 on /health with the reason, not 200.
 * The fault is injected through the store's FsIo, on message-log descriptors only.
 */

function pathOf(fd: number): string {
  try {
    return fs.readlinkSync(`/proc/self/fd/${fd}`)
  } catch {
    return ''
  }
}

t.test('broker /health answers 503 with a reason once the store failed closed', async (t) => {
  let failNext = false
  const eio = (what: string) => Object.assign(new Error(`EIO: injected ${what} failure`), { code: 'EIO' })
  const onMessageLog = (fd: number) => pathOf(fd).includes('/messagelog/')
  const io: FsIo = {
    ...nodeFsIo,
    fdatasync: (fd) =>
      failNext && onMessageLog(fd) ? Promise.reject(eio('fdatasync')) : nodeFsIo.fdatasync(fd),
    ftruncate: (fd, len) =>
      failNext && onMessageLog(fd) ? Promise.reject(eio('ftruncate')) : nodeFsIo.ftruncate(fd, len),
  }
  const b = await startBroker(
    t,
    { httpPort: 0, flush: 'sync' },
    {
      createStore: (ctx) =>
        createMessageStore({
          ...ctx.options,
          clock: ctx.clock,
          logger: ctx.logger,
          registry: ctx.registry,
          io,
        }),
    },
  )
  const url = `http://127.0.0.1:${b.broker.addresses.httpPort as number}/health`
  const c = await RawClient.connect(b.port)
  t.teardown(() => c.destroy())
  await sendOk(c, [message('m', 'a')])
  const ok = await fetch(url)
  t.equal(ok.status, 200, 'healthy before the failure')
  t.equal(((await ok.json()) as { status: string }).status, 'ok')

  failNext = true
  const refused = await send(c, [message('m', 'b')])
  t.not(refused[0]?.status, 0, 'the append whose fdatasync failed is refused')
  failNext = false
  const still = await send(c, [message('m', 'c')])
  t.not(still[0]?.status, 0, 'the store failed closed: later appends are refused too')

  const bad = await fetch(url)
  t.equal(bad.status, 503, '/health answers 503')
  const body = (await bad.json()) as { status: string; reason?: string }
  t.equal(body.status, 'failed')
  t.match(body.reason, /QMQ_ERR_STORE_FAILED/, 'the reason carries the error code')
  t.match(body.reason, /message log/, 'and names the log')
})
