import { api, type ClientInfo, type ConsumerGroupRow, type SubjectInfo } from '../api'
import { ago, h, link, num, pager, route, table, time, partial } from '../dom'
import { historySection } from './history'

const PAGE = 50

export async function subjectsPage(
  main: HTMLElement,
  params: URLSearchParams,
  go: (hash: string) => void,
): Promise<void> {
  const q = params.get('q') ?? ''
  const offset = Number(params.get('offset') ?? 0) || 0
  const page = await api.subjects(q, offset, PAGE)
  const input = h('input', {
    type: 'search',
    placeholder: 'search subjects',
    value: q,
    'data-testid': 'subject-search',
    'aria-label': 'search subjects',
  })
  const form = h(
    'form',
    {
      class: 'toolbar',
      onsubmit: (ev: Event) => {
        ev.preventDefault()
        go(route('subjects', { q: input.value }))
      },
    },
    input,
    h('button', { type: 'submit' }, 'Search'),
  )
  type Row = SubjectInfo & { consumerGroups: number; clientsOnline: number }
  main.append(
    h('h1', {}, 'Subjects'),
    form,
    pager(page.total, page.offset, page.limit, (o) => go(route('subjects', { q, offset: o }))),
    table<Row>(
      [
        {
          title: 'Subject',
          cell: (s) => link(route('subject', { subject: s.subject }), s.subject, 'subject-link'),
        },
        { title: 'Broker groups', cell: (s) => s.groups.join(', ') },
        { title: 'Consumer groups online', num: true, cell: (s) => num(s.consumerGroups) },
        { title: 'Clients online', num: true, cell: (s) => num(s.clientsOnline) },
        { title: 'Created', cell: (s) => time(s.createdAt) },
      ],
      page.items,
      q === '' ? 'No subject has a route yet.' : `No subject matches "${q}".`,
      'subjects-table',
    ),
  )
}

export async function subjectPage(main: HTMLElement, params: URLSearchParams): Promise<void> {
  const subject = params.get('subject') ?? ''
  const d = await api.subject(subject)
  main.append(
    h('h1', { 'data-testid': 'subject-title' }, `Subject ${d.subject.subject}`),
    h(
      'p',
      {},
      `Broker groups: ${d.subject.groups.join(', ')} · route version ${d.subject.version} · updated ${time(d.subject.updatedAt)}`,
    ),
    h('h2', {}, 'Last hours, per minute'),
    await historySection({ subject }),
    h('h2', {}, 'Consumer groups'),
    partial(d.errors),
    table<ConsumerGroupRow>(
      [
        { title: 'Group', cell: (g) => link(route('groups', { q: g.group }), g.group) },
        { title: 'Consumers online', num: true, cell: (g) => num(g.consumersOnline) },
        { title: 'Pending', num: true, cell: (g) => num(g.pending) },
        { title: 'In flight', num: true, cell: (g) => num(g.inFlight) },
        { title: 'Retrying', num: true, cell: (g) => num(g.retrying) },
        {
          title: 'Dead',
          num: true,
          cell: (g) =>
            g.deadLettered > 0
              ? link(route('dead-letters', { subject, group: g.group }), num(g.deadLettered))
              : '0',
        },
      ],
      d.consumerGroups,
      'No consumer group has pulled this subject.',
      'subject-groups-table',
    ),
    h('h2', {}, 'Clients'),
    table<ClientInfo>(
      [
        { title: 'Client', cell: (c) => c.clientId },
        { title: 'App', cell: (c) => c.appCode },
        { title: 'Kind', cell: (c) => c.kind },
        { title: 'Consumer group', cell: (c) => c.consumerGroup || '-' },
        {
          title: 'Online',
          cell: (c) => h('span', { class: c.online ? 'ok' : 'bad' }, c.online ? 'yes' : 'no'),
        },
        { title: 'Last seen', cell: (c) => ago(c.lastSeenAt) },
      ],
      d.clients,
      'No producer or consumer is registered for this subject.',
      'subject-clients-table',
    ),
  )
}
