// Development entry of the POST /events thread (ingest-threads.ts): running from TypeScript
// sources (tsx, vitest), a worker thread does not inherit the parent's --import hooks on every
// Node version, so it registers tsx itself. Built code loads ingest-thread.js directly.
import { register } from 'tsx/esm/api'

register()
await import('./ingest-thread.ts')
