import t from 'tap'
import { createLogger } from '../../src/common/logger'
import { QmqError } from '../../src/common/errors'

function capture() {
  const lines: Record<string, unknown>[] = []
  return {
    lines,
    destination: { write: (s: string) => lines.push(JSON.parse(s) as Record<string, unknown>) },
  }
}

t.test('logger - JSON lines with level, time, msg and bindings; below-level lines dropped', async (t) => {
  const c = capture()
  const log = createLogger({
    level: 'info',
    destination: c.destination,
    env: false,
    bindings: { service: 'broker' },
  })
  log.debug('hidden')
  log.info('started')
  log.warn({ offset: 12, dropped: 3 }, 'truncated')
  const child = log.child({ group: 'g1' })
  child.error(new QmqError('QMQ_ERR_DISK_FULL', 'full'), 'append failed')
  t.equal(c.lines.length, 3)
  t.match(c.lines[0], { level: 'info', msg: 'started', service: 'broker' })
  t.type(c.lines[0]?.time, 'number')
  t.match(c.lines[1], { level: 'warn', offset: 12, dropped: 3, msg: 'truncated' })
  t.match(c.lines[2], { level: 'error', group: 'g1', service: 'broker', msg: 'append failed' })
  t.match(c.lines[2]?.err, { code: 'QMQ_ERR_DISK_FULL', message: 'full' })
  t.ok(log.isLevelEnabled('error'))
  t.notOk(log.isLevelEnabled('debug'))
})

t.test('logger - QMQ_LOG_LEVEL overrides the configured level', async (t) => {
  const before = process.env.QMQ_LOG_LEVEL
  t.teardown(() => {
    if (before === undefined) delete process.env.QMQ_LOG_LEVEL
    else process.env.QMQ_LOG_LEVEL = before
  })
  process.env.QMQ_LOG_LEVEL = 'debug'
  const c = capture()
  const log = createLogger({ level: 'warn', destination: c.destination })
  log.debug('seen')
  t.equal(log.level, 'debug')
  t.equal(c.lines.length, 1)
  process.env.QMQ_LOG_LEVEL = 'nonsense'
  t.equal(createLogger({ level: 'warn', destination: c.destination }).level, 'warn')
})
