import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { outboxMigration, processedMigration } from '../../src/client/tx/sql'

/** docs/transactions.md shows the migration the provider runs: a test keeps them the same. */
t.test(
  'docs - docs/transactions.md shows the PostgreSQL migration as provider.migrate() runs it',
  async (t) => {
    const doc = readFileSync(join(__dirname, '../../docs/transactions.md'), 'utf8')
    for (const sql of [...outboxMigration('postgres'), ...processedMigration('postgres')]) {
      t.ok(doc.includes(`${sql};`), `the doc shows: ${sql.split('\n')[0]}`)
    }
  },
)
