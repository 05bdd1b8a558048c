/** Renders rows as an aligned text table (numbers right-aligned), or says there is nothing. */
export function table(
  headers: readonly string[],
  rows: readonly (readonly unknown[])[],
  empty = '(none)',
): string {
  if (rows.length === 0) return empty
  const cells = rows.map((r) => r.map((c) => (c === undefined || c === null ? '-' : String(c))))
  const numeric = headers.map((_, i) => rows.every((r) => typeof r[i] === 'number'))
  const widths = headers.map((h, i) => Math.max(h.length, ...cells.map((r) => (r[i] ?? '').length)))
  const line = (r: readonly string[]) =>
    r
      .map((c, i) => (numeric[i] ? c.padStart(widths[i] ?? 0) : c.padEnd(widths[i] ?? 0)))
      .join('  ')
      .trimEnd()
  return [line(headers), line(widths.map((w) => '-'.repeat(w))), ...cells.map(line)].join('\n')
}

/** ms since epoch -> ISO time, or '-' for 0. */
export function time(ms: number): string {
  return ms > 0 ? new Date(ms).toISOString() : '-'
}

/** Parses "30s", "5m", "2h", "1d", "1500ms" or a plain number of ms into ms. */
export function parseDuration(text: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?$/.exec(text.trim())
  if (!m) return undefined
  const n = Number(m[1])
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[(m[2] ?? 'ms') as 'ms']
  return Math.round(n * unit)
}

/**
 * `earliest`, `latest`, ms since the epoch or an ISO time (2026-11-21T10:00:00Z): where `qmq tail
 * --from` starts a new group and `qmq reset-cursor --to` moves one. Undefined when it is none of these.
 */
export function parseStartFrom(text: string): 'earliest' | 'latest' | number | undefined {
  if (text === 'earliest' || text === 'latest') return text
  const t = /^\d+$/.test(text) ? Number(text) : Date.parse(text)
  return Number.isSafeInteger(t) && t >= 0 ? t : undefined
}
