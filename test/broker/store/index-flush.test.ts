import t from 'tap'
import type { FsIo } from '../../../src/broker/store/fs-io'
import { nodeFsIo } from '../../../src/broker/store/fs-io'
import { IndexKind, IndexLog, keyBytes } from '../../../src/broker/store/index-log'
import { silentLogger } from '../../../src/common/logger'
import { deliveredTrace } from './helpers'

// The index log is written by one write at a time. Every turn of the event loop that queues entries
// schedules a flush; each of those used to wait in a loop (`while (flushing) await flushing`) and go
// round again whenever another write had started first, so under steady traffic the waiters piled up
// (one per turn while a write was in flight), each woke on every write, and a flush called by a
// lookup waited for as many writes as there were waiters ahead of it.

const trace = deliveredTrace

const turn = () => new Promise<void>((resolve) => setImmediate(resolve))

t.test(
  'index flush: resolves after the writes in flight and the next one, under steady traffic',
  async (t) => {
    const dir = t.testdir()
    let writes = 0
    // A slow disk: every write of the index log takes 5 ms.
    const io: FsIo = {
      ...nodeFsIo,
      writev: async (fd, buffers, position) => {
        writes++
        await new Promise((resolve) => setTimeout(resolve, 5))
        return nodeFsIo.writev(fd, buffers, position)
      },
    }
    const index = await IndexLog.open({ dataDir: dir, segmentBytes: 1 << 20, log: silentLogger, io })
    let seq = 0
    // Steady traffic: entries queued in every turn, many turns per write.
    while (seq < 300 || writes < 4) {
      index.addTrace(trace(seq++))
      await turn()
    }
    const queuedBefore = seq
    const before = writes
    let done = false
    const flushed = index.flush().then(() => {
      done = true
    })
    // The traffic goes on while the flush waits.
    while (!done && writes - before < 40) {
      index.addTrace(trace(seq++))
      await turn()
    }
    await flushed
    t.ok(writes - before <= 2, `the flush waited for ${writes - before} writes (at most 2)`)
    for (const s of [0, queuedBefore - 1]) {
      const found = await index.lookup(IndexKind.TRACE, keyBytes(IndexKind.TRACE, 'orders', s))
      t.same(
        found.map((e) => e.ref),
        [s],
        `entry ${s}, queued before the flush, is found`,
      )
    }
    await index.close()
  },
)
