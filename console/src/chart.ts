import { h } from './dom'

const SVG = 'http://www.w3.org/2000/svg'

function svg<K extends keyof SVGElementTagNameMap>(
  tag: K,
  attrs: Record<string, string | number>,
): SVGElementTagNameMap[K] {
  const el = document.createElementNS(SVG, tag)
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v))
  return el
}

export interface Series {
  name: string
  color: string
  /** One value per x point. */
  values: number[]
}

/**
 * A small SVG chart (no library): bars for one series, lines for several. Drawn with presentation
 * attributes only (the page's content security policy allows no inline style).
 */
export function chart(title: string, labels: string[], series: Series[], testid?: string): HTMLElement {
  const W = 800
  const H = 160
  const PAD = 28
  const n = Math.max(1, labels.length)
  const max = Math.max(1, ...series.flatMap((s) => s.values))
  const root = svg('svg', {
    viewBox: `0 0 ${W} ${H}`,
    preserveAspectRatio: 'none',
    role: 'img',
    'aria-label': title,
  })
  root.appendChild(svg('line', { x1: PAD, y1: H - PAD, x2: W, y2: H - PAD, stroke: '#d0d5dd' }))
  const x = (i: number) => PAD + ((W - PAD) * (i + 0.5)) / n
  const y = (v: number) => H - PAD - ((H - 2 * PAD) * v) / max
  const maxLabel = svg('text', { x: 2, y: PAD, 'font-size': 10, fill: '#667085' })
  maxLabel.textContent = String(max)
  root.appendChild(maxLabel)
  if (series.length === 1) {
    const s = series[0]!
    const bw = Math.min(40, Math.max(1, ((W - PAD) / n) * 0.7))
    s.values.forEach((v, i) => {
      const r = svg('rect', { x: x(i) - bw / 2, y: y(v), width: bw, height: H - PAD - y(v), fill: s.color })
      const t = svg('title', {})
      t.textContent = `${labels[i] ?? ''}: ${v}`
      r.appendChild(t)
      root.appendChild(r)
    })
  } else {
    for (const s of series) {
      const pts = s.values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(' ')
      root.appendChild(svg('polyline', { points: pts, fill: 'none', stroke: s.color, 'stroke-width': 2 }))
    }
  }
  const step = Math.max(1, Math.ceil(n / 8))
  labels.forEach((l, i) => {
    if (i % step !== 0) return
    const t = svg('text', { x: x(i), y: H - 8, 'font-size': 10, fill: '#667085', 'text-anchor': 'middle' })
    t.textContent = l
    root.appendChild(t)
  })
  return h(
    'div',
    { class: 'chart', 'data-testid': testid },
    h('div', {}, h('strong', {}, title), ' ', series.map(legend)),
    root,
  )
}

/** A legend entry: a swatch in the series' colour (an SVG attribute, not an inline style) and its name. */
function legend(s: Series): HTMLElement {
  const sw = svg('svg', { width: 10, height: 10, viewBox: '0 0 10 10', 'aria-hidden': 'true' })
  sw.appendChild(svg('rect', { width: 10, height: 10, fill: s.color }))
  return h('span', { class: 'legend' }, sw, ` ${s.name} `)
}
