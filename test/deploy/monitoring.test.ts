import { readdirSync, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { parse } from 'yaml'

/**
 * The example Grafana dashboard and Prometheus alert rules of deploy/ (docs/console.md): both parse,
 * have the shape Grafana and Prometheus load, and every qmq metric they query is one the services
 * really export (a renamed metric would leave a silent, empty panel or an alert that never fires).
 */
const ROOT = join(__dirname, '..', '..')
const DASHBOARD = join(ROOT, 'deploy', 'grafana', 'qmq-dashboard.json')
const ALERTS = join(ROOT, 'deploy', 'prometheus', 'qmq-alerts.yaml')

/** Metric names registered anywhere in src/ (every `'qmq_...'` string: names are given as literals). */
function exportedMetrics(): Set<string> {
  const out = new Set<string>()
  const walk = (dir: string) => {
    for (const f of readdirSync(dir)) {
      const p = join(dir, f)
      if (statSync(p).isDirectory()) walk(p)
      else if (p.endsWith('.ts'))
        for (const m of readFileSync(p, 'utf8').matchAll(/'(qmq_[a-z0-9_]+)'/g)) out.add(m[1] ?? '')
    }
  }
  walk(join(ROOT, 'src'))
  return out
}

/** Metrics of other exporters the examples may use (node_exporter, kubelet, Prometheus itself). */
const FOREIGN = /^(up|node_filesystem_(avail|size)_bytes|kubelet_volume_stats_(available|capacity)_bytes)$/
const PROMQL_WORDS = new Set([
  'sum',
  'max',
  'min',
  'avg',
  'by',
  'without',
  'rate',
  'increase',
  'delta',
  'deriv',
  'and',
  'or',
  'unless',
  'histogram_quantile',
  'predict_linear',
  'label_values',
  'le',
])

/** Problems of one PromQL expression: unknown metrics, unbalanced brackets. */
export function checkExpr(expr: string, known: Set<string>): string[] {
  const problems: string[] = []
  const bare = expr
    .replace(/label_values\(([^,]+),\s*[a-z_]+\)/g, 'label_values($1)')
    .replace(/"[^"]*"/g, '""')
    .replace(/\{[^}]*\}/g, '{}')
    .replace(/\[[^\]]*\]/g, '[]')
  let depth = 0
  for (const ch of expr.replace(/"[^"]*"/g, '')) {
    if ('({['.includes(ch)) depth++
    if (')}]'.includes(ch)) depth--
    if (depth < 0) break
  }
  if (depth !== 0) problems.push(`unbalanced brackets in ${expr}`)
  // Names before `(` are functions; those inside `by (...)` are labels.
  const withoutBy = bare.replace(/\b(by|without)\s*\([^)]*\)/g, '')
  for (const m of withoutBy.matchAll(/\b([a-z_][a-z0-9_]*)\b(?!\s*\()/g)) {
    const name = m[1] ?? ''
    if (PROMQL_WORDS.has(name)) continue
    const base = name.replace(/_(bucket|sum|count)$/, '')
    if (known.has(name) || known.has(base) || FOREIGN.test(name)) continue
    problems.push(`unknown metric ${name} in ${expr}`)
  }
  return problems
}

interface Target {
  expr?: unknown
  refId?: unknown
}
interface Panel {
  id?: unknown
  type?: unknown
  title?: unknown
  gridPos?: { x?: unknown; y?: unknown; w?: unknown; h?: unknown }
  targets?: Target[]
}

export function checkDashboard(doc: unknown, known: Set<string>): string[] {
  const problems: string[] = []
  const d = doc as { title?: unknown; uid?: unknown; panels?: unknown; templating?: { list?: unknown } }
  if (typeof d.title !== 'string' || typeof d.uid !== 'string') problems.push('dashboard needs title and uid')
  if (!Array.isArray(d.panels) || d.panels.length === 0) return [...problems, 'dashboard has no panels']
  const ids = new Set<unknown>()
  for (const p of d.panels as Panel[]) {
    if (ids.has(p.id)) problems.push(`panel id ${String(p.id)} is used twice`)
    ids.add(p.id)
    const g = p.gridPos
    if (g === undefined || [g.x, g.y, g.w, g.h].some((v) => typeof v !== 'number'))
      problems.push(`panel ${String(p.title)} has no gridPos`)
    else if ((g.x as number) + (g.w as number) > 24)
      problems.push(`panel ${String(p.title)} is wider than 24`)
    if (p.type === 'row') continue
    if (!Array.isArray(p.targets) || p.targets.length === 0)
      problems.push(`panel ${String(p.title)} has no query`)
    for (const target of p.targets ?? []) {
      if (typeof target.expr !== 'string') problems.push(`panel ${String(p.title)}: a target has no expr`)
      else problems.push(...checkExpr(target.expr, known).map((x) => `panel ${String(p.title)}: ${x}`))
    }
  }
  const vars = (d.templating?.list ?? []) as { name?: unknown; query?: unknown; definition?: unknown }[]
  for (const v of vars) {
    if (typeof v.definition === 'string')
      problems.push(...checkExpr(v.definition, known).map((x) => `variable ${String(v.name)}: ${x}`))
  }
  return problems
}

export function checkAlertRules(doc: unknown, known: Set<string>): { problems: string[]; alerts: string[] } {
  const problems: string[] = []
  const alerts: string[] = []
  const groups = (doc as { groups?: unknown }).groups
  if (!Array.isArray(groups) || groups.length === 0) return { problems: ['no rule groups'], alerts }
  for (const g of groups as { name?: unknown; rules?: unknown }[]) {
    if (typeof g.name !== 'string') problems.push('a rule group has no name')
    if (!Array.isArray(g.rules)) {
      problems.push(`group ${String(g.name)} has no rules`)
      continue
    }
    for (const r of g.rules as Record<string, unknown>[]) {
      const name = String(r.alert)
      if (typeof r.alert !== 'string') problems.push(`a rule of ${String(g.name)} is not an alert`)
      if (alerts.includes(name)) problems.push(`alert ${name} defined twice`)
      alerts.push(name)
      if (typeof r.expr !== 'string') problems.push(`${name} has no expr`)
      else problems.push(...checkExpr(r.expr, known).map((x) => `${name}: ${x}`))
      if (r.for !== undefined && (typeof r.for !== 'string' || !/^\d+[smhd]$/.test(r.for)))
        problems.push(`${name}: for must be a duration like 5m`)
      const severity = (r.labels as { severity?: unknown } | undefined)?.severity
      if (severity !== 'warning' && severity !== 'critical')
        problems.push(`${name}: labels.severity must be warning or critical`)
      const summary = (r.annotations as { summary?: unknown } | undefined)?.summary
      if (typeof summary !== 'string' || summary.length === 0)
        problems.push(`${name}: no annotations.summary`)
      const unknownKeys = Object.keys(r).filter(
        (k) => !['alert', 'expr', 'for', 'labels', 'annotations'].includes(k),
      )
      if (unknownKeys.length > 0) problems.push(`${name}: unknown keys ${unknownKeys.join(', ')}`)
    }
  }
  return { problems, alerts }
}

const known = exportedMetrics()

t.test('monitoring - the Grafana dashboard parses and queries only real metrics', async (t) => {
  t.ok(known.has('qmq_broker_backlog_messages'), 'the metric scan finds the broker metrics')
  const doc: unknown = JSON.parse(readFileSync(DASHBOARD, 'utf8'))
  t.same(checkDashboard(doc, known), [])
})

t.test('monitoring - the alert rules parse and cover backlog, dead letters, group down, disk', async (t) => {
  const doc: unknown = parse(readFileSync(ALERTS, 'utf8'))
  const { problems, alerts } = checkAlertRules(doc, known)
  t.same(problems, [])
  for (const a of ['QmqBacklogGrowing', 'QmqDeadLetters', 'QmqGroupDown', 'QmqDiskFilling'])
    t.ok(alerts.includes(a), `${a} is there`)
})

t.test(
  'monitoring - the checks catch a renamed metric, a broken expression, a rule without severity',
  async (t) => {
    t.match(checkExpr('sum(qmq_broker_backlog)', known), [/unknown metric qmq_broker_backlog/])
    t.match(checkExpr('sum(rate(qmq_broker_messages_acked_total[5m])', known), [/unbalanced/])
    t.same(checkExpr('sum by (subject, group) (qmq_broker_dead_letters{subject=~"a.*"})', known), [])
    const rules = {
      groups: [{ name: 'x', rules: [{ alert: 'A', expr: 'up == 0', for: '5 minutes', annotations: {} }] }],
    }
    const { problems } = checkAlertRules(rules, known)
    t.match(problems, [/for must be/, /severity/, /summary/])
    const dash = {
      title: 'x',
      uid: 'x',
      panels: [
        {
          id: 1,
          type: 'timeseries',
          title: 'p',
          gridPos: { x: 20, y: 0, w: 8, h: 4 },
          targets: [{ expr: 'qmq_nope' }],
        },
      ],
    }
    t.match(checkDashboard(dash, known), [/wider than 24/, /unknown metric qmq_nope/])
  },
)
