import { chart } from '../chart'
import { h, notice } from '../dom'
import { features } from '../features'
import { type HistoryPoint, query } from '../query'

/** How far back the charts go. */
export const HISTORY_HOURS = 3
const MINUTE = 60_000

const COLORS = { delivered: '#2458d6', acked: '#067647', nacked: '#b54708', dead: '#c4320a' } as const

/**
 * Per-minute charts of a subject (produced, bytes) and of each of its consumer groups (delivered,
 * acked, nacked, dead) over the last hours, from the servers' history (GET /admin/history).
 */
export async function historySection(q: { subject: string; group?: string }): Promise<HTMLElement> {
  const f = await features()
  if (!f.history)
    return notice(
      'unavailable',
      'Per-minute history is not available: this metaserver does not serve the history API (GET /admin/history).',
      'history-unavailable',
    )
  const to = Math.ceil(Date.now() / MINUTE) * MINUTE
  const from = to - HISTORY_HOURS * 60 * MINUTE
  let answer: Awaited<ReturnType<typeof query.history>>
  try {
    answer = await query.history({ subject: q.subject, consumerGroup: q.group, from, to })
  } catch (err) {
    return notice('error', `History: ${err instanceof Error ? err.message : String(err)}`, 'history-error')
  }
  const minutes: number[] = []
  for (let m = from; m < to; m += MINUTE) minutes.push(m)
  const labels = minutes.map((m) => new Date(m).toISOString().slice(11, 16))
  const index = new Map(minutes.map((m, i) => [m, i]))
  const values = (points: HistoryPoint[], k: keyof HistoryPoint) => {
    const out = new Array<number>(minutes.length).fill(0)
    for (const p of points) {
      const i = index.get(p.minute)
      if (i !== undefined) out[i] = (out[i] ?? 0) + p[k]
    }
    return out
  }
  const subjectPoints = answer.series.filter((s) => s.consumerGroup === '').flatMap((s) => s.points)
  const groups = answer.series.filter((s) => s.consumerGroup !== '')
  return h(
    'div',
    { 'data-testid': 'history-charts' },
    answer.errors.length > 0
      ? notice(
          'unavailable',
          `No history from ${answer.errors.map((e) => `${e.group} (${e.message})`).join(', ')}`,
        )
      : null,
    chart(
      `Produced per minute, last ${HISTORY_HOURS} h (UTC)`,
      labels,
      [{ name: 'produced', color: '#2458d6', values: values(subjectPoints, 'produced') }],
      'history-produced',
    ),
    chart(
      'Bytes produced per minute',
      labels,
      [{ name: 'bytes', color: '#667085', values: values(subjectPoints, 'bytes') }],
      'history-bytes',
    ),
    groups.map((g) =>
      chart(
        `Consumer group ${g.consumerGroup}`,
        labels,
        (Object.keys(COLORS) as (keyof typeof COLORS)[]).map((k) => ({
          name: k,
          color: COLORS[k],
          values: values(g.points, k),
        })),
        'history-group',
      ),
    ),
  )
}

/**
 * Per-minute counts of one delay group over the last hours (GET /admin/history?server=<group>):
 * scheduled (its `produced`), dispatched to a broker (`delivered`), parked as dead letters (`dead`).
 */
export async function delayHistorySection(group: string): Promise<HTMLElement | null> {
  const f = await features()
  if (!f.history) return null
  const to = Math.ceil(Date.now() / MINUTE) * MINUTE
  const from = to - HISTORY_HOURS * 60 * MINUTE
  let answer: Awaited<ReturnType<typeof query.history>>
  try {
    answer = await query.history({ server: group, from, to })
  } catch (err) {
    return notice('error', `History of ${group}: ${err instanceof Error ? err.message : String(err)}`)
  }
  const labels: string[] = []
  const index = new Map<number, number>()
  for (let m = from; m < to; m += MINUTE) {
    index.set(m, labels.length)
    labels.push(new Date(m).toISOString().slice(11, 16))
  }
  const sum = (k: 'produced' | 'delivered' | 'dead') => {
    const out = new Array<number>(labels.length).fill(0)
    for (const s of answer.series)
      for (const p of s.points) {
        const i = index.get(p.minute)
        if (i !== undefined) out[i] = (out[i] ?? 0) + p[k]
      }
    return out
  }
  return chart(
    `Per minute, last ${HISTORY_HOURS} h (UTC)`,
    labels,
    [
      { name: 'scheduled', color: '#2458d6', values: sum('produced') },
      { name: 'dispatched', color: '#067647', values: sum('delivered') },
      { name: 'dead', color: '#c4320a', values: sum('dead') },
    ],
    'delay-history',
  )
}
