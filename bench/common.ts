import { cpus, totalmem } from 'node:os'

/** One benchmark result, printed as a JSON line so `bench/run.ts` can collect it into docs/benchmarks.md. */
export interface BenchResult {
  bench: string
  metric: string
  value: number
  unit: string
  target?: string
}

export function report(r: BenchResult): void {
  process.stdout.write(`${JSON.stringify(r)}\n`)
}

export function machine(): string {
  const cpu = cpus()
  return `${cpu.length} x ${cpu[0]?.model.trim() ?? 'unknown CPU'}, ${Math.round(totalmem() / 2 ** 30)} GiB, Node ${process.version}`
}

/** Runs fn repeatedly for about `ms` milliseconds; returns operations per second. */
export function opsPerSecond(fn: () => number, ms = 1000): number {
  let ops = 0
  const start = performance.now()
  let now = start
  while (now - start < ms) {
    ops += fn()
    now = performance.now()
  }
  return ops / ((now - start) / 1000)
}

export const quick = process.argv.includes('--quick') || process.env.BENCH_QUICK === '1'
