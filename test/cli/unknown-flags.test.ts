import t from 'tap'
import { flagsHelp, parseArgs } from '../../src/cli/args'
import { COMMANDS, run } from '../../src/cli/main'

// Issue 19 item 2: a mistyped flag is refused (exit 2, with the closest known flag), never ignored;
// so is an invalid QMQ_LOG_LEVEL, and a mistyped QMQ_* variable gets a warning.

/** Runs the CLI in this process with `env` set, capturing what it writes to stderr. */
async function cli(argv: string[], env: Record<string, string> = {}): Promise<{ code: number; err: string }> {
  const saved: Record<string, string | undefined> = {}
  for (const [k, v] of Object.entries(env)) {
    saved[k] = process.env[k]
    process.env[k] = v
  }
  let err = ''
  const write = process.stderr.write.bind(process.stderr)
  process.stderr.write = ((chunk: string | Uint8Array) => {
    err += String(chunk)
    return true
  }) as typeof process.stderr.write
  try {
    const code = await Promise.race([
      run(argv),
      new Promise<number>((r) => setTimeout(() => r(-1), 20_000).unref()),
    ])
    return { code, err }
  } finally {
    process.stderr.write = write
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k]
      else process.env[k] = v
    }
  }
}

// Nothing listens there: a command that got past its flags fails on the network, with exit 1.
const NOWHERE = 'http://127.0.0.1:1'

t.test('cli - qmq send with mistyped flags is refused before anything is sent', async (t) => {
  const r = await cli([
    'send',
    'typo.test',
    '--dealy',
    '1h',
    '--propery',
    'orderId=1',
    '--metaserver',
    NOWHERE,
  ])
  t.equal(r.code, 2, r.err)
  t.match(r.err, /unknown flag --dealy \(did you mean --delay\?\)/)
  const json = await cli(['send', 'typo.test', '--jsn', '--metaserver', NOWHERE])
  t.equal(json.code, 2, json.err)
  t.match(json.err, /unknown flag --jsn \(did you mean --json\?\)/)
})

t.test('cli - every command refuses an unknown flag with exit 2', async (t) => {
  for (const c of COMMANDS) {
    const dir = t.testdir()
    // Service commands get a data dir and port 0 so that, if the flag were ignored, nothing collides.
    const argv = ['metaserver', 'broker', 'delay'].includes(c.name)
      ? [c.name, '--bogus-flag', 'x', '--data-dir', dir, '--port', '0', '--group', 'g1']
      : c.name === 'dev'
        ? [c.name, '--bogus-flag', 'x', '--data-dir', dir]
        : [c.name, 'some.subject', 'some-group', '--bogus-flag', 'x', '--group', 'g', '--metaserver', NOWHERE]
    const r = await cli(argv)
    t.equal(r.code, 2, `${c.name}: ${r.err}`)
    t.match(r.err, /--bogus-flag/, c.name)
  }
})

t.test('cli - a bad service flag value exits 2', async (t) => {
  const r = await cli(['broker', '--port', 'abc', '--data-dir', t.testdir(), '--group', 'g1'])
  t.equal(r.code, 2, r.err)
  t.match(r.err, /--port/)
})

t.test('cli - an invalid QMQ_LOG_LEVEL is refused; a mistyped QMQ_* variable is named', async (t) => {
  const r = await cli(['subjects', '--metaserver', NOWHERE], { QMQ_LOG_LEVEL: 'verbose' })
  t.equal(r.code, 2, r.err)
  t.match(r.err, /QMQ_LOG_LEVEL/)
  t.match(r.err, /trace, debug, info, warn, error, fatal, silent/)
  const typo = await cli(['subjects', '--metaserver', NOWHERE], { QMQ_METASERVR: 'http://x' })
  t.match(typo.err, /QMQ_METASERVR.*did you mean QMQ_METASERVER\?/)
  const svc = await cli(['broker', '--port', 'abc', '--data-dir', t.testdir(), '--group', 'g1'], {
    QMQ_BROKER_SEGMNT_BYTES: '1000',
  })
  t.match(svc.err, /QMQ_BROKER_SEGMNT_BYTES.*did you mean QMQ_BROKER_SEGMENT_BYTES\?/)
  // The cluster secret's variable is shared by every service: never reported as a typo.
  const delay = await cli(['delay', '--port', 'abc', '--data-dir', t.testdir()], {
    QMQ_CLUSTER_SECRET: 'a-cluster-secret-of-enough-length',
  })
  t.notMatch(delay.err, /QMQ_CLUSTER_SECRET/, 'no warning about QMQ_CLUSTER_SECRET')
})

t.test(
  'cli - QMQ_<SERVICE>_CLUSTER_SECRET is not listed as read, and setting it is warned about',
  async (t) => {
    const command = COMMANDS.find((c) => c.name === 'broker')
    t.notOk(
      command?.envNames?.().includes('QMQ_BROKER_CLUSTER_SECRET'),
      'not among the variables broker reads',
    )
    t.ok(command?.envNames?.().includes('QMQ_BROKER_SEGMENT_BYTES'), 'its other options are')
    for (const [service, variable] of [
      ['broker', 'QMQ_BROKER_CLUSTER_SECRET'],
      ['delay', 'QMQ_DELAY_CLUSTER_SECRET'],
      ['metaserver', 'QMQ_METASERVER_CLUSTER_SECRET'],
    ] as const) {
      const r = await cli([service, '--port', 'abc', '--data-dir', t.testdir()], {
        [variable]: 'a-cluster-secret-of-enough-length',
      })
      t.equal(r.code, 2, `${service}: the bad --port still fails`)
      t.match(
        r.err,
        new RegExp(`warning: ignoring ${variable}: a secret is read only from QMQ_CLUSTER_SECRET`),
        `${service}: says ${variable} is ignored and where the secret is read from`,
      )
    }
  },
)

t.test('cli args - a flag table drives parsing and help alike', async (t) => {
  const table = [
    { name: 'delay', value: 'DURATION', doc: 'deliver later' },
    { name: 'tag', value: 'T', repeatable: true, doc: 'a tag' },
    { name: 'json', doc: 'print JSON' },
  ]
  t.same(parseArgs(['s', '--delay', '1h', '--tag', 'a', '--tag=b', '--json'], { flags: table }).flags, {
    delay: '1h',
    tag: ['a', 'b'],
    json: true,
  })
  t.same(parseArgs(['--no-json'], { flags: table }).flags, { json: false })
  t.throws(() => parseArgs(['--no-delay'], { flags: table }), { code: 'QMQ_ERR_USAGE' })
  t.throws(() => parseArgs(['--json=yes'], { flags: table }), { code: 'QMQ_ERR_USAGE' })
  t.throws(() => parseArgs(['--zzz'], { flags: table }), { message: 'unknown flag --zzz' })
  const help = flagsHelp(table)
  for (const f of table) t.match(help, `--${f.name}`)
})
