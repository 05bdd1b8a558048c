import path from 'node:path'
import t from 'tap'
import { crc32cRange } from '../../../src/common/crc32c'
import { type ScanResult, SegmentLog } from '../../../src/broker/store/segment-log'

/** A test entry: u32 length | u32 CRC32C of [8, length) | payload. */
function entry(payload: string): Buffer {
  const p = Buffer.from(payload)
  const b = Buffer.alloc(8 + p.length)
  b.writeUInt32BE(b.length, 0)
  p.copy(b, 8)
  b.writeUInt32BE(crc32cRange(b, 8, b.length), 4)
  return b
}

function check(buf: Buffer, pos: number, end: number): ScanResult {
  if (end - pos < 8) return { kind: 'short' }
  const len = buf.readUInt32BE(pos)
  if (len < 9 || len > 1000) return { kind: 'corrupt', reason: 'length' }
  if (end - pos < len) return { kind: 'short' }
  if (buf.readUInt32BE(pos + 4) !== crc32cRange(buf, pos + 8, pos + len))
    return { kind: 'corrupt', reason: 'crc' }
  return { kind: 'record', length: len }
}

t.test('segment log - a resynchronising scan steps over damage across chunk boundaries', async (t) => {
  const dir = path.join(t.testdir(), 'log')
  const log = SegmentLog.open({ dir, segmentBytes: 1 << 20 })
  t.teardown(() => log.close())
  const payloads = Array.from({ length: 40 }, (_, i) => `entry-${i}-${'p'.repeat(i % 7)}`)
  const bufs = payloads.map(entry)
  const starts: number[] = []
  let off = 0
  for (const b of bufs) {
    starts.push(off)
    off += b.length
  }
  await log.appendv(bufs, off)
  // Damage from inside entry 10 to inside entry 13, and entry 30's length.
  const from = (starts[10] as number) + 3
  const to = (starts[13] as number) + 5
  await log.overwrite(from, Buffer.alloc(to - from, 0xee))
  const len30 = Buffer.alloc(4)
  len30.writeUInt32BE(999, 0)
  await log.overwrite(starts[30] as number, len30)
  for (const chunkBytes of [16, 37, 64, 4096]) {
    const seen: string[] = []
    const skipped: { logOffset: number; bytes: number }[] = []
    const cut = await log.recover(
      0,
      check,
      (buf, pos, length) => {
        seen.push(buf.toString('utf8', pos + 8, pos + length))
      },
      { chunkBytes, onSkip: (r) => skipped.push({ logOffset: r.logOffset, bytes: r.bytes }) },
    )
    t.same(cut, [], `chunk ${chunkBytes}: nothing truncated`)
    t.same(
      seen,
      payloads.filter((_, i) => !(i >= 10 && i <= 13) && i !== 30),
      `chunk ${chunkBytes}: every intact entry visited`,
    )
    t.same(
      skipped,
      [
        { logOffset: starts[10], bytes: (starts[14] as number) - (starts[10] as number) },
        { logOffset: starts[30], bytes: (starts[31] as number) - (starts[30] as number) },
      ],
      `chunk ${chunkBytes}: the damaged ranges, exactly`,
    )
  }
  // Without resynchronisation the rest of the segment is its damaged tail.
  const seen: string[] = []
  const scanned = await log.scan(0, log.endOffset, check, (buf, pos, length) => {
    seen.push(buf.toString('utf8', pos + 8, pos + length))
  })
  t.same(seen, payloads.slice(0, 10))
  t.same(scanned, [
    {
      file: '00000000000000000000.log',
      offset: starts[10],
      logOffset: starts[10],
      bytes: off - (starts[10] as number),
      reason: 'crc',
    },
  ])
})
