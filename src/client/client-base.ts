import { EventEmitter } from 'node:events'
import type { Registry } from 'prom-client'
import { type Logger, silentLogger } from '../common/logger'
import type { ClientEventMap, ClientEventSink } from './events'

/** What the providers take besides their options. */
export interface ClientExtras {
  logger?: Logger
  /**
   * A prom-client Registry (e.g. prom-client's default `register`) to put the client's metrics on:
   * `qmq_client_*` (docs/client.md). Without one the client keeps no metrics.
   */
  registry?: Registry
}

/**
 * What MessageProducerProvider and MessageConsumerProvider share before init(): the options as given
 * (checked at init), QMQ's setters for them, and the logger.
 */
export abstract class ClientBase {
  /**
   * Instrumentation events (events.ts): `provider.events.on('connect' | 'disconnect' | 'retry' |
   * 'routeChange', listener)`. An emitter of its own, not the provider: `addListener` is QMQ's.
   */
  readonly events = new EventEmitter<ClientEventMap>()

  /** Options as given; init() validates them. */
  protected readonly input: Record<string, unknown>
  protected readonly log: Logger
  /** Where the client's metrics go (metrics.ts); none without one. */
  protected readonly registry: Registry | undefined

  protected constructor(options: ClientExtras & object, component: string) {
    const { logger, registry, ...rest } = options
    this.input = { ...rest }
    this.log = (logger ?? silentLogger).child({ component })
    this.registry = registry
  }

  /** Emits an instrumentation event (events.ts); a throwing listener is logged, never propagated. */
  protected readonly emitEvent: ClientEventSink = (name, ...args) => {
    if (this.events.listenerCount(name) === 0) return
    try {
      ;(this.events.emit as (n: string, ...a: unknown[]) => boolean)(name, ...args)
    } catch (err) {
      this.log.error(err as Error, `a '${name}' event listener threw`)
    }
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
