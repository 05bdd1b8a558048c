import { type ChildProcess, spawn } from 'node:child_process'
import { createServer, type Socket } from 'node:net'
import { join } from 'node:path'
import type { TestDb } from './helpers'

/** Child processes for the crash tests: the producer fixture, `qmq outbox-watchdog`, a silent metaserver. */
export const root = join(__dirname, '..', '..')
type T = { teardown: (fn: () => unknown) => void }

export function spawnTs(t: T, script: string, args: string[]): ChildProcess {
  const child = spawn(process.execPath, ['--import', 'tsx', script, ...args], {
    cwd: root,
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  })
  return child
}

export function firstLine(child: ChildProcess): Promise<string> {
  return new Promise((resolve, reject) => {
    let out = ''
    let err = ''
    child.stderr?.on('data', (d: Buffer) => {
      err += d.toString()
    })
    child.stdout?.on('data', (d: Buffer) => {
      out += d.toString()
      const nl = out.indexOf('\n')
      if (nl >= 0) resolve(out.slice(0, nl))
    })
    child.once('exit', (code) => reject(new Error(`child exited ${code} before a line: ${out}\n${err}`)))
  })
}

export function watchdogCli(
  t: T,
  db: TestDb,
  metaUrl: string,
  extra: string[] = [],
  env: NodeJS.ProcessEnv = process.env,
): Promise<{ code: number; out: string }> {
  const run = spawn(
    process.execPath,
    [
      join(root, 'bin', 'qmq.js'),
      'outbox-watchdog',
      '--db',
      db.url,
      '--table',
      db.provider.outboxTable,
      '--metaserver',
      metaUrl,
      '--once',
      '--json',
      ...extra,
    ],
    { cwd: root, env, stdio: ['ignore', 'pipe', 'pipe'] },
  )
  t.teardown(() => {
    if (run.exitCode === null) run.kill('SIGKILL')
  })
  let out = ''
  let err = ''
  run.stdout.on('data', (d: Buffer) => {
    out += d.toString()
  })
  run.stderr.on('data', (d: Buffer) => {
    err += d.toString()
  })
  return new Promise((resolve) =>
    run.once('exit', (code) => resolve({ code: code ?? -1, out: code === 0 ? out : out + err })),
  )
}

/** A metaserver address that accepts connections and never answers: sends hang there. */
export async function blackHole(t: T): Promise<string> {
  const sockets = new Set<Socket>()
  const server = createServer((s) => {
    sockets.add(s)
    s.on('error', () => {})
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  t.teardown(
    () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy()
        server.close(() => r())
      }),
  )
  const addr = server.address()
  return `http://127.0.0.1:${typeof addr === 'object' && addr !== null ? addr.port : 0}/meta/address`
}
