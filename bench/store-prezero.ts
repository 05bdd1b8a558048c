/**
 * The message log's zeroed tail (`prezeroBytes`, segment-log.ts), on and off, in one run: 1 KiB
 * appends to a real store (flush 'sync') at RATE msgs/s (a 1 ms timer), append-to-acknowledgement
 * latency p50 / p99 per mode, and the fdatasyncs of the message log's appends (timed around the
 * store's FsIo, on the descriptors appends write through: not the zeroer's). Two stores, one per mode, each in its own directory; the modes
 * alternate in slices of SLICE_MS so neighbours on a shared machine load them alike; the first slice
 * of each store (the zeroer's first fill) is not counted. The load average is reported with them.
 * Knobs: BENCH_PREZERO_ROUNDS (10; --quick 3), BENCH_PREZERO_RATE (2000), BENCH_DIR.
 */
import fs from 'node:fs'
import os from 'node:os'
import { type FsIo, nodeFsIo, openMessageStore } from '../src/broker/store'
import type { FileMessageStore } from '../src/broker/store/file-message-store'
import { BROKER_THREADPOOL_SIZE, quick, report } from './common'
import { RecordPool, tmpDir } from './store-common'

process.env.UV_THREADPOOL_SIZE ??= BROKER_THREADPOOL_SIZE

const BENCH = 'store-prezero'
const ROUNDS = Number(process.env.BENCH_PREZERO_ROUNDS ?? (quick ? 3 : 10))
const RATE = Number(process.env.BENCH_PREZERO_RATE ?? 2000)
const SLICE_MS = 1000
const MODES = [
  { name: 'zeroed tail (8 MiB)', prezeroBytes: 8 * 1024 * 1024 },
  { name: 'growing file', prezeroBytes: 0 },
] as const

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.floor(s.length * p))] ?? Number.NaN
}

/** Appends at RATE for SLICE_MS; the latencies (ms) of the acknowledged appends. */
async function slice(store: FileMessageStore, pool: RecordPool): Promise<number[]> {
  const out: number[] = []
  const pending: Promise<void>[] = []
  const start = performance.now()
  let sent = 0
  await new Promise<void>((resolve) => {
    const timer = setInterval(() => {
      const now = performance.now()
      const due = Math.min(Math.floor(((now - start) * RATE) / 1000), Math.floor((SLICE_MS * RATE) / 1000))
      for (; sent < due; sent++) {
        const t0 = performance.now()
        pending.push(store.append(pool.take(1)).then(() => void out.push(performance.now() - t0)))
      }
      if (now - start >= SLICE_MS) {
        clearInterval(timer)
        resolve()
      }
    }, 1)
  })
  await Promise.all(pending)
  return out
}

/** Times the fdatasyncs of descriptors that appends write to (writev: the zeroer uses write). */
function timedIo(): { io: FsIo; syncs: number[]; counting: { on: boolean } } {
  const appendFds = new Set<number>()
  const syncs: number[] = []
  const counting = { on: false }
  const io: FsIo = {
    ...nodeFsIo,
    writev: (fd, buffers, position) => {
      appendFds.add(fd)
      return nodeFsIo.writev(fd, buffers, position)
    },
    fdatasync: async (fd) => {
      if (!appendFds.has(fd) || !counting.on) return nodeFsIo.fdatasync(fd)
      const t0 = performance.now()
      await nodeFsIo.fdatasync(fd)
      syncs.push(performance.now() - t0)
    },
  }
  return { io, syncs, counting }
}

async function main(): Promise<void> {
  const dirs: string[] = []
  const stores: FileMessageStore[] = []
  const timed = MODES.map(() => timedIo())
  try {
    for (const [i, m] of MODES.entries()) {
      const dir = tmpDir('prezero')
      dirs.push(dir)
      stores.push(
        await openMessageStore({
          dataDir: dir,
          flush: 'sync',
          prezeroBytes: m.prezeroBytes,
          checkpointIntervalMs: 600_000,
          io: (timed[i] as ReturnType<typeof timedIo>).io,
        }),
      )
    }
    const pool = new RecordPool('bench')
    const samples: number[][] = MODES.map(() => [])
    const loads: number[] = []
    for (let round = 0; round <= ROUNDS; round++) {
      for (let i = 0; i < MODES.length; i++) {
        const t = timed[i] as ReturnType<typeof timedIo>
        t.counting.on = round > 0
        const got = await slice(stores[i] as FileMessageStore, pool)
        t.counting.on = false
        if (round > 0) (samples[i] as number[]).push(...got)
      }
      loads.push(os.loadavg()[0] as number)
    }
    const base = samples[1] as number[]
    MODES.forEach((m, i) => {
      const s = samples[i] as number[]
      report({
        bench: BENCH,
        metric: `append ack at ${RATE} msgs/s, ${m.name}: p50`,
        value: +pct(s, 0.5).toFixed(3),
        unit: 'ms',
      })
      report({
        bench: BENCH,
        metric: `append ack at ${RATE} msgs/s, ${m.name}: p99`,
        value: +pct(s, 0.99).toFixed(3),
        unit: 'ms',
      })
      const syncs = (timed[i] as ReturnType<typeof timedIo>).syncs
      for (const [p, label] of [
        [0.5, 'p50'],
        [0.99, 'p99'],
      ] as const)
        report({
          bench: BENCH,
          metric: `message-log fdatasync (${syncs.length}), ${m.name}: ${label}`,
          value: +pct(syncs, p).toFixed(3),
          unit: 'ms',
        })
      if (i === 0) {
        for (const [p, label] of [
          [0.5, 'p50'],
          [0.99, 'p99'],
        ] as const)
          report({
            bench: BENCH,
            metric: `append ack ${label}, zeroed tail / growing file (lower is better)`,
            value: +(pct(s, p) / pct(base, p)).toFixed(2),
            unit: 'x',
          })
      }
    })
    report({
      bench: BENCH,
      metric: 'load average (1 min) during the run, median',
      value: +pct(loads, 0.5).toFixed(1),
      unit: '',
    })
  } finally {
    for (const s of stores) await s.close()
    for (const d of dirs) fs.rmSync(d, { recursive: true, force: true })
  }
}

void main()
