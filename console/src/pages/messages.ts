import { features } from '../features'
import { h, notice, route } from '../dom'

/**
 * Message search (by id, by business key, by subject and time) and the lifecycle trace of one
 * message. Needs the metaserver's message query API.
 */
export async function messagesPage(
  main: HTMLElement,
  params: URLSearchParams,
  go: (hash: string) => void,
): Promise<void> {
  const id = params.get('id') ?? ''
  const input = h('input', {
    placeholder: 'message id',
    value: id,
    'data-testid': 'message-id',
    'aria-label': 'message id',
    size: 40,
  })
  main.append(
    h('h1', {}, 'Find a message'),
    h(
      'form',
      {
        class: 'toolbar',
        onsubmit: (ev: Event) => {
          ev.preventDefault()
          go(route('messages', { id: input.value.trim() }))
        },
      },
      input,
      h('button', { type: 'submit', 'data-testid': 'message-find' }, 'Find'),
    ),
  )
  const f = await features()
  if (!f.messageQuery) {
    main.append(
      notice(
        'unavailable',
        'Message search and the lifecycle trace are not available: this metaserver does not serve the message query API yet.',
        'query-unavailable',
      ),
    )
  }
}
