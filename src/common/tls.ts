import { readFileSync, unwatchFile, watchFile } from 'node:fs'
import type { Server as HttpsServer } from 'node:https'
import type { ConnectionOptions as TlsConnectOptions, Server as TlsServer, TlsOptions } from 'node:tls'
import { boolean, type OptionsSchema, optionalString } from './config'
import { QmqError } from './errors'
import type { Logger } from './logger'

/**
 * TLS of a qmq service: one certificate and key serve every listener of the process (the broker's and
 * the delay server's TCP port, the metaserver's and every service's HTTP port), and the same files make
 * the service a TLS client of its peers (heartbeats to the metaserver, the delay server's SENDs to
 * brokers): `tlsCaFile` is what it trusts, its certificate is what it shows when a peer asks for one.
 *
 * - `tlsCertFile` + `tlsKeyFile` (PEM) turn TLS on; one without the other is a configuration error.
 * - `tlsCaFile` (PEM, may hold several certificates): the authorities this service trusts as a client
 *   (a private CA). With `tlsRequireClientCert`, every listener also requires a client certificate
 *   signed by one of them (mTLS): a client without one is refused during the handshake, before any qmq
 *   frame is read.
 * - Reload without a restart: the files are polled (fs.watchFile, every `TLS_WATCH_INTERVAL_MS`) and
 *   re-read on SIGHUP; a change is applied with `server.setSecureContext()` to every listener. New
 *   connections get the new certificate, open ones keep theirs. A file that cannot be read or a key that
 *   does not match its certificate is logged and the previous context stays in use.
 */
export const TLS_WATCH_INTERVAL_MS = 1_000

export interface TlsFileOptions {
  tlsCertFile: string | undefined
  tlsKeyFile: string | undefined
  tlsCaFile: string | undefined
  tlsRequireClientCert: boolean
}

export const tlsFileSchema: OptionsSchema<TlsFileOptions> = {
  tlsCertFile: optionalString({
    doc: 'PEM certificate (chain) of this service; with --tls-key-file turns TLS on for every port it listens on',
  }),
  tlsKeyFile: optionalString({ doc: 'PEM private key of --tls-cert-file' }),
  tlsCaFile: optionalString({
    doc: 'PEM CA bundle this service trusts: the certificates of its peers (metaserver, brokers) and, with --tls-require-client-cert, of its clients',
  }),
  tlsRequireClientCert: boolean({
    default: false,
    doc: 'mTLS: every listener requires a client certificate signed by --tls-ca-file',
  }),
}

/** Problems of a TLS file set (for the services' option checks). */
export function tlsProblems(o: TlsFileOptions): string[] {
  if ((o.tlsCertFile === undefined) !== (o.tlsKeyFile === undefined))
    return ['tlsCertFile and tlsKeyFile go together (both or neither)']
  if (o.tlsRequireClientCert && (o.tlsCaFile === undefined || o.tlsCertFile === undefined))
    return [
      'tlsRequireClientCert needs tlsCaFile (the CA of client certificates) and tlsCertFile + tlsKeyFile',
    ]
  return []
}

export function tlsEnabled(o: TlsFileOptions): boolean {
  return o.tlsCertFile !== undefined && o.tlsKeyFile !== undefined
}

function readPem(what: string, path: string): Buffer {
  try {
    return readFileSync(path)
  } catch (err) {
    throw new QmqError(
      'QMQ_ERR_CONFIG_INVALID',
      `${what} ${path}: cannot read it: ${(err as Error).message}`,
      {
        cause: err,
      },
    )
  }
}

/** The options of `tls.createServer` / `https.createServer` (or of `setSecureContext`) from the files. */
export function serverTlsOptions(o: TlsFileOptions): TlsOptions {
  if (o.tlsCertFile === undefined || o.tlsKeyFile === undefined)
    throw new QmqError('QMQ_ERR_CONFIG_INVALID', 'TLS needs tlsCertFile and tlsKeyFile')
  const out: TlsOptions = {
    cert: readPem('tlsCertFile', o.tlsCertFile),
    key: readPem('tlsKeyFile', o.tlsKeyFile),
    minVersion: 'TLSv1.2',
  }
  if (o.tlsRequireClientCert && o.tlsCaFile !== undefined) {
    out.ca = readPem('tlsCaFile', o.tlsCaFile)
    out.requestCert = true
    out.rejectUnauthorized = true
  }
  return out
}

/** What a client (SDK, CLI, a service talking to its peers) needs to talk TLS. */
export interface ClientTlsOptions {
  /** PEM CA bundle to trust instead of Node's default roots. */
  ca?: string | Buffer
  /** PEM client certificate and key, for servers that require one (mTLS). */
  cert?: string | Buffer
  key?: string | Buffer
  /** Server name checked against the certificate; default: the host connected to. */
  servername?: string
  /** Default true. False accepts any certificate: tests only. */
  rejectUnauthorized?: boolean
}

/** The client side of a service's TLS files: trust the CA, show its own certificate. */
export function clientTlsFromFiles(o: TlsFileOptions): ClientTlsOptions | undefined {
  if (!tlsEnabled(o) && o.tlsCaFile === undefined) return undefined
  // A service with TLS listeners talks TLS to its peers too (they share the cluster's setup).
  const out: ClientTlsOptions = {}
  if (o.tlsCaFile !== undefined) out.ca = readPem('tlsCaFile', o.tlsCaFile)
  if (o.tlsCertFile !== undefined && o.tlsKeyFile !== undefined) {
    out.cert = readPem('tlsCertFile', o.tlsCertFile)
    out.key = readPem('tlsKeyFile', o.tlsKeyFile)
  }
  return out
}

/** tls.connect options for `host:port` from ClientTlsOptions. */
export function tlsConnectOptions(host: string, port: number, o: ClientTlsOptions): TlsConnectOptions {
  const out: TlsConnectOptions = { host, port }
  if (o.ca !== undefined) out.ca = o.ca
  if (o.cert !== undefined) out.cert = o.cert
  if (o.key !== undefined) out.key = o.key
  if (o.rejectUnauthorized === false) out.rejectUnauthorized = false
  // SNI is for names only (an IP address as servername is refused by Node); the certificate is still
  // checked against the IP (subjectAltName IP entries).
  const name = o.servername ?? host
  if (!/^[\d.]+$/.test(name) && !name.includes(':')) out.servername = name
  return out
}

/**
 * The TLS listeners of one process and the reload of their certificate. `attach` each tls.Server or
 * https.Server; `watch()` starts polling the files and listening to SIGHUP; `close()` stops both.
 */
export class ServerTls {
  private readonly servers = new Set<TlsServer | HttpsServer>()
  private watching = false
  private readonly onSighup = () => this.reload('SIGHUP')
  private readonly onFileChange = () => this.reload('file changed')
  /** Reloads applied (for tests and logs). */
  reloads = 0

  constructor(
    readonly files: TlsFileOptions,
    private readonly log: Logger,
  ) {}

  /** Reads the files (throws QMQ_ERR_CONFIG_INVALID when one is unreadable). */
  options(): TlsOptions {
    return serverTlsOptions(this.files)
  }

  attach(server: TlsServer | HttpsServer): void {
    this.servers.add(server)
  }

  detach(server: TlsServer | HttpsServer): void {
    this.servers.delete(server)
  }

  /** Re-reads the files and gives every attached listener the new context; false if that failed. */
  reload(why = 'reload'): boolean {
    let opts: TlsOptions
    try {
      opts = this.options()
      for (const s of this.servers) s.setSecureContext(opts)
    } catch (err) {
      this.log.error(
        { err: (err as Error).message, why },
        'TLS certificate reload failed; the previous certificate stays in use',
      )
      return false
    }
    this.reloads++
    this.log.info({ why, listeners: this.servers.size }, 'TLS certificate reloaded')
    return true
  }

  watch(intervalMs = TLS_WATCH_INTERVAL_MS): void {
    if (this.watching) return
    this.watching = true
    for (const f of this.paths()) watchFile(f, { interval: intervalMs, persistent: false }, this.onFileChange)
    process.on('SIGHUP', this.onSighup)
  }

  close(): void {
    if (!this.watching) return
    this.watching = false
    for (const f of this.paths()) unwatchFile(f, this.onFileChange)
    process.off('SIGHUP', this.onSighup)
  }

  private paths(): string[] {
    const { tlsCertFile, tlsKeyFile, tlsCaFile } = this.files
    return [tlsCertFile, tlsKeyFile, tlsCaFile].filter((p): p is string => p !== undefined)
  }
}

/** `{ tls }` for a service's MetaClient / Connection options, or `{}` without TLS files. */
export function clientTlsOf(o: TlsFileOptions): { tls?: ClientTlsOptions } {
  const tls = clientTlsFromFiles(o)
  return tls === undefined ? {} : { tls }
}

/** Throws QMQ_ERR_CONFIG_INVALID when the TLS files of a service's options do not go together. */
export function checkTlsOptions(service: string, o: TlsFileOptions): void {
  const problems = tlsProblems(o)
  if (problems.length > 0)
    throw new QmqError(
      'QMQ_ERR_CONFIG_INVALID',
      `Invalid ${service} options:\n  - ${problems.join('\n  - ')}`,
      {
        details: { problems },
      },
    )
}
