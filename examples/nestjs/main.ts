/**
 * A NestJS application (standalone: NestFactory.createApplicationContext, no HTTP platform) with the
 * qmq producer and consumer as providers (qmq.module.ts) and a listener provider (orders.module.ts).
 * It places three orders, bills them as they are consumed, and runs until SIGINT / SIGTERM, when Nest's
 * shutdown hooks close the consumer and then the producer.
 *
 * NestJS compiles with experimentalDecorators and emitDecoratorMetadata (constructor injection by
 * type), which tsx/esbuild does not emit: compile with tsc, then run with node. Against a local cluster
 * (`npx qmq dev`):
 *   npx tsc -p examples/nestjs/tsconfig.json && node examples/nestjs/dist/examples/nestjs/main.js
 * QMQ_META defaults to http://127.0.0.1:8080/meta/address. test/client/nestjs-example.test.ts runs it.
 */
import 'reflect-metadata'
import { Logger, Module } from '@nestjs/common'
import { NestFactory } from '@nestjs/core'
import { Ledger, OrdersModule, OrdersService } from './orders.module'
import { QmqModule } from './qmq.module'

const metaServer = process.env.QMQ_META ?? 'http://127.0.0.1:8080/meta/address'

@Module({ imports: [QmqModule.forRoot({ appCode: 'nest-example', metaServer }), OrdersModule] })
class AppModule {}

async function main(): Promise<void> {
  const app = await NestFactory.createApplicationContext(AppModule)
  app.enableShutdownHooks() // SIGINT / SIGTERM run onApplicationShutdown (QmqLifecycle closes qmq)
  const log = new Logger('main')
  const orders = app.get(OrdersService)
  const ledger = app.get(Ledger)
  const runId = Date.now().toString(36)
  for (let i = 1; i <= 3; i++) await orders.placeOrder(`${runId}-${i}`, 10 * i)
  while (ledger.billed.filter((id) => id.startsWith(runId)).length < 3)
    await new Promise((r) => setTimeout(r, 50))
  log.log('3 orders placed and billed; running until SIGINT / SIGTERM')
}

main().catch((err: unknown) => {
  console.error(err)
  process.exit(1)
})
