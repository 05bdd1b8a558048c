/**
 * The buffers of a partly written `writev`: what is left of `parts` once its first `n` bytes went out.
 * Views, no copies.
 */
export function dropBytes(parts: Buffer[], n: number): Buffer[] {
  const out: Buffer[] = []
  for (const p of parts) {
    if (n >= p.length) {
      n -= p.length
      continue
    }
    out.push(n > 0 ? p.subarray(n) : p)
    n = 0
  }
  return out
}
