import { timingSafeEqual } from 'node:crypto'

/**
 * Whether an admin token a request carried equals the configured one, compared in constant time (a
 * mismatch does not tell how many leading bytes were right). `expected` is the configured token as
 * UTF-8 bytes, made once at start.
 */
export function tokenMatches(given: string | undefined, expected: Buffer): boolean {
  const got = Buffer.from(given ?? '', 'utf8')
  return got.length === expected.length && timingSafeEqual(got, expected)
}
