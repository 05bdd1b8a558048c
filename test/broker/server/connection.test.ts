import { execFile } from 'node:child_process'
import { connect } from 'node:net'
import { join } from 'node:path'
import t from 'tap'
import { ERROR_CODES } from '../../../src/common/error-codes'
import { RequestCode } from '../../../src/common/protocol/codes'
import { encodePullRequest } from '../../../src/common/protocol/commands'
import { encodeFrame, encodeFrameHeader, FRAME_MAGIC, FrameDecoder } from '../../../src/common/protocol/frame'
import { RawClient } from '../../helpers/raw-client'
import { settleWithin } from '../../helpers/settle'
import { pullRequest } from './ops'
import { startBroker } from './start-broker'

t.test('connection - PING answers with an empty body, many in flight on one connection', async (t) => {
  const b = await startBroker(t)
  const c = await RawClient.connect(b.port)
  t.teardown(() => c.destroy())
  const answers = await Promise.all(Array.from({ length: 50 }, () => c.request(RequestCode.PING)))
  for (const a of answers) {
    t.equal(a.status, 0)
    t.equal(a.body.length, 0)
    t.equal(a.code, RequestCode.PING)
  }
  t.equal(new Set(answers.map((a) => a.requestId)).size, 50)
})

t.test(
  'connection - unknown request code and unsupported version get errors, the connection stays',
  async (t) => {
    const b = await startBroker(t)
    const c = await RawClient.connect(b.port)
    t.teardown(() => c.destroy())
    const unknown = await c.request(999)
    t.equal(unknown.status, ERROR_CODES.QMQ_ERR_UNKNOWN_REQUEST.status)
    t.match(unknown.message, /unknown request code 999/)
    const cancel = await c.request(RequestCode.CANCEL)
    t.equal(cancel.status, ERROR_CODES.QMQ_ERR_UNKNOWN_REQUEST.status, 'CANCEL belongs to the delay server')
    const v = await c.request(RequestCode.PING, [], { version: 9 })
    t.equal(v.status, ERROR_CODES.QMQ_ERR_UNSUPPORTED_VERSION.status)
    t.equal((await c.request(RequestCode.PING)).status, 0, 'still usable')
  },
)

t.test(
  'connection - malformed payloads and invalid names get documented errors, the connection stays',
  async (t) => {
    const b = await startBroker(t)
    const c = await RawClient.connect(b.port)
    t.teardown(() => c.destroy())
    const short = await c.request(RequestCode.PULL, Buffer.from([0, 5, 1]))
    t.equal(short.status, ERROR_CODES.QMQ_ERR_PAYLOAD_MALFORMED.status)
    const pull = pullRequest({ subject: 'bad subject', group: 'g', consumerId: 'c', maxMessages: 1 })
    const badSubject = await c.request(RequestCode.PULL, encodePullRequest(pull))
    t.equal(badSubject.status, ERROR_CODES.QMQ_ERR_SUBJECT_INVALID.status)
    const badGroup = await c.request(
      RequestCode.PULL,
      encodePullRequest({ ...pull, subject: 's', group: 'a/b' }),
    )
    t.equal(badGroup.status, ERROR_CODES.QMQ_ERR_GROUP_INVALID.status)
    const sendCount = Buffer.alloc(4)
    sendCount.writeUInt32BE(3)
    const send = await c.request(RequestCode.SEND, sendCount)
    t.equal(send.status, ERROR_CODES.QMQ_ERR_PAYLOAD_MALFORMED.status)
    t.equal((await c.request(RequestCode.PING)).status, 0)
  },
)

t.test('connection - bad magic closes that connection only, after one error frame', async (t) => {
  const b = await startBroker(t)
  const good = await RawClient.connect(b.port)
  const bad = await RawClient.connect(b.port)
  t.teardown(() => {
    good.destroy()
    bad.destroy()
  })
  t.equal((await bad.request(RequestCode.PING)).status, 0)
  bad.writeRaw(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'))
  await bad.closed
  t.equal(bad.unsolicited.length, 1, 'one error frame')
  t.equal(bad.unsolicited[0]?.status, ERROR_CODES.QMQ_ERR_BAD_MAGIC.status)
  t.equal((await good.request(RequestCode.PING)).status, 0, 'the other connection is served')
})

t.test('connection - an oversize frame is refused before its body arrives', async (t) => {
  const b = await startBroker(t, { maxFrameBytes: 64 * 1024 })
  const c = await RawClient.connect(b.port)
  t.teardown(() => c.destroy())
  const header = encodeFrameHeader({ code: RequestCode.SEND, flags: 0, status: 0, requestId: 1 }, 10_000_000)
  c.writeRaw(header)
  await c.closed
  t.equal(c.unsolicited[0]?.status, ERROR_CODES.QMQ_ERR_FRAME_TOO_LARGE.status)
})

t.test('connection - frames fed one byte at a time are answered', async (t) => {
  const b = await startBroker(t)
  const socket = connect({ port: b.port, host: '127.0.0.1' })
  t.teardown(() => socket.destroy())
  await new Promise((r) => socket.once('connect', r))
  const frames = Buffer.concat(
    [1, 2, 3].map((id) =>
      encodeFrame({ code: RequestCode.PING, flags: 0, status: 0, requestId: id }, Buffer.alloc(0)),
    ),
  )
  const decoder = new FrameDecoder()
  const got: number[] = []
  const done = new Promise<void>((resolve) => {
    socket.on('data', (chunk: Buffer) => {
      for (const f of decoder.push(chunk)) got.push(f.requestId)
      if (got.length === 3) resolve()
    })
  })
  for (const byte of frames) {
    socket.write(Buffer.from([byte]))
    await new Promise((r) => setImmediate(r))
  }
  await done
  t.same(got.sort(), [1, 2, 3])
})

t.test('connection - a client that says nothing is closed after the first-frame timeout', async (t) => {
  const b = await startBroker(t, { firstFrameTimeoutMs: 150 })
  const socket = connect({ port: b.port, host: '127.0.0.1' })
  t.teardown(() => socket.destroy())
  // Half a header, then silence.
  socket.write(Buffer.from([0, 0, 0, 20, (FRAME_MAGIC >>> 24) & 0xff]))
  const outcome = await settleWithin(
    new Promise((resolve) => socket.on('close', () => resolve('closed'))),
    3_000,
    'still open',
  )
  t.equal(outcome, 'closed', 'closed by the server')
})

t.test('connection - a ONEWAY request gets no answer', async (t) => {
  const b = await startBroker(t)
  const c = await RawClient.connect(b.port)
  t.teardown(() => c.destroy())
  const oneway = c.request(RequestCode.PING, [], { flags: 2 })
  const after = await c.request(RequestCode.PING)
  t.equal(after.status, 0)
  const raced = await Promise.race([
    oneway.then(() => 'answered'),
    new Promise((r) => setTimeout(() => r('silent'), 100)),
  ])
  t.equal(raced, 'silent')
})

t.test(
  'connection - close() completes with a connection closed for its frame deadline still open',
  async (t) => {
    // In a child process whose event loop nothing else keeps alive (fixtures/close-after-frame-timeout.ts):
    // before the fix the close's grace timer was unref'd and the process exited inside broker.close()
    // (code 0, nothing printed, the store never closed).
    const script = join(__dirname, 'fixtures', 'close-after-frame-timeout.ts')
    const out = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
      const child = execFile(
        process.execPath,
        ['--import', 'tsx', script],
        // Without tap's NODE_OPTIONS (its process-info hook keeps the child's event loop alive).
        { timeout: 60_000, env: { ...process.env, NODE_OPTIONS: '' } },
        (_e, stdout, stderr) => resolve({ code: child.exitCode, stdout, stderr }),
      )
    })
    t.equal(out.stdout, 'closed\n', `broker.close() resolved before the process ended ${out.stderr}`)
    t.equal(out.code, 0)
  },
)
