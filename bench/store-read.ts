// Cold backlog read rate: BENCH_READ_BYTES (256 MiB) of 1 KiB messages are stored, the store is
// reopened with no hot cache (and the OS page cache dropped when permitted), then one group drains
// the backlog with pulls of 1000 messages (acked). While it drains, a producer keeps appending; its
// append latency shows that the backlog read does not block appends.
import fs from 'node:fs'
import { openMessageStore } from '../src/broker/store'
import { emit, envNumber, RecordPool, tmpDir } from './store-common'

async function main(): Promise<void> {
  const bytes = envNumber('BENCH_READ_BYTES', 256 * 1024 * 1024)
  const dir = tmpDir('read')
  const n = Math.ceil(bytes / 1024)
  let store = await openMessageStore({ dataDir: dir, flush: 'async', segmentBytes: 128 * 1024 * 1024 })
  const pool = new RecordPool('backlog', 65536)
  for (let i = 0; i < n; i += 512) {
    await Promise.all([store.append(pool.take(256)), store.append(pool.take(256))])
  }
  await store.close()
  let dropped = false
  try {
    fs.writeFileSync('/proc/sys/vm/drop_caches', '1')
    dropped = true
  } catch {
    // not permitted: the page cache stays warm
  }
  store = await openMessageStore({
    dataDir: dir,
    flush: 'async',
    hotCacheBytes: 0,
    consumeLogCacheEntries: 0,
  })
  const producer = new RecordPool('live', 8192)
  let stop = false
  const lat: number[] = []
  const live = (async () => {
    while (!stop) {
      const t = process.hrtime.bigint()
      await store.append(producer.take(1))
      lat.push(Number(process.hrtime.bigint() - t) / 1e6)
      await new Promise((r) => setTimeout(r, 1))
    }
  })()
  const t0 = process.hrtime.bigint()
  let got = 0
  let readBytes = 0
  for (;;) {
    const msgs = await store.pull({
      subject: 'backlog',
      group: 'g',
      consumerId: 'c',
      maxMessages: 1000,
      maxBytes: 4 * 1024 * 1024,
      broadcast: false,
      atMostOnce: false,
      tags: [],
      tagsAll: false,
      start: 1,
      startTime: 0,
    })
    if (msgs.length === 0) break
    got += msgs.length
    for (const m of msgs) readBytes += m.record.length
    await store.ack(
      'backlog',
      'g',
      'c',
      msgs.map((m) => m.sequence),
    )
  }
  const secs = Number(process.hrtime.bigint() - t0) / 1e9
  stop = true
  await live
  await store.close()
  fs.rmSync(dir, { recursive: true, force: true })
  lat.sort((a, b) => a - b)
  emit('store-read', 'cold_backlog_read', readBytes / secs / 1e6, 'MB/s', {
    messages: got,
    pageCacheDropped: dropped,
  })
  emit('store-read', 'cold_backlog_read_msgs', got / secs, 'msgs/s')
  emit('store-read', 'append_p99_during_backlog_read', lat[Math.floor(lat.length * 0.99)] ?? 0, 'ms', {
    appends: lat.length,
  })
}
void main()
