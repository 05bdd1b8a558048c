import { randomBytes } from 'node:crypto'
import { hostname } from 'node:os'

/** Default client / consumer id: `hostname@pid@random`, unique per process start. */
export function defaultClientId(): string {
  const host = hostname().replace(/[^\w.-]/g, '_') || 'host'
  return `${host}@${process.pid}@${randomBytes(4).toString('hex')}`
}

/** Default broadcast instance name: stable across restarts of the same host (set `instanceName` in containers). */
export function defaultInstanceName(): string {
  return hostname().replace(/[^\w.-]/g, '_') || 'host'
}
