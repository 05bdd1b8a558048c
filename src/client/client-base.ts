import { type Logger, silentLogger } from '../common/logger'

/**
 * What MessageProducerProvider and MessageConsumerProvider share before init(): the options as given
 * (checked at init), QMQ's setters for them, and the logger.
 */
export abstract class ClientBase {
  /** Options as given; init() validates them. */
  protected readonly input: Record<string, unknown>
  protected readonly log: Logger

  protected constructor(options: { logger?: Logger } & object, component: string) {
    const { logger, ...rest } = options
    this.input = { ...rest }
    this.log = (logger ?? silentLogger).child({ component })
  }

  /** QMQ setter; call before init(). */
  setAppCode(appCode: string): void {
    this.input.appCode = appCode
  }

  /** QMQ setter (`http://host:port/meta/address`); call before init(). */
  setMetaServer(metaServer: string): void {
    this.input.metaServer = metaServer
  }
}
