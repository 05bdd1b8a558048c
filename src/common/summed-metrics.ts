import { format } from 'node:util'
import { Counter, type CounterConfiguration, Histogram, type HistogramConfiguration } from 'prom-client'

/**
 * prom-client metrics for per-request and per-message paths. prom-client's `inc(labels, n)` and
 * `observe(labels, v)` build a label-hash string and result objects on every call (its histogram.js
 * shows in the broker's CPU profiles, and the garbage in its young-generation GC pauses). These keep
 * their counts in plain numbers outside prom-client and hand them over whenever the prom-client metric
 * is read: its collect hook runs on every scrape, `get()` and JSON export, so a reader never sees a
 * stale value, and the exposition text is what prom-client alone would print (names, labels, buckets,
 * values, series order).
 */

export type Labels<T extends string> = Partial<Record<T, string | number>>

type LabelValue = string | number | undefined

/**
 * Values by label set through nested Maps on the label values (in `labelNames` order): a lookup of a
 * known set allocates nothing.
 */
class LabelSetIndex<T extends string, V> {
  private readonly root = new Map<LabelValue, unknown>()

  constructor(private readonly names: readonly T[]) {}

  get(labels: Labels<T>): V | undefined {
    return this.leaf(labels, false)?.get(this.lastValue(labels)) as V | undefined
  }

  set(labels: Labels<T>, value: V): void {
    this.leaf(labels, true)?.set(this.lastValue(labels), value)
  }

  clear(): void {
    this.root.clear()
  }

  /** The Map holding the last label's values (made on the way when `create`). */
  private leaf(labels: Labels<T>, create: boolean): Map<LabelValue, unknown> | undefined {
    const names = this.names
    let map = this.root
    for (let i = 0; i < names.length - 1; i++) {
      const v = labels[names[i] as T]
      let next = map.get(v) as Map<LabelValue, unknown> | undefined
      if (next === undefined) {
        if (!create) return undefined
        next = new Map()
        map.set(v, next)
      }
      map = next
    }
    return map
  }

  private lastValue(labels: Labels<T>): LabelValue {
    const names = this.names
    return names.length === 0 ? undefined : labels[names[names.length - 1] as T]
  }
}

/** The label set of a metric without labels, for `inc` and `labels` (one object, not one per call). */
export const NO_LABELS: Labels<never> = Object.freeze({})

/** One label set's increments not yet handed to prom-client. */
interface PendingSum<T extends string> {
  labels: Labels<T>
  value: number
}

/**
 * A labelled counter whose `inc` finds its label set through a LabelSetIndex and adds to a plain
 * number; the sums go into the prom-client counter (`counter`, registered as usual) when it is read.
 * A label set's series appears (at 0) on its first inc, as it would with prom-client; invalid labels
 * and negative or non-finite increments throw as prom-client's do.
 */
export class SummedCounter<T extends string> {
  readonly counter: Counter<T>
  private readonly index: LabelSetIndex<T, PendingSum<T>>
  private readonly sums: PendingSum<T>[] = []

  constructor(config: CounterConfiguration<T>) {
    const flush = () => this.flush()
    const collect = config.collect
    this.index = new LabelSetIndex(config.labelNames ?? [])
    this.counter = new Counter<T>({
      ...config,
      collect() {
        flush()
        return collect?.call(this)
      },
    })
    // A reset (the counter's, or the registry's resetMetrics) forgets the pending sums and the label
    // sets too: a set's series comes back (at 0) on its next inc, as with prom-client alone.
    const reset = this.counter.reset.bind(this.counter)
    this.counter.reset = () => {
      this.index.clear()
      this.sums.length = 0
      reset()
    }
  }

  inc(labels: Labels<T>, value = 1): void {
    if (!(value >= 0 && value < Number.POSITIVE_INFINITY)) {
      this.counter.inc(labels, value) // throws as prom-client does (or adds a NaN as it does)
      return
    }
    let sum = this.index.get(labels)
    if (sum === undefined) {
      this.counter.inc(labels, 0) // validates the label names, creates the series
      sum = { labels: { ...labels }, value: 0 }
      this.index.set(labels, sum)
      this.sums.push(sum)
    }
    sum.value += value
  }

  /** Hands the pending sums to the prom-client counter. */
  private flush(): void {
    for (const s of this.sums) {
      if (s.value === 0) continue
      this.counter.inc(s.labels, s.value)
      s.value = 0
    }
  }
}

/** One label set of a SummedHistogram, resolved once: `observe` allocates nothing. */
export interface HistogramSeries {
  /** Counts one value (seconds, bytes, ...): throws a TypeError on a non-finite one, as prom-client. */
  observe(value: number): void
}

/**
 * The parts of prom-client 15's Histogram (lib/histogram.js) the hand-off reads and writes, not in its
 * typings: the bucket upper bounds, and one entry per label set keyed by its label hash, holding the
 * count of each bucket (not cumulative; keyed by the bound), the sum and the count. Checked when a
 * SummedHistogram is made, and test/common/summed-histogram.test.ts compares the exposition text with
 * prom-client's own for the same observations, so a prom-client upgrade that moves them fails loudly.
 */
interface HistogramInternals {
  upperBounds: readonly number[]
  hashMap: Record<
    string,
    { labels: object; bucketValues: Record<number, number>; sum: number; count: number }
  >
}

function internals(h: Histogram<string>): HistogramInternals {
  const i = h as unknown as Partial<HistogramInternals>
  if (!Array.isArray(i.upperBounds) || typeof i.hashMap !== 'object' || i.hashMap === null)
    throw new Error('SummedHistogram: this prom-client Histogram does not keep upperBounds and hashMap')
  return i as HistogramInternals
}

/**
 * A series' observations. `counts[i]` counts the values in bucket i alone (<= bound i, > bound i-1; a
 * value above the last bound is only in `count`), as prom-client keeps them. The sum adds the values
 * one by one in the order observed, as prom-client does, so it is the same float.
 */
class SummedSeries<T extends string> implements HistogramSeries {
  readonly counts: Float64Array
  sum = 0
  count = 0

  constructor(
    readonly labels: Labels<T>,
    private readonly bounds: Float64Array,
    /** The owner's series observed since the last reset, in order of their first observation. */
    private readonly observed: SummedSeries<T>[],
  ) {
    this.counts = new Float64Array(bounds.length)
  }

  observe(value: number): void {
    if (!Number.isFinite(value)) throw new TypeError(`Value is not a valid number: ${format(value)}`)
    const bounds = this.bounds
    const n = bounds.length
    let i = 0
    while (i < n && value > (bounds[i] as number)) i++
    if (i < n) this.counts[i] = (this.counts[i] as number) + 1
    this.sum += value
    if (this.count++ === 0) this.observed.push(this)
  }

  clear(): void {
    this.counts.fill(0)
    this.sum = 0
    this.count = 0
  }
}

/**
 * A histogram for per-request and per-message paths: `labels(...)` resolves a label set once to a
 * HistogramSeries whose `observe` adds to a Float64Array of bucket counts, a sum and a count (no
 * label hash, no objects). When the prom-client histogram (`histogram`, registered as usual) is
 * read, every series observed since the last reset is written into it with exactly the counts, sum
 * and count prom-client's own `observe` calls would have left: same exposition text. A series
 * appears on its first observation, as with prom-client (a histogram without labels shows its zero
 * series from the start, as prom-client's does). Observe only through this object: the hand-off
 * overwrites what the prom-client histogram counted itself. Exemplars are not kept.
 */
export class SummedHistogram<T extends string> {
  readonly histogram: Histogram<T>
  private readonly names: readonly T[]
  private readonly upperBounds: readonly number[]
  private readonly bounds: Float64Array
  private readonly index: LabelSetIndex<T, SummedSeries<T>>
  private readonly observed: SummedSeries<T>[] = []
  /** Series by their labels object (the one prom-client's entry keeps after `zero`). */
  private readonly byLabels = new Map<object, SummedSeries<T>>()
  /**
   * Series by their label values as strings: prom-client's series identity (`{ code: 1 }` and
   * `{ code: '1' }` are one series), which the index, keyed by the values themselves, is not.
   */
  private readonly byKey = new Map<string, SummedSeries<T>>()

  constructor(config: HistogramConfiguration<T>) {
    if (config.enableExemplars) throw new TypeError('SummedHistogram keeps no exemplars')
    const flush = () => this.flush()
    const collect = config.collect
    this.names = config.labelNames ?? []
    this.index = new LabelSetIndex(this.names)
    this.histogram = new Histogram<T>({
      ...config,
      collect() {
        flush()
        return collect?.call(this)
      },
    })
    this.upperBounds = [...internals(this.histogram).upperBounds]
    this.bounds = Float64Array.from(this.upperBounds)
    // A reset (the histogram's, or the registry's resetMetrics) empties every series; resolved ones
    // stay usable and appear again on their next observation, as with prom-client alone.
    const h = this.histogram
    const reset = h.reset.bind(h)
    h.reset = () => {
      for (const s of this.observed) s.clear()
      this.observed.length = 0
      reset()
    }
    const remove = h.remove.bind(h) as (...args: unknown[]) => void
    h.remove = (...args: unknown[]) => {
      remove(...args)
      const labels = (
        typeof args[0] === 'object' ? args[0] : Object.fromEntries(this.names.map((n, i) => [n, args[i]]))
      ) as Labels<T>
      const s = this.byKey.get(this.key(labels))
      if (s === undefined || s.count === 0) return
      s.clear()
      this.observed.splice(this.observed.indexOf(s), 1)
    }
  }

  /** The series of a label set (made on first use; the same object for the same label values). */
  labels(labels: Labels<T>): HistogramSeries {
    let s = this.index.get(labels)
    if (s === undefined) {
      this.histogram.labels(labels) // validates the label names as prom-client's observe would
      const key = this.key(labels)
      s = this.byKey.get(key)
      if (s === undefined) {
        const own = { ...labels }
        s = new SummedSeries(own, this.bounds, this.observed)
        this.byKey.set(key, s)
        this.byLabels.set(own, s)
      }
      this.index.set(labels, s)
    }
    return s
  }

  /** The label values as prom-client identifies a series (an absent value and `undefined` alike). */
  private key(labels: Labels<T>): string {
    return JSON.stringify(this.names.map((n) => (labels[n] === undefined ? null : String(labels[n]))))
  }

  /** `labels(labels).observe(value)`: a lookup per call, nothing allocated once the set is known. */
  observe(labels: Labels<T>, value: number): void {
    this.labels(labels).observe(value)
  }

  /** Writes the observed series into the prom-client histogram's entries. */
  private flush(): void {
    if (this.observed.length === 0) return
    const h = this.histogram
    // `zero` makes (or remakes) each entry under prom-client's own label hash, keeping its place in
    // the output order; the values are then set on the entries, found by their labels object.
    for (const s of this.observed) h.zero(s.labels)
    const entries = internals(h).hashMap
    const bounds = this.upperBounds
    for (const key in entries) {
      const entry = entries[key]
      const s = entry === undefined ? undefined : this.byLabels.get(entry.labels)
      if (entry === undefined || s === undefined || s.count === 0) continue
      for (let i = 0; i < bounds.length; i++) entry.bucketValues[bounds[i] as number] = s.counts[i] as number
      entry.sum = s.sum
      entry.count = s.count
    }
  }
}
