import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import t from 'tap'
import type { FsIo } from '../../../src/broker/store'
import { nodeFsIo } from '../../../src/broker/store'
import { isQmqError } from '../../../src/common/errors'
import { bodyOf, open, pullOpts, rec } from './helpers'

/**
 * A real ENOSPC: the data dir is a 1 MiB tmpfs the test mounts (we run as root). Where mounting is
 * impossible, an fs layer that fails writes with ENOSPC while `full` is set stands in.
 */
function tryMount(dir: string, size: string): boolean {
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
}

t.test(
  'store - ENOSPC fails appends with a retriable code, reads keep working, appends resume when space returns',
  async (t) => {
    // Outside tap's fixture dir, so the mount is gone before anything removes the directory.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qmq-enospc-'))
    const mounted = process.env.QMQ_TEST_NO_MOUNT === '1' ? false : tryMount(dir, '1m')
    let full = false
    const enospc = () =>
      Object.assign(new Error('ENOSPC: no space left on device (injected)'), { code: 'ENOSPC' })
    const io: FsIo = {
      ...nodeFsIo,
      writev: (fd, b, p) => (full ? Promise.reject(enospc()) : nodeFsIo.writev(fd, b, p)),
      write: (fd, b, p) => (full ? Promise.reject(enospc()) : nodeFsIo.write(fd, b, p)),
    }
    t.comment(mounted ? 'using a real 1 MiB tmpfs' : 'mount failed: using an injected fs layer')
    t.teardown(() => {
      if (mounted) execFileSync('umount', ['-l', dir], { stdio: 'ignore' })
      fs.rmSync(dir, { recursive: true, force: true })
    })
    const store = await open(dir, {
      segmentBytes: 256 * 1024,
      checkpointIntervalMs: 60_000,
      ...(mounted ? {} : { io }),
    })
    const body = 'z'.repeat(1000)
    let stored = 0
    let error: unknown
    for (let i = 0; i < 5000; i++) {
      if (!mounted && i === 300) full = true
      try {
        await store.append([rec('full', { id: `f${i}`, body: `${i}:${body}` })])
        stored++
      } catch (err) {
        error = err
        break
      }
    }
    t.ok(stored > 0, `stored ${stored} messages before the disk filled`)
    t.ok(isQmqError(error, 'QMQ_ERR_DISK_FULL'), 'append fails with QMQ_ERR_DISK_FULL')
    t.equal((error as { retriable?: boolean }).retriable, true)
    // A second attempt fails the same way and does not corrupt anything.
    await t.rejects(store.append([rec('full', { id: 'again', body })]), { code: 'QMQ_ERR_DISK_FULL' })
    // Reads keep working.
    const got = await store.pull(pullOpts('full', 'g', 'c', { maxMessages: 10_000 }))
    t.equal(got.length, stored, 'every acknowledged message is readable')
    t.equal(bodyOf(got[stored - 1]?.record as Buffer).split(':')[0], String(stored - 1))
    // Space returns.
    if (mounted) execFileSync('mount', ['-o', 'remount,size=16m', dir], { stdio: 'ignore' })
    else full = false
    const [r] = await store.append([rec('full', { id: 'after', body: 'after' })])
    t.equal(r?.sequence, stored, 'the sequence continues without a gap')
    await store.ack(
      'full',
      'g',
      'c',
      got.map((m) => m.sequence),
    )
    await store.close()
    const again = await open(dir, { segmentBytes: 256 * 1024, ...(mounted ? {} : { io }) })
    t.same(again.recoveryReport?.truncated, [], 'nothing torn on disk')
    const rest = await again.pull(pullOpts('full', 'g', 'c'))
    t.same(
      rest.map((m) => bodyOf(m.record)),
      ['after'],
      'acks made while the disk was full were kept and written later',
    )
    await again.close()
  },
)
