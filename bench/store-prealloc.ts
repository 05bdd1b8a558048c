/**
 * write + fdatasync of 1 KiB appends, in one run (issue 21: is confirm latency the ext4 journal
 * commit an append that grows its file costs?):
 * - grow: each append extends the file (what a segment does without preallocation);
 * - zeroed: the file was filled with zeros (written and fdatasynced) beforehand, each append
 *   overwrites the next 1 KiB inside it: the file size and its block map do not change;
 * - sparse: the file was only ftruncate'd to its size beforehand: no size change, but every new
 *   block is allocated by the write (a metadata change, as for grow).
 * - grow, 2 threadpool hops: as grow, with fs.write then fs.fdatasync on libuv's threadpool, as the
 *   store does (each hop: a thread wakes, then the event loop);
 * - grow, O_DSYNC, 1 threadpool hop: a file opened with O_DSYNC, one fs.write (durable on return).
 * The modes alternate in blocks of BLOCK appends so neighbours on a shared machine load them alike.
 * Knobs: BENCH_PREALLOC_APPENDS (per mode, 3000; --quick 600), BENCH_DIR.
 */
import fs from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { quick, report } from './common'

const BENCH = 'store-prealloc'
const MSG = 1024
const APPENDS = Number(process.env.BENCH_PREALLOC_APPENDS ?? (quick ? 600 : 3000))
const BLOCK = 100
const FILE_BYTES = (APPENDS + BLOCK) * MSG

type Mode = 'grow' | 'zeroed' | 'sparse' | 'grow, 2 threadpool hops' | 'grow, O_DSYNC, 1 threadpool hop'
const MODES: Mode[] = [
  'grow',
  'zeroed',
  'sparse',
  'grow, 2 threadpool hops',
  'grow, O_DSYNC, 1 threadpool hop',
]

const writeAsync = (fd: number, buf: Buffer, pos: number) =>
  new Promise<void>((resolve, reject) =>
    fs.write(fd, buf, 0, buf.length, pos, (e) => (e ? reject(e) : resolve())),
  )
const fdatasyncAsync = (fd: number) =>
  new Promise<void>((resolve, reject) => fs.fdatasync(fd, (e) => (e ? reject(e) : resolve())))

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.floor(s.length * p))] ?? Number.NaN
}

async function main(): Promise<void> {
  const dir = fs.mkdtempSync(path.join(process.env.BENCH_DIR ?? tmpdir(), 'qmq-prealloc-'))
  try {
    const fds = new Map<Mode, number>()
    for (const m of MODES) {
      const flags = m.includes('O_DSYNC')
        ? fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_DSYNC
        : 'w+'
      const fd = fs.openSync(path.join(dir, m.replace(/\W+/g, '-')), flags)
      if (m === 'zeroed') {
        const zeros = Buffer.alloc(1024 * 1024)
        for (let pos = 0; pos < FILE_BYTES; pos += zeros.length) fs.writeSync(fd, zeros, 0, zeros.length, pos)
        fs.ftruncateSync(fd, FILE_BYTES)
      } else if (m === 'sparse') fs.ftruncateSync(fd, FILE_BYTES)
      fs.fsyncSync(fd)
      fds.set(m, fd)
    }
    const buf = Buffer.alloc(MSG, 0x61)
    const samples = new Map<Mode, number[]>(MODES.map((m) => [m, []]))
    const pos = new Map<Mode, number>(MODES.map((m) => [m, 0]))
    for (let done = 0; done < APPENDS; done += BLOCK) {
      for (const m of MODES) {
        const fd = fds.get(m) as number
        const out = samples.get(m) as number[]
        let p = pos.get(m) as number
        for (let i = 0; i < BLOCK; i++) {
          const t = performance.now()
          if (m === 'grow, 2 threadpool hops') {
            await writeAsync(fd, buf, p)
            await fdatasyncAsync(fd)
          } else if (m === 'grow, O_DSYNC, 1 threadpool hop') await writeAsync(fd, buf, p)
          else {
            fs.writeSync(fd, buf, 0, MSG, p)
            fs.fdatasyncSync(fd)
          }
          out.push(performance.now() - t)
          p += MSG
        }
        pos.set(m, p)
      }
    }
    for (const fd of fds.values()) fs.closeSync(fd)
    const grow = samples.get('grow') as number[]
    for (const m of MODES) {
      const s = samples.get(m) as number[]
      for (const [p, label] of [
        [0.5, 'p50'],
        [0.9, 'p90'],
        [0.99, 'p99'],
      ] as const) {
        report({
          bench: BENCH,
          metric: `write + fdatasync 1 KiB, ${m}: ${label}`,
          value: +pct(s, p).toFixed(3),
          unit: 'ms',
        })
      }
      if (m !== 'grow')
        report({
          bench: BENCH,
          metric: `write + fdatasync 1 KiB p50, ${m} / grow (lower is better)`,
          value: +(pct(s, 0.5) / pct(grow, 0.5)).toFixed(2),
          unit: 'x',
        })
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

void main()
