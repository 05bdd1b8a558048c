import type { ChildProcess } from 'node:child_process'
import t from 'tap'
import { RawClient } from '../helpers/raw-client'
import { delayed, send, waitFor } from './helpers/delay-helpers'
import { startDelayChild as startChild, killChild as kill } from './helpers/delay-child'
import { FakeBroker } from './helpers/fake-broker'

t.test('delay - a SIGKILLed delay server restarts without losing a message', async (t) => {
  const children: ChildProcess[] = []
  const broker = await new FakeBroker().start()
  t.teardown(async () => {
    for (const c of children) await kill(c, 'SIGKILL')
    await broker.stop()
  })
  const dir = t.testdir()
  const first = await startChild(dir, `b1=${broker.address}`)
  children.push(first.child)
  const client = await RawClient.connect(first.port)
  const now = Date.now()
  const ids: string[] = []
  const records: Buffer[] = []
  for (let i = 0; i < 300; i++) {
    const id = `k${i}`
    ids.push(id)
    // 200 due within ~2 s (dispatch is under way when the kill comes), 100 due later.
    records.push(delayed(id, i < 200 ? now + 600 + i * 8 : now + 3_500 + i))
  }
  for (let i = 0; i < records.length; i += 50) {
    const res = await send(client, records.slice(i, i + 50))
    t.ok(
      res.every((r) => r.status === 0),
      `batch ${i / 50} acknowledged`,
    )
  }
  await waitFor(() => broker.received.length >= 40, 10_000, 'dispatch to start')
  await kill(first.child, 'SIGKILL')
  client.destroy()
  const deliveredBefore = broker.uniqueIds().size
  t.ok(deliveredBefore < 300, `killed mid-dispatch (${deliveredBefore} delivered)`)

  const second = await startChild(dir, `b1=${broker.address}`)
  children.push(second.child)
  await waitFor(() => broker.uniqueIds().size === 300, 15_000, 'every message after the restart')
  t.same([...broker.uniqueIds()].sort(), [...ids].sort(), 'every acknowledged message was delivered')
  const duplicates = broker.received.length - 300
  t.ok(
    duplicates <= deliveredBefore,
    `resent at most what was delivered just before the kill (${duplicates})`,
  )
  await kill(second.child, 'SIGTERM')
})
