import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import t from 'tap'
import { CLUSTER_SECRET_HEADER, type ServerHeartbeatRequest } from '../../../src/common/meta/types'
import { CLUSTER_SECRET } from '../../metaserver/helpers'
import { RawClient } from '../../helpers/raw-client'
import { waitUntil } from '../../helpers/replication'
import { ack, message, pull, send, sendOk } from './ops'
import { startBroker } from './start-broker'

t.test('http - /metrics and /health', async (t) => {
  const b = await startBroker(t, { httpPort: 0 })
  const httpPort = b.broker.addresses.httpPort as number
  const c = await RawClient.connect(b.port)
  t.teardown(() => c.destroy())
  await sendOk(c, [message('m', 'a'), message('m', 'b')])
  const got = await pull(c, { subject: 'm', group: 'g', consumerId: 'c' })
  await ack(c, { subject: 'm', group: 'g', consumerId: 'c', sequences: [got[0]?.sequence as number] })
  const metrics = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text()
  t.match(metrics, /qmq_broker_messages_received_total\{[^}]*subject="m"[^}]*\} 2/)
  t.match(metrics, /qmq_broker_messages_pulled_total\{[^}]*subject="m"[^}]*\} 2/)
  t.match(metrics, /qmq_broker_messages_acked_total\{[^}]*\} 1/)
  t.match(metrics, /qmq_broker_in_flight_messages\{[^}]*subject="m"[^}]*\} 1/)
  t.match(metrics, /qmq_broker_connections\{[^}]*\} 1/)
  t.match(metrics, /qmq_broker_append_seconds_bucket/)
  t.match(metrics, /qmq_broker_long_poll_waiters/)
  // Consumer-group metrics keep the broker group's default label beside the consumer group's.
  const brokerGroup = b.broker.options.group
  for (const name of [
    'qmq_broker_messages_pulled_total',
    'qmq_broker_messages_acked_total',
    'qmq_broker_in_flight_messages',
  ]) {
    const line = metrics.split('\n').find((l) => l.startsWith(`${name}{`))
    t.match(line, new RegExp(`group="${brokerGroup}"`), `${name} names the broker group`)
    t.match(line, /consumer_group="g"/, `${name} names the consumer group`)
  }
  t.match(metrics, /qmq_store_fsync_seconds_bucket/, 'the store shares the registry')
  // The histograms (SummedHistograms, handed to prom-client when scraped): one observation per
  // request and per SEND batch, the +Inf bucket equal to the count.
  for (const [series, n] of [
    ['qmq_broker_request_seconds_count{[^}]*request="SEND"[^}]*}', 1],
    ['qmq_broker_request_seconds_bucket{le="\\+Inf",[^}]*request="PULL"[^}]*}', 1],
    ['qmq_broker_request_seconds_count{[^}]*request="ACK"[^}]*}', 1],
    ['qmq_broker_append_seconds_count{[^}]*}', 1],
    ['qmq_broker_append_seconds_bucket{le="\\+Inf",[^}]*}', 1],
    ['qmq_store_append_seconds_count{[^}]*}', 1],
  ] as const)
    t.match(metrics, new RegExp(`^${series} ${n}$`, 'm'), series)
  t.match(metrics, /^qmq_store_fsync_seconds_count\{[^}]*\} [1-9]/m, 'fsyncs observed')
  const health = await fetch(`http://127.0.0.1:${httpPort}/health`)
  t.equal(health.status, 200)
  const body = (await health.json()) as { status: string; subjects: number }
  t.equal(body.status, 'ok')
  t.equal(body.subjects, 1)
  t.equal((await fetch(`http://127.0.0.1:${httpPort}/nope`)).status, 404)
})

t.test(
  'meta - registers, heartbeats, obeys read-only marks, keeps serving when the metaserver is down',
  async (t) => {
    const beats: ServerHeartbeatRequest[] = []
    const secrets: unknown[] = []
    let readOnly = false
    let down = false
    let refusedBeats = 0
    const meta = createServer((req, res) => {
      let data = ''
      req.on('data', (d) => {
        data += d
      })
      req.on('end', () => {
        if (down) {
          refusedBeats++
          res.writeHead(503).end()
          return
        }
        const hb = JSON.parse(data) as ServerHeartbeatRequest
        beats.push(hb)
        secrets.push(req.headers[CLUSTER_SECRET_HEADER])
        res.writeHead(200, { 'content-type': 'application/json' })
        res.end(
          JSON.stringify({
            group: hb.group,
            heartbeatIntervalMs: 100,
            heartbeatTimeoutMs: 1000,
            readOnly,
            readOnlySubjects: [],
            serverTime: Date.now(),
          }),
        )
      })
    })
    await new Promise<void>((r) => meta.listen(0, '127.0.0.1', () => r()))
    t.teardown(() => new Promise<void>((r) => meta.close(() => r())))
    const url = `http://127.0.0.1:${(meta.address() as AddressInfo).port}`
    const b = await startBroker(t, {
      metaserver: url,
      clusterSecret: CLUSTER_SECRET,
      group: 'bg1',
      httpPort: 0,
    })
    const c = await RawClient.connect(b.port)
    t.teardown(() => c.destroy())
    // Heartbeats go one after the other: once heartbeat n + 2 arrived, the broker applied the answer
    // to n + 1 (polled, not slept for: a loaded machine stretches the 100 ms between them).
    const answered = (what: string) => {
      const n = beats.length
      return waitUntil(what, () => beats.length >= n + 2, 10_000, 10)
    }
    await answered('heartbeats')
    t.ok(beats.length >= 2, `heartbeats: ${beats.length}`)
    t.equal(beats[0]?.group, 'bg1')
    t.equal(beats[0]?.kind, 'broker')
    t.equal(beats[0]?.role, 'master')
    t.equal(beats[0]?.address, `127.0.0.1:${b.port}`)
    t.equal(beats[0]?.httpAddress, b.broker.addresses.httpAddress)
    t.same(new Set(secrets), new Set([CLUSTER_SECRET]), 'every heartbeat carries the cluster secret')

    readOnly = true
    await answered('a heartbeat answered read-only')
    const refused = await send(c, [message('s', 'ro')])
    t.equal(refused[0]?.status, 150, 'QMQ_ERR_READ_ONLY')
    readOnly = false
    await answered('a heartbeat answered writable')

    down = true
    const refusedBefore = refusedBeats
    await waitUntil('two heartbeats refused', () => refusedBeats >= refusedBefore + 2, 10_000, 10)
    await sendOk(c, [message('s', 'still')])
    t.equal(
      (await pull(c, { subject: 's', group: 'g', consumerId: 'c' }))[0]?.record.id,
      'still',
      'serves without the metaserver',
    )
    down = false
    const before = beats.length
    await b.broker.close()
    t.equal(beats.at(-1)?.state, 'offline', 'says offline on close')
    t.ok(beats.length > before)
  },
)

t.test('meta - a broker without a metaserver runs standalone', async (t) => {
  const b = await startBroker(t)
  const c = await RawClient.connect(b.port)
  t.teardown(() => c.destroy())
  await sendOk(c, [message('s', 'x')])
  t.equal((await pull(c, { subject: 's', group: 'g', consumerId: 'c' })).length, 1)
})
