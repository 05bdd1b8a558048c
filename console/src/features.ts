import { query, isMissingEndpoint } from './query'

/**
 * What the metaserver serves beyond the base console: the message query and history API
 * (docs/query.md). Probed once per page load with a history request over an empty minute: a
 * metaserver without the API answers "no such endpoint" (404); any other answer means it is there.
 */
export interface Features {
  messageQuery: boolean
  history: boolean
}

let cached: Promise<Features> | undefined
export function features(): Promise<Features> {
  cached ??= query.history({ subject: 'qmq.console.probe', from: 0, to: 60_000 }).then(
    () => ({ messageQuery: true, history: true }),
    (err: unknown) => {
      const there = !isMissingEndpoint(err)
      return { messageQuery: there, history: there }
    },
  )
  return cached
}
