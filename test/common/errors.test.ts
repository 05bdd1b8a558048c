import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { ERROR_CODES, type ErrorCode } from '../../src/common/error-codes'
import { fsError, isQmqError, QmqError, toQmqError } from '../../src/common/errors'

const entries = Object.entries(ERROR_CODES) as [ErrorCode, (typeof ERROR_CODES)[ErrorCode]][]

t.test('errors - every wire status is unique and every name is QMQ_ERR_*', async (t) => {
  const seen = new Map<number, string>()
  for (const [code, spec] of entries) {
    t.match(code, /^QMQ_ERR_[A-Z0-9_]+$/, `${code} is named QMQ_ERR_*`)
    t.notOk(
      seen.has(spec.status),
      `status ${spec.status} of ${code} is also used by ${seen.get(spec.status)}`,
    )
    seen.set(spec.status, code)
    t.ok(spec.status > 0 && spec.status <= 0xffff, `${code} status fits in u16 and is not 0 (0 = ok)`)
  }
})

t.test('errors - every code is documented in docs/errors.md with its status', async (t) => {
  const doc = readFileSync(join(__dirname, '../../docs/errors.md'), 'utf8')
  for (const [code, spec] of entries) {
    const row = new RegExp(`^\\|\\s*${spec.status}\\s*\\|\\s*\`${code}\`\\s*\\|`, 'm')
    t.match(doc, row, `${code} (${spec.status}) has a row in docs/errors.md`)
  }
  // And nothing documented that the table does not know (a stale row would mislead).
  for (const m of doc.matchAll(/^\|\s*(\d+)\s*\|\s*`(QMQ_ERR_[A-Z0-9_]+)`/gm)) {
    const spec = ERROR_CODES[m[2] as ErrorCode]
    t.ok(spec, `${m[2]} in docs/errors.md exists in the table`)
    if (spec) t.equal(spec.status, Number(m[1]), `${m[2]} has the same status in docs and table`)
  }
})

t.test('errors - QmqError carries code, status, retriable and cause', async (t) => {
  const cause = new Error('disk')
  const err = new QmqError('QMQ_ERR_DISK_FULL', undefined, { cause, details: { path: '/x' } })
  t.equal(err.code, 'QMQ_ERR_DISK_FULL')
  t.equal(err.status, ERROR_CODES.QMQ_ERR_DISK_FULL.status)
  t.equal(err.retriable, true)
  t.equal(err.message, ERROR_CODES.QMQ_ERR_DISK_FULL.message)
  t.equal(err.cause, cause)
  t.same(err.details, { path: '/x' })
  t.same(err.toJSON(), { code: 'QMQ_ERR_DISK_FULL', status: 101, message: err.message, retriable: true })
  t.ok(isQmqError(err, 'QMQ_ERR_DISK_FULL'))
  t.notOk(isQmqError(err, 'QMQ_ERR_TIMEOUT'))
})

t.test('errors - fromStatus maps known statuses and keeps unknown ones', async (t) => {
  for (const [code, spec] of entries) {
    const e = QmqError.fromStatus(spec.status, 'why')
    t.equal(e.code, code)
    t.equal(e.retriable, spec.retriable)
    t.equal(e.message, 'why')
  }
  const unknown = QmqError.fromStatus(65000, 'from the future')
  t.equal(unknown.code, 'QMQ_ERR_INTERNAL')
  t.same(unknown.details, { status: 65000 })
  t.equal(QmqError.fromStatus(21).message, ERROR_CODES.QMQ_ERR_TIMEOUT.message, 'empty message falls back')
})

t.test('errors - fsError maps ENOSPC to DISK_FULL and others to STORE_IO', async (t) => {
  const enospc = Object.assign(new Error('no space'), { code: 'ENOSPC' })
  t.equal(fsError(enospc, 'append').code, 'QMQ_ERR_DISK_FULL')
  const eio = Object.assign(new Error('io'), { code: 'EIO' })
  const mapped = fsError(eio, 'append')
  t.equal(mapped.code, 'QMQ_ERR_STORE_IO')
  t.equal(mapped.retriable, true)
  t.match(mapped.message, /^append: io/)
  t.equal(toQmqError(new TypeError('x')).code, 'QMQ_ERR_INTERNAL')
  const q = new QmqError('QMQ_ERR_TIMEOUT')
  t.equal(toQmqError(q), q)
})
