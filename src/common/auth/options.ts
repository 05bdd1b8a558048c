import { boolean, integer, type OptionsSchema } from '../config'
import { DEFAULT_AUTH_REFRESH_MS } from './refresher'

/** Application authentication of a broker or delay server (docs/security.md). */
export interface AuthOptions {
  /** Require AUTH (appCode + token, or the cluster secret) on the TCP port, and check permissions. */
  auth: boolean
  /** How often the credentials are asked of the metaserver (a revocation takes effect within it). */
  authRefreshMs: number
}

export const authOptionsSchema: OptionsSchema<AuthOptions> = {
  auth: boolean({
    default: false,
    doc: 'Require applications to authenticate (appCode + token from the metaserver) and check their permissions; needs --metaserver and the cluster secret',
  }),
  authRefreshMs: integer({
    default: DEFAULT_AUTH_REFRESH_MS,
    min: 100,
    max: 600_000,
    doc: 'How often credentials are refreshed from the metaserver (revocations take effect within it)',
  }),
}
