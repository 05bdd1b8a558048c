import type { ChildProcess } from 'node:child_process'
import t from 'tap'
import { prng } from '../helpers/messages'
import { RawClient } from '../helpers/raw-client'
import { cancel, delayed, send, waitFor } from './helpers/delay-helpers'
import { killChild, startDelayChild } from './helpers/delay-child'
import { FakeBroker } from './helpers/fake-broker'

/**
 * A delay server SIGKILLed at 5 random moments of a mixed load (scheduling, dispatching, cancelling),
 * then restarted on the same data dir each time: every acknowledged delayed message is delivered, none
 * before its time, and none whose cancel was acknowledged. (Sends and cancels cut off by a kill have
 * an unknown outcome: they are not counted either way.)
 */
t.test(
  'delay - SIGKILL at 5 random moments of a mixed load loses nothing and sends nothing early',
  async (t) => {
    const seed = Number(process.env.QMQ_TEST_SEED ?? Date.now() % 1_000_000)
    t.comment(`seed ${seed} (QMQ_TEST_SEED reruns it)`)
    const rand = prng(seed)
    const broker = await new FakeBroker().start()
    const children: ChildProcess[] = []
    t.teardown(async () => {
      for (const c of children) await killChild(c, 'SIGKILL')
      await broker.stop()
    })
    const dir = t.testdir()
    const t0 = Date.now()
    const acked = new Map<string, number>() // id -> schedule time
    const cancelled = new Set<string>() // cancel acknowledged (true)
    const uncertain = new Set<string>() // a cancel was sent, the kill came before its answer
    let next = 0

    const load = async (client: RawClient, stop: () => boolean) => {
      while (!stop()) {
        const now = Date.now()
        const batch: { id: string; at: number }[] = []
        for (let i = 0; i < 20; i++)
          batch.push({ id: `x${next++}`, at: now + 200 + Math.floor(rand() * 2_300) })
        try {
          const res = await send(
            client,
            batch.map((m) => delayed(m.id, m.at)),
          )
          res.forEach((r, i) => {
            const m = batch[i] as { id: string; at: number }
            if (r.status === 0) acked.set(m.id, m.at)
          })
          // Cancel a few acknowledged messages still more than a second away (not in flight to the broker).
          const victims = [...acked]
            .filter(([id, at]) => at > Date.now() + 1_000 && !cancelled.has(id) && rand() < 0.05)
            .slice(0, 5)
            .map(([id]) => id)
          if (victims.length > 0) {
            for (const id of victims) uncertain.add(id)
            const answers = await cancel(client, victims)
            for (const id of victims) uncertain.delete(id)
            answers.forEach((ok, i) => {
              if (ok) cancelled.add(victims[i] as string)
            })
          }
        } catch {
          return // the server is gone: outcomes of what was in flight are unknown
        }
        await new Promise((r) => setTimeout(r, 20))
      }
    }

    for (let round = 0; round < 5; round++) {
      const { child, port } = await startDelayChild(dir, `b1=${broker.address}`)
      children.push(child)
      const client = await RawClient.connect(port)
      let killed = false
      const running = load(client, () => killed)
      await new Promise((r) => setTimeout(r, 300 + Math.floor(rand() * 1_200)))
      killed = true
      await killChild(child, 'SIGKILL')
      await running
      client.destroy()
    }
    const last = await startDelayChild(dir, `b1=${broker.address}`)
    children.push(last.child)
    const latest = Math.max(...acked.values())
    const expected = [...acked.keys()].filter((id) => !cancelled.has(id) && !uncertain.has(id))
    t.ok(
      expected.length > 100 && cancelled.size > 0,
      `${acked.size} acknowledged, ${cancelled.size} cancelled, ${uncertain.size} cancels cut off by a kill`,
    )
    await waitFor(
      () => expected.every((id) => broker.uniqueIds().has(id)),
      Math.max(10_000, latest - Date.now() + 10_000),
      'every acknowledged, not cancelled message',
    ).catch(() => {}) // the assertions below say what is missing
    // Past the latest due time plus a few checkpoint intervals: anything cancelled would be out by now.
    await waitFor(() => Date.now() > latest + 500, 10_000, 'the last due time')
    await new Promise((r) => setTimeout(r, 300))
    const received = broker.uniqueIds()
    t.same(
      expected.filter((id) => !received.has(id)).map((id) => `${id}@${(acked.get(id) as number) - t0}`),
      [],
      'every acknowledged message was delivered',
    )
    t.same(
      [...cancelled].filter((id) => received.has(id)),
      [],
      'no message whose cancel was acknowledged was delivered',
    )
    t.same(
      broker.received
        .filter((r) => r.at < r.scheduleAt)
        .map((r) => ({ id: r.id, earlyMs: r.scheduleAt - r.at })),
      [],
      'none delivered before its time',
    )
    await killChild(last.child, 'SIGTERM')
  },
)
