#!/usr/bin/env node

// The qmq command. In a source checkout (src/ present) it runs the TypeScript sources through tsx,
// so `npm start` and `npx qmq` always run what is in the tree; an installed package runs dist/.
// libuv's threadpool runs every fs call of the brokers' and delay servers' stores (and DNS lookups).
// Its default of 4 threads is too few: a message-log write queued behind slow fdatasyncs (of the
// message log, consume logs and action log) waits for one of them to finish: on a loaded 2-core VM
// the median wait of a confirmed message for its write fell from 1.7 ms to 0.3 ms with 16 threads
// (bench/peers.ts with QMQ_BROKER_LOOP_STATS=1, docs/benchmarks.md).
// Set here, before anything can use the pool (it reads the variable once, when it starts); a value
// set by the user wins. Keep in step with BROKER_THREADPOOL_SIZE in bench/common.ts.
if (process.env.UV_THREADPOOL_SIZE === undefined) process.env.UV_THREADPOOL_SIZE = '16'

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
