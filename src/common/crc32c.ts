/**
 * CRC32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of every message record and
 * storage record. Check value: crc32c("123456789") = 0xE3069283.
 *
 * The native implementation (@node-rs/crc32, SSE4.2/ARMv8 CRC instructions, shipped prebuilt in the
 * npm package) runs at several GB/s. Where no prebuilt binary exists for the platform, a table-driven
 * slicing-by-8 implementation in JS takes over (a few hundred MB/s). `crc32cImplementation` says which.
 * Both take a running `seed` so a checksum can be computed over several buffers:
 *   crc32c(b, crc32c(a)) === crc32c(Buffer.concat([a, b]))
 */

// Slicing-by-8 tables: T[k][b] is the CRC of byte b followed by k zero bytes.
const TABLES: Uint32Array[] = (() => {
  const t0 = new Uint32Array(256)
  for (let i = 0; i < 256; i++) {
    let c = i
    for (let k = 0; k < 8; k++) c = c & 1 ? 0x82f63b78 ^ (c >>> 1) : c >>> 1
    t0[i] = c >>> 0
  }
  const tables = [t0]
  for (let k = 1; k < 8; k++) {
    const prev = tables[k - 1] as Uint32Array
    const t = new Uint32Array(256)
    for (let i = 0; i < 256; i++) {
      const p = prev[i] as number
      t[i] = ((p >>> 8) ^ (t0[p & 0xff] as number)) >>> 0
    }
    tables.push(t)
  }
  return tables
})()

/** Pure-JS CRC32C; exported for tests and for platforms without the native module. */
export function crc32cJs(data: Uint8Array, seed = 0): number {
  return crc32cJsRange(data, 0, data.length, seed)
}

/** Pure-JS CRC32C of bytes [start, end) of `data`. */
function crc32cJsRange(data: Uint8Array, start: number, end: number, seed: number): number {
  const [t0, t1, t2, t3, t4, t5, t6, t7] = TABLES as [
    Uint32Array,
    Uint32Array,
    Uint32Array,
    Uint32Array,
    Uint32Array,
    Uint32Array,
    Uint32Array,
    Uint32Array,
  ]
  let crc = ~seed >>> 0
  let i = start
  const n = end
  const end8 = n - ((n - start) % 8)
  while (i < end8) {
    const a = (crc ^ (data[i]! | (data[i + 1]! << 8) | (data[i + 2]! << 16) | (data[i + 3]! << 24))) >>> 0
    crc =
      t7[a & 0xff]! ^
      t6[(a >>> 8) & 0xff]! ^
      t5[(a >>> 16) & 0xff]! ^
      t4[a >>> 24]! ^
      t3[data[i + 4]!]! ^
      t2[data[i + 5]!]! ^
      t1[data[i + 6]!]! ^
      t0[data[i + 7]!]!
    i += 8
  }
  while (i < n) crc = t0[(crc ^ data[i++]!) & 0xff]! ^ (crc >>> 8)
  return ~crc >>> 0
}

type Crc32cFn = (data: Uint8Array, seed?: number) => number

function loadNative(): Crc32cFn | undefined {
  if (process.env.QMQ_CRC32C === 'js') return undefined
  try {
    // Loaded with require() inside try: a platform without a prebuilt binary falls back to JS.
    const native = require('@node-rs/crc32') as {
      crc32c: (input: Uint8Array, initial?: number | null) => number
    }
    const fn: Crc32cFn = (data, seed = 0) => native.crc32c(data, seed) >>> 0
    // Trust it only if it agrees with the reference on the check value.
    return fn(Buffer.from('123456789')) === 0xe3069283 ? fn : undefined
  } catch {
    return undefined
  }
}

const native = loadNative()

export const crc32cImplementation: 'native' | 'js' = native ? 'native' : 'js'

/**
 * Below this many bytes the JS loop beats a call into the native module (its call overhead costs more
 * than the table lookups; measured on x64): short inputs (ids, frame headers) stay in JS.
 */
const NATIVE_MIN_BYTES = 48

/** CRC32C of `data`, continuing from `seed` (the CRC of what came before; 0 to start). */
export const crc32c: Crc32cFn =
  native === undefined
    ? crc32cJs
    : (data, seed = 0) =>
        data.length < NATIVE_MIN_BYTES ? crc32cJsRange(data, 0, data.length, seed) : native(data, seed)

/**
 * CRC32C of bytes [start, end) of `buf`, without making a view when the range is short: for small
 * fields (frame headers, ids) checksummed once per message on hot paths.
 */
export function crc32cRange(buf: Uint8Array, start: number, end: number, seed = 0): number {
  if (end - start < NATIVE_MIN_BYTES || native === undefined) return crc32cJsRange(buf, start, end, seed)
  return native(buf.subarray(start, end), seed)
}
