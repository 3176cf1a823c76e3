// Development entry of the processing threads: running from TypeScript sources (tsx, vitest),
// a worker thread does not inherit the parent's --import hooks on every Node version, so it
// registers tsx itself before loading the task module. Built code loads task.js directly.
import { register } from 'tsx/esm/api'

register()
const mod = await import('./task.ts')
export default mod.default
