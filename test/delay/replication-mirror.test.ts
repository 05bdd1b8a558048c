import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import type { Test } from 'tap'
import t from 'tap'
import { silentLogger } from '../../src/common/logger'
import {
  bucketFileName,
  DISPATCH_DIR,
  DISPATCH_SUFFIX,
  SCHEDULE_DIR,
  SCHEDULE_SUFFIX,
} from '../../src/delay/store/bucket'
import { DelayMirror, MIRROR_FILE } from '../../src/delay/replication/mirror'

/**
 * The delay slave's copy of derived files (replication/mirror.ts) when the message-log copy is cut or
 * the master changes: an adopted checkpoint past the cut (and the files it covers) would make a
 * promoted replay skip what the next master wrote at those offsets.
 */

const START = 60_000 * 29_000_000

function dataDirWithCopy(t: Test, checkpoint: number): { dir: string; files: string[] } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qmq-delay-mirror-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  for (const d of ['replication', SCHEDULE_DIR, DISPATCH_DIR])
    fs.mkdirSync(path.join(dir, d), { recursive: true })
  const sched = path.join(dir, SCHEDULE_DIR, bucketFileName(START, SCHEDULE_SUFFIX))
  const disp = path.join(dir, DISPATCH_DIR, bucketFileName(START, DISPATCH_SUFFIX))
  fs.writeFileSync(sched, Buffer.alloc(100, 1))
  fs.writeFileSync(disp, Buffer.alloc(10, 2))
  fs.writeFileSync(path.join(dir, 'deadletter.log'), '')
  fs.writeFileSync(path.join(dir, 'checkpoint.json'), JSON.stringify({ messageLogOffset: checkpoint }))
  fs.writeFileSync(
    path.join(dir, 'replication', MIRROR_FILE),
    `${JSON.stringify({ version: 1, runId: 'run-1', checkpoint, deadLetterBytes: 0, buckets: [[START, 0, 100, 10]] })}\n`,
  )
  return {
    dir,
    files: [sched, disp, path.join(dir, 'checkpoint.json'), path.join(dir, 'replication', MIRROR_FILE)],
  }
}

function mirror(dir: string): DelayMirror {
  return new DelayMirror({
    dataDir: dir,
    slaveId: 'slave:1',
    clusterSecret: 'secret',
    bucketMinutes: 1,
    intervalMs: 100,
    waitMs: 100,
    chunkBytes: 4096,
    tombstoneKeepMs: 60_000,
    maxMessageBytes: 1024 * 1024,
    log: silentLogger,
  })
}

t.test(
  'delay mirror - a cut below the adopted checkpoint drops the copy; one past it keeps it',
  async (t) => {
    const { dir, files } = dataDirWithCopy(t, 5_000)
    const m = mirror(dir)
    m.prepare()
    t.equal(m.status().checkpoint, 5_000)
    m.onCut(0, 5_000)
    m.onCut(0, 9_000)
    t.ok(
      files.every((f) => fs.existsSync(f)),
      'a cut at or past the checkpoint keeps it and the files it covers',
    )
    m.onCut(0, 4_000)
    t.same(
      files.filter((f) => fs.existsSync(f)),
      [],
      'a cut below it drops the record, the checkpoint and the copied files',
    )
    t.equal(m.status().checkpoint, -1, 'nothing adopted: the next round copies everything again')
    // A restart finds nothing recorded either.
    const again = mirror(dir)
    again.prepare()
    t.equal(again.status().checkpoint, -1)
  },
)

t.test('delay mirror - another master drops the copy', async (t) => {
  const { dir, files } = dataDirWithCopy(t, 5_000)
  const m = mirror(dir)
  m.prepare()
  m.onMasterChange('127.0.0.1:2', 3)
  t.same(
    files.filter((f) => fs.existsSync(f)),
    [],
    'the record, the checkpoint and the files go',
  )
  t.equal(m.status().checkpoint, -1)
})
