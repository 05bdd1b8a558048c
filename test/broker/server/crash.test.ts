import t from 'tap'
import { type ChildService, startChildService } from '../../../src/cli/child-service'
import { RawClient } from '../../helpers/raw-client'
import { ack, message, pull, send } from './ops'
import { testDir } from '../../helpers/testdir'

/** A broker in its own process, started as an operator would (`qmq broker`), on `dataDir`. */
async function spawnBroker(dataDir: string): Promise<{ child: ChildService['proc']; port: number }> {
  const service = startChildService('broker', [
    'broker',
    '--port',
    '0',
    '--http-port',
    '-1',
    '--data-dir',
    dataDir,
  ])
  const info = await service.started
  return { child: service.proc, port: Number(info.port) }
}

t.test('crash - a broker killed with SIGKILL mid-stream loses nothing it acknowledged', async (t) => {
  const dataDir = testDir(t)
  const first = await spawnBroker(dataDir)
  t.teardown(() => {
    first.child.kill('SIGKILL')
  })
  const acknowledged = new Set<string>()
  const producers = await Promise.all([0, 1, 2].map(() => RawClient.connect(first.port)))
  let killed = false
  const produce = producers.map(async (c, p) => {
    for (let i = 0; !killed; i++) {
      const batch = Array.from({ length: 20 }, (_, j) => message('crash', `p${p}-${i}-${j}`, 'payload'))
      try {
        const results = await send(c, batch)
        results.forEach((r, k) => {
          if (r.status === 0) acknowledged.add((batch[k] as { id: string }).id)
        })
      } catch {
        return // the connection died with the broker
      }
    }
  })
  // Let it stream until it has acknowledged a fair amount (polled: a loaded machine is slow to get
  // there), then kill it in the middle of the stream.
  const end = Date.now() + 30_000
  while (acknowledged.size <= 100 && Date.now() < end) await new Promise((r) => setTimeout(r, 20))
  killed = true
  first.child.kill('SIGKILL')
  await Promise.all(produce)
  for (const c of producers) c.destroy()
  t.ok(acknowledged.size > 100, `acknowledged before the kill: ${acknowledged.size}`)

  const second = await spawnBroker(dataDir)
  t.teardown(() => {
    second.child.kill('SIGKILL')
  })
  const c = await RawClient.connect(second.port)
  t.teardown(() => c.destroy())
  const seen = new Set<string>()
  for (;;) {
    const msgs = await pull(c, { subject: 'crash', group: 'g', consumerId: 'c', maxMessages: 1000 })
    if (msgs.length === 0) break
    for (const m of msgs) seen.add(m.record.id)
    await ack(c, { subject: 'crash', group: 'g', consumerId: 'c', sequences: msgs.map((m) => m.sequence) })
  }
  const lost = [...acknowledged].filter((id) => !seen.has(id))
  t.same(lost, [], 'every acknowledged message is there after the restart')
})
