import { execFileSync } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'

/**
 * Certificates for TLS tests, made with the `openssl` command line in a test's temp dir (EC P-256:
 * fast). A CA, and leaf certificates signed by it for 127.0.0.1 / localhost, usable both as server
 * and as client certificates (extendedKeyUsage serverAuth + clientAuth), as docs/security.md shows.
 */
export interface CertFiles {
  cert: string
  key: string
}

export interface TestCa extends CertFiles {
  dir: string
  /** Issues a leaf certificate `name` signed by this CA. */
  issue(name: string): CertFiles
}

function openssl(args: string[], cwd: string): void {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] })
}

export function opensslAvailable(): boolean {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
}

export function makeCa(dir: string, name = 'ca'): TestCa {
  const key = join(dir, `${name}.key`)
  const cert = join(dir, `${name}.crt`)
  openssl(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', key], dir)
  openssl(
    [
      'req',
      '-x509',
      '-new',
      '-key',
      key,
      '-sha256',
      '-days',
      '2',
      '-subj',
      `/CN=qmq test ${name}`,
      '-out',
      cert,
    ],
    dir,
  )
  let serial = 1
  return {
    dir,
    cert,
    key,
    issue(leaf: string): CertFiles {
      const lkey = join(dir, `${leaf}.key`)
      const lcsr = join(dir, `${leaf}.csr`)
      const lcert = join(dir, `${leaf}.crt`)
      const ext = join(dir, `${leaf}.ext`)
      writeFileSync(
        ext,
        'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n',
      )
      openssl(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', lkey], dir)
      openssl(['req', '-new', '-key', lkey, '-subj', `/CN=${leaf}`, '-out', lcsr], dir)
      openssl(
        [
          'x509',
          '-req',
          '-in',
          lcsr,
          '-CA',
          cert,
          '-CAkey',
          key,
          '-set_serial',
          String(++serial + Math.floor(Math.random() * 1e6)),
          '-days',
          '2',
          '-sha256',
          '-extfile',
          ext,
          '-out',
          lcert,
        ],
        dir,
      )
      return { cert: lcert, key: lkey }
    },
  }
}
