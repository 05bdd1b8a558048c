import { api, type DelayGroupRow } from '../api'
import { chart } from '../chart'
import { h, notice, num, table, time } from '../dom'

export async function delayPage(main: HTMLElement): Promise<void> {
  const { groups } = await api.delayGroups()
  main.append(h('h1', {}, 'Delay groups'))
  if (groups.length === 0) {
    main.append(notice('info', 'No delay group has registered.', 'delay-empty'))
    return
  }
  for (const g of groups) main.append(group(g))
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
    buckets.length > 0
      ? chart(
          'Pending messages by hour (due time)',
          buckets.map((b) => new Date(b.start).toISOString().slice(5, 13).replace('T', ' ')),
          [{ name: 'pending', color: '#2458d6', values: buckets.map((b) => b.pending) }],
          'delay-chart',
        )
      : null,
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
