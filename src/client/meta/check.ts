import { QmqError, toQmqError } from '../../common/errors'
import type { MetaClient } from '../../common/meta/meta-client'

/**
 * A client's start-up check: one `GET /meta/address` on the configured discovery URL (bounded by the
 * MetaClient's request timeout, no retries). A wrong URL or a metaserver that is down then fails
 * `init()` at once, naming the URL and the cause, instead of surfacing as QMQ_ERR_METASERVER_UNAVAILABLE
 * `firstLookupTimeoutMs` into the first send.
 */
export async function checkMetaServer(meta: MetaClient, url: string, component: string): Promise<void> {
  try {
    await meta.getAddresses()
  } catch (err) {
    const e = toQmqError(err)
    throw new QmqError(
      'QMQ_ERR_METASERVER_UNAVAILABLE',
      `${component}: the metaserver at ${url} did not answer (${e.code}: ${e.message}); check metaServer, ` +
        'or pass checkMetaServerOnInit: false to start without it',
      { cause: e, details: { url } },
    )
  }
}
