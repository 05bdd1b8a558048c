import type { Test } from 'tap'
import { silentLogger } from '../../../src/common/logger'
import { Broker, type BrokerDeps, type BrokerOptions } from '../../../src/broker/broker'
import { testDir } from '../../helpers/testdir'

export interface StartedBroker {
  broker: Broker
  port: number
  dataDir: string
}

export async function startBroker(
  t: Test,
  options: Partial<BrokerOptions> = {},
  deps: Partial<BrokerDeps> = {},
): Promise<StartedBroker> {
  // testDir: tap removes a plain t.testdir() before the teardown below closes the broker writing in it.
  const dataDir = options.dataDir ?? testDir(t)
  const broker = new Broker({ port: 0, httpPort: -1, ...options, dataDir }, { logger: silentLogger, ...deps })
  const { port } = await broker.start()
  t.teardown(() => broker.close())
  return { broker, port, dataDir }
}
