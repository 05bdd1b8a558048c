import { ApiError, getToken, setToken } from './api'
import { clear, h, notice } from './dom'
import { deadLettersPage } from './pages/dead-letters'
import { delayPage } from './pages/delay'
import { groupsPage } from './pages/groups'
import { messagesPage } from './pages/messages'
import { overviewPage } from './pages/overview'
import { subjectPage, subjectsPage } from './pages/subjects'

/**
 * The console: a single page; `#/<page>?<params>` picks what is shown (the hash never reaches the
 * server and never holds the admin token).
 */
type Page = (main: HTMLElement, params: URLSearchParams, go: (hash: string) => void) => Promise<void>

const PAGES: { path: string; title: string; page: Page; nav: boolean }[] = [
  { path: 'overview', title: 'Overview', page: overviewPage, nav: true },
  { path: 'subjects', title: 'Subjects', page: subjectsPage, nav: true },
  { path: 'subject', title: 'Subject', page: subjectPage, nav: false },
  { path: 'groups', title: 'Consumer groups', page: groupsPage, nav: true },
  { path: 'dead-letters', title: 'Dead letters', page: deadLettersPage, nav: true },
  { path: 'messages', title: 'Messages', page: messagesPage, nav: true },
  { path: 'delay', title: 'Delay groups', page: delayPage, nav: true },
]

const main = document.getElementById('main') as HTMLElement
const nav = document.getElementById('nav') as HTMLElement

function parseHash(): { path: string; params: URLSearchParams } {
  const raw = location.hash.replace(/^#\/?/, '')
  const q = raw.indexOf('?')
  return { path: q < 0 ? raw : raw.slice(0, q), params: new URLSearchParams(q < 0 ? '' : raw.slice(q + 1)) }
}

function go(hash: string): void {
  if (location.hash === hash) void render()
  else location.hash = hash
}

let renderSeq = 0
async function render(): Promise<void> {
  const seq = ++renderSeq
  const { path, params } = parseHash()
  const entry = PAGES.find((p) => p.path === path) ?? PAGES[0]!
  clear(nav)
  for (const p of PAGES.filter((x) => x.nav)) {
    const active = p.path === entry.path || (entry.path === 'subject' && p.path === 'subjects')
    nav.append(
      h(
        'a',
        { href: `#/${p.path}`, class: active ? 'active' : undefined, 'data-testid': `nav-${p.path}` },
        p.title,
      ),
    )
  }
  document.title = `${entry.title} · qmq console`
  const target = h('div', { 'data-testid': `page-${entry.path}`, 'data-loading': 'true' })
  main.replaceChildren(target)
  try {
    await entry.page(target, params, go)
  } catch (err) {
    if (seq !== renderSeq) return
    const msg =
      err instanceof ApiError
        ? `${err.code}: ${err.message}`
        : err instanceof Error
          ? err.message
          : String(err)
    target.append(notice('error', msg, 'page-error'))
  }
  if (seq === renderSeq) target.setAttribute('data-loading', 'false')
}

function showTokenState(): void {
  const state = document.getElementById('token-state') as HTMLElement
  state.textContent = getToken() === undefined ? 'no admin token' : 'admin token set'
}

const form = document.getElementById('token-form') as HTMLFormElement
const input = document.getElementById('token-input') as HTMLInputElement
/** The messages page shows bodies only with the token: it is drawn again when the token changes. */
function tokenChanged(): void {
  showTokenState()
  if (parseHash().path === 'messages') void render()
}
form.addEventListener('submit', (ev) => {
  ev.preventDefault()
  const v = input.value.trim()
  setToken(v === '' ? undefined : v)
  input.value = ''
  tokenChanged()
})
document.getElementById('token-clear')?.addEventListener('click', () => {
  setToken(undefined)
  tokenChanged()
})

window.addEventListener('hashchange', () => void render())
showTokenState()
void render()
