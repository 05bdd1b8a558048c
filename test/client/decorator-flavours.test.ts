import { writeFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import t from 'tap'
import ts from 'typescript'

// Issue 19 item 6: @QmqConsumer works as a TC39 standard decorator and as a legacy one
// (`experimentalDecorators: true`, NestJS's default): the same file compiles without errors under
// both settings, and the compiled code registers the handler bound to its instance.

const DECORATORS = resolve(__dirname, '../../src/client/consumer/decorators')

const SOURCE = `
import { consumerBindings, QmqConsumer } from ${JSON.stringify(DECORATORS)}

class Seen {
  readonly got: string[] = []
}

export class OrderListener {
  readonly seen = new Seen()
  @QmqConsumer({ subject: 'order.created', consumerGroup: 'billing' })
  async onCreated(message: { getMessageId(): string }): Promise<void> {
    this.seen.got.push('created:' + message.getMessageId())
  }

  @QmqConsumer({ subject: 'order.paid', consumerGroup: 'billing', maxRetries: 3 })
  onPaid(message: { getMessageId(): string }): void {
    this.seen.got.push('paid:' + message.getMessageId())
  }

  notAHandler(): void {}
}

export class Sub extends OrderListener {}

export async function check(): Promise<{ names: string[]; subjects: string[]; got: string[]; sub: number }> {
  const listener = new OrderListener()
  const bindings = consumerBindings(listener)
  for (const b of bindings) await b.handler({ getMessageId: () => 'm1' } as never)
  return {
    names: bindings.map((b) => b.name),
    subjects: bindings.map((b) => b.options.subject),
    got: listener.seen.got,
    sub: consumerBindings(new Sub()).length,
  }
}
`

for (const experimentalDecorators of [false, true]) {
  t.test(
    `@QmqConsumer compiles and registers with experimentalDecorators: ${experimentalDecorators}`,
    async (t) => {
      const dir = t.testdir()
      const file = join(dir, 'listener.ts')
      writeFileSync(file, SOURCE)
      const program = ts.createProgram([file], {
        target: ts.ScriptTarget.ES2022,
        module: ts.ModuleKind.CommonJS,
        moduleResolution: ts.ModuleResolutionKind.Node10,
        strict: true,
        esModuleInterop: true,
        experimentalDecorators,
        skipLibCheck: true,
        types: ['node'],
        typeRoots: [resolve(__dirname, '../../node_modules/@types')],
      })
      const diagnostics = ts
        .getPreEmitDiagnostics(program)
        .map((d) => `TS${d.code}: ${ts.flattenDiagnosticMessageText(d.messageText, '\n')}`)
      t.same(diagnostics, [], 'no compile errors')
      const source = program.getSourceFile(file)
      let js = ''
      const emitted = program.emit(source, (name, text) => {
        if (name.endsWith('listener.js')) js = text
      })
      t.equal(emitted.emitSkipped, false)
      writeFileSync(join(dir, 'listener.js'), js)
      const compiled = require(join(dir, 'listener.js')) as {
        check(): Promise<{ names: string[]; subjects: string[]; got: string[]; sub: number }>
      }
      const r = await compiled.check()
      t.same(r.subjects.sort(), ['order.created', 'order.paid'])
      t.same(r.names.sort(), ['OrderListener.onCreated', 'OrderListener.onPaid'])
      t.same(r.got.sort(), ['created:m1', 'paid:m1'], 'handlers ran bound to the instance')
      t.equal(r.sub, 2, 'a subclass instance inherits the handlers')
    },
  )
}

t.test('@QmqConsumer called in neither shape says how it is used', async (t) => {
  const { QmqConsumer } = require(DECORATORS) as typeof import('../../src/client/consumer/decorators')
  const decorate = QmqConsumer({ subject: 'a.b', consumerGroup: 'g' }) as unknown as (
    ...args: unknown[]
  ) => void
  t.throws(() => decorate(class {}, undefined), /method/)
  // A legacy decorator on a static method gets the constructor as target.
  class K {
    static m(): void {}
    n(): void {}
  }
  t.throws(() => decorate(K, 'm', Object.getOwnPropertyDescriptor(K, 'm')), /instance method/)
})
