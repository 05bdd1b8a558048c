import type { Test } from 'tap'

/**
 * `t.testdir()`, removed only after the test's teardowns have run.
 *
 * tap removes a testdir at the end of the test *before* the teardowns registered after the first
 * `t.testdir()` call (its fixture plugin wraps the end-of-test hook before the teardown plugin does).
 * A server closed by such a teardown may still be writing into the directory (a replication slave
 * copying files): the removal then fails (ENOTEMPTY), the teardowns never run and the file hangs until
 * its timeout. Registering a teardown first puts the removal after all of them.
 */
export function testDir(t: Test): string {
  t.teardown(() => {})
  return t.testdir()
}
