import t from 'tap'
import { ClusterAdmin } from '../../src/cli/cluster'

// The token the CLI sends with admin writes (metaserver writes, broker cursor resets and redrives).

t.test('cluster admin - the admin token comes from --token, else QMQ_ADMIN_TOKEN', async (t) => {
  const fromFlag = new ClusterAdmin({ token: 'flag-token' }, { QMQ_ADMIN_TOKEN: 'env-token' })
  t.teardown(() => fromFlag.close())
  t.equal(fromFlag.adminToken, 'flag-token', 'the flag wins')
  const fromEnv = new ClusterAdmin({}, { QMQ_ADMIN_TOKEN: 'env-token' })
  t.teardown(() => fromEnv.close())
  t.equal(fromEnv.adminToken, 'env-token')
  const none = new ClusterAdmin({}, { QMQ_ADMIN_TOKEN: '' })
  t.teardown(() => none.close())
  t.equal(none.adminToken, undefined, 'an empty variable is no token')
})
