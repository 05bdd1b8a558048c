#!/usr/bin/env node

// The qmq command. In a source checkout (src/ present) it runs the TypeScript sources through tsx,
// so `npm start` and `npx qmq` always run what is in the tree; an installed package runs dist/.
const { existsSync } = require('node:fs')
const { join } = require('node:path')

const root = join(__dirname, '..')
const src = join(root, 'src', 'cli', 'main.ts')
if (existsSync(src)) {
  require('tsx/cjs')
  require(src).main(process.argv.slice(2))
} else {
  require(join(root, 'dist', 'cli', 'main.js')).main(process.argv.slice(2))
}
