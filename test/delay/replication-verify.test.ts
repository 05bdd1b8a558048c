import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import type { ReplicationFollower } from '../../src/broker/replication/follower'
import { type FsIo, nodeFsIo } from '../../src/broker/store'
import { silentLogger } from '../../src/common/logger'
import { DelayServer } from '../../src/delay/delay-server'
import { MESSAGE_DIR } from '../../src/delay/store/delay-store'
import { RawClient } from '../helpers/raw-client'
import { DELAY_TEST_SECRET, delayed, FakeSender, send } from './helpers/delay-helpers'
import { freshDir, until } from './helpers/replication-helpers'

/**
 * A delay slave verifies the message-log chunks it copies (broker/replication/chunk-verifier.ts, with
 * the delay message log's record check): bytes damaged on the master's read path are refused and
 * fetched again, never written; once the damage stops the copy is the master's byte for byte.
 */

function pathOf(fd: number): string {
  try {
    return fs.readlinkSync(`/proc/self/fd/${fd}`)
  } catch {
    return ''
  }
}

function filesOf(dir: string): Map<string, Buffer> {
  const out = new Map<string, Buffer>()
  for (const f of fs.readdirSync(dir).sort()) out.set(f, fs.readFileSync(path.join(dir, f)))
  return out
}

t.test('delay verify - damaged message-log chunks never reach the slave copy', async (t) => {
  let corrupt = false
  let flips = 0
  const io: FsIo = {
    ...nodeFsIo,
    read: async (fd, buffer, offset, length, position) => {
      const n = await nodeFsIo.read(fd, buffer, offset, length, position)
      if (corrupt && n > 0 && pathOf(fd).includes(`/${MESSAGE_DIR}/`)) {
        flips++
        const i = offset + ((flips * 7919) % n)
        buffer[i] = (buffer[i] as number) ^ 0x04
      }
      return n
    },
  }
  const base = {
    port: 0,
    clusterSecret: DELAY_TEST_SECRET,
    bucketMinutes: 1,
    replication: 'async' as const,
    replicationFetchWaitMs: 50,
    replicationFetchBytes: 4096,
  }
  const mDir = freshDir(t, 'delay-verify')
  const m = new DelayServer(
    { ...base, dataDir: mDir },
    { logger: silentLogger, sender: new FakeSender(), routes: { groups: async () => [] }, io },
  )
  t.teardown(() => m.close())
  await m.start()
  const c = await RawClient.connect(m.port)
  t.teardown(() => c.close())
  const far = Date.now() + 3_600_000
  for (let i = 0; i < 30; i++) await send(c, [delayed(`v-${i}`, far + i)])

  corrupt = true
  const sDir = freshDir(t, 'delay-verify-slave')
  const b = new DelayServer(
    { ...base, dataDir: sDir, role: 'slave', masterAddress: m.address },
    { logger: silentLogger, sender: new FakeSender(), routes: { groups: async () => [] } },
  )
  t.teardown(() => b.close())
  await b.start()
  const follower = (b as unknown as { follower: ReplicationFollower }).follower
  // The slave retries after 1 s, then doubling (its retry interval): three damaged fetches.
  await until('damaged reads (or a copy)', () => flips >= 3 || follower.status().messageOffset > 0, 15_000)
  const durable = follower.status().messageOffset
  const master = filesOf(path.join(mDir, MESSAGE_DIR))
  for (const [name, bytes] of filesOf(path.join(sDir, MESSAGE_DIR)))
    t.ok(
      master.get(name)?.subarray(0, bytes.length).equals(bytes),
      `${name}: only the master's bytes (${durable})`,
    )
  corrupt = false
  const end = () => m.store.messageSegmentLog?.endOffset ?? -1
  await until('the copy caught up', () => follower.status().messageOffset === end(), 20_000)
  t.ok(follower.status().refusedChunks > 0, 'damaged chunks were refused')
  const copied = filesOf(path.join(sDir, MESSAGE_DIR))
  for (const [name, bytes] of filesOf(path.join(mDir, MESSAGE_DIR)))
    t.ok(copied.get(name)?.equals(bytes), `${name}: the copy is the master's byte for byte`)
})
