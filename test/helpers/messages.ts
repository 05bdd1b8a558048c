import { randomBytes } from 'node:crypto'
import type { MessageRecord } from '../../src/common/record'

/** A small deterministic PRNG (mulberry32) so a failing random test can be replayed from its seed. */
export function prng(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let x = a
    x = Math.imul(x ^ (x >>> 15), x | 1)
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61)
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
}

const ALPHABET = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-:é中'

function text(rand: () => number, min: number, max: number): string {
  const n = min + Math.floor(rand() * (max - min + 1))
  let s = ''
  for (let i = 0; i < n; i++) s += ALPHABET[Math.floor(rand() * ALPHABET.length)]
  return s
}

/** A random but valid message record: any mix of tags, properties, string/binary/no body, delay. */
export function randomMessage(rand: () => number): MessageRecord {
  const tags: string[] = []
  const tagCount = Math.floor(rand() * 11)
  for (let i = 0; i < tagCount; i++) tags.push(text(rand, 1, 20))
  const properties = new Map<string, string>()
  const propCount = Math.floor(rand() * 12)
  for (let i = 0; i < propCount; i++) properties.set(text(rand, 1, 30), text(rand, 0, 200))
  const kind = rand()
  const body =
    kind < 0.3 ? undefined : kind < 0.6 ? text(rand, 0, 2000) : randomBytes(Math.floor(rand() * 4096))
  return {
    id: text(rand, 1, 60),
    subject: text(rand, 1, 80),
    createdAt: 1_700_000_000_000 + Math.floor(rand() * 1e10),
    scheduleAt: rand() < 0.3 ? 1_700_000_000_000 + Math.floor(rand() * 1e11) : undefined,
    tags,
    properties,
    body,
  }
}

/** A 1 KiB-bodied message like the benchmarks use. */
export function kibMessage(subject: string, id: string): MessageRecord {
  return {
    id,
    subject,
    createdAt: Date.now(),
    tags: [],
    properties: new Map([['k', 'v']]),
    body: Buffer.alloc(1024, 0x61),
  }
}
