import type { ChildProcess } from 'node:child_process'
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

/**
 * libuv threadpool size of the broker processes the benchmarks spawn: what bin/qmq.js gives a broker
 * started by the CLI (the variable must be in the environment the process starts with).
 */
export const BROKER_THREADPOOL_SIZE = '16'

/** The environment of a spawned broker process: ours, plus the CLI's threadpool size unless set. */
export function brokerChildEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  return { UV_THREADPOOL_SIZE: BROKER_THREADPOOL_SIZE, ...process.env, ...extra }
}

/**
 * The port of a broker started as bench/broker-child.ts: its stdout line `{"port":N}`. Other lines
 * (before it, or after it such as --trace-gc output) go to our stderr, never to the results.
 */
export function brokerChildPort(child: ChildProcess): Promise<number> {
  return new Promise((resolve, reject) => {
    let out = ''
    let started = false
    child.stdout?.on('data', (d: Buffer) => {
      if (started) return void process.stderr.write(d)
      out += d.toString()
      for (let nl = out.indexOf('\n'); nl >= 0 && !started; nl = out.indexOf('\n')) {
        const line = out.slice(0, nl)
        out = out.slice(nl + 1)
        if (!line.startsWith('{"port":')) {
          process.stderr.write(`${line}\n`)
          continue
        }
        started = true
        if (out.length > 0) process.stderr.write(out)
        resolve((JSON.parse(line) as { port: number }).port)
      }
    })
    child.once('exit', (code) => reject(new Error(`broker exited with ${code}`)))
  })
}

/**
 * Stops a broker child gracefully (SIGTERM, so `--cpu-prof` or the loop stats can be written), with
 * SIGKILL after `graceMs`; resolves once it has exited.
 */
export async function stopBrokerChild(child: ChildProcess, graceMs = 10_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise((r) => child.once('exit', r))
  child.kill('SIGTERM')
  const killer = setTimeout(() => child.kill('SIGKILL'), graceMs)
  await exited
  clearTimeout(killer)
}
