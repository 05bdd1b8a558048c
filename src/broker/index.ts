/** The broker's public surface: the in-process Broker and its options (the CLI maps flags onto them). */
export {
  Broker,
  type BrokerAddresses,
  type BrokerDeps,
  type BrokerOptions,
  brokerOptionsSchema,
  type StoreFactoryContext,
  storeOptionsOf,
} from './broker'
export type { BrokerHealth } from './server/http-server'
export {
  type BrokerServerOptions,
  brokerServerOptionsSchema,
  DEFAULT_BROKER_HTTP_PORT,
  DEFAULT_BROKER_PORT,
} from './server/options'
