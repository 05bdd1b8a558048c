import t from 'tap'
import { silentLogger } from '../../../src/common/logger'
import { nodeFsIo, type FsIo } from '../../../src/broker/store/fs-io'
import { History } from '../../../src/broker/store/history'
import { testDir } from '../../helpers/testdir'

const MINUTE = 60_000

t.test('history - a minute that ends while a query scans the log is counted once, not lost', async (t) => {
  const dir = testDir(t)
  let now = 10 * MINUTE + 1_000
  // Reads of the log's scan: the first one moves the clock into the next minute and counts there,
  // which queues the finished minute's write while the query is between its scan and the minute in memory.
  let onRead: (() => void) | undefined
  const io: FsIo = {
    ...nodeFsIo,
    read: async (fd, buf, off, len, pos) => {
      const hook = onRead
      onRead = undefined
      hook?.()
      return nodeFsIo.read(fd, buf, off, len, pos)
    },
  }
  const h = await History.open({ dir, now: () => now, log: silentLogger, io })
  t.teardown(() => h.close())
  // Minute 9 on disk, so the query has a segment to scan.
  now = 9 * MINUTE + 1_000
  h.add('s', '', 'produced', 1)
  now = 10 * MINUTE + 1_000
  h.add('s', '', 'produced', 2)
  onRead = () => {
    now = 11 * MINUTE + 1_000
    h.add('s', '', 'produced', 4)
  }
  const sum = async () => {
    const r = await h.query({ from: 0, to: 20 * MINUTE, subject: 's' })
    return r.series.flatMap((s) => s.points).reduce((n, p) => n + p.produced, 0)
  }
  t.equal(await sum(), 7, 'every count once, the minute that ended during the scan included')
  t.equal(await sum(), 7, 'and once again on the next query')
})
