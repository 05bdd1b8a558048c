import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { crc32c } from '../src/common/crc32c'
import { encodeRecord, type RecordHeader, readRecordHeader } from '../src/common/record'
import type { AppendInput } from '../src/broker/store/types'

export function emit(bench: string, metric: string, value: number, unit: string, extra: object = {}): void {
  process.stdout.write(
    `${JSON.stringify({ bench, metric, value: Math.round(value * 100) / 100, unit, ...extra })}\n`,
  )
}

export function envNumber(name: string, def: number): number {
  const v = process.env[name]
  return v === undefined || v === '' ? def : Number(v)
}

export function tmpDir(name: string): string {
  const base = process.env.BENCH_DIR ?? os.tmpdir()
  return fs.mkdtempSync(path.join(base, `qmq-bench-${name}-`))
}

const ID_DIGITS = 12

/**
 * A pool of 1 KiB records whose ids are rewritten in place (and CRC recomputed) before each use, so
 * the store's dedupe sees distinct ids without the harness encoding every message. The pool is much
 * larger than what can be in flight, so a buffer is never rewritten before its write completed.
 */
export class RecordPool {
  private readonly recs: AppendInput[] = []
  private next = 0
  private counter = 0
  constructor(subject: string, size: number, bodyBytes = 1024 - 80) {
    const body = Buffer.alloc(bodyBytes, 0x61)
    for (let i = 0; i < size; i++) {
      const bytes = encodeRecord({
        id: 'x'.repeat(ID_DIGITS),
        subject,
        createdAt: Date.now(),
        tags: [],
        properties: new Map(),
        body,
      })
      const header: RecordHeader = readRecordHeader(bytes)
      this.recs.push({ bytes, header })
    }
  }
  take(n: number): AppendInput[] {
    const out: AppendInput[] = []
    for (let i = 0; i < n; i++) {
      const r = this.recs[this.next] as AppendInput
      this.next = (this.next + 1) % this.recs.length
      const id = String(this.counter++).padStart(ID_DIGITS, '0')
      r.bytes.write(id, 32, ID_DIGITS, 'latin1')
      r.bytes.writeUInt32BE(crc32c(r.bytes.subarray(8)), 4)
      out.push({ bytes: r.bytes, header: { ...r.header, id } })
    }
    return out
  }
}
