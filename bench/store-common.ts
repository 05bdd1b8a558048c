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
 * 1 KiB records with distinct ids, as a SEND body brings them: each `take(n)` returns n records laid
 * out in one fresh buffer (the store keeps the buffers it is given; a socket read is never reused
 * either). A template is copied, its id rewritten and its CRC recomputed: the store's dedupe sees
 * distinct ids without the harness encoding every message.
 */
export class RecordPool {
  private readonly template: Buffer
  private readonly header: RecordHeader
  private counter = 0
  constructor(subject: string, _size = 0, bodyBytes = 1024 - 80) {
    this.template = encodeRecord({
      id: 'x'.repeat(ID_DIGITS),
      subject,
      createdAt: Date.now(),
      tags: [],
      properties: new Map(),
      body: Buffer.alloc(bodyBytes, 0x61),
    })
    this.header = readRecordHeader(this.template)
  }
  take(n: number): AppendInput[] {
    const size = this.template.length
    const buf = Buffer.allocUnsafe(n * size)
    const out: AppendInput[] = new Array(n)
    for (let i = 0; i < n; i++) {
      const bytes = buf.subarray(i * size, (i + 1) * size)
      bytes.set(this.template)
      const id = String(this.counter++).padStart(ID_DIGITS, '0')
      bytes.write(id, 32, ID_DIGITS, 'latin1')
      bytes.writeUInt32BE(crc32c(bytes.subarray(8)), 4)
      out[i] = { bytes, header: { ...this.header, id } }
    }
    return out
  }
}
