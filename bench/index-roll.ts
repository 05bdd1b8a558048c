/**
 * The event loop around an index-log segment roll (issue 21: broker event-loop stalls). Index entries
 * of ~60 B are added in turns of 100 (as traces of delivered and acked messages arrive) until
 * BENCH_INDEX_ROLLS segments of 16 MiB (the default) were sealed; a 1 ms timer records how late each
 * of its ticks ran. Reports the longest tick, and the longest own stall: a tick's lateness less the
 * time the thread waited for a CPU meanwhile (/proc schedstat, Linux), so that a loaded machine does
 * not pass for the index's own stall.
 * Knobs: BENCH_INDEX_ROLLS (2; --quick 1).
 */
import fs from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { IndexLog, TraceEvent } from '../src/broker/store/index-log'
import { silentLogger } from '../src/common/logger'
import { quick, report } from './common'

const BENCH = 'index-roll'
const ROLLS = Number(process.env.BENCH_INDEX_ROLLS ?? (quick ? 1 : 2))

function schedWait(): number {
  try {
    return (
      Number(fs.readFileSync(`/proc/${process.pid}/task/${process.pid}/schedstat`, 'utf8').split(' ')[1]) /
      1e6
    )
  } catch {
    return 0
  }
}

async function main(): Promise<void> {
  const dir = fs.mkdtempSync(path.join(tmpdir(), 'qmq-index-roll-'))
  const index = await IndexLog.open({ dataDir: dir, segmentBytes: 16 * 1024 * 1024, log: silentLogger })
  let worst = 0
  let worstOwn = 0
  let last = performance.now()
  let wait0 = schedWait()
  const timer = setInterval(() => {
    const now = performance.now()
    const wait = schedWait()
    const late = now - last - 1
    if (late > worst) worst = late
    // The thread's own stall: how late the tick was, less the time it waited for a CPU.
    const own = late - (wait - wait0)
    if (own > worstOwn) worstOwn = own
    last = now
    wait0 = wait
  }, 1)
  try {
    let seq = 0
    while (index.log.segments().length <= ROLLS) {
      for (let i = 0; i < 100; i++)
        index.addTrace({
          event: TraceEvent.DELIVERED,
          subject: 'orders',
          sequence: seq++,
          group: 'billing',
          consumer: 'c1',
          deliveryCount: 1,
          time: Date.now(),
        })
      await new Promise((r) => setImmediate(r))
    }
    await index.flush()
    const withSealed = index as unknown as { sealed?: () => Promise<void> }
    await withSealed.sealed?.()
    report({
      bench: BENCH,
      metric: `longest event-loop tick over ${ROLLS} index rolls`,
      value: +worst.toFixed(1),
      unit: 'ms',
    })
    report({
      bench: BENCH,
      metric: `longest own stall (a tick's lateness less its wait for a CPU) over ${ROLLS} index rolls`,
      value: +worstOwn.toFixed(1),
      unit: 'ms',
    })
  } finally {
    clearInterval(timer)
    await index.close()
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

void main()
