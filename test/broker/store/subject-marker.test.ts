import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { subjectDirName } from '../../../src/broker/store/consume-log'
import { storeDirs } from '../../../src/broker/store/store-dirs'
import { open, pullOpts, rec, sd } from './helpers'

t.test(
  "store - a new subject's SUBJECT marker is written off the event loop (no synchronous fsync)",
  async (t) => {
    const dir = t.testdir()
    const store = await open(dir)
    t.teardown(() => store.close())
    await store.append([rec('old')])
    const original = fs.fsyncSync
    let syncFsyncs = 0
    fs.fsyncSync = (fd: number) => {
      syncFsyncs++
      original(fd)
    }
    t.teardown(() => {
      fs.fsyncSync = original
    })
    const res = await store.append([rec('fresh')])
    fs.fsyncSync = original
    t.same(sd(res), [{ sequence: 0, duplicate: false }])
    t.equal(syncFsyncs, 0, 'no synchronous fsync while serving the append')
    const marker = path.join(storeDirs(dir).consume, subjectDirName('fresh'), 'SUBJECT')
    t.equal(fs.readFileSync(marker, 'utf8'), 'fresh', 'the marker is in place when the append resolves')
  },
)

t.test(
  "store - a subject's first record is not acknowledged (nor written) while its marker cannot be made durable",
  async (t) => {
    const dir = t.testdir()
    const subjectDir = path.join(storeDirs(dir).consume, subjectDirName('blocked'))
    // The marker's temp file cannot be created: a directory holds its name.
    fs.mkdirSync(path.join(subjectDir, 'SUBJECT.tmp'), { recursive: true })
    const store = await open(dir)
    t.teardown(() => store.close())
    const first = store.append([rec('blocked', { body: 'b0' })])
    const other = store.append([rec('other', { body: 'o0' })])
    await t.rejects(first, /SUBJECT/, 'the append fails with the marker write')
    t.same(sd(await other), [{ sequence: 0, duplicate: false }], 'other subjects go on')
    t.same(await store.pull(pullOpts('blocked', 'g', 'c1')), [], 'nothing of the subject stored')
    // Once the obstacle is gone the next append writes the marker and gets the first sequence.
    fs.rmdirSync(path.join(subjectDir, 'SUBJECT.tmp'))
    t.same(sd(await store.append([rec('blocked', { body: 'b1' })])), [{ sequence: 0, duplicate: false }])
    t.equal(fs.readFileSync(path.join(subjectDir, 'SUBJECT'), 'utf8'), 'blocked')
    const got = await store.pull(pullOpts('blocked', 'g', 'c1'))
    t.same(
      got.map((m) => m.sequence),
      [0],
    )
  },
)

t.test('store - appends of a new subject made while its marker is written keep their order', async (t) => {
  const dir = t.testdir()
  const store = await open(dir)
  t.teardown(() => store.close())
  const appends = []
  for (let i = 0; i < 20; i++) appends.push(store.append([rec('ordered', { body: `m${i}` })]))
  const res = await Promise.all(appends)
  t.same(
    res.map((r) => r[0]?.sequence),
    Array.from({ length: 20 }, (_, i) => i),
  )
})
