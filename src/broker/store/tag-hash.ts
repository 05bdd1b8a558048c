import { crc32c } from '../../common/crc32c'

/**
 * Tag filtering without reading records: each stored message carries a 32-bit mask (in its
 * message-log frame and its consume-log entry) where every tag sets two bits chosen by its CRC32C.
 * A filter first tests the mask (a Bloom filter: no false negatives, rare false positives), then
 * confirms with the record header's tags. A message without tags has mask 0 and never matches a
 * tag filter (as in QMQ).
 */
export function tagBits(tag: string): number {
  const h = crc32c(Buffer.from(tag, 'utf8'))
  return ((1 << (h & 31)) | (1 << ((h >>> 5) & 31))) >>> 0
}

export function tagMask(tags: readonly string[]): number {
  let m = 0
  for (const t of tags) m |= tagBits(t)
  return m >>> 0
}

/** Fast pre-check on the mask. `bits` = tagBits of each filter tag. */
export function maskMayMatch(mask: number, bits: readonly number[], all: boolean): boolean {
  if (bits.length === 0) return true
  if (all) {
    for (const b of bits) if ((mask & b) >>> 0 !== b) return false
    return true
  }
  for (const b of bits) if ((mask & b) >>> 0 === b) return true
  return false
}

/** Exact check on the record's tags: any-of, or all-of when `all`. */
export function tagsMatch(recordTags: readonly string[], filter: readonly string[], all: boolean): boolean {
  if (filter.length === 0) return true
  if (all) return filter.every((t) => recordTags.includes(t))
  return filter.some((t) => recordTags.includes(t))
}
