import t from 'tap'
import { type ChunkPiece, ChunkRefused, ChunkVerifier } from '../../../src/broker/replication/chunk-verifier'
import { checkFrame, FRAME_BYTES, writeFrameHeader } from '../../../src/broker/store/message-log'
import { encodeRecord } from '../../../src/common/record'

/** ChunkVerifier over real message-log frames, fed in byte ranges as a master's answers cut them. */

function frame(i: number, bodyBytes: number): Buffer {
  const rec = encodeRecord({
    id: `m-${i}`,
    subject: 'orders',
    createdAt: 1_800_000_000_000,
    tags: [],
    properties: new Map(),
    body: Buffer.alloc(bodyBytes, i),
  })
  const f = Buffer.alloc(FRAME_BYTES + rec.length)
  writeFrameHeader(f, 0, rec.length, 0, i, 1_800_000_000_000)
  rec.copy(f, FRAME_BYTES)
  return f
}

/** The bytes of pieces handed out, in order. */
function bytes(pieces: ChunkPiece[]): Buffer {
  return Buffer.concat(pieces.map((p) => p.data))
}

const verifier = () => new ChunkVerifier((b, p, e) => checkFrame(b, p, e, 1024 * 1024, true))

/** Feeds `log` in chunks of `size`; returns what was handed out to write, in order. */
function feed(v: ChunkVerifier, log: Buffer, size: number): Buffer {
  const out: Buffer[] = []
  for (let o = 0; o < log.length; o += size) {
    const c = log.subarray(o, Math.min(log.length, o + size))
    for (const p of v.push(o, c, o + c.length >= log.length)) {
      if (!p.verified) throw new Error(`unverified piece at ${o}`)
      out.push(p.data)
    }
  }
  return Buffer.concat(out)
}

t.test('chunk verifier - entries cut by chunk ends are held until complete', async (t) => {
  const log = Buffer.concat([frame(1, 700), frame(2, 100), frame(3, 20_000), frame(4, 5)])
  for (const size of [1, 7, 100, 1000, 4096, log.length]) {
    const v = verifier()
    t.ok(feed(v, log, size).equals(log), `chunks of ${size}: every byte handed out, in order`)
    t.equal(v.held, 0)
  }
  const v = verifier()
  const first = bytes(v.push(0, log.subarray(0, 900), false))
  t.equal(first.length, frame(1, 700).length, 'only the complete entry')
  t.equal(v.held, 900 - first.length, 'the begun one is held')
})

t.test('chunk verifier - a chunk with a bad entry is refused whole', async (t) => {
  const log = Buffer.concat([frame(1, 700), frame(2, 700), frame(3, 700)])
  const bad = Buffer.from(log)
  const second = frame(1, 700).length
  bad[second + 200] = (bad[second + 200] as number) ^ 0x20
  const v = verifier()
  const err = t.throws(() => v.push(0, bad, true)) as unknown
  t.ok(err instanceof ChunkRefused, 'refused')
  const refused = err as ChunkRefused
  t.equal(refused.offset, 0, 'asked again from the start of the chunk')
  t.equal(refused.badAt, second, 'the bad entry')
  t.equal(v.held, 0, 'nothing held, nothing handed out (not even the good first entry)')
  t.ok(bytes(v.push(0, log, true)).equals(log), 'the good bytes fetched again pass')

  // A begun entry held from an earlier chunk is refused with the chunk that completes it badly.
  const w = verifier()
  t.equal(bytes(w.push(0, log.subarray(0, second + 100), false)).length, second)
  t.throws(() => w.push(second + 100, bad.subarray(second + 100), true), { code: 'QMQ_ERR_STORE_CORRUPT' })
  t.equal(w.held, 0)

  // The master's end inside an entry is damage, not a chunk boundary.
  t.throws(() => verifier().push(0, log.subarray(0, second + 100), true), { code: 'QMQ_ERR_STORE_CORRUPT' })
})

t.test('chunk verifier - damage accepted as the master holds it is stepped over', async (t) => {
  const log = Buffer.concat([frame(1, 700), frame(2, 700), frame(3, 700), frame(4, 700)])
  const one = frame(1, 700).length
  const bad = Buffer.from(log)
  bad[one + 3] = (bad[one + 3] as number) ^ 0x01 // the second frame's length: its header fails
  const v = verifier()
  let refused: ChunkRefused | undefined
  try {
    v.push(0, bad.subarray(0, 2 * one + 50), false)
  } catch (err) {
    refused = err as ChunkRefused
  }
  t.ok(refused)
  const damaged = v.acceptDamaged(refused as ChunkRefused, false)
  const written = bytes(damaged)
  t.equal(written.length, 2 * one, 'the first entry and the damaged one, to the next entry that verifies')
  t.ok(
    damaged.every((p) => !p.verified),
    'handed out unverified (the consume logs stop before them)',
  )
  t.equal(v.held, 50, 'the begun third entry is held')
  const after = v.push(2 * one + 50, bad.subarray(2 * one + 50), true)
  t.ok(after.length > 0 && after.every((p) => p.verified), 'what follows is verified entries again')
  t.ok(Buffer.concat([written, bytes(after)]).equals(bad), 'the rest verifies again')
})

t.test(
  'chunk verifier - a refusal right after resynchronising keeps the copy on the master offsets',
  async (t) => {
    // Review finding: after acceptDamaged, a push that stepped over the rest of the damaged range, found
    // an entry that verifies and then a bad one was refused from that entry: the stepped-over bytes were
    // never handed out and the follower, asking again from there, wrote the master's bytes at offsets
    // that many bytes lower. Toy entries: [n][n payload bytes], valid when every payload byte is 0xaa.
    const v = new ChunkVerifier((b, p, e) => {
      const n = b[p] as number
      if (n === 0) return { kind: 'corrupt', reason: 'zero length' }
      if (p + 1 + n > e) return { kind: 'short' }
      for (let i = p + 1; i <= p + n; i++)
        if (b[i] !== 0xaa) return { kind: 'corrupt', reason: 'bad payload' }
      return { kind: 'record', length: 1 + n }
    })
    let refused: ChunkRefused | undefined
    try {
      v.push(0, Buffer.from([1, 0xaa, 0, 0]), false)
    } catch (err) {
      refused = err as ChunkRefused
    }
    t.ok(refused, 'the damaged entry is refused')
    const written = bytes(v.acceptDamaged(refused as ChunkRefused, false))
    t.equal(written.length, 4, 'copied as the master holds it, through the end of the chunk')
    const next = Buffer.from([0, 0, 1, 0xaa, 1, 0xbb])
    let again: ChunkRefused | undefined
    try {
      v.push(4, next, false)
    } catch (err) {
      again = err as ChunkRefused
    }
    t.ok(again instanceof ChunkRefused, 'the bad entry after the damaged range is refused')
    t.equal(again?.offset, 4, 'asked again from where the copy ends, not past the stepped-over bytes')
    const fixed = Buffer.from([0, 0, 1, 0xaa, 1, 0xaa])
    t.ok(bytes(v.push(4, fixed, true)).equals(fixed), 'fetched again, every byte is handed out')
  },
)
