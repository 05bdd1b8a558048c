import t from 'tap'
import { type BudgetHolder, PartialFrameBudget } from '../../../src/common/server/partial-frame-budget'

function holder(since: number, evicted: string[], name: string): BudgetHolder {
  return { partialSince: since, evictForBudget: () => evicted.push(name) }
}

t.test('partial-frame budget - evicts the oldest partial frames until the total fits', async (t) => {
  const evicted: string[] = []
  const budget = new PartialFrameBudget(100)
  const a = holder(1, evicted, 'a')
  const b = holder(2, evicted, 'b')
  const c = holder(3, evicted, 'c')
  t.ok(budget.update(a, 40))
  t.ok(budget.update(b, 40))
  t.equal(budget.bytes, 80)
  t.ok(budget.update(c, 70), 'the newest keeps its bytes')
  t.same(evicted, ['a', 'b'], 'oldest first, as many as needed')
  t.equal(budget.bytes, 70)
  t.ok(budget.update(c, 0))
  t.equal(budget.bytes, 0)
})

t.test('partial-frame budget - the updated holder can be the one evicted', async (t) => {
  const evicted: string[] = []
  const budget = new PartialFrameBudget(100)
  const old = holder(1, evicted, 'old')
  const young = holder(2, evicted, 'young')
  t.ok(budget.update(young, 60))
  t.ok(budget.update(old, 30))
  t.notOk(budget.update(old, 50), 'growing the oldest frame past the limit evicts it')
  t.same(evicted, ['old'])
  t.equal(budget.bytes, 60)
  budget.remove(young)
  t.equal(budget.bytes, 0)
  budget.remove(young)
  t.equal(budget.bytes, 0, 'remove is idempotent')
})
