import { api, type DelayGroupRow } from '../api'
import { chart } from '../chart'
import { h, notice, num, table, time } from '../dom'
import { delayHistorySection } from './history'

export async function delayPage(main: HTMLElement): Promise<void> {
  const { groups } = await api.delayGroups()
  main.append(h('h1', {}, 'Delay groups'))
  if (groups.length === 0) {
    main.append(notice('info', 'No delay group has registered.', 'delay-empty'))
    return
  }
  for (const g of groups) {
    main.append(group(g))
    const history = g.alive ? await delayHistorySection(g.name) : null
    if (history !== null) main.append(history)
  }
}

function group(g: DelayGroupRow): HTMLElement {
  const buckets = g.buckets ?? []
  return h(
    'section',
    { 'data-testid': 'delay-group' },
    h(
      'h2',
      {},
      `${g.name} `,
      h('span', { class: g.alive ? 'ok' : 'bad' }, g.alive ? 'alive' : 'DOWN'),
      ` · ${num(g.pending)} pending`,
    ),
    g.error !== undefined ? notice('error', `No answer from ${g.name}: ${g.error}`) : null,
    buckets.length > 0 ? hoursChart(buckets) : null,
    table(
      [
        { title: 'Hour (due, UTC)', cell: (b: { start: number }) => time(b.start) },
        { title: 'Pending', num: true, cell: (b: { pending: number }) => num(b.pending) },
      ],
      buckets.filter((b) => b.pending > 0),
      'Nothing pending.',
      'delay-buckets-table',
    ),
  )
}

const HOUR = 3_600_000
/** Hours charted one by one from the current hour; later buckets are summed into one last bar. */
export const CHART_HOURS = 48

/** Pending messages per hour of due time, from this hour on (past-due buckets count in the first). */
function hoursChart(buckets: { start: number; pending: number }[]): HTMLElement {
  const first = Math.floor(Date.now() / HOUR) * HOUR
  const last = Math.max(first, ...buckets.map((b) => b.start))
  const hours = Math.min(CHART_HOURS, Math.floor((last - first) / HOUR) + 1)
  const values = new Array<number>(hours).fill(0)
  let later = 0
  for (const b of buckets) {
    const i = Math.max(0, Math.floor((b.start - first) / HOUR))
    if (i < hours) values[i] = (values[i] ?? 0) + b.pending
    else later += b.pending
  }
  const labels = values.map((_, i) => new Date(first + i * HOUR).toISOString().slice(5, 13).replace('T', ' '))
  if (later > 0) {
    labels.push('later')
    values.push(later)
  }
  return chart(
    'Pending messages by hour of due time (UTC)',
    labels,
    [{ name: 'pending', color: '#2458d6', values }],
    'delay-chart',
  )
}
