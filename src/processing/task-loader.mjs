// Development entry of the processing threads (and of the thread engine.ts checkJob runs):
// running from TypeScript sources (tsx, vitest), a worker thread does not inherit the parent's
// --import hooks on every Node version, so it registers tsx itself before loading the task
// module. Built code loads task.js directly (job-loader.ts registers the same hooks there).
// The job hooks (job-hooks.ts: `shoal` resolves to this package, job code is ES modules) go
// first, before tsx, as in built code: tsImport loads their source without registering tsx
// for the whole thread yet.
import { register as registerHooks } from 'node:module'
import { register, tsImport } from 'tsx/esm/api'

/** @type {typeof import('./job-hooks.ts')} */
const { JOB_HOOKS_URL } = await tsImport('./job-hooks.ts', import.meta.url)
registerHooks(JOB_HOOKS_URL, { data: { entry: new URL('../job-entry.ts', import.meta.url).href } })
register()
const mod = await import('./task.ts')
export default mod.default
