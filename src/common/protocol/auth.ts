import { MAX_APP_CODE_BYTES } from '../auth/credentials'
import { QmqError } from '../errors'
import { PayloadReader, PayloadWriter } from './buffer'
import { MAX_TOKEN_BYTES } from './commands'

// ---------------------------------------------------------------------------------------------
// AUTH request (broker and delay server; the first frame of a connection when the server requires
// authentication, see docs/security.md)
//   str16 appCode                  at most MAX_APP_CODE_BYTES bytes (CLUSTER_APP for servers)
//   str16 token                    at most MAX_TOKEN_BYTES bytes; the app's token or the cluster secret
// AUTH response: empty (status 0), or an error status (QMQ_ERR_UNAUTHORIZED; QMQ_ERR_BUSY while the
// server has not loaded the credentials yet). Both lengths are checked before their bytes are read;
// the body must be consumed exactly. A second AUTH on a connection is refused.
export const MAX_AUTH_BODY_BYTES = 2 + MAX_APP_CODE_BYTES + 2 + MAX_TOKEN_BYTES

export interface AuthRequest {
  appCode: string
  token: string
}

export function encodeAuthRequest(a: AuthRequest): Buffer {
  if (Buffer.byteLength(a.appCode) > MAX_APP_CODE_BYTES || Buffer.byteLength(a.token) > MAX_TOKEN_BYTES)
    throw new QmqError('QMQ_ERR_INVALID_ARGUMENT', 'appCode or token too long for AUTH')
  return new PayloadWriter(4 + a.appCode.length + a.token.length).str16(a.appCode).str16(a.token).finish()
}

export function decodeAuthRequest(body: Buffer): AuthRequest {
  if (body.length > MAX_AUTH_BODY_BYTES)
    throw new QmqError(
      'QMQ_ERR_PAYLOAD_MALFORMED',
      `AUTH body of ${body.length} bytes (at most ${MAX_AUTH_BODY_BYTES})`,
    )
  const r = new PayloadReader(body)
  const appLen = r.u16('appCode length')
  if (appLen > MAX_APP_CODE_BYTES)
    throw new QmqError(
      'QMQ_ERR_PAYLOAD_MALFORMED',
      `appCode of ${appLen} bytes (at most ${MAX_APP_CODE_BYTES})`,
    )
  r.offset -= 2
  const appCode = r.str16('appCode')
  const tokLen = r.u16('token length')
  if (tokLen > MAX_TOKEN_BYTES)
    throw new QmqError('QMQ_ERR_PAYLOAD_MALFORMED', `token of ${tokLen} bytes (at most ${MAX_TOKEN_BYTES})`)
  r.offset -= 2
  const token = r.str16('token')
  if (r.remaining !== 0)
    throw new QmqError('QMQ_ERR_PAYLOAD_MALFORMED', `${r.remaining} bytes after the AUTH fields`)
  return { appCode, token }
}
