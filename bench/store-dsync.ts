/**
 * 'sync' group commit: the store's way to make a batch durable against one threadpool job per batch
 * (issue 21), on one pipeline so only the I/O differs, alternating in one run:
 * - write + fdatasync (the store's way, message-log.ts): one write in flight; when it is back, an
 *   fdatasync starts for every batch written since the last one started (up to 4 in flight) and the
 *   next batch is written meanwhile; two threadpool jobs per batch;
 * - O_DSYNC, one write in flight: each batch written through a descriptor opened with O_DSYNC (durable
 *   on return, one threadpool job), the next batch formed when it is back;
 * - O_DSYNC, 4 writes in flight: as above with up to 4 batches written at once at reserved positions.
 * Every mode acknowledges in log order. Phases, the modes alternating in slices of 1 s:
 * - paced: 1 KiB appends at RATE msgs/s (a 1 ms timer), acknowledgement latency p50 / p99, also as a
 *   ratio to a lone write + fdatasync of 1 KiB (synchronous, back to back) timed in the same rounds;
 * - saturated: 512 appends outstanding (4 producers x 128), acknowledged appends per second.
 * Knobs: BENCH_DSYNC_ROUNDS (10; --quick 3), BENCH_DSYNC_RATE (2000), BENCH_DIR. The libuv threadpool
 * has 16 threads unless UV_THREADPOOL_SIZE says otherwise (what bin/qmq.js gives a broker).
 */
import fs from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { BROKER_THREADPOOL_SIZE, quick, report } from './common'

// The threadpool a broker gets (bin/qmq.js); read by libuv at the first threadpool job, after this.
process.env.UV_THREADPOOL_SIZE ??= BROKER_THREADPOOL_SIZE

const BENCH = 'store-dsync'
const ROUNDS = Number(process.env.BENCH_DSYNC_ROUNDS ?? (quick ? 3 : 10))
const RATE = Number(process.env.BENCH_DSYNC_RATE ?? 2000)
const SLICE_MS = 1000
const OUTSTANDING = 512
const MSG = 1024
const MAX_IN_FLIGHT = 4
const MODES = ['write + fdatasync', 'O_DSYNC, 1 write in flight', 'O_DSYNC, 4 writes in flight'] as const
type Mode = (typeof MODES)[number]

const writeAsync = (fd: number, buf: Buffer, pos: number) =>
  new Promise<void>((resolve, reject) =>
    fs.write(fd, buf, 0, buf.length, pos, (e) => (e ? reject(e) : resolve())),
  )
const fdatasyncAsync = (fd: number) =>
  new Promise<void>((resolve, reject) => fs.fdatasync(fd, (e) => (e ? reject(e) : resolve())))

interface Batch {
  acks: (() => void)[]
  done: boolean
}

/** A group-committing log of one file: `append` resolves when its message is durable, in log order. */
class Pipeline {
  private queue: (() => void)[] = []
  private pos = 0
  private writes = 0
  /** Batches not acknowledged yet, in log order. */
  private pending: Batch[] = []
  /** write + fdatasync: written, no fdatasync started yet. */
  private written: Batch[] = []
  private syncs = 0
  private scheduled = false
  private readonly buf = Buffer.alloc(OUTSTANDING * MSG, 0x61)

  constructor(
    private readonly mode: Mode,
    private readonly fd: number,
  ) {}

  append(): Promise<void> {
    return new Promise((resolve) => {
      this.queue.push(resolve)
      if (!this.scheduled) {
        this.scheduled = true
        setImmediate(() => {
          this.scheduled = false
          this.pump()
        })
      }
    })
  }

  private pump(): void {
    const maxWrites = this.mode === 'O_DSYNC, 4 writes in flight' ? MAX_IN_FLIGHT : 1
    while (this.writes < maxWrites && this.queue.length > 0) {
      const batch: Batch = { acks: this.queue, done: false }
      this.queue = []
      this.pending.push(batch)
      const bytes = batch.acks.length * MSG
      const at = this.pos
      this.pos += bytes
      this.writes++
      void writeAsync(this.fd, this.buf.subarray(0, bytes), at).then(() => {
        this.writes--
        if (this.mode === 'write + fdatasync') this.written.push(batch)
        else batch.done = true
        this.settle()
      })
    }
    if (this.mode === 'write + fdatasync' && this.written.length > 0 && this.syncs < MAX_IN_FLIGHT) {
      const group = this.written
      this.written = []
      this.syncs++
      void fdatasyncAsync(this.fd).then(() => {
        this.syncs--
        for (const b of group) b.done = true
        this.settle()
      })
    }
  }

  private settle(): void {
    while (this.pending.length > 0 && (this.pending[0] as Batch).done) {
      for (const ack of (this.pending.shift() as Batch).acks) ack()
    }
    this.pump()
  }
}

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.floor(s.length * p))] ?? Number.NaN
}

/** Appends at RATE for SLICE_MS; pushes each append's latency (ms). */
async function paced(log: Pipeline, out: number[]): Promise<void> {
  const pending: Promise<void>[] = []
  const start = performance.now()
  let sent = 0
  await new Promise<void>((resolve) => {
    const tick = () => {
      const now = performance.now()
      const due = Math.floor(((now - start) * RATE) / 1000)
      while (sent < due) {
        sent++
        const t = performance.now()
        pending.push(log.append().then(() => void out.push(performance.now() - t)))
      }
      if (now - start >= SLICE_MS) resolve()
      else setTimeout(tick, 1)
    }
    tick()
  })
  await Promise.all(pending)
}

/** Keeps OUTSTANDING appends outstanding for SLICE_MS; returns acknowledged appends per second. */
async function saturated(log: Pipeline): Promise<number> {
  const start = performance.now()
  let acked = 0
  let stop = false
  const lane = async () => {
    while (!stop) {
      await log.append()
      acked++
      if (performance.now() - start >= SLICE_MS) stop = true
    }
  }
  await Promise.all(Array.from({ length: OUTSTANDING }, lane))
  return acked / ((performance.now() - start) / 1000)
}

function floorSlice(fd: number, out: number[], at: { pos: number }): void {
  const buf = Buffer.alloc(MSG, 0x62)
  const start = performance.now()
  while (performance.now() - start < SLICE_MS / 4) {
    const t = performance.now()
    fs.writeSync(fd, buf, 0, buf.length, at.pos)
    fs.fdatasyncSync(fd)
    out.push(performance.now() - t)
    at.pos += buf.length
  }
}

async function main(): Promise<void> {
  const dir = fs.mkdtempSync(path.join(process.env.BENCH_DIR ?? tmpdir(), 'qmq-dsync-'))
  const fds: number[] = []
  try {
    const open = (name: string, dsync: boolean) => {
      const flags = fs.constants.O_RDWR | fs.constants.O_CREAT | (dsync ? fs.constants.O_DSYNC : 0)
      const fd = fs.openSync(path.join(dir, name), flags)
      fds.push(fd)
      return fd
    }
    const logs = new Map<Mode, Pipeline>(
      MODES.map((m, i) => [m, new Pipeline(m, open(`log-${i}`, m !== 'write + fdatasync'))]),
    )
    const lat = new Map<Mode, number[]>(MODES.map((m) => [m, []]))
    const rates = new Map<Mode, number[]>(MODES.map((m) => [m, []]))
    const floor: number[] = []
    const floorFd = open('floor', false)
    const floorAt = { pos: 0 }
    // Each round runs every mode once, starting from a different one.
    const order = (r: number) => MODES.map((_, i) => MODES[(i + r) % MODES.length] as Mode)
    for (let r = 0; r < ROUNDS; r++) {
      for (const m of order(r)) await paced(logs.get(m) as Pipeline, lat.get(m) as number[])
      floorSlice(floorFd, floor, floorAt)
    }
    for (let r = 0; r < ROUNDS; r++) {
      for (const m of order(r)) (rates.get(m) as number[]).push(await saturated(logs.get(m) as Pipeline))
    }
    const f50 = pct(floor, 0.5)
    const put = (metric: string, value: number, unit: string) => report({ bench: BENCH, metric, value, unit })
    put('lone write + fdatasync 1 KiB p50', +f50.toFixed(3), 'ms')
    put('lone write + fdatasync 1 KiB p99', +pct(floor, 0.99).toFixed(3), 'ms')
    for (const m of MODES) {
      const s = lat.get(m) as number[]
      const p50 = pct(s, 0.5)
      put(`${m}: ack p50 at ${RATE} msgs/s`, +p50.toFixed(3), 'ms')
      put(`${m}: ack p99 at ${RATE} msgs/s`, +pct(s, 0.99).toFixed(3), 'ms')
      put(`${m}: ack p50 / lone write + fdatasync p50`, +(p50 / f50).toFixed(2), 'x')
      put(
        `${m}: ${OUTSTANDING} outstanding, median slice`,
        Math.round(pct(rates.get(m) as number[], 0.5)),
        'msgs/s',
      )
    }
  } finally {
    for (const fd of fds) fs.closeSync(fd)
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

void main()
