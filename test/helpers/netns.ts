import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'

/**
 * Network namespaces and veth links for partition tests (iproute2's `ip`, as root). Every name holds a
 * random id of the run, so two runs never collide; everything made is removed by cleanup(), which also
 * runs when the process exits without calling it (a crashed test leaves no namespace behind).
 */
export class NetnsLab {
  readonly id = randomBytes(3).toString('hex')
  private readonly namespaces: string[] = []
  private readonly rootLinks: string[] = []
  private readonly onExit = () => this.cleanup()

  /**
   * Throws a clear error when namespaces cannot be made here (not root, no iproute2, no
   * CAP_SYS_ADMIN, a container without /run/netns): the test then fails, it does not pass silently.
   */
  static check(): void {
    const probe = `qmqprobe-${randomBytes(3).toString('hex')}`
    try {
      ip('netns', 'list')
      ip('netns', 'add', probe)
      ip('netns', 'del', probe)
    } catch (err) {
      throw new Error(
        `network namespaces are not available (this test needs root and iproute2: \`ip netns add\` must work): ${
          (err as Error).message
        }`,
      )
    }
  }

  constructor() {
    process.once('exit', this.onExit)
  }

  /** A new namespace with its loopback up; returns its name. */
  namespace(role: string): string {
    const name = `qmq-${this.id}-${role}`
    ip('netns', 'add', name)
    this.namespaces.push(name)
    ip('-n', name, 'link', 'set', 'lo', 'up')
    return name
  }

  /**
   * A veth pair between two namespaces (undefined: the root namespace), `a` and `b` its two ends as
   * `ifname`/`cidr`. Both ends are up.
   */
  link(
    a: { ns: string | undefined; ifname: string; cidr: string },
    b: { ns: string | undefined; ifname: string; cidr: string },
  ): void {
    const where = (ns: string | undefined) => (ns === undefined ? [] : ['netns', ns])
    ip(
      'link',
      'add',
      'name',
      a.ifname,
      ...where(a.ns),
      'type',
      'veth',
      'peer',
      'name',
      b.ifname,
      ...where(b.ns),
    )
    for (const end of [a, b]) {
      if (end.ns === undefined) this.rootLinks.push(end.ifname)
      this.in(end.ns, 'addr', 'add', end.cidr, 'dev', end.ifname)
      this.in(end.ns, 'link', 'set', end.ifname, 'up')
    }
  }

  /** `ip [-n ns] args...` */
  in(ns: string | undefined, ...args: string[]): string {
    return ns === undefined ? ip(...args) : ip('-n', ns, ...args)
  }

  /** The command prefix that runs a program in `ns` (it execs the program: same pid). */
  launcher(ns: string): string[] {
    return ['ip', 'netns', 'exec', ns]
  }

  /** Deletes the namespaces (their veths go with them) and the root ends of links. Idempotent. */
  cleanup(): void {
    process.removeListener('exit', this.onExit)
    for (const ifname of this.rootLinks.splice(0)) tryIp('link', 'del', ifname)
    for (const ns of this.namespaces.splice(0)) tryIp('netns', 'del', ns)
  }
}

function ip(...args: string[]): string {
  try {
    return execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
  } catch (err) {
    const e = err as Error & { stderr?: string }
    throw new Error(`ip ${args.join(' ')}: ${(e.stderr ?? '').trim() || e.message}`)
  }
}

function tryIp(...args: string[]): void {
  try {
    ip(...args)
  } catch {
    // already gone
  }
}

/**
 * A /24 of 10.0.0.0/8 that the root namespace uses for nothing (no address, no route in it), so the
 * root end of a link and its routes cannot clash with the machine's own networks or another run's.
 */
export function freeSubnet(): string {
  const used = `${ip('-4', 'addr')}\n${ip('-4', 'route')}`
  for (let i = 0; i < 100; i++) {
    const prefix = `10.${200 + ((randomBytes(1)[0] as number) % 50)}.${randomBytes(1)[0] as number}`
    if (!used.includes(`${prefix}.`) && !used.includes(`${prefix.slice(0, prefix.lastIndexOf('.'))}.0/16`))
      return prefix
  }
  throw new Error('no free 10.x.y.0/24 for the test network')
}
