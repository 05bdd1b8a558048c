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

/** `launcher`: a command prefix to run it through (`ip netns exec NS`: in a network namespace). */
export async function startService(
  t: Test,
  name: string,
  args: string[],
  launcher?: readonly string[],
): Promise<RunningService> {
  const env = { [CLUSTER_SECRET_ENV]: CLUSTER_SECRET }
  const child = startChildService(name, args, {
    env,
    ...(echo ? { onLine: echo } : {}),
    ...(launcher ? { launcher } : {}),
  })
  t.teardown(async () => {
    if (child.proc.exitCode === null && child.proc.signalCode === null) child.proc.kill('SIGKILL')
    await child.exited
  })
  const info = await child.started
  const address = String(info.url ?? info.address)
  return { child, info, address }
}

export async function startMetaserver(t: Test, dataDir: string, port = 0): Promise<RunningService> {
  return startService(t, 'metaserver', [
    'metaserver',
    '--port',
    String(port),
    '--data-dir',
    join(dataDir, 'metaserver'),
    '--heartbeat-timeout-ms',
    '3000',
    '--heartbeat-interval-ms',
    '500',
  ])
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
