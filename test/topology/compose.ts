/**
 * docker-compose.yml as `docker compose up` would read it (interpolation from the shell's
 * environment, YAML merge keys), and what differs when a service runs as a process here
 * instead of in its container: the image's entry point becomes the CLI from the repository,
 * and the redis image becomes the local redis-server.
 */
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { parseDocument } from 'yaml'

export interface ComposeService {
  image?: string
  command?: string | string[]
  environment?: Record<string, string | number | boolean | null> | string[]
  healthcheck?: { test?: string | string[]; disable?: boolean }
  depends_on?: string[] | Record<string, { condition?: string }>
  deploy?: { replicas?: number }
  stop_grace_period?: string
}

export interface Compose {
  name?: string
  services: Record<string, ComposeService>
}

/** Compose's interpolation: ${VAR}, ${VAR:-def}, ${VAR-def}, ${VAR:?msg}, ${VAR?msg}, $$. */
function interpolate(src: string, env: Record<string, string | undefined>): string {
  return src.replace(
    /\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?)([-?])([^}]*))?\}/g,
    (m, name: string | undefined, colon: string | undefined, op: string | undefined, arg: string) => {
      if (m === '$$' || name === undefined) return '$'
      const v = env[name]
      const unset = v === undefined || (colon === ':' && v === '')
      if (op === undefined) return v ?? ''
      if (op === '-') return unset ? arg : v
      if (unset) throw new Error(`docker-compose.yml: ${name} is required: ${arg}`)
      return v
    },
  )
}

export function loadCompose(file: string, env: Record<string, string | undefined>): Compose {
  const doc = parseDocument(interpolate(readFileSync(file, 'utf8'), env), { merge: true, uniqueKeys: true })
  if (doc.errors.length > 0) throw new Error(`${file}: ${doc.errors.map((e) => e.message).join('; ')}`)
  return doc.toJS() as Compose
}

export const asList = (v: string | string[] | undefined): string[] =>
  v === undefined ? [] : Array.isArray(v) ? v : v.split(/\s+/).filter(Boolean)

export function envOf(s: ComposeService): Record<string, string> {
  const out: Record<string, string> = {}
  if (Array.isArray(s.environment)) {
    for (const kv of s.environment) {
      const i = kv.indexOf('=')
      if (i >= 0) out[kv.slice(0, i)] = kv.slice(i + 1)
    }
  } else {
    for (const [k, v] of Object.entries(s.environment ?? {})) out[k] = v === null ? '' : String(v)
  }
  return out
}

/** Compose durations: 1m30s, 25s, 500ms. */
export function durationMs(d: string | undefined, fallbackMs: number): number {
  if (d === undefined) return fallbackMs
  let total = 0
  let rest = d.trim()
  const unit: Record<string, number> = { us: 0.001, ms: 1, s: 1000, m: 60_000, h: 3_600_000 }
  while (rest.length > 0) {
    const m = /^(\d+(?:\.\d+)?)(us|ms|s|m|h)/.exec(rest)
    if (!m) throw new Error(`bad compose duration ${JSON.stringify(d)}`)
    total += Number(m[1]) * unit[m[2]!]!
    rest = rest.slice(m[0].length)
  }
  return total
}

/**
 * The image: its ENTRYPOINT (package.json "bin" under /app, as cluster/Dockerfile copies it)
 * and the ENV of its last stage (NODE_ENV=production).
 */
export function imageOf(root: string): { entry: string; env: Record<string, string> } {
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { bin: { shoal: string } }
  const dockerfile = readFileSync(join(root, 'cluster/Dockerfile'), 'utf8')
  const lastStage = dockerfile.slice(dockerfile.lastIndexOf('\nFROM '))
  const env: Record<string, string> = {}
  for (const m of lastStage.matchAll(/^ENV\s+(.+)$/gm)) {
    for (const kv of m[1]!.trim().split(/\s+/)) {
      const i = kv.indexOf('=')
      if (i > 0) env[kv.slice(0, i)] = kv.slice(i + 1)
    }
  }
  return { entry: `/app/${pkg.bin.shoal.replace(/^\.\//, '')}`, env }
}

/**
 * A service's command line, run here: `node <image entry> ARGS` (the image's ENTRYPOINT plus
 * the service's command, or a healthcheck's `CMD node /app/...`) becomes `node --import tsx
 * src/cli/main.ts ARGS`; the redis image's `redis-server ...` becomes the local binary with the
 * same flags plus what the image adds (see redisArgs).
 */
export function localCommand(argv: string[], o: { entry: string; cliArgv: string[] }): string[] {
  if (argv[0] === 'node' && argv[1] === o.entry) return [...o.cliArgv, ...argv.slice(2)]
  return argv
}

/**
 * The redis image runs `redis-server` in /data (the volume) and its docker-entrypoint.sh adds
 * `--protected-mode no` when no config file is given (otherwise a password-less server refuses
 * connections from other hosts). Here /data is a temp directory.
 */
export function redisArgs(command: string[], dataDir: string): string[] {
  const [bin, ...flags] = command.length > 0 ? command : ['redis-server']
  if (bin !== 'redis-server') throw new Error(`redis service: expected redis-server, got ${bin}`)
  return [bin, ...flags, '--protected-mode', 'no', '--dir', dataDir]
}

/** A healthcheck `test` as argv: ["CMD", ...] or ["CMD-SHELL", "..."] / a string (via sh -c). */
export function healthcheckArgv(test: string | string[] | undefined): string[] | null {
  if (test === undefined) return null
  if (typeof test === 'string') return ['sh', '-c', test]
  const [kind, ...rest] = test
  if (kind === 'CMD') return rest
  if (kind === 'CMD-SHELL') return ['sh', '-c', rest.join(' ')]
  return null // NONE
}
