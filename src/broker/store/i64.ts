/**
 * i64 big-endian fields holding safe integers (offsets, sequences, ms times), without BigInt on the
 * hot path: hi = floor(v / 2^32) as a signed u32 word, lo = the rest.
 */
const TWO32 = 4294967296

export function writeI64(buf: Buffer, value: number, offset: number): void {
  const hi = Math.floor(value / TWO32)
  buf.writeInt32BE(hi, offset)
  buf.writeUInt32BE(value - hi * TWO32, offset + 4)
}

export function readI64(buf: Buffer, offset: number): number {
  return buf.readInt32BE(offset) * TWO32 + buf.readUInt32BE(offset + 4)
}
