import { clear, h, link, notice, route, table, time } from '../dom'
import { features } from '../features'
import { type GroupError, type MessageView, query, type TraceEvent } from '../query'

/**
 * Message search (by id, by business key, by subject and time, newest first) and the lifecycle
 * trace of one message, from the metaserver's query API (docs/query.md).
 */
const LIMIT = 50

function toMs(v: string): number | undefined {
  if (v === '') return undefined
  const t = Date.parse(`${v}Z`)
  return Number.isFinite(t) ? t : undefined
}

function fromMs(ms: string | null): string {
  const n = Number(ms)
  return ms === null || !Number.isFinite(n) || n <= 0 ? '' : new Date(n).toISOString().slice(0, 19)
}

function groupErrors(errors: GroupError[]): HTMLElement | null {
  return errors.length === 0
    ? null
    : notice(
        'unavailable',
        `Not answered by ${errors.map((e) => `${e.group} (${e.code}: ${e.message})`).join('; ')}: the answer is partial.`,
        'query-errors',
      )
}

function describe(e: TraceEvent): string {
  const parts: string[] = [e.type]
  if (e.type === 'sent') parts.push(`by ${e.appCode ?? '?'}${e.host ? ` on ${e.host}` : ''}`)
  if (e.consumerGroup) parts.push(`group ${e.consumerGroup}`)
  if (e.consumer) parts.push(`consumer ${e.consumer}`)
  if (e.deliveryCount !== undefined) parts.push(`delivery ${e.deliveryCount}`)
  if (e.retryAt !== undefined) parts.push(`retry at ${time(e.retryAt)}`)
  if (e.scheduleAt !== undefined) parts.push(`due ${time(e.scheduleAt)}`)
  parts.push(`on ${e.server}`)
  if (e.sequence !== undefined && e.sequence >= 0) parts.push(`seq ${e.sequence}`)
  return parts.join(' · ')
}

function timeline(events: TraceEvent[]): HTMLElement {
  if (events.length === 0) return h('p', { class: 'muted' }, 'No lifecycle event recorded.')
  return h(
    'ol',
    { class: 'timeline', 'data-testid': 'trace' },
    events.map((e) =>
      h(
        'li',
        {
          class: e.type === 'dead' || e.type === 'expired' || e.type === 'nacked' ? 'bad' : undefined,
          'data-testid': 'trace-event',
          'data-type': e.type,
        },
        h('span', { class: 'when' }, time(e.time)),
        describe(e),
      ),
    ),
  )
}

function messageCard(m: MessageView): HTMLElement {
  return h(
    'section',
    { 'data-testid': 'message-view' },
    h('h2', {}, `${m.subject} on ${m.server}`, m.kind === 'delay' ? ' (delay group)' : ''),
    h(
      'p',
      {},
      `created ${time(m.createdAt)} · stored ${time(m.storedAt)}`,
      m.scheduleAt ? ` · due ${time(m.scheduleAt)}` : '',
      m.sequence >= 0 ? ` · seq ${m.sequence}` : '',
      m.appCode ? ` · app ${m.appCode}` : '',
      m.host ? ` · host ${m.host}` : '',
      m.keys.length > 0 ? ` · keys ${m.keys.join(', ')}` : '',
    ),
    m.consumers === undefined
      ? null
      : table(
          [
            { title: 'Consumer group', cell: (c) => c.consumerGroup },
            {
              title: 'State',
              cell: (c) =>
                h(
                  'span',
                  { class: c.state === 'dead' ? 'bad' : c.state === 'acked' ? 'ok' : undefined },
                  c.state,
                ),
            },
            { title: 'Deliveries', num: true, cell: (c) => c.deliveryCount },
            { title: 'Held by', cell: (c) => c.holder ?? '-' },
            { title: 'Retry at', cell: (c) => time(c.retryAt) },
            {
              title: '',
              cell: (c) =>
                c.state === 'dead'
                  ? link(
                      route('dead-letters', { subject: m.subject, group: c.consumerGroup }),
                      'dead letters',
                    )
                  : null,
            },
          ],
          m.consumers,
          'No consumer group has this subject yet.',
          'message-consumers',
        ),
    m.bodyWithheld === true
      ? notice(
          'info',
          `Properties and body (${m.bodyBytes} bytes) hidden: enter the admin token at the top right to see them.`,
          'body-withheld',
        )
      : h(
          'details',
          { 'data-testid': 'message-details' },
          h(
            'summary',
            {},
            `properties, body (${m.bodyBytes} bytes${m.bodyEncoding === 'base64' ? ', binary: base64' : ''})`,
          ),
          h('pre', { 'data-testid': 'message-properties' }, JSON.stringify(m.properties ?? {}, null, 2)),
          h('pre', { 'data-testid': 'message-body' }, m.body ?? '(no body)'),
        ),
  )
}

function list(messages: MessageView[], empty: string): HTMLElement {
  return table(
    [
      {
        title: 'Message id',
        cell: (m) => link(route('messages', { id: m.id, subject: m.subject }), m.id, 'message-link'),
      },
      { title: 'Subject', cell: (m) => m.subject },
      { title: 'Stored', cell: (m) => time(m.storedAt) },
      { title: 'Server', cell: (m) => m.server },
      { title: 'Keys', cell: (m) => m.keys.join(', ') },
      { title: 'App', cell: (m) => m.appCode ?? '-' },
      { title: 'Bytes', num: true, cell: (m) => m.bodyBytes },
    ],
    messages,
    empty,
    'messages-table',
  )
}

export async function messagesPage(
  main: HTMLElement,
  params: URLSearchParams,
  go: (hash: string) => void,
): Promise<void> {
  const id = params.get('id') ?? ''
  const key = params.get('key') ?? ''
  const subject = params.get('subject') ?? ''
  const idInput = h('input', {
    placeholder: 'message id',
    value: id,
    'data-testid': 'message-id',
    'aria-label': 'message id',
    size: 36,
  })
  const keyInput = h('input', {
    placeholder: 'business key',
    value: key,
    'data-testid': 'message-key',
    'aria-label': 'business key',
  })
  const subjectInput = h('input', {
    placeholder: 'subject',
    value: subject,
    'data-testid': 'message-subject',
    'aria-label': 'subject',
  })
  const fromInput = h('input', {
    type: 'datetime-local',
    step: 1,
    value: fromMs(params.get('from')),
    'aria-label': 'from (UTC)',
  })
  const toInput = h('input', {
    type: 'datetime-local',
    step: 1,
    value: fromMs(params.get('to')),
    'aria-label': 'to (UTC)',
  })
  const submit = (ev: Event) => {
    ev.preventDefault()
    go(
      route('messages', {
        id: idInput.value.trim(),
        key: keyInput.value.trim(),
        subject: subjectInput.value.trim(),
        from: toMs(fromInput.value),
        to: toMs(toInput.value),
      }),
    )
  }
  main.append(
    h('h1', {}, 'Find a message'),
    h(
      'form',
      { class: 'toolbar', onsubmit: submit },
      idInput,
      h('button', { type: 'submit', 'data-testid': 'message-find' }, 'Find by id'),
    ),
    h(
      'form',
      { class: 'toolbar', onsubmit: submit },
      keyInput,
      subjectInput,
      'from',
      fromInput,
      'to',
      toInput,
      h('button', { type: 'submit' }, 'Search (key or subject)'),
    ),
  )
  const f = await features()
  if (!f.messageQuery) {
    main.append(
      notice(
        'unavailable',
        'Message search and the lifecycle trace are not available: this metaserver does not serve the message query API (GET /admin/messages).',
        'query-unavailable',
      ),
    )
    return
  }
  const out = h('div', {})
  main.append(out)
  clear(out)
  if (id !== '') {
    const a = await query.message(id, subject || undefined)
    out.append(groupErrors(a.errors) ?? '')
    if (!a.found) {
      out.append(notice('info', `No server stores or recorded message ${id}.`, 'message-not-found'))
      return
    }
    out.append(h('h2', {}, 'Timeline'), timeline(a.events), ...a.messages.map(messageCard))
    return
  }
  if (key !== '') {
    const a = await query.byKey(key, subject || undefined, LIMIT)
    out.append(groupErrors(a.errors) ?? '', list(a.messages, `No message has key ${key}.`))
    return
  }
  if (subject !== '') {
    const from = Number(params.get('from')) || undefined
    const to = Number(params.get('to')) || undefined
    const a = await query.bySubject(subject, from, to, LIMIT, params.get('cursor') ?? undefined)
    out.append(
      groupErrors(a.errors) ?? '',
      list(a.messages, 'No message in this time range (default: the last hour).'),
    )
    if (a.nextCursor !== undefined)
      out.append(
        h(
          'div',
          { class: 'pager' },
          link(route('messages', { subject, from, to, cursor: a.nextCursor }), 'Older ›'),
        ),
      )
  }
}
