import t from 'tap'
import { request } from 'undici'
import { deadLetterSubject } from '../../src/common/names'
import { hb, STORE_KINDS, startWithClient } from './helpers'

/**
 * Defect 6 of issue 12, at the metaserver: a dead-letter lookup answers the route of the subject it
 * names, and names that could be read two ways (a '%' in a subject or a consumer group) are refused.
 */

for (const kind of STORE_KINDS) {
  t.test(`metaserver [${kind}] - a dead-letter lookup answers its own subject groups`, async (t) => {
    const { server, client } = await startWithClient(t, { kind, extra: { minGroupsPerSubject: 1 } })
    await client.heartbeat(hb('a', 1001))
    await client.heartbeat(hb('b', 1002))
    // x lands on a, y on b (least loaded first).
    t.same(
      (await client.route({ subject: 'x', kind: 'producer' })).groups.map((g) => g.name),
      ['a'],
    )
    t.same(
      (await client.route({ subject: 'y', kind: 'producer' })).groups.map((g) => g.name),
      ['b'],
    )

    for (const [subject, group, groups] of [
      ['x', 'billing', ['a']],
      ['y', 'billing', ['b']],
      ['x', 'y', ['a']],
      ['y', 'z', ['b']],
    ] as const) {
      const name = deadLetterSubject(subject, group)
      const r = await client.route({ subject: name, kind: 'consumer', group: 'ops' })
      t.equal(r.routeSubject, subject, `${name} routes as ${subject}`)
      t.same(r.subject, name)
      t.same(
        r.groups.map((g) => g.name),
        groups,
        `${name}: the groups of ${subject}`,
      )
      t.same((await client.getSubject(name)).subject, subject, `admin lookup of ${name}`)
    }

    // The ambiguous shapes are refused, not routed to x%y.
    for (const name of ['%DEAD_RETRY%x%y%z', '%DEAD_RETRY%x', '%DEAD_RETRY%x%', '%RETRY%x%y%z']) {
      await t.rejects(client.route({ subject: name, kind: 'consumer', group: 'ops' }), {
        code: 'QMQ_ERR_SUBJECT_INVALID',
      })
    }
    t.same(
      (await client.listSubjects()).map((s) => s.subject),
      ['x', 'y'],
      'no route was made for x%y or any dead-letter name',
    )

    // A user subject or consumer group with '%' is refused wherever it enters.
    await t.rejects(client.route({ subject: 'x%y', kind: 'producer' }), { code: 'QMQ_ERR_SUBJECT_INVALID' })
    await t.rejects(client.route({ subject: 'x', kind: 'consumer', group: 'y%z' }), {
      code: 'QMQ_ERR_GROUP_INVALID',
    })
    await t.rejects(
      client.clientHeartbeat({
        clientId: 'c1',
        kind: 'consumer',
        subscriptions: [{ subject: 'x%y', consumerGroup: 'g' }],
      }),
      { code: 'QMQ_ERR_SUBJECT_INVALID' },
    )
    await t.rejects(
      client.clientHeartbeat({
        clientId: 'c1',
        kind: 'consumer',
        subscriptions: [{ subject: 'x', consumerGroup: 'y%z' }],
      }),
      { code: 'QMQ_ERR_GROUP_INVALID' },
    )
    await t.rejects(client.extendSubject('x%y', 'a'), { code: 'QMQ_ERR_SUBJECT_INVALID' })
    await t.rejects(client.setReadOnly({ group: 'a', subject: 'x%y', readOnly: true }), {
      code: 'QMQ_ERR_SUBJECT_INVALID',
    })
    await t.rejects(client.heartbeat(hb('c%1', 1003)), { code: 'QMQ_ERR_GROUP_INVALID' })
    const res = await request(`${server.url}/admin/consumers?consumerGroup=${encodeURIComponent('y%z')}`)
    t.equal(res.statusCode, 400)
    t.equal(((await res.body.json()) as { code: string }).code, 'QMQ_ERR_GROUP_INVALID')
    t.same(
      (await client.listSubjects()).map((s) => s.subject),
      ['x', 'y'],
    )
  })
}
