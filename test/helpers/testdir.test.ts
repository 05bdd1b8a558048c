import fs from 'node:fs'
import t from 'tap'
import { testDir } from './testdir'

// What testDir works around: tap removes a plain testdir before the teardowns registered after it.
let plainSeen: boolean | undefined
let helperSeen: boolean | undefined

t.test('a plain testdir', async (t) => {
  const d = t.testdir()
  t.teardown(() => {
    plainSeen = fs.existsSync(d)
  })
})

t.test('testDir', async (t) => {
  const d = testDir(t)
  t.teardown(() => {
    helperSeen = fs.existsSync(d)
  })
})

t.test('testDir keeps the directory until the teardowns ran', async (t) => {
  t.equal(helperSeen, true, "the teardown (a server's close) still finds its directory")
  // If tap changes its order, this helper is no longer needed (and this says so).
  t.equal(plainSeen, false, 'tap removed the plain testdir before the teardown')
})
