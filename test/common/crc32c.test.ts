import { randomBytes } from 'node:crypto'
import t from 'tap'
import { crc32c, crc32cImplementation, crc32cJs, crc32cRange } from '../../src/common/crc32c'

t.test('crc32c - check values', async (t) => {
  t.equal(crc32c(Buffer.from('123456789')), 0xe3069283)
  t.equal(crc32cJs(Buffer.from('123456789')), 0xe3069283)
  t.equal(crc32c(Buffer.alloc(0)), 0)
  // RFC 3720 (iSCSI) B.4 vectors: 32 bytes of zeros, of 0xff, ascending.
  t.equal(crc32cJs(Buffer.alloc(32, 0)), 0x8a9136aa)
  t.equal(crc32cJs(Buffer.alloc(32, 0xff)), 0x62a8ab43)
  t.equal(crc32cJs(Buffer.from(Array.from({ length: 32 }, (_, i) => i))), 0x46dd794e)
  t.comment(`implementation: ${crc32cImplementation}`)
})

t.test('crc32c - native and JS agree on random inputs of every length, and chain with a seed', async (t) => {
  for (let len = 0; len < 300; len++) {
    const b = randomBytes(len)
    const expected = crc32cJs(b)
    if (crc32c(b) !== expected) t.fail(`length ${len} differs`)
    const cut = Math.floor(len / 3)
    if (crc32c(b.subarray(cut), crc32c(b.subarray(0, cut))) !== expected)
      t.fail(`seeded chain differs at ${len}`)
    if (crc32cJs(b.subarray(cut), crc32cJs(b.subarray(0, cut))) !== expected)
      t.fail(`JS seeded chain differs at ${len}`)
  }
  const big = randomBytes(1 << 20)
  t.equal(crc32c(big), crc32cJs(big))
  t.pass('all lengths agree')
})

t.test(
  'crc32c - crc32cRange equals crc32c of the same bytes, short ranges (JS) and long (native)',
  async (t) => {
    const buf = randomBytes(400)
    let checked = 0
    for (let start = 0; start < 40; start += 3) {
      for (let len = 0; len < 200; len += 7) {
        const end = start + len
        const expected = crc32c(buf.subarray(start, end))
        if (crc32cRange(buf, start, end) !== expected) t.fail(`[${start}, ${end}) differs`)
        const seed = crc32c(buf.subarray(0, start))
        if (crc32cRange(buf, start, end, seed) !== crc32c(buf.subarray(0, end)))
          t.fail(`seeded [${start}, ${end})`)
        checked++
      }
    }
    t.ok(checked > 100, `${checked} ranges agree`)
  },
)

t.test('crc32c - a flipped bit changes the checksum', async (t) => {
  const b = randomBytes(1024)
  const before = crc32c(b)
  for (let bit = 0; bit < 64; bit++) {
    const i = Math.floor(Math.random() * b.length)
    const copy = Buffer.from(b)
    copy[i] = (copy[i] as number) ^ (1 << (bit % 8))
    if (crc32c(copy) === before) t.fail(`flip at byte ${i} undetected`)
  }
  t.pass('every flip detected')
})
