import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { bodyOf, open, pullOpts, rec } from './helpers'

t.test('store - append assigns per-subject sequences and pull reads them back', async (t) => {
  const dir = t.testdir()
  const store = await open(dir)
  t.teardown(() => store.close())
  const res = await Promise.all([
    store.append([rec('a', { body: 'a0' }), rec('b', { body: 'b0' })]),
    store.append([rec('a', { body: 'a1' })]),
  ])
  t.same(
    res.flat().map((r) => r.sequence),
    [0, 0, 1],
  )
  const got = await store.pull(pullOpts('a', 'g', 'c1'))
  t.same(
    got.map((m) => [m.sequence, bodyOf(m.record), m.deliveryCount]),
    [
      [0, 'a0', 1],
      [1, 'a1', 1],
    ],
  )
  t.same(store.subjects(), ['a', 'b'])
})

t.test('store - crash without close loses nothing resolved under flush sync', async (t) => {
  const dir = t.testdir()
  const store = await open(dir, { checkpointIntervalMs: 60_000 })
  const bodies: string[] = []
  const appends: Promise<unknown>[] = []
  for (let i = 0; i < 300; i++) {
    bodies.push(`m${i}`)
    appends.push(store.append([rec('crash', { body: `m${i}` })]))
  }
  await Promise.all(appends)
  await store.abandon() // no flush, no checkpoint, no close
  const again = await open(dir)
  t.teardown(() => again.close())
  t.equal(again.recoveryReport?.replayedRecords, 300)
  const got = await again.pull(pullOpts('crash', 'g', 'c', { maxMessages: 1000 }))
  t.same(
    got.map((m) => bodyOf(m.record)),
    bodies,
  )
  // Sequences continue after the recovered ones.
  const [r] = await again.append([rec('crash')])
  t.equal(r?.sequence, 300)
})

t.test('store - crash in a child process (kill -9) loses no acknowledged append', async (t) => {
  const dir = t.testdir()
  const { fork } = await import('node:child_process')
  const child = fork(path.join(__dirname, 'fixtures', 'crash-appender.ts'), [dir], {
    execArgv: ['--import', 'tsx'],
    stdio: ['ignore', 'pipe', 'inherit', 'ipc'],
  })
  let acked = -1
  await new Promise<void>((resolve) => {
    child.on('message', (m: { acked: number }) => {
      acked = m.acked
      if (acked >= 2000) {
        child.kill('SIGKILL')
      }
    })
    child.on('exit', () => resolve())
  })
  t.ok(acked >= 2000, `child acknowledged ${acked} appends before the kill`)
  const store = await open(dir)
  t.teardown(() => store.close())
  const got = await store.pull(pullOpts('kill', 'g', 'c', { maxMessages: 10_000 }))
  t.ok(got.length >= acked + 1, `recovered ${got.length} >= acknowledged ${acked + 1}`)
  t.same(
    got.slice(0, acked + 1).map((m) => bodyOf(m.record)),
    Array.from({ length: acked + 1 }, (_, i) => `k${i}`),
  )
})

t.test('store - torn tail is truncated and reported', async (t) => {
  const dir = t.testdir()
  const store = await open(dir)
  for (let i = 0; i < 10; i++) await store.append([rec('torn', { body: `t${i}` })])
  await store.close()
  const seg = path.join(
    dir,
    'messagelog',
    fs.readdirSync(path.join(dir, 'messagelog')).sort().pop() as string,
  )
  const size = fs.statSync(seg).size
  fs.truncateSync(seg, size - 7) // cut the last record short
  const again = await open(dir)
  t.teardown(() => again.close())
  const rep = again.recoveryReport
  t.equal(rep?.truncated.length, 1)
  t.match(rep?.truncated[0]?.reason, /torn/)
  const got = await again.pull(pullOpts('torn', 'g', 'c'))
  t.same(
    got.map((m) => bodyOf(m.record)),
    ['t0', 't1', 't2', 't3', 't4', 't5', 't6', 't7', 't8'],
  )
  const [r] = await again.append([rec('torn', { body: 'new' })])
  t.equal(r?.sequence, 9, 'the lost sequence is reused by the next append')
})

t.test('store - a flipped bit is detected, the damaged record skipped and reported', async (t) => {
  const dir = t.testdir()
  const store = await open(dir)
  for (let i = 0; i < 10; i++) await store.append([rec('flip', { body: `f${i}` })])
  await store.abandon()
  // Recovery verifies from the checkpoint on: remove it so the whole log is verified.
  fs.rmSync(path.join(dir, 'checkpoint'), { recursive: true })
  const seg = path.join(dir, 'messagelog', fs.readdirSync(path.join(dir, 'messagelog')).sort()[0] as string)
  const buf = fs.readFileSync(seg)
  // Flip a bit in the body of the 6th record.
  let pos = 0
  for (let i = 0; i < 5; i++) pos += buf.readUInt32BE(pos)
  const len = buf.readUInt32BE(pos)
  buf[pos + len - 3] = (buf[pos + len - 3] as number) ^ 0x10
  fs.writeFileSync(seg, buf)
  const again = await open(dir)
  t.teardown(() => again.close())
  const rep = again.recoveryReport
  t.same(rep?.truncated, [])
  t.equal(rep?.skipped.length, 1)
  t.match(rep?.skipped[0]?.reason, /CRC/)
  t.equal(rep?.skipped[0]?.offset, pos)
  t.equal(rep?.skipped[0]?.bytes, len)
  t.same(rep?.lostMessages, [{ subject: 'flip', first: 5, last: 5 }])
  const got = await again.pull(pullOpts('flip', 'g', 'c'))
  t.same(
    got.map((m) => bodyOf(m.record)),
    ['f0', 'f1', 'f2', 'f3', 'f4', 'f6', 'f7', 'f8', 'f9'],
  )
})

t.test('store - missing consume log is rebuilt from the message log', async (t) => {
  const dir = t.testdir()
  const store = await open(dir, { segmentBytes: 4096 })
  for (let i = 0; i < 20; i++) await store.append([rec('rb', { body: `r${i}`, tags: i % 2 ? ['odd'] : [] })])
  await store.close()
  fs.rmSync(path.join(dir, 'consumelog', 'rb'), { recursive: true })
  fs.mkdirSync(path.join(dir, 'consumelog', 'rb'))
  fs.writeFileSync(path.join(dir, 'consumelog', 'rb', 'SUBJECT'), 'rb')
  const again = await open(dir, { segmentBytes: 4096 })
  t.teardown(() => again.close())
  t.same(again.recoveryReport?.rebuiltConsumeLogs, ['rb'])
  const odd = await again.pull(pullOpts('rb', 'g', 'c', { tags: ['odd'] }))
  t.same(
    odd.map((m) => m.sequence),
    [1, 3, 5, 7, 9, 11, 13, 15, 17, 19],
  )
})

t.test('store - segments roll at segmentBytes and reads span them', async (t) => {
  const dir = t.testdir()
  const store = await open(dir, { segmentBytes: 4096, hotCacheBytes: 0 })
  t.teardown(() => store.close())
  for (let i = 0; i < 50; i++) await store.append([rec('roll', { body: 'x'.repeat(300) + i })])
  t.ok(fs.readdirSync(path.join(dir, 'messagelog')).length > 3)
  const got = await store.pull(pullOpts('roll', 'g', 'c'))
  t.equal(got.length, 50)
  t.equal(bodyOf(got[49]?.record as Buffer), `${'x'.repeat(300)}49`)
})

t.test(
  'store - records pulled from the hot cache stay intact while the cache reuses its memory',
  async (t) => {
    const store = await open(t.testdir(), { hotCacheBytes: 32 * 1024 })
    t.teardown(() => store.close())
    const body = (i: number) => `${String(i).padStart(6, '0')}${'x'.repeat(500)}`
    await store.append([rec('h', { body: body(0) }), rec('h', { body: body(1) })])
    const held = await store.pull(pullOpts('h', 'g', 'c'))
    t.same(
      held.map((m) => bodyOf(m.record)),
      [body(0), body(1)],
      'served (from memory)',
    )
    // Many times the cache's size afterwards: its ring wraps over the space those records came from.
    for (let i = 2; i < 400; i++) await store.append([rec('h', { body: body(i) })])
    t.same(
      held.map((m) => bodyOf(m.record)),
      [body(0), body(1)],
      'records a caller still holds are not overwritten',
    )
    const rest = await store.pull(pullOpts('h', 'g', 'c', { maxMessages: 1000 }))
    t.equal(rest.length, 398)
    t.ok(
      rest.every((m, k) => bodyOf(m.record) === body(k + 2)),
      'newer records read back correctly (from memory and from disk)',
    )
  },
)
