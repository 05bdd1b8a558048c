/**
 * Read buffers reused from read to read, for reads whose bytes leave on a socket as views (records of
 * a cold PULL, the data of a REPL_FETCH). A fresh 128 KiB buffer per read costs page faults (an async
 * read into fresh memory took 2-3x the process CPU of one into a reused buffer) and external memory
 * that drives mark-compact GCs; a buffer of this pool is written to again only once nothing reads it.
 *
 * Ownership (the invariant that keeps consumers from being sent wrong bytes):
 * - `take` hands out a buffer owned by the `ReadHold` of the request that reads into it (one owner);
 *   the request's views (records, fetch data) are only valid while the hold has it.
 * - The hold is released once the socket is done with the answer that views it (ServerConnection's
 *   `afterWrite`: the write callback, an error answer, the close), or earlier for a read whose views
 *   go nowhere (a long-poll attempt that found nothing).
 * - A buffer goes back to the free lists on its release; released twice, the second is counted and
 *   ignored, so it is never handed out twice.
 * - The pool bounds what it keeps free (bytes and count); buffers in use are not bounded: when no free
 *   buffer of the size fits, a fresh one is made, as without a pool, and kept on its return if there
 *   is room (else left to the GC).
 *
 * Sizes: classes of powers of two from MIN_CLASS_BYTES to MAX_CLASS_BYTES; a read takes the smallest
 * class that holds it. Reads below MIN_POOLED_BYTES are not pooled (Node's shared slab serves those
 * cheaply), nor reads above the largest class.
 */
export const MIN_POOLED_BYTES = 16 * 1024
export const MIN_CLASS_BYTES = 64 * 1024
export const MAX_CLASS_BYTES = 8 * 1024 * 1024
const CLASSES = Math.log2(MAX_CLASS_BYTES / MIN_CLASS_BYTES) + 1

export interface ReadPoolStats {
  /** Buffers handed out from the free lists. */
  reused: number
  /** Buffers made because no free one fitted. */
  fresh: number
  /** Buffers returned but not kept (the free lists were full). */
  dropped: number
  /** Releases of a buffer already released (a bug: counted, ignored). */
  overReleased: number
  /** Buffers handed out and not released yet. */
  inUse: number
}

export class PooledBuffer {
  readonly buf: Buffer
  private released = false
  private readonly pool: ReadBufferPool

  constructor(pool: ReadBufferPool, buf: Buffer) {
    this.pool = pool
    this.buf = buf
  }

  release(): void {
    if (this.released) {
      this.pool.stats.overReleased++
      return
    }
    this.released = true
    this.pool.giveBack(this.buf)
  }
}

export class ReadBufferPool {
  /** Free buffers per class, most recently returned last (taken first: still in the CPU's caches). */
  private readonly free: Buffer[][] = Array.from({ length: CLASSES }, () => [])
  private freeBytes = 0
  private freeCount = 0
  readonly maxFreeBytes: number
  readonly maxFreeBuffers: number
  readonly stats: ReadPoolStats = { reused: 0, fresh: 0, dropped: 0, overReleased: 0, inUse: 0 }

  /** `maxFreeBytes` 0 = no pool (`take` always answers undefined). */
  constructor(maxFreeBytes: number, maxFreeBuffers = 256) {
    this.maxFreeBytes = maxFreeBytes
    this.maxFreeBuffers = maxFreeBuffers
  }

  /** Bytes kept free for reuse. */
  get idleBytes(): number {
    return this.freeBytes
  }

  /**
   * A buffer of at least `bytes` (one reference), or undefined when such a read is not pooled: the
   * caller then allocates as it would without a pool.
   */
  take(bytes: number): PooledBuffer | undefined {
    if (this.maxFreeBytes === 0 || bytes < MIN_POOLED_BYTES || bytes > MAX_CLASS_BYTES) return undefined
    const c = classOf(bytes)
    const list = this.free[c] as Buffer[]
    let buf = list.pop()
    if (buf !== undefined) {
      this.freeBytes -= buf.length
      this.freeCount--
      this.stats.reused++
    } else {
      // Its own ArrayBuffer (not a slice of Node's shared slab): whole-buffer reuse, and views of
      // two reads never sit side by side in one ArrayBuffer (encodePullResponse joins those).
      buf = Buffer.allocUnsafeSlow(MIN_CLASS_BYTES << c)
      this.stats.fresh++
    }
    this.stats.inUse++
    return new PooledBuffer(this, buf)
  }

  /** Called by PooledBuffer when its last reference is released. */
  giveBack(buf: Buffer): void {
    this.stats.inUse--
    const c = classOf(buf.length)
    if (this.freeCount >= this.maxFreeBuffers || !this.makeRoom(buf.length, c)) {
      this.stats.dropped++
      return
    }
    ;(this.free[c] as Buffer[]).push(buf)
    this.freeBytes += buf.length
    this.freeCount++
  }

  /**
   * Frees room for `bytes` within maxFreeBytes by dropping the least recently returned buffers of the
   * other classes, largest class first (what this workload no longer reads); false when it cannot.
   */
  private makeRoom(bytes: number, keep: number): boolean {
    if (bytes > this.maxFreeBytes) return false
    for (let c = CLASSES - 1; c >= 0 && this.freeBytes + bytes > this.maxFreeBytes; c--) {
      if (c === keep) continue
      const list = this.free[c] as Buffer[]
      while (list.length > 0 && this.freeBytes + bytes > this.maxFreeBytes) {
        const dropped = list.shift() as Buffer
        this.freeBytes -= dropped.length
        this.freeCount--
        this.stats.dropped++
      }
    }
    return this.freeBytes + bytes <= this.maxFreeBytes
  }
}

/** Index of the smallest class of at least `bytes` (bytes <= MAX_CLASS_BYTES). */
function classOf(bytes: number): number {
  let c = 0
  while (MIN_CLASS_BYTES << c < bytes) c++
  return c
}

/**
 * The pooled buffers one request read into. Released (each of its buffers once) when its answer is
 * written (`ServerConnection.afterWrite`); a request may also release what an attempt read when that
 * attempt hands out nothing, and take more afterwards.
 */
export class ReadHold {
  private held: PooledBuffer[] = []

  add(b: PooledBuffer): void {
    this.held.push(b)
  }

  /** Releases every buffer taken so far: views of them must not be used after this. */
  release(): void {
    if (this.held.length === 0) return
    const held = this.held
    this.held = []
    for (const b of held) b.release()
  }
}
