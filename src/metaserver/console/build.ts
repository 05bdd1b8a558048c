import { BUILT_DIR, writeConsoleAssets } from './assets'

/** `npm run build`: bundles the web console's sources (console/) into dist/console. */
writeConsoleAssets().then(
  () => process.stdout.write(`web console bundled into ${BUILT_DIR}\n`),
  (err: unknown) => {
    process.stderr.write(
      `cannot bundle the web console: ${err instanceof Error ? err.message : String(err)}\n`,
    )
    process.exitCode = 1
  },
)
