import { adminAction } from '../admin'
import { api, type ConsumerGroupRow, type DeadLetterRow } from '../api'
import { h, link, notice, num, pager, route, table, time, partial } from '../dom'

function inspect(d: DeadLetterRow): HTMLElement {
  return h(
    'details',
    { 'data-testid': 'dead-letter-details' },
    h('summary', {}, 'inspect'),
    h(
      'div',
      {},
      `created ${time(d.createdAt)} · body ${d.bodyBytes} bytes${d.bodyTruncated ? ' (cut)' : ''}`,
    ),
    ...(d.bodyWithheld === true
      ? [
          notice(
            'info',
            'Properties and body hidden: enter the admin token at the top right to see them.',
            'dead-letter-withheld',
          ),
        ]
      : [
          h('pre', { 'data-testid': 'dead-letter-properties' }, JSON.stringify(d.properties, null, 2)),
          h('pre', { 'data-testid': 'dead-letter-body' }, d.body ?? '(no body)'),
        ]),
  )
}

/** Dead letters listed per broker group and page. */
const PAGE = 100

export async function deadLettersPage(
  main: HTMLElement,
  params: URLSearchParams,
  go: (hash: string) => void,
): Promise<void> {
  const subject = params.get('subject') ?? ''
  const group = params.get('group') ?? ''
  const s = h('input', {
    placeholder: 'subject',
    value: subject,
    'data-testid': 'dlq-subject',
    'aria-label': 'subject',
  })
  const g = h('input', {
    placeholder: 'consumer group',
    value: group,
    'data-testid': 'dlq-group',
    'aria-label': 'consumer group',
  })
  main.append(
    h('h1', {}, 'Dead letters'),
    h(
      'form',
      {
        class: 'toolbar',
        onsubmit: (ev: Event) => {
          ev.preventDefault()
          go(route('dead-letters', { subject: s.value.trim(), group: g.value.trim() }))
        },
      },
      s,
      g,
      h('button', { type: 'submit', 'data-testid': 'dlq-show' }, 'Show'),
    ),
  )
  if (subject === '' || group === '') {
    // The groups that have dead letters, to pick from.
    const offset = Number(params.get('offset') ?? 0) || 0
    const page = await api.consumerGroups('', offset, 50, offset === 0, true)
    main.append(
      h('h2', {}, 'Consumer groups with dead letters'),
      partial(page.errors),
      pager(page.total, page.offset, page.limit, (o) => go(route('dead-letters', { offset: o }))),
      table<ConsumerGroupRow>(
        [
          { title: 'Subject', cell: (g) => g.subject },
          {
            title: 'Consumer group',
            cell: (g) =>
              link(route('dead-letters', { subject: g.subject, group: g.group }), g.group, 'dlq-group-link'),
          },
          { title: 'Dead', num: true, cell: (g) => num(g.deadLettered) },
        ],
        page.items,
        'No consumer group has dead letters.',
        'dlq-groups-table',
      ),
    )
    return
  }
  const out = h('div', { 'data-testid': 'action-result' })
  // Paging: each broker group lists after its own last sequence (`after.<broker group>` in the address).
  const after: Record<string, number> = {}
  for (const [k, v] of params) if (k.startsWith('after.')) after[k.slice(6)] = Number(v)
  const list = await api.deadLetters(subject, group, PAGE, after)
  const next: Record<string, number> = { ...after }
  let more = false
  for (const b of list.brokerGroups) {
    const mine = list.items.filter((d) => d.brokerGroup === b)
    if (mine.length === PAGE) more = true
    if (mine.length > 0) next[b] = Math.max(...mine.map((d) => d.sequence))
  }
  const redrive = (d: DeadLetterRow) => {
    const b = h('button', { class: 'primary', 'data-testid': 'redrive-button' }, 'Redrive')
    b.addEventListener('click', async () => {
      b.disabled = true
      const ok = await adminAction(out, `Redriving ${d.id}`, async () => {
        const r = await api.redrive(subject, group, d.brokerGroup, [d.sequence])
        return `Redrove ${r.redriven} dead letter(s): ${d.id} goes back to ${group}.`
      })
      if (!ok) b.disabled = false
      else b.closest('tr')?.classList.add('muted')
    })
    return b
  }
  const all = h('button', { class: 'danger', 'data-testid': 'redrive-all' }, 'Redrive all')
  all.addEventListener('click', async () => {
    if (!window.confirm(`Redrive every dead letter of ${group} on ${subject}?`)) return
    await adminAction(out, 'Redriving all', async () => {
      const r = await api.redriveAll(subject, group)
      return `Redrove ${r.redriven} dead letter(s) of ${group} on ${subject}.`
    })
  })
  main.append(
    h(
      'p',
      {},
      `%DEAD_RETRY%${subject}%${group} on ${list.brokerGroups.join(', ') || 'no alive broker group'} · `,
      link(route('subject', { subject }), 'subject'),
    ),
    out,
    partial(list.errors),
    h('div', { class: 'toolbar' }, all),
    table<DeadLetterRow>(
      [
        { title: 'Message id', cell: (d) => link(route('messages', { id: d.id }), d.id, 'dead-letter-id') },
        { title: 'Broker group', cell: (d) => d.brokerGroup },
        { title: 'Seq', num: true, cell: (d) => d.sequence },
        { title: 'Deliveries', num: true, cell: (d) => d.deliveryCount },
        { title: 'Dead at', cell: (d) => time(d.deadAt) },
        {
          title: 'Tags',
          cell: (d) =>
            h(
              'span',
              { class: 'tags' },
              d.tags.map((t) => h('span', {}, t)),
            ),
        },
        { title: 'Inspect', cell: (d) => inspect(d) },
        { title: 'Redrive (admin)', cell: (d) => redrive(d) },
      ],
      list.items,
      'No dead letters.',
      'dead-letters-table',
    ),
    more || Object.keys(after).length > 0
      ? h(
          'div',
          { class: 'pager' },
          Object.keys(after).length > 0 ? link(route('dead-letters', { subject, group }), '« First') : null,
          more
            ? link(
                route('dead-letters', {
                  subject,
                  group,
                  ...Object.fromEntries(Object.entries(next).map(([b, seq]) => [`after.${b}`, seq])),
                }),
                'Next ›',
                'dlq-next',
              )
            : null,
        )
      : '',
  )
}
