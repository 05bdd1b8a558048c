/**
 * The qmq SDK as a NestJS module: the producer and the consumer are providers (inject
 * `MessageProducerProvider` to send), listeners are ordinary providers marked `@QmqListener()` whose
 * `@QmqConsumer` methods the module registers, and Nest's lifecycle starts and closes both providers:
 *   onModuleInit            producer.init() (fails fast when the metaserver does not answer)
 *   onApplicationBootstrap  registers every @QmqListener provider, then consumer.start()
 *   onApplicationShutdown   consumer.close() (running handlers finish, acks flushed), then
 *                           producer.close() (what is queued is sent)
 * `app.enableShutdownHooks()` in main.ts makes SIGTERM / SIGINT run the shutdown hook.
 * In your application, import from 'qmq' instead of '../../src/client'.
 */
import {
  type DynamicModule,
  Injectable,
  Logger,
  Module,
  type OnApplicationBootstrap,
  type OnApplicationShutdown,
  type OnModuleInit,
} from '@nestjs/common'
import { DiscoveryModule, DiscoveryService } from '@nestjs/core'
import {
  type ConsumerInit,
  MessageConsumerProvider,
  MessageProducerProvider,
  type ProducerInit,
} from '../../src/client'

/** Marks a provider whose @QmqConsumer methods QmqModule registers with the consumer provider. */
export const QmqListener = DiscoveryService.createDecorator<void>()

export interface QmqModuleOptions {
  appCode: string
  metaServer: string
  producer?: Omit<ProducerInit, 'appCode' | 'metaServer'>
  consumer?: Omit<ConsumerInit, 'appCode' | 'metaServer'>
}

@Injectable()
export class QmqLifecycle implements OnModuleInit, OnApplicationBootstrap, OnApplicationShutdown {
  private readonly log = new Logger('qmq')

  // Constructor parameters are injected by type: emitDecoratorMetadata records them.
  constructor(
    private readonly producer: MessageProducerProvider,
    private readonly consumer: MessageConsumerProvider,
    private readonly discovery: DiscoveryService,
  ) {}

  async onModuleInit(): Promise<void> {
    await this.producer.init()
  }

  async onApplicationBootstrap(): Promise<void> {
    const listeners = this.discovery
      .getProviders({ metadataKey: QmqListener.KEY })
      .map((wrapper) => wrapper.instance as object | undefined)
      .filter((instance): instance is object => instance !== undefined && instance !== null)
    for (const listener of listeners) this.consumer.register(listener)
    await this.consumer.start()
    this.log.log(`consumer ${this.consumer.consumerId} started with ${listeners.length} listener(s)`)
  }

  async onApplicationShutdown(signal?: string): Promise<void> {
    this.log.log(`shutting down${signal ? ` on ${signal}` : ''}`)
    await this.consumer.close()
    this.log.log('consumer closed')
    await this.producer.close()
    this.log.log('producer closed')
  }
}

@Module({})
export class QmqModule {
  static forRoot(options: QmqModuleOptions): DynamicModule {
    const { appCode, metaServer } = options
    return {
      module: QmqModule,
      global: true,
      imports: [DiscoveryModule],
      providers: [
        {
          provide: MessageProducerProvider,
          useFactory: () => new MessageProducerProvider({ ...options.producer, appCode, metaServer }),
        },
        {
          provide: MessageConsumerProvider,
          useFactory: () => new MessageConsumerProvider({ ...options.consumer, appCode, metaServer }),
        },
        QmqLifecycle,
      ],
      exports: [MessageProducerProvider, MessageConsumerProvider],
    }
  }
}
