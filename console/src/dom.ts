/**
 * DOM helpers of the console. Everything shown is set as text (textContent), never parsed as HTML:
 * subjects, properties and bodies come from producers and are not trusted.
 */
export type Child = Node | string | number | null | undefined | false
export type Attrs = Record<string, string | number | boolean | undefined | ((ev: Event) => void)>

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: (Child | Child[])[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag)
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === false) continue
    if (typeof v === 'function') el.addEventListener(k.replace(/^on/, ''), v)
    else if (v === true) el.setAttribute(k, '')
    else el.setAttribute(k, String(v))
  }
  append(el, children)
  return el
}

export function append(el: Node, children: (Child | Child[])[]): void {
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue
    el.appendChild(typeof c === 'string' || typeof c === 'number' ? document.createTextNode(String(c)) : c)
  }
}

export function clear(el: Element): void {
  while (el.firstChild) el.removeChild(el.firstChild)
}

export function notice(
  kind: 'error' | 'info' | 'success' | 'unavailable',
  text: string,
  testid?: string,
): HTMLElement {
  return h(
    'div',
    { class: `notice ${kind}`, role: kind === 'error' ? 'alert' : 'status', 'data-testid': testid },
    text,
  )
}

export function time(ms: number | undefined): string {
  if (ms === undefined || ms <= 0) return '-'
  const d = new Date(ms)
  return `${d.toISOString().slice(0, 19).replace('T', ' ')}Z`
}

export function ago(ms: number, now: number = Date.now()): string {
  if (ms <= 0) return 'never'
  const s = Math.max(0, Math.round((now - ms) / 1000))
  if (s < 60) return `${s}s ago`
  if (s < 3600) return `${Math.round(s / 60)}m ago`
  if (s < 86400) return `${Math.round(s / 3600)}h ago`
  return `${Math.round(s / 86400)}d ago`
}

export function num(n: number | undefined): string {
  return n === undefined ? '-' : n.toLocaleString('en-US')
}

export function bytes(n: number | undefined): string {
  if (n === undefined) return '-'
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let v = n
  let i = 0
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024
    i++
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`
}

export interface Column<T> {
  title: string
  num?: boolean
  cell: (row: T) => Child | Child[]
}

export function table<T>(columns: Column<T>[], rows: T[], empty: string, testid?: string): HTMLElement {
  if (rows.length === 0)
    return h('p', { class: 'muted', 'data-testid': testid ? `${testid}-empty` : undefined }, empty)
  return h(
    'table',
    { 'data-testid': testid },
    h(
      'thead',
      {},
      h(
        'tr',
        {},
        columns.map((c) => h('th', { class: c.num ? 'num' : undefined }, c.title)),
      ),
    ),
    h(
      'tbody',
      {},
      rows.map((r) =>
        h(
          'tr',
          {},
          columns.map((c) => h('td', { class: c.num ? 'num' : undefined }, c.cell(r))),
        ),
      ),
    ),
  )
}

/** Prev / next buttons over a server-side paged list. */
export function pager(
  total: number,
  offset: number,
  limit: number,
  go: (offset: number) => void,
): HTMLElement {
  const last = Math.min(total, offset + limit)
  return h(
    'div',
    { class: 'pager', 'data-testid': 'pager' },
    h('button', { disabled: offset === 0, onclick: () => go(Math.max(0, offset - limit)) }, '‹ Prev'),
    h(
      'span',
      { 'data-testid': 'pager-range' },
      total === 0 ? '0 of 0' : `${offset + 1}–${last} of ${num(total)}`,
    ),
    h('button', { disabled: last >= total, onclick: () => go(offset + limit) }, 'Next ›'),
  )
}

export function link(href: string, text: string, testid?: string): HTMLAnchorElement {
  return h('a', { href, 'data-testid': testid }, text)
}

/** `#/path?x=1` from a path and params (the console's own addresses: never a token). */
export function route(path: string, params: Record<string, string | number | undefined> = {}): string {
  const q = new URLSearchParams()
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== '') q.set(k, String(v))
  const s = q.toString()
  return `#/${path}${s ? `?${s}` : ''}`
}

/** An amber notice naming the groups that did not answer (the page shows what the others said). */
export function partial(errors: { group: string; code: string; message: string }[]): HTMLElement | string {
  if (errors.length === 0) return ''
  return notice(
    'unavailable',
    `Not answered by ${errors.map((e) => `${e.group} (${e.code}: ${e.message})`).join('; ')}: what follows is partial.`,
    'partial-answer',
  )
}
