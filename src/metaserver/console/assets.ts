import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

/**
 * The web console's browser files. Sources: `console/` at the package root (TypeScript for the DOM,
 * no framework, no runtime dependency). `npm run build` bundles them with esbuild into `dist/console/`
 * (index.html, app.js, app.css), which the package ships; the metaserver serves them from there.
 * Run from the sources (tsx: tests, `npm start` in a checkout), the metaserver finds no bundle beside
 * it and bundles the sources in memory once, on the first request for the console (esbuild comes
 * with the dev dependencies): no manual build step in development.
 */
export interface ConsoleAssets {
  files: ReadonlyMap<string, { body: Buffer; contentType: string }>
}

const CONTENT_TYPES: Record<string, string> = {
  'index.html': 'text/html; charset=utf-8',
  'app.js': 'text/javascript; charset=utf-8',
  'app.css': 'text/css; charset=utf-8',
}
const FILES = Object.keys(CONTENT_TYPES)

/** dist/metaserver/console -> dist/console; src/metaserver/console -> (none: built from sources). */
export const BUILT_DIR = join(__dirname, '..', '..', 'console')
/** The sources, at the package root (src/metaserver/console -> console/). */
export const SOURCE_DIR = join(__dirname, '..', '..', '..', 'console')

/** Minimal shape of the esbuild API used here (esbuild is a development dependency only). */
interface Esbuild {
  build(options: Record<string, unknown>): Promise<{ outputFiles?: { path: string; contents: Uint8Array }[] }>
}

/** Bundles the console sources; answers the three files' contents. */
export async function bundleConsole(sourceDir: string = SOURCE_DIR): Promise<Map<string, Buffer>> {
  const esbuild = (await import('esbuild')) as unknown as Esbuild
  const result = await esbuild.build({
    entryPoints: [join(sourceDir, 'src', 'main.ts')],
    bundle: true,
    write: false,
    format: 'iife',
    target: ['chrome100', 'firefox100', 'safari15'],
    minify: true,
    sourcemap: false,
    outfile: 'app.js',
    logLevel: 'silent',
  })
  const js = result.outputFiles?.find((f) => f.path.endsWith('.js'))
  if (js === undefined) throw new Error('esbuild produced no app.js')
  return new Map([
    ['index.html', readFileSync(join(sourceDir, 'index.html'))],
    ['app.js', Buffer.from(js.contents)],
    ['app.css', readFileSync(join(sourceDir, 'app.css'))],
  ])
}

/** Writes the bundle to `outDir` (npm run build: dist/console). */
export async function writeConsoleAssets(outDir: string = BUILT_DIR, sourceDir?: string): Promise<void> {
  const files = await bundleConsole(sourceDir)
  mkdirSync(outDir, { recursive: true })
  for (const [name, body] of files) writeFileSync(join(outDir, name), body)
}

function withTypes(files: Map<string, Buffer>): ConsoleAssets {
  const out = new Map<string, { body: Buffer; contentType: string }>()
  for (const [name, body] of files) out.set(name, { body, contentType: CONTENT_TYPES[name] ?? 'text/plain' })
  return { files: out }
}

let loading: Promise<ConsoleAssets> | undefined

/** The built files when they are there, else the sources bundled in memory (once per process). */
export function loadConsoleAssets(): Promise<ConsoleAssets> {
  loading ??= (async () => {
    if (FILES.every((f) => existsSync(join(BUILT_DIR, f)))) {
      return withTypes(new Map(FILES.map((f) => [f, readFileSync(join(BUILT_DIR, f))])))
    }
    return withTypes(await bundleConsole())
  })()
  loading.catch(() => {
    loading = undefined
  })
  return loading
}
