import { api } from './api'

/** What the metaserver serves beyond the base console (asked once per page load). */
export interface Features {
  messageQuery: boolean
  history: boolean
}

let cached: Promise<Features> | undefined
export function features(): Promise<Features> {
  cached ??= api.overview().then((o) => o.features)
  return cached
}
