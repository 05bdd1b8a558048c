import { execFile, spawnSync } from 'node:child_process'
import { chownSync, existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

/**
 * A real PostgreSQL server for tests, in a temp directory on a free port: initdb, then
 * `pg_ctl start`; `stop()`/`start()` take it down and up again on the same port (for outage tests);
 * `close()` stops it and removes the directory. Trust authentication for user `postgres`, TCP on
 * 127.0.0.1 and a unix socket in the temp directory; fsync off (tests, not durability).
 *
 * PostgreSQL refuses to run as root: under root the binaries run as the `postgres` OS user (the
 * Debian package creates it). The binaries come from PATH, else /usr/lib/postgresql/<v>/bin.
 */
export interface Postgres {
  port: number
  /** `postgresql://postgres@127.0.0.1:<port>/postgres` */
  url: string
  dir: string
  stop(): Promise<void>
  start(): Promise<void>
  close(): Promise<void>
}

function binDir(): string {
  const onPath = spawnSync('sh', ['-c', 'command -v initdb'], { encoding: 'utf8' }).stdout.trim()
  if (onPath !== '') return join(onPath, '..')
  const base = '/usr/lib/postgresql'
  if (existsSync(base)) {
    const versions = readdirSync(base).sort((a, b) => Number(b) - Number(a))
    for (const v of versions) if (existsSync(join(base, v, 'bin', 'initdb'))) return join(base, v, 'bin')
  }
  throw new Error('PostgreSQL server binaries (initdb, pg_ctl) not found: install the postgresql package')
}

function osUser(): { uid: number; gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined
  const uid = Number(spawnSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).stdout.trim())
  const gid = Number(spawnSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).stdout.trim())
  if (!Number.isInteger(uid) || !Number.isInteger(gid) || uid <= 0)
    throw new Error('running as root and there is no postgres OS user to run PostgreSQL as')
  return { uid, gid }
}

function run(bin: string, args: string[], user: { uid: number; gid: number } | undefined): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(
      bin,
      args,
      { ...(user ?? {}), cwd: '/', timeout: 60_000, env: { ...process.env, LC_ALL: 'C' } },
      (err, stdout, stderr) => {
        if (err) reject(new Error(`${bin} ${args.join(' ')} failed: ${err.message}\n${stdout}\n${stderr}`))
        else resolve(stdout)
      },
    )
  })
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer()
    s.once('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const addr = s.address()
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0
      s.close(() => resolve(port))
    })
  })
}

export async function startPostgres(): Promise<Postgres> {
  const bin = binDir()
  const user = osUser()
  const dir = mkdtempSync(join(tmpdir(), 'qmq-pg-'))
  if (user !== undefined) chownSync(dir, user.uid, user.gid)
  const data = join(dir, 'data')
  const log = join(dir, 'postgres.log')
  await run(
    join(bin, 'initdb'),
    ['-D', data, '-U', 'postgres', '--auth=trust', '-E', 'UTF8', '--no-sync'],
    user,
  )
  const port = await freePort()
  writeFileSync(
    join(data, 'postgresql.auto.conf'),
    [
      `port = ${port}`,
      "listen_addresses = '127.0.0.1'",
      `unix_socket_directories = '${dir}'`,
      'fsync = off',
      'synchronous_commit = off',
      'full_page_writes = off',
      'max_connections = 100',
      '',
    ].join('\n'),
  )
  if (user !== undefined) chownSync(join(data, 'postgresql.auto.conf'), user.uid, user.gid)
  const pgCtl = join(bin, 'pg_ctl')
  let up = false
  const pg: Postgres = {
    port,
    url: `postgresql://postgres@127.0.0.1:${port}/postgres`,
    dir,
    async start() {
      await run(pgCtl, ['-D', data, '-l', log, '-w', '-t', '60', 'start'], user)
      up = true
    },
    async stop() {
      await run(pgCtl, ['-D', data, '-m', 'fast', '-w', '-t', '60', 'stop'], user)
      up = false
    },
    async close() {
      if (up)
        await pg.stop().catch(() => run(pgCtl, ['-D', data, '-m', 'immediate', 'stop'], user).catch(() => {}))
      rmSync(dir, { recursive: true, force: true })
    },
  }
  // A test process that dies without its teardown (a crash, tap's timeout) still stops the server.
  const onExit = () => {
    if (up) spawnSync(pgCtl, ['-D', data, '-m', 'immediate', 'stop'], { ...(user ?? {}), cwd: '/' })
    rmSync(dir, { recursive: true, force: true })
  }
  process.once('exit', onExit)
  const close = pg.close
  pg.close = async () => {
    process.off('exit', onExit)
    await close()
  }
  try {
    await pg.start()
  } catch (err) {
    process.off('exit', onExit)
    rmSync(dir, { recursive: true, force: true })
    throw err
  }
  return pg
}
