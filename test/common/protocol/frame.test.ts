import t from 'tap'
import { QmqError } from '../../../src/common/errors'
import {
  encodeFrame,
  encodeFrameHeader,
  FLAG_ONEWAY,
  FLAG_RESPONSE,
  type Frame,
  FRAME_MAGIC,
  FrameDecoder,
  HEADER_BYTES,
  PROTOCOL_VERSION,
} from '../../../src/common/protocol/frame'
import { prng } from '../../helpers/messages'

function sampleFrames(n: number, rand: () => number): Buffer[] {
  const out: Buffer[] = []
  for (let i = 0; i < n; i++) {
    const len = rand() < 0.2 ? 0 : Math.floor(rand() * 3000)
    const body = Buffer.alloc(len)
    for (let j = 0; j < len; j++) body[j] = Math.floor(rand() * 256)
    out.push(
      encodeFrame(
        {
          flags: rand() < 0.5 ? FLAG_RESPONSE : FLAG_ONEWAY,
          code: i % 7,
          status: i % 3,
          requestId: i * 7919,
        },
        body,
      ),
    )
  }
  return out
}

function summary(f: Frame) {
  return { v: f.version, fl: f.flags, c: f.code, s: f.status, id: f.requestId, body: f.body.toString('hex') }
}

t.test('frame - header layout is as documented', async (t) => {
  const h = encodeFrameHeader({ flags: FLAG_RESPONSE, code: 2, status: 21, requestId: 0xdeadbeef }, 5)
  t.equal(h.length, HEADER_BYTES)
  t.equal(h.readUInt32BE(0), HEADER_BYTES - 4 + 5)
  t.equal(h.readUInt32BE(4), FRAME_MAGIC)
  t.equal(h.readUInt8(8), PROTOCOL_VERSION)
  t.equal(h.readUInt8(9), FLAG_RESPONSE)
  t.equal(h.readUInt16BE(10), 2)
  t.equal(h.readUInt16BE(12), 21)
  t.equal(h.readUInt32BE(14), 0xdeadbeef)
})

t.test('frame - decoder fed byte by byte and in random chunkings yields the same frames', async (t) => {
  const rand = prng(42)
  const frames = sampleFrames(60, rand)
  const stream = Buffer.concat(frames)
  const whole = new FrameDecoder().push(stream).map(summary)
  t.equal(whole.length, frames.length)

  const byByte = new FrameDecoder()
  const got: ReturnType<typeof summary>[] = []
  for (let i = 0; i < stream.length; i++)
    for (const f of byByte.push(stream.subarray(i, i + 1))) got.push(summary(f))
  t.same(got, whole, 'byte by byte')
  t.equal(byByte.pendingBytes, 0)

  for (let round = 0; round < 30; round++) {
    const d = new FrameDecoder()
    const out: ReturnType<typeof summary>[] = []
    let o = 0
    while (o < stream.length) {
      const n = 1 + Math.floor(rand() * (rand() < 0.5 ? 10 : 9000))
      for (const f of d.push(stream.subarray(o, o + n))) out.push(summary(f))
      o += n
    }
    if (JSON.stringify(out) !== JSON.stringify(whole)) t.fail(`chunking round ${round} differs`)
  }
  t.pass('random chunkings agree')
})

t.test('frame - bad magic is fatal with QMQ_ERR_BAD_MAGIC, and stays failed', async (t) => {
  const f = encodeFrame({ flags: 0, code: 1, status: 0, requestId: 1 }, Buffer.from('x'))
  f.writeUInt32BE(0x47455420, 4) // "GET " — someone speaking HTTP to the port
  const d = new FrameDecoder()
  t.throws(() => d.push(f), { code: 'QMQ_ERR_BAD_MAGIC' })
  t.throws(() => d.push(Buffer.from('more')), { code: 'QMQ_ERR_BAD_MAGIC' })
})

t.test(
  'frame - oversize length is refused after 8 bytes, before buffering or allocating the body',
  async (t) => {
    const d = new FrameDecoder({ maxFrameBytes: 1024 })
    const head = Buffer.alloc(8)
    head.writeUInt32BE(0xfffffff0, 0)
    head.writeUInt32BE(FRAME_MAGIC, 4)
    const err = t.throws(() => d.push(head)) as QmqError
    t.equal(err.code, 'QMQ_ERR_FRAME_TOO_LARGE')
    t.match(err.details, { maxFrameBytes: 1024 })
  },
)

t.test('frame - a claimed size under the limit is not allocated until its bytes arrive', async (t) => {
  const sizes: number[] = []
  const original = Buffer.allocUnsafe
  Buffer.allocUnsafe = ((n: number) => {
    sizes.push(n)
    return original(n)
  }) as typeof Buffer.allocUnsafe
  t.teardown(() => {
    Buffer.allocUnsafe = original
  })
  const d = new FrameDecoder({ maxFrameBytes: 16 * 1024 * 1024 })
  const head = encodeFrameHeader({ flags: 0, code: 1, status: 0, requestId: 9 }, 10 * 1024 * 1024)
  sizes.length = 0
  d.push(head.subarray(0, 5))
  d.push(head.subarray(5))
  d.push(Buffer.alloc(100))
  t.ok(
    sizes.every((n) => n < 1024),
    `no large allocation (saw ${sizes.join(',')})`,
  )
  t.equal(d.pendingBytes, HEADER_BYTES + 100)
})

t.test('frame - a length shorter than the header and unknown flags are malformed', async (t) => {
  const short = Buffer.alloc(8)
  short.writeUInt32BE(3, 0)
  short.writeUInt32BE(FRAME_MAGIC, 4)
  t.throws(() => new FrameDecoder().push(short), { code: 'QMQ_ERR_FRAME_MALFORMED' })
  const f = encodeFrame({ flags: 0x80, code: 1, status: 0, requestId: 1 }, Buffer.alloc(0))
  t.throws(() => new FrameDecoder().push(f), { code: 'QMQ_ERR_FRAME_MALFORMED' })
})

t.test('frame - an unknown version is delivered (well delimited) for the server to answer', async (t) => {
  const f = encodeFrame({ version: 9, flags: 0, code: 1, status: 0, requestId: 1 }, Buffer.from('ab'))
  const [frame] = new FrameDecoder().push(f)
  t.equal(frame?.version, 9)
  t.equal(frame?.body.toString(), 'ab')
})

t.test('frame - random garbage never throws anything but a QmqError', async (t) => {
  const rand = prng(7)
  for (let i = 0; i < 2000; i++) {
    const d = new FrameDecoder({ maxFrameBytes: 4096 })
    const len = Math.floor(rand() * 64)
    const b = Buffer.alloc(len)
    for (let j = 0; j < len; j++) b[j] = Math.floor(rand() * 256)
    if (rand() < 0.5 && len >= 8) b.writeUInt32BE(FRAME_MAGIC, 4)
    try {
      d.push(b)
    } catch (err) {
      if (!(err instanceof QmqError)) t.fail(`untyped error: ${String(err)}`)
    }
  }
  t.pass('only typed errors')
})

/** Frames of 0 to 3000 bytes with large ones (40 to 300 KiB bodies) among them. */
function mixedFrames(n: number, rand: () => number): Buffer[] {
  const small = sampleFrames(n, rand)
  const out: Buffer[] = []
  for (let i = 0; i < small.length; i++) {
    out.push(small[i] as Buffer)
    if (i % 4 === 1) {
      const body = Buffer.allocUnsafe(40_000 + Math.floor(rand() * 260_000))
      for (let j = 0; j < body.length; j += 97) body[j] = Math.floor(rand() * 256)
      out.push(encodeFrame({ flags: FLAG_RESPONSE, code: 9, status: 0, requestId: 1_000_000 + i }, body))
    }
  }
  return out
}

t.test('frame - large frames assembled in their final buffer decode as without assembly', async (t) => {
  const rand = prng(7)
  const frames = mixedFrames(24, rand)
  const stream = Buffer.concat(frames)
  const whole = new FrameDecoder().push(stream).map(summary)
  t.equal(whole.length, frames.length)
  let maxPending = 0
  for (const assembleFrom of [HEADER_BYTES, 1024, 64 * 1024]) {
    for (let round = 0; round < 8; round++) {
      const d = new FrameDecoder({ assembleFrom })
      const out: ReturnType<typeof summary>[] = []
      let o = 0
      // Round 0: 1 to 10 byte chunks (a frame's header split too); then socket-like and large chunks,
      // several frames per chunk included.
      const most = round === 0 ? 10 : round < 4 ? 65_536 : 400_000
      while (o < stream.length) {
        const n = 1 + Math.floor(rand() * most)
        for (const f of d.push(stream.subarray(o, o + n))) out.push(summary(f))
        o += n
        maxPending = Math.max(maxPending, d.pendingBytes)
      }
      if (JSON.stringify(out) !== JSON.stringify(whole))
        t.fail(`assembleFrom ${assembleFrom} round ${round} differs`)
      t.equal(d.pendingBytes, 0)
    }
  }
  t.pass('every chunking agrees')
  t.ok(maxPending < 301_000, 'pendingBytes counts what is held of one frame')
})

t.test('frame - readTarget: bytes read into the assembly buffer are used in place', async (t) => {
  const body = Buffer.alloc(300_000, 0xab)
  const big = encodeFrame({ flags: FLAG_RESPONSE, code: 3, status: 0, requestId: 5 }, body)
  const small = encodeFrame({ flags: FLAG_RESPONSE, code: 4, status: 0, requestId: 6 }, Buffer.from('x'))
  const stream = Buffer.concat([big, small])
  const d = new FrameDecoder({ assembleFrom: 256 * 1024 })
  t.equal(d.readTarget(), undefined, 'nothing to assemble yet')
  t.same(d.push(stream.subarray(0, 1000)), [])
  let o = 1000
  let frames: Frame[] = []
  let target = d.readTarget()
  t.equal(target?.length, big.length - 1000, 'the rest of the large frame')
  while (target !== undefined) {
    // A "socket read" of at most 50 000 bytes into the target, as onread does.
    const n = Math.min(50_000, target.length)
    stream.copy(target, 0, o, o + n)
    o += n
    frames = d.push(target.subarray(0, n))
    t.equal(d.pendingBytes, frames.length > 0 ? 0 : o)
    target = d.readTarget()
  }
  t.equal(frames.length, 1)
  t.equal(o, big.length, 'reads never cross the frame end')
  t.ok((frames[0] as Frame).body.equals(body))
  t.same(d.push(stream.subarray(o)).map(summary), [
    summary({ ...(frames[0] as Frame), code: 4, requestId: 6, body: Buffer.from('x') }),
  ])
})

t.test('frame - an oversize frame is refused before anything is allocated for it', async (t) => {
  const d = new FrameDecoder({ maxFrameBytes: 100_000, assembleFrom: 0 })
  const head = encodeFrameHeader({ flags: FLAG_RESPONSE, code: 1, status: 0, requestId: 1 }, 200_000)
  t.throws(() => d.push(head.subarray(0, 8)), { code: 'QMQ_ERR_FRAME_TOO_LARGE' })
  t.equal(d.readTarget(), undefined, 'no assembly buffer')
  t.equal(d.pendingBytes, 0)
  t.throws(() => d.push(Buffer.alloc(10)), { code: 'QMQ_ERR_FRAME_TOO_LARGE' }, 'and stays failed')
  // Bad flags on an assembled frame fail the stream as on any other frame.
  const bad = encodeFrame({ flags: 0x80, code: 1, status: 0, requestId: 1 }, Buffer.alloc(5000))
  const d2 = new FrameDecoder({ assembleFrom: 1024 })
  d2.push(bad.subarray(0, 100))
  t.ok(d2.readTarget() !== undefined)
  t.throws(() => d2.push(bad.subarray(100)), { code: 'QMQ_ERR_FRAME_MALFORMED' })
  t.equal(d2.readTarget(), undefined)
  // discard() drops an assembly in progress.
  const d3 = new FrameDecoder({ assembleFrom: 1024 })
  d3.push(bad.subarray(0, 100))
  t.equal(d3.discard(), 100)
  t.equal(d3.readTarget(), undefined)
  t.equal(d3.pendingBytes, 0)
})
