import { QmqError } from '../../common/errors'
import { Counter, type Registry } from '../../common/metrics'
import type { ScanCheck, ScanResult } from '../store/segment-log'

/**
 * Verifies what a slave receives before it writes a byte of it: every entry of a chunk must pass the
 * copied log's own check (the one its recovery uses: frame checksum, record CRC32C, bounds). Chunks
 * are byte ranges of the master's file, so an entry may begin in one chunk and end in a later one: the
 * complete entries are handed out to be written, the begun one is held here (in memory, never
 * written) until the chunks that complete it arrived, and is verified whole then.
 *
 * A chunk holding an entry that fails its check is refused whole (`ChunkRefused`): nothing of it is
 * handed out, not even the good entries before the bad one, and what was held is dropped; the caller
 * asks again from `ChunkRefused.offset`. So a slave's copy only ever holds entries that verified.
 *
 * Cost: one check per entry over bytes already in memory (CRC32C is native, several GB/s); held bytes
 * are joined with the next chunks only when their total doubled since the last attempt (or the chunk
 * is the last one the master has), so an entry larger than a chunk costs O(its size) of copying.
 */
/**
 * Bytes to write, in order, as ChunkVerifier hands them out: `verified`, whole entries from an entry
 * boundary, each of which passed the check; else the master's damaged range, as `acceptDamaged` and
 * the resynchronising scan after it step over it (nothing about them is known).
 */
export interface ChunkPiece {
  data: Buffer
  verified: boolean
}

export class ChunkVerifier {
  private parts: Buffer[] = []
  private bytes = 0
  private at = 0
  /** Held bytes are joined and checked again once there are this many (or the chunk is final). */
  private tryAt = 0
  /**
   * After `acceptDamaged`: the bytes are the master's damaged range until an entry verifies again;
   * they are handed out as they are (a resynchronising scan's steps) instead of refused.
   */
  private resyncing = false

  constructor(private readonly check: ScanCheck) {}

  /** Bytes held back (an entry begun and not yet complete). */
  get held(): number {
    return this.bytes
  }

  /** Drops what is held (the copy was cut, the fetch failed, or the master changed). */
  reset(): void {
    this.parts = []
    this.bytes = 0
    this.tryAt = 0
    this.resyncing = false
  }

  /**
   * `data` is the master's bytes at `offset`, right after what is held (if anything). Returns the
   * verified complete entries to write at `offset - held`, in pieces written one after the other
   * (none when no entry completed yet; after `acceptDamaged`, the rest of the damaged range stepped
   * over comes first, unverified). `final`: nothing follows these bytes in the master's file now
   * (its end), so an incomplete entry at the end is damage, not a chunk boundary. Throws ChunkRefused
   * when an entry fails its check.
   */
  push(offset: number, data: Buffer, final: boolean): ChunkPiece[] {
    if (this.bytes > 0 && offset !== this.at + this.bytes) {
      const at = this.at
      const held = this.joinHeld()
      this.reset()
      throw new ChunkRefused(
        at,
        at,
        'an entry is cut by the end of its segment in the master log',
        held,
        true,
      )
    }
    if (this.bytes > 0 && !final && this.bytes + data.length < this.tryAt)
      return this.hold(data, this.at, false)
    if (this.bytes > 0 && !this.resyncing) {
      // The held entry is completed with as few of `data`'s bytes as it needs (doubling), not by
      // copying the whole chunk behind it; the rest of `data` is verified in place.
      const at = this.at
      const held = this.bytes
      let k = Math.min(data.length, Math.max(held, 4096))
      for (;;) {
        const joined = Buffer.concat([...this.parts, data.subarray(0, k)], held + k)
        const r = this.check(joined, 0, joined.length, at)
        // (Held bytes may also hold complete entries, held while waiting to try: the general path.)
        if (r.kind === 'record' && r.length <= held) break
        if (r.kind === 'record') {
          const entry = joined.subarray(0, r.length)
          this.reset()
          try {
            return [
              { data: entry, verified: true },
              ...this.verify(at + r.length, data.subarray(r.length - held), final),
            ]
          } catch (err) {
            if (!(err instanceof ChunkRefused)) throw err
            // Refused whole: the completed entry is not handed out either.
            throw new ChunkRefused(at, err.badAt, err.reason, Buffer.concat([entry, err.bytes]))
          }
        }
        if (r.kind === 'corrupt' || (k === data.length && final)) {
          const bytes = Buffer.concat([...this.parts, data], held + data.length)
          this.reset()
          throw new ChunkRefused(at, at, refusal(r, at), bytes)
        }
        if (k === data.length) return this.hold(data)
        k = Math.min(data.length, k * 2)
      }
    }
    if (this.bytes === 0) this.at = offset
    this.parts.push(data)
    this.bytes += data.length
    if (!final && this.bytes < this.tryAt) return []
    const buf = this.joinHeld()
    const start = this.at
    let pos = 0
    // Inside the master's damaged range (after acceptDamaged): step byte by byte to the next entry
    // that verifies (an entry that may verify once more bytes came is decided with them).
    while (this.resyncing && pos < buf.length) {
      const r = this.check(buf, pos, buf.length, start + pos)
      if (r.kind === 'record') {
        this.resyncing = false
        break
      }
      if (r.kind === 'short' && !final) break
      pos++
    }
    const resyncing = this.resyncing
    this.reset()
    if (resyncing) {
      this.resyncing = true
      if (pos < buf.length) this.hold(buf.subarray(pos), start + pos)
      return pos === 0 ? [] : [{ data: buf.subarray(0, pos), verified: false }]
    }
    if (pos === 0) return this.verify(start, buf, final)
    let rest: ChunkPiece[]
    try {
      rest = this.verify(start + pos, buf.subarray(pos), final)
    } catch (err) {
      if (!(err instanceof ChunkRefused)) throw err
      // Resynchronised in this push, then a bad entry: nothing of it is handed out, so it is refused
      // from `start` (not from the entry that verified: the stepped-over bytes before it would be
      // skipped and the copy shifted off the master's offsets), still resynchronising.
      this.resyncing = true
      throw new ChunkRefused(start, err.badAt, err.reason, buf, err.segmentEnd)
    }
    return [{ data: buf.subarray(0, pos), verified: false }, ...rest]
  }

  /**
   * Verifies `buf` (at `offset`, nothing held) in place: its complete entries are returned, a begun
   * last one is held. Throws ChunkRefused (holding nothing) at a bad entry.
   */
  private verify(offset: number, buf: Buffer, final: boolean): ChunkPiece[] {
    let pos = 0
    while (pos < buf.length) {
      const r = this.check(buf, pos, buf.length, offset + pos)
      if (r.kind === 'record') {
        pos += r.length
        continue
      }
      if (r.kind === 'corrupt' || final) {
        this.reset()
        throw new ChunkRefused(offset, offset + pos, refusal(r, offset + pos), buf)
      }
      break
    }
    if (pos < buf.length) {
      // An entry begun: held (a copy when small, so a large chunk is not kept alive for its tail).
      const rest = buf.length - pos
      this.hold(rest * 4 < buf.length ? Buffer.from(buf.subarray(pos)) : buf.subarray(pos), offset + pos)
    }
    return pos === 0 ? [] : [{ data: buf.subarray(0, pos), verified: true }]
  }

  /**
   * Holds `data` after what is held (or from `at` when nothing is); returns no pieces. `tried`: the
   * held bytes were just checked (the next try waits until they doubled).
   */
  private hold(data: Buffer, at = this.at, tried = true): ChunkPiece[] {
    if (this.bytes === 0) this.at = at
    this.parts.push(data)
    this.bytes += data.length
    if (tried) this.tryAt = this.bytes * 2
    return []
  }

  private joinHeld(): Buffer {
    return this.parts.length === 1 ? (this.parts[0] as Buffer) : Buffer.concat(this.parts, this.bytes)
  }

  /**
   * `refused` (the last refusal) is judged to be the master's stored damage, not a fault on the way:
   * returns what to write at `refused.offset` as it is, the bad entry and what follows it up to the
   * next position where an entry verifies (the damaged range, as a resynchronising scan steps over
   * it: unverified pieces), then the verified entries after it; a begun last entry is held as usual.
   * `final` as `push`.
   */
  acceptDamaged(refused: ChunkRefused, final: boolean): ChunkPiece[] {
    this.reset()
    const buf = refused.bytes
    const start = refused.offset
    const pos = Math.min(buf.length, refused.badAt - start + 1)
    this.resyncing = true
    const damaged = { data: buf.subarray(0, pos), verified: false }
    if (pos >= buf.length) return [damaged]
    try {
      return [damaged, ...this.push(start + pos, buf.subarray(pos), final || refused.segmentEnd)]
    } catch {
      // More damage after good entries: up to the first damaged byte; the rest is fetched again (and
      // stepped over from there, resyncing).
      this.reset()
      this.resyncing = true
      return [damaged]
    }
  }
}

/**
 * A chunk refused by ChunkVerifier: ask again from `offset`. `bytes` are the refused bytes (from
 * `offset`), `badAt` the log offset of the entry that failed.
 */
export class ChunkRefused extends QmqError {
  constructor(
    readonly offset: number,
    readonly badAt: number,
    readonly reason: string,
    readonly bytes: Buffer,
    /** The bytes end their segment in the master's log (nothing follows them there). */
    readonly segmentEnd = false,
  ) {
    super('QMQ_ERR_STORE_CORRUPT', `replicated chunk refused: ${reason}`)
  }
}

function refusal(r: ScanResult, at: number): string {
  return r.kind === 'corrupt'
    ? `${r.reason} at offset ${at}`
    : `incomplete entry at offset ${at}, the end of the master's bytes`
}

/**
 * `qmq_replication_refused_chunks_total{log, outcome}` (broker and delay slaves): chunks refused by
 * ChunkVerifier; outcome `refetched` (asked again), or `copied_damaged` (the same bytes refused
 * repeatedly: the master's stored damage, copied as it is).
 */
export function refusedChunksCounter(registers: Registry[]): Counter<'log' | 'outcome'> {
  return new Counter({
    name: 'qmq_replication_refused_chunks_total',
    help: 'Slave: received chunks that failed verification, by log and what was done (refetched, copied_damaged)',
    labelNames: ['log', 'outcome'],
    registers,
  })
}
