import { api, type GroupInfo } from '../api'
import { ago, bytes, h, num, table } from '../dom'

export async function overviewPage(main: HTMLElement): Promise<void> {
  const o = await api.overview()
  const card = (k: string, v: string, testid: string, bad = false) =>
    h(
      'div',
      { class: 'card', 'data-testid': testid },
      h('div', { class: `v${bad ? ' bad' : ''}` }, v),
      h('div', { class: 'k' }, k),
    )
  const c = o.counts
  main.append(
    h('h1', {}, 'Cluster overview'),
    h(
      'div',
      { class: 'cards' },
      card(
        'broker groups alive',
        `${c.alive.broker} / ${c.groups.broker}`,
        'card-brokers',
        c.alive.broker < c.groups.broker,
      ),
      card(
        'delay groups alive',
        `${c.alive.delay} / ${c.groups.delay}`,
        'card-delay',
        c.alive.delay < c.groups.delay,
      ),
      card('subjects', num(c.subjects), 'card-subjects'),
      card('clients online', num(c.clients), 'card-clients'),
    ),
    h('h2', {}, 'Groups'),
    table<GroupInfo>(
      [
        { title: 'Group', cell: (g) => h('strong', {}, g.name) },
        { title: 'Kind', cell: (g) => g.kind },
        {
          title: 'Alive',
          cell: (g) => h('span', { class: g.alive ? 'ok' : 'bad' }, g.alive ? 'alive' : 'DOWN'),
        },
        {
          title: 'Servers (role address)',
          cell: (g) =>
            g.servers.map((s) =>
              h(
                'div',
                {},
                h('span', { class: s.alive ? 'ok' : 'bad' }, s.role),
                ' ',
                s.address,
                s.httpAddress ? ` · http ${s.httpAddress}` : '',
              ),
            ),
        },
        { title: 'Last seen', cell: (g) => ago(g.lastSeenAt, o.serverTime) },
        { title: 'Subjects', num: true, cell: (g) => num(g.load.subjects ?? g.subjects) },
        { title: 'Msgs in/s', num: true, cell: (g) => (g.load.messagesInPerSecond ?? 0).toFixed(1) },
        { title: 'Backlog', num: true, cell: (g) => num(g.load.backlog) },
        { title: 'Disk', num: true, cell: (g) => bytes(g.load.diskUsedBytes) },
        {
          title: 'Read-only',
          cell: (g) =>
            g.readOnly ? h('span', { class: 'warn' }, 'all subjects') : g.readOnlySubjects.join(', ') || 'no',
        },
      ],
      o.groups,
      'No broker or delay group has registered yet.',
      'groups-table',
    ),
  )
}
