import { join } from 'node:path'
import type { Test } from 'tap'
import {
  type ChildService,
  type ChildServiceOptions,
  startChildService,
  stopChildService,
} from '../../src/cli/child-service'
import { CLUSTER_SECRET_ENV } from '../../src/common/token'
import { CLUSTER_SECRET } from '../metaserver/helpers'

/**
 * Real qmq services as child processes, started through the CLI exactly as an operator would, for
 * end-to-end and crash tests. Every service is stopped (SIGKILL if need be) at teardown. Each gets the
 * test cluster secret through its environment, as `qmq dev` passes it.
 */
export interface RunningService {
  child: ChildService
  info: Record<string, unknown>
  /** The TCP `host:port` (broker, delay) or base URL (metaserver). */
  address: string
}

const echo: ChildServiceOptions['onLine'] =
  process.env.QMQ_TEST_VERBOSE === '1' ? (line) => process.stderr.write(`${line}\n`) : undefined

interface LaunchOptions {
  /** The cluster secret it gets in its environment (default the tests'). */
  secret?: string
  /** A command prefix to run it through (`ip netns exec NS`: in a network namespace). */
  launcher?: readonly string[] | undefined
  startTimeoutMs?: number
}

function spawnService(name: string, args: string[], options: LaunchOptions): ChildService {
  return startChildService(name, args, {
    env: { [CLUSTER_SECRET_ENV]: options.secret ?? CLUSTER_SECRET },
    ...(echo ? { onLine: echo } : {}),
    ...(options.launcher ? { launcher: options.launcher } : {}),
    ...(options.startTimeoutMs !== undefined ? { startTimeoutMs: options.startTimeoutMs } : {}),
  })
}

async function started(child: ChildService): Promise<RunningService> {
  const info = await child.started
  return { child, info, address: String(info.url ?? info.address) }
}

/**
 * Starts one service through the CLI and resolves once it reported its address. No teardown: the
 * caller kills it (bench/replication.ts; tests use `startService`).
 */
export async function launchService(
  name: string,
  args: string[],
  options: LaunchOptions = {},
): Promise<RunningService> {
  const child = spawnService(name, args, options)
  try {
    return await started(child)
  } catch (err) {
    if (child.proc.exitCode === null && child.proc.signalCode === null) child.proc.kill('SIGKILL')
    throw err
  }
}

/** Starts one service through the CLI, stopped (SIGKILL if need be) at the test's teardown. */
export async function startService(
  t: Test,
  name: string,
  args: string[],
  launcher?: readonly string[],
): Promise<RunningService> {
  const child = spawnService(name, args, { launcher })
  t.teardown(async () => {
    if (child.proc.exitCode === null && child.proc.signalCode === null) child.proc.kill('SIGKILL')
    await child.exited
  })
  return started(child)
}

/** A metaserver's CLI arguments: heartbeats every 500 ms, a group silent for 3 s is failed over. */
export function metaserverArgs(dataDir: string, port = 0): string[] {
  return [
    'metaserver',
    '--port',
    String(port),
    '--data-dir',
    dataDir,
    '--heartbeat-timeout-ms',
    '3000',
    '--heartbeat-interval-ms',
    '500',
  ]
}

export async function startMetaserver(t: Test, dataDir: string, port = 0): Promise<RunningService> {
  return startService(t, 'metaserver', metaserverArgs(join(dataDir, 'metaserver'), port))
}

/**
 * CLI arguments of a replicated `kind` server `name` of group `group` (data dir `<dir>/<name>`):
 * fetches wait 200 ms, a slave is out of sync after 1.5 s; `extra` goes before those two.
 */
function replicatedArgs(
  kind: 'broker' | 'delay',
  group: string,
  dir: string,
  name: string,
  meta: string,
  role: 'master' | 'slave',
  port: number,
  extra: string[],
): string[] {
  return [
    kind,
    '--group',
    group,
    '--role',
    role,
    '--port',
    String(port),
    '--data-dir',
    join(dir, name),
    '--metaserver',
    meta,
    ...extra,
    '--replication-fetch-wait-ms',
    '200',
    '--replication-in-sync-lag-ms',
    '1500',
  ]
}

/**
 * CLI arguments of broker `name` of replicated group g1 (data dir `<dir>/<name>`): fetches wait
 * 200 ms, a slave is out of sync after 1.5 s (test/e2e/replication-kill.fault.ts, bench/replication.ts).
 */
export function replicatedBrokerArgs(
  dir: string,
  name: string,
  meta: string,
  role: 'master' | 'slave',
  port = 0,
): string[] {
  return replicatedArgs('broker', 'g1', dir, name, meta, role, port, ['--http-port', '-1'])
}

/**
 * CLI arguments of delay server `name` of replicated delay group d1 (data dir `<dir>/<name>`): as
 * replicatedBrokerArgs, with 1-minute buckets and a checkpoint every 500 ms
 * (test/e2e/delay-replication-kill.fault.ts).
 */
export function replicatedDelayArgs(
  dir: string,
  name: string,
  meta: string,
  role: 'master' | 'slave',
  port = 0,
): string[] {
  return replicatedArgs('delay', 'd1', dir, name, meta, role, port, [
    '--bucket-minutes',
    '1',
    '--checkpoint-interval-ms',
    '500',
  ])
}

/** Polls `cond` every 100 ms until it holds; throws `timed out waiting for <what>` after `timeoutMs`. */
export async function until(
  what: string,
  cond: () => Promise<boolean> | boolean,
  timeoutMs = 20_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 100))
  }
}

async function startGroup(
  t: Test,
  kind: 'broker' | 'delay',
  dataDir: string,
  group: string,
  meta: string,
  port: number,
): Promise<RunningService> {
  const args = [
    kind,
    '--group',
    group,
    '--port',
    String(port),
    '--data-dir',
    join(dataDir, group),
    '--metaserver',
    meta,
  ]
  if (kind === 'broker') args.push('--http-port', '-1')
  return startService(t, group, args)
}

export function startBroker(
  t: Test,
  dataDir: string,
  group: string,
  meta: string,
  port = 0,
): Promise<RunningService> {
  return startGroup(t, 'broker', dataDir, group, meta, port)
}

export function startDelay(
  t: Test,
  dataDir: string,
  group: string,
  meta: string,
  port = 0,
): Promise<RunningService> {
  return startGroup(t, 'delay', dataDir, group, meta, port)
}

/** The port a service bound (to restart it on the same address). */
export function portOf(s: RunningService): number {
  return Number(s.address.slice(s.address.lastIndexOf(':') + 1))
}

export async function kill9(s: RunningService): Promise<void> {
  s.child.proc.kill('SIGKILL')
  await s.child.exited
}

export { stopChildService }
