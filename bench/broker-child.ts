/**
 * Not a benchmark by itself: the broker process the broker benchmarks spawn. Starts a Broker on the
 * data dir given as the first argument (options as JSON in the second), prints `{"port":N}` and runs
 * until SIGTERM/SIGKILL. Without arguments it exits at once (so bench/run.ts skips it cheaply).
 */
import fs from 'node:fs'
import { Session } from 'node:inspector'
import { createHistogram, monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks'
import { GCProfiler } from 'node:v8'
import { Broker } from '../src/broker/broker'
import { silentLogger } from '../src/common/logger'

/**
 * QMQ_BROKER_LOOP_STATS=1: at exit, prints to stderr one JSON line with the broker's event-loop delay
 * percentiles (ms), its own share of them without the wait for a CPU (see watchStalls), its GC
 * pauses, and the store's fdatasync/append latency histograms (diagnosis of latency tails).
 */
const loopStats = process.env.QMQ_BROKER_LOOP_STATS === '1'

async function main(): Promise<void> {
  const dataDir = process.argv[2]
  if (dataDir === undefined) return
  const extra = process.argv[3] === undefined ? {} : (JSON.parse(process.argv[3]) as Record<string, unknown>)
  const broker = new Broker({ port: 0, httpPort: -1, ...extra, dataDir }, { logger: silentLogger })
  const { port } = await broker.start()
  const h = loopStats ? monitorEventLoopDelay({ resolution: 1 }) : undefined
  h?.enable()
  const stalls = loopStats ? watchStalls() : undefined
  const gc = loopStats ? watchGc() : undefined
  if (process.env.QMQ_BROKER_ALLOC_STATS === '1') watchAllocation(broker)
  process.stdout.write(`${JSON.stringify({ port })}\n`)
  const stop = async () => {
    if (h !== undefined) {
      h.disable()
      const ms = (n: number) => +(n / 1e6).toFixed(2)
      const hist: Record<string, unknown> = {}
      for (const m of await broker.registry.getMetricsAsJSON()) {
        if (String(m.type) !== 'histogram' || !/sync|append|request|write/.test(m.name)) continue
        hist[m.name] = (m.values as { value: number; labels: Record<string, unknown>; metricName?: string }[])
          .filter((v) => v.metricName?.endsWith('_bucket') === true && v.value > 0)
          .map((v) => `${v.labels.request ?? ''}le${v.labels.le}:${v.value}`)
          .join(' ')
      }
      process.stderr.write(
        `${JSON.stringify({
          brokerLoopDelayMs: {
            p50: ms(h.percentile(50)),
            p90: ms(h.percentile(90)),
            p99: ms(h.percentile(99)),
            p999: ms(h.percentile(99.9)),
            max: ms(h.max),
          },
          // The same without the time the thread waited for a CPU (the machine's load), per 2 ms tick.
          brokerOwnStallMs: stalls?.(),
          gcPauseMs: gc?.(),
          hist,
        })}\n`,
      )
    }
    broker.close().then(
      () => process.exit(0),
      () => process.exit(1),
    )
  }
  process.on('SIGTERM', () => void stop())
  process.on('SIGINT', () => void stop())
}

/**
 * The main thread's own share of the event-loop delay, apart from the machine's load: every 2 ms a
 * timer reads the thread's /proc schedstat (Linux: time run on a CPU, time runnable but waiting for
 * one). A tick's delay minus its wait for a CPU is what the process itself stalled (JS, GC, a
 * synchronous syscall, a lock), the same whatever the neighbours do. With QMQ_BROKER_STALL_LOG=1 each
 * stall of 10 ms or more is printed as it ends, on stdout like --trace-gc's lines, so they interleave:
 *   stall at <ms since start>: <ms> (cpu <ms>, runqueue <ms>, blocked <ms>)
 * (blocked: slept, e.g. in a synchronous fsync or on a lock held by a thread that waits for a CPU).
 */
function watchStalls(): () => Record<string, number> {
  const EVERY_MS = 2
  const log = process.env.QMQ_BROKER_STALL_LOG === '1'
  let fd: number | undefined
  try {
    fd = fs.openSync(`/proc/${process.pid}/task/${process.pid}/schedstat`, 'r')
  } catch {
    // not Linux: the runqueue share reads as 0
  }
  const buf = Buffer.alloc(128)
  const sched = (): [number, number] => {
    if (fd === undefined) return [0, 0]
    const n = fs.readSync(fd, buf, 0, buf.length, 0)
    const [run, wait] = buf.toString('latin1', 0, n).split(' ')
    return [Number(run) / 1e6, Number(wait) / 1e6]
  }
  const own = createHistogram()
  let ownMax = 0
  let queuedTotal = 0
  let last = performance.now()
  let [run0, wait0] = sched()
  const t = setInterval(() => {
    const now = performance.now()
    const [run, wait] = sched()
    const late = Math.max(0, now - last - EVERY_MS)
    const queued = wait - wait0
    queuedTotal += queued
    const self = Math.max(0, late - queued)
    own.record(Math.max(1, Math.round(self * 1000)))
    if (self > ownMax) ownMax = self
    if (log && late >= 10) {
      const cpu = run - run0
      process.stdout.write(
        `stall at ${(now - late).toFixed(0)} ms: ${late.toFixed(1)} ms (cpu ${cpu.toFixed(1)}, runqueue ${queued.toFixed(1)}, blocked ${(now - last - cpu - queued).toFixed(1)})\n`,
      )
    }
    last = now
    run0 = run
    wait0 = wait
  }, EVERY_MS)
  t.unref()
  return () => {
    clearInterval(t)
    const ms = (us: number) => +(us / 1000).toFixed(2)
    return {
      p50: ms(own.percentile(50)),
      p99: ms(own.percentile(99)),
      p999: ms(own.percentile(99.9)),
      max: +ownMax.toFixed(2),
      runqueueTotalMs: Math.round(queuedTotal),
    }
  }
}

/** GC pauses of the main thread (perf_hooks 'gc' entries): count, total, max, p99 in ms. */
function watchGc(): () => Record<string, number> {
  const d: number[] = []
  const obs = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) d.push(e.duration)
  })
  obs.observe({ entryTypes: ['gc'] })
  return () => {
    obs.disconnect()
    const s = [...d].sort((a, b) => a - b)
    return {
      count: s.length,
      totalMs: +s.reduce((a, b) => a + b, 0).toFixed(1),
      p99: +(s[Math.floor(s.length * 0.99)] ?? 0).toFixed(2),
      max: +(s[s.length - 1] ?? 0).toFixed(2),
    }
  }
}

/**
 * QMQ_BROKER_ALLOC_STATS=1: on each SIGUSR2, prints on stdout one line
 *   {"alloc":{"bytes":B,"scavenges":S,"markCompacts":M,"gcMs":T,"cpuUs":C,"requests":R}}
 * for the interval since the previous SIGUSR2 (or the start): B bytes allocated on the JS heap (the
 * sum over the GCs of the used size before each one minus the used size after the previous one, plus
 * the growth since the last one), the number of young- and old-generation collections and their
 * pauses, the process's CPU time (user + system, all threads: the threadpool's writes and fdatasyncs
 * too), and the requests answered (bench/broker-alloc.ts divides these by the messages of a phase;
 * reading the request count allocates a little, counted in the next interval). Buffer contents outside the
 * heap are not in B. With QMQ_BROKER_HEAP_SAMPLE=<prefix> it also writes the interval's sampled
 * allocation sites, garbage included, to <prefix>.<n>.heapprofile (the DevTools format).
 */
function watchAllocation(broker: Broker): void {
  const requests = async () => {
    const m = await broker.registry.getSingleMetric('qmq_broker_requests_total')?.get()
    let n = 0
    for (const v of m?.values ?? []) n += v.value
    return n
  }
  let requestsBefore = 0
  let profiler = new GCProfiler()
  profiler.start()
  let lastUsed = process.memoryUsage().heapUsed
  let cpuBefore = process.cpuUsage()
  const samplePrefix = process.env.QMQ_BROKER_HEAP_SAMPLE
  const session = samplePrefix === undefined ? undefined : new Session()
  const startSampling = () =>
    session?.post('HeapProfiler.startSampling', {
      samplingInterval: 4096,
      includeObjectsCollectedByMajorGC: true,
      includeObjectsCollectedByMinorGC: true,
    })
  session?.connect()
  startSampling()
  let intervals = 0
  process.on('SIGUSR2', () => {
    const { statistics } = profiler.stop()
    const cpu = process.cpuUsage(cpuBefore)
    cpuBefore = process.cpuUsage()
    let bytes = 0
    let scavenges = 0
    let markCompacts = 0
    let gcMs = 0
    for (const s of statistics) {
      bytes += s.beforeGC.heapStatistics.usedHeapSize - lastUsed
      lastUsed = s.afterGC.heapStatistics.usedHeapSize
      if (s.gcType === 'Scavenge' || s.gcType === 'MinorMarkCompact') scavenges++
      else if (s.gcType === 'MarkSweepCompact') markCompacts++
      gcMs += s.cost / 1000
    }
    const used = process.memoryUsage().heapUsed
    bytes += used - lastUsed
    lastUsed = used
    profiler = new GCProfiler()
    profiler.start()
    const n = ++intervals
    session?.post('HeapProfiler.stopSampling', (err, res) => {
      if (err === null) fs.writeFileSync(`${samplePrefix}.${n}.heapprofile`, JSON.stringify(res.profile))
      startSampling()
    })
    void requests().then((n) => {
      const cpuUs = cpu.user + cpu.system
      const alloc = {
        bytes,
        scavenges,
        markCompacts,
        gcMs: +gcMs.toFixed(1),
        cpuUs,
        requests: n - requestsBefore,
      }
      requestsBefore = n
      process.stdout.write(`${JSON.stringify({ alloc })}\n`)
    })
  })
}

main().catch((err) => {
  process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`)
  process.exit(1)
})
