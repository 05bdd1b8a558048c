/**
 * Codec micro-benchmarks (one core): message record encode + decode of 1 KiB records, frame
 * decoding, and CRC32C throughput. Targets on the 2-core dev machine: encode + decode >= 300k
 * records/s; CRC32C >= 1 GB/s.
 */
import { crc32c, crc32cImplementation, crc32cJs } from '../src/common/crc32c'
import { encodeFrame, FrameDecoder } from '../src/common/protocol/frame'
import { decodeRecord, encodeRecord, type MessageRecord, readRecordHeader } from '../src/common/record'
import { machine, opsPerSecond, quick, report } from './common'

const ms = quick ? 300 : 1500
process.stderr.write(`codec bench on ${machine()}\n`)

const msg: MessageRecord = {
  id: 'Xa1b2c3d4e5f6g7h8i9j0k-1',
  subject: 'order.created',
  createdAt: Date.now(),
  tags: ['vip'],
  properties: new Map([
    ['orderId', '1234567'],
    ['userId', '42'],
  ]),
  body: Buffer.alloc(1024, 0x61),
}

const enc = opsPerSecond(() => {
  for (let i = 0; i < 1000; i++) encodeRecord(msg)
  return 1000
}, ms)
report({ bench: 'codec', metric: 'record encode 1 KiB', value: Math.round(enc), unit: 'records/s' })

const encoded = encodeRecord(msg)
const dec = opsPerSecond(() => {
  for (let i = 0; i < 1000; i++) decodeRecord(encoded)
  return 1000
}, ms)
report({
  bench: 'codec',
  metric: 'record decode 1 KiB (CRC verified)',
  value: Math.round(dec),
  unit: 'records/s',
})

const both = opsPerSecond(() => {
  for (let i = 0; i < 1000; i++) decodeRecord(encodeRecord(msg))
  return 1000
}, ms)
report({
  bench: 'codec',
  metric: 'record encode + decode 1 KiB',
  value: Math.round(both),
  unit: 'records/s',
  target: '>= 300000',
})

const hdr = opsPerSecond(() => {
  for (let i = 0; i < 1000; i++) readRecordHeader(encoded)
  return 1000
}, ms)
report({
  bench: 'codec',
  metric: 'record header read 1 KiB (CRC verified)',
  value: Math.round(hdr),
  unit: 'records/s',
})

const frames = Buffer.concat(
  Array.from({ length: 1000 }, (_, i) =>
    encodeFrame({ flags: 0, code: 1, status: 0, requestId: i }, encoded),
  ),
)
const fd = opsPerSecond(() => {
  const d = new FrameDecoder()
  // 64 KiB chunks, as a socket delivers them
  let n = 0
  for (let o = 0; o < frames.length; o += 65536) n += d.push(frames.subarray(o, o + 65536)).length
  return n
}, ms)
report({
  bench: 'codec',
  metric: 'frame decode 1 KiB bodies, 64 KiB chunks',
  value: Math.round(fd),
  unit: 'frames/s',
})

const big = Buffer.alloc(1 << 20, 7)
const crcNative = opsPerSecond(() => {
  for (let i = 0; i < 16; i++) crc32c(big)
  return 16
}, ms)
report({
  bench: 'codec',
  metric: `crc32c 1 MiB buffers (${crcNative ? crc32cImplementation : 'js'})`,
  value: Math.round(crcNative),
  unit: 'MB/s',
  target: '>= 1000',
})
const crcSmall = opsPerSecond(() => {
  for (let i = 0; i < 1000; i++) crc32c(encoded)
  return 1000
}, ms)
report({
  bench: 'codec',
  metric: `crc32c 1 KiB records (${crc32cImplementation})`,
  value: Math.round((crcSmall * encoded.length) / 1e6),
  unit: 'MB/s',
})
const crcJs = opsPerSecond(() => {
  for (let i = 0; i < 4; i++) crc32cJs(big)
  return 4
}, ms)
report({
  bench: 'codec',
  metric: 'crc32c 1 MiB buffers (JS fallback)',
  value: Math.round(crcJs),
  unit: 'MB/s',
})
