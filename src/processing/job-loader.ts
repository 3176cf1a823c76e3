/**
 * Loading a job module in a processing thread (task.ts) or in the short-lived thread that checks
 * a job before a node starts (engine.ts checkJob). A job file may be TypeScript (`.ts`, `.mts`) or
 * JavaScript (`.js`, `.mjs`) ES modules on every supported Node: the thread registers
 * tsx's ESM loader (`tsx/esm/api`) and a resolve hook that maps `import ... from 'shoal'` to
 * this package (job-hooks.ts). Both are registered only in threads that load a job file (from
 * sources, task-loader.mjs registers them in every such thread), never on a node's main thread,
 * and not for built-in jobs in built code. Every way a job can fail to load is a
 * `SHOAL_ERR_JOB_INVALID` error naming the file and the cause (docs/decisions.md, "Job files").
 */
import { existsSync } from 'node:fs'
import nodeModule from 'node:module'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { ErrorCodes, ShoalError } from '../errors.ts'
import { bundleJob } from './job-bundle.ts'
import { JOB_HOOKS_SYNC_URL, JOB_HOOKS_URL, type JobHooksData } from './job-hooks.ts'
import type { JobDefinition } from './job.ts'

/** Running from TypeScript sources (tsx, vitest): a TypeScript loader is already registered. */
const FROM_SOURCES = import.meta.url.endsWith('.ts')
const EXT = FROM_SOURCES ? '.ts' : '.js'
/**
 * What `import ... from 'shoal'` gives a job: this package's exports without the node code
 * (job-entry.ts: the whole index cost every processing thread ~17 MiB).
 */
export const SHOAL_ENTRY = new URL(`../job-entry${EXT}`, import.meta.url).href

let hooks: Promise<void> | undefined

/**
 * Register the job hooks (`shoal` resolution, ES modules: job-hooks.ts), then tsx's ESM loader,
 * in this thread, once. From sources, task-loader.mjs (the threads' development entry) has
 * registered both already, in the same order.
 */
function registerJobHooks(): Promise<void> {
  hooks ??= (async () => {
    if (FROM_SOURCES) return
    const registerHooks = (nodeModule as { registerHooks?: (hooks: { resolve: unknown }) => unknown })
      .registerHooks
    if (registerHooks !== undefined) {
      // Node 22.15+: in this thread, no hooks thread (tsx does the same on these versions).
      const sync = (await import(JOB_HOOKS_SYNC_URL)) as {
        initialize: (data: JobHooksData) => void
        resolve: unknown
      }
      sync.initialize({ entry: SHOAL_ENTRY })
      registerHooks({ resolve: sync.resolve })
    } else {
      nodeModule.register<JobHooksData>(JOB_HOOKS_URL, { data: { entry: SHOAL_ENTRY } })
    }
    const tsx = await import('tsx/esm/api')
    tsx.register()
  })()
  return hooks
}

function invalid(file: string, message: string, cause?: unknown): ShoalError {
  return new ShoalError(ErrorCodes.JOB_INVALID, `job ${file}: ${message}`, {
    ...(cause === undefined ? {} : { cause }),
    data: { job: file },
  })
}

const HOW = 'a job module must `export default defineJob({ name, init, process })`'

/** Why `value` is not a job, or null when it is one. */
function notAJob(value: unknown): string | null {
  if (value === undefined) return `it has no default export; ${HOW}`
  if (typeof value !== 'object' || value === null)
    return `its default export is not a job (got ${value === null ? 'null' : typeof value}); ${HOW}`
  const j = value as Partial<Record<keyof JobDefinition, unknown>>
  const missing: string[] = []
  if (typeof j.name !== 'string' || j.name.length === 0) missing.push('name (a non-empty string)')
  if (typeof j.init !== 'function') missing.push('init (a function)')
  if (typeof j.process !== 'function') missing.push('process (a function)')
  return missing.length === 0 ? null : `its default export is not a job: no ${missing.join(', no ')}; ${HOW}`
}

/** How a thread loads a job file (built code; from sources the loader hooks always do). */
export interface LoadJobOptions {
  /** Import this bundle of the job (job-bundle.ts), made by the thread that checked it. */
  bundle?: string | undefined
  /** Make the bundle (the checking thread); its URL is returned with the job. */
  makeBundle?: boolean
}

/**
 * Import and validate a job: `ref` is a built-in job name ('count'), an absolute path or a
 * `file:` URL. Throws a `SHOAL_ERR_JOB_INVALID` ShoalError when it cannot load or is not a job.
 * Built code loads a job file from its bundle (`options`), without loader hooks; a thread given
 * no bundle (a node started through the API without `checkJob`) registers the hooks instead.
 */
export async function loadJob(
  ref: string,
  options: LoadJobOptions = {},
): Promise<{ job: JobDefinition; bundle?: string }> {
  if (ref === 'count') {
    const mod = (await import(new URL(`./jobs/count${EXT}`, import.meta.url).href)) as {
      default: JobDefinition
    }
    return { job: mod.default }
  }
  let url: string
  let file: string
  try {
    url = ref.startsWith('file:') ? ref : pathToFileURL(ref).href
    file = fileURLToPath(url)
  } catch (e) {
    throw invalid(ref, 'not a path or file: URL', e)
  }
  if (!existsSync(file)) throw invalid(file, 'no such file')
  let bundle = FROM_SOURCES ? undefined : options.bundle
  if (!FROM_SOURCES && bundle === undefined && options.makeBundle === true) {
    try {
      bundle = await bundleJob(file, SHOAL_ENTRY)
    } catch (e) {
      throw invalid(
        file,
        `cannot be loaded: ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}`,
        e,
      )
    }
  }
  if (bundle !== undefined) {
    // Stack traces of the job's code point at its sources (the bundle has an inline map).
    process.setSourceMapsEnabled(true)
  } else {
    await registerJobHooks()
  }
  let mod: { default?: unknown }
  try {
    mod = (await import(bundle ?? url)) as { default?: unknown }
  } catch (e) {
    const cause = e instanceof Error ? `${e.name}: ${e.message}` : String(e)
    throw invalid(file, `cannot be loaded: ${cause}`, e)
  }
  const why = notAJob(mod.default)
  if (why !== null) throw invalid(file, why)
  return bundle === undefined
    ? { job: mod.default as JobDefinition }
    : { job: mod.default as JobDefinition, bundle }
}
