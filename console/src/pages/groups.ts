import { adminAction } from '../admin'
import { api, type ConsumerGroupRow } from '../api'
import { h, link, num, pager, route, table, partial } from '../dom'

const PAGE = 50

function resetControls(g: ConsumerGroupRow, out: HTMLElement): HTMLElement {
  const where = h(
    'select',
    { 'aria-label': 'reset to', 'data-testid': 'reset-to' },
    h('option', { value: 'earliest' }, 'earliest'),
    h('option', { value: 'latest' }, 'latest'),
    h('option', { value: 'time' }, 'a time…'),
  )
  const at = h('input', { type: 'datetime-local', step: 1, hidden: true, 'aria-label': 'reset time' })
  where.addEventListener('change', () => {
    at.hidden = where.value !== 'time'
  })
  const button = h('button', { class: 'danger', 'data-testid': 'reset-button' }, 'Reset cursor')
  button.addEventListener('click', async () => {
    let to: string | number = where.value
    if (to === 'time') {
      const t = Date.parse(`${at.value}Z`)
      if (!Number.isFinite(t)) {
        at.focus()
        return
      }
      to = t
    }
    const label = typeof to === 'number' ? new Date(to).toISOString() : to
    if (!window.confirm(`Move the cursor of ${g.group} on ${g.subject} to ${label} on every broker group?`))
      return
    button.disabled = true
    await adminAction(out, `Resetting ${g.group} on ${g.subject}`, async () => {
      const r = await api.resetCursor(g.subject, g.group, to)
      return `Cursor of ${g.group} on ${g.subject} reset to ${r.position.toLowerCase()} on ${r.brokerGroups.join(', ')}.`
    })
    button.disabled = false
  })
  return h('div', { class: 'row-actions' }, where, at, button)
}

export async function groupsPage(
  main: HTMLElement,
  params: URLSearchParams,
  go: (hash: string) => void,
): Promise<void> {
  const q = params.get('q') ?? ''
  const offset = Number(params.get('offset') ?? 0) || 0
  const page = await api.consumerGroups(q, offset, PAGE, params.get('fresh') === '1')
  const input = h('input', {
    type: 'search',
    placeholder: 'search subject or group',
    value: q,
    'data-testid': 'group-search',
    'aria-label': 'search consumer groups',
  })
  const out = h('div', { 'data-testid': 'action-result' })
  main.append(
    h('h1', {}, 'Consumer groups'),
    h(
      'form',
      {
        class: 'toolbar',
        onsubmit: (ev: Event) => {
          ev.preventDefault()
          go(route('groups', { q: input.value, fresh: 1 }))
        },
      },
      input,
      h('button', { type: 'submit' }, 'Search'),
      h(
        'button',
        { type: 'button', onclick: () => go(route('groups', { q, offset, fresh: 1, t: Date.now() })) },
        'Refresh',
      ),
    ),
    out,
    partial(page.errors),
    pager(page.total, page.offset, page.limit, (o) => go(route('groups', { q, offset: o }))),
    table<ConsumerGroupRow>(
      [
        { title: 'Subject', cell: (g) => link(route('subject', { subject: g.subject }), g.subject) },
        { title: 'Consumer group', cell: (g) => h('strong', {}, g.group) },
        {
          title: 'Consumers online',
          num: true,
          cell: (g) =>
            h('span', { class: g.consumersOnline === 0 ? 'warn' : undefined }, num(g.consumersOnline)),
        },
        { title: 'Backlog', num: true, cell: (g) => h('span', { 'data-testid': 'backlog' }, num(g.pending)) },
        { title: 'In flight', num: true, cell: (g) => num(g.inFlight) },
        { title: 'Retrying', num: true, cell: (g) => num(g.retrying) },
        {
          title: 'Dead',
          num: true,
          cell: (g) =>
            g.deadLettered > 0
              ? link(
                  route('dead-letters', { subject: g.subject, group: g.group }),
                  num(g.deadLettered),
                  'dead-link',
                )
              : '0',
        },
        {
          title: 'Cursor / last (per broker group)',
          cell: (g) =>
            g.brokers.map((b) =>
              h('div', { class: 'muted' }, `${b.brokerGroup}: ${num(b.cursor)} / ${num(b.maxSequence)}`),
            ),
        },
        { title: 'Reset cursor (admin)', cell: (g) => resetControls(g, out) },
      ],
      page.items,
      q === '' ? 'No consumer group has pulled yet.' : `No consumer group matches "${q}".`,
      'groups-table',
    ),
  )
}
