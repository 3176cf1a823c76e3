/**
 * Module loader hooks of the threads that load a job module. job-loader.ts registers them with
 * `module.register` (they run on Node's loader hooks thread) BEFORE tsx's, so tsx sees what they
 * resolve:
 *
 * - The bare specifier `shoal` resolves to the job entry of the Shoal package that runs the job
 *   (`dist/src/job-entry.js` when built, `src/job-entry.ts` from sources: the index's names,
 *   without loading the node code), whatever is or is not
 *   installed next to the job file: a job outside any project (`/tmp/job.ts`, no node_modules)
 *   imports `defineJob` from the running Shoal, and a job in a project with its own copy gets
 *   the code that runs it.
 * - Job code is ES modules: a `.ts` or `.js` file outside node_modules whose package scope does
 *   not declare `"type"` (no package.json at all, typically) resolves as an ES module, as Node's
 *   own syntax detection loads `import`/`export` code. tsx would otherwise compile it to
 *   CommonJS, where `import ... from 'shoal'` becomes a `require` these hooks never see. A
 *   package that says `"type": "commonjs"` keeps its CommonJS.
 *
 * The hooks are plain JavaScript in a `data:` URL: the hooks thread must load them before any
 * TypeScript loader is registered (tsx has to come after them, see above), and a built package
 * has only what tsc emits (no copied `.mjs` files), so a source string works the same from
 * sources and from dist/. The same source comes in two forms: asynchronous for `module.register`
 * (Node 20: hooks on a hooks thread) and synchronous for `module.registerHooks` (Node 22.15+:
 * hooks in the thread itself, no hooks thread, whose isolate cost a worker ~25 MiB).
 */

/** Data for the hooks' `initialize`. */
export interface JobHooksData {
  /** URL of the running package's entry for jobs (job-entry.ts). */
  entry: string
}

const source = (sync: boolean): string => `
import { readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

let entry
export function initialize(data) {
  entry = data.entry
}

// Directory -> whether its package scope declares "type" (in its nearest package.json).
const typed = new Map()
function scopeDeclaresType(dir) {
  let result = typed.get(dir)
  if (result !== undefined) return result
  let json
  try {
    json = readFileSync(join(dir, 'package.json'), 'utf8')
  } catch {}
  if (json === undefined) {
    const parent = dirname(dir)
    result = parent === dir ? false : scopeDeclaresType(parent)
  } else {
    try {
      result = typeof JSON.parse(json).type === 'string'
    } catch {
      result = false
    }
  }
  typed.set(dir, result)
  return result
}

export ${sync ? '' : 'async '}function resolve(specifier, context, nextResolve) {
  if (specifier === 'shoal' && entry !== undefined) return nextResolve(entry, context)
  const r = ${sync ? '' : 'await '}nextResolve(specifier, context)
  if (!r.url.startsWith('file:') || r.url.includes('/node_modules/')) return r
  if (r.format !== 'commonjs' && r.format !== 'commonjs-typescript' && r.format != null) return r
  const path = fileURLToPath(r.url)
  if (!path.endsWith('.ts') && !path.endsWith('.js')) return r
  return scopeDeclaresType(dirname(path)) ? r : { ...r, format: 'module' }
}
`

/** The hooks module, for `module.register`. */
export const JOB_HOOKS_URL = `data:text/javascript,${encodeURIComponent(source(false))}`
/** The same hooks, synchronous: import it, `initialize`, then `module.registerHooks({ resolve })`. */
export const JOB_HOOKS_SYNC_URL = `data:text/javascript,${encodeURIComponent(source(true))}`
