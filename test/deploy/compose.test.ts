/**
 * docker-compose.yml, cluster/Dockerfile and .dockerignore, checked without a Docker engine.
 *
 * 1. Static: the compose-spec JSON schema (the copy dclint ships, so it follows the current spec)
 *    via ajv, plus the rules `docker compose up --scale worker=N` and health-gated startup only
 *    enforce at run time, plus Shoal's contract (ports, SHOAL_* variables, probe commands).
 *    Each rule is also shown to fire on a broken copy of the file. docker-compose.pipeline.yml is
 *    checked the same way, merged over docker-compose.yml with its profile active.
 * 2. Live: a real coordinator and worker (`node --import tsx src/cli/main.ts`) started with the
 *    exact environment compose gives them (ports remapped to free loopback ports, `redis` and
 *    `coordinator` mapped to 127.0.0.1, a real redis-server), then every healthcheck command the
 *    file and the image define is run against them, and a worker is stopped with SIGTERM.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs'
import { once } from 'node:events'
import { createServer } from 'node:net'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Ajv } from 'ajv'
import { parseDocument } from 'yaml'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { parseSinkUrl, parseSourceUrl } from '../../src/connectors/url.ts'

const ROOT = fileURLToPath(new URL('../../', import.meta.url))
const COMPOSE_FILE = join(ROOT, 'docker-compose.yml')
const PIPELINE_FILE = join(ROOT, 'docker-compose.pipeline.yml')
const DOCKERFILE = join(ROOT, 'cluster/Dockerfile')
const DOCKERIGNORE = join(ROOT, '.dockerignore')
const MAIN_TS = join(ROOT, 'src/cli/main.ts')

// ---- the contract (ARCHITECTURE.md "Command line" + the deployment conventions) -----------------

/** Every environment variable the Shoal CLI reads. A deploy file may set only these. */
const KNOWN_SHOAL_ENV = new Set([
  'SHOAL_TRANSPORT',
  'SHOAL_LISTEN',
  'SHOAL_HTTP',
  'SHOAL_COORDINATOR',
  'SHOAL_STATE',
  'SHOAL_PARTITIONS',
  'SHOAL_THREADS',
  'SHOAL_JOB',
  'SHOAL_TOKEN',
  'SHOAL_ADVERTISE',
  'SHOAL_NODE_ID',
  'SHOAL_DRAIN_TIMEOUT_MS',
  'SHOAL_HEARTBEAT_INTERVAL_MS',
  'SHOAL_HEARTBEAT_MISSES',
  'SHOAL_LOG_LEVEL',
  'SHOAL_SOURCE',
  'SHOAL_SINK',
])
const PORTS = {
  coordinator: { transport: 7400, http: 7401 },
  worker: { transport: 7410, http: 7411 },
} as const
const PACKAGE = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { bin: { shoal: string } }
/** Where the image keeps the CLI: /app + package.json "bin". */
const IMAGE_ENTRY = `/app/${PACKAGE.bin.shoal.replace(/^\.\//, '')}`

// ---- compose model --------------------------------------------------------------------------------

interface Healthcheck {
  test?: string | string[]
  disable?: boolean
  interval?: string
  timeout?: string
  retries?: number
  start_period?: string
}
interface Service {
  image?: string
  build?: string | { context?: string; dockerfile?: string }
  command?: string | string[]
  entrypoint?: string | string[]
  environment?: Record<string, string | number | boolean | null> | string[]
  env_file?: unknown
  ports?: (string | number | { target?: number | string; published?: number | string; host_ip?: string })[]
  expose?: (string | number)[]
  healthcheck?: Healthcheck
  depends_on?: string[] | Record<string, { condition?: string; required?: boolean }>
  container_name?: string
  hostname?: string
  scale?: number
  deploy?: { replicas?: number }
  stop_grace_period?: string
  profiles?: string[]
  volumes?: (string | { type?: string; source?: string; target?: string })[]
}
interface Compose {
  name?: string
  services: Record<string, Service>
  volumes?: Record<string, unknown>
}

/** Compose's interpolation: ${VAR}, ${VAR:-def}, ${VAR-def}, ${VAR:?msg}, ${VAR?msg}, $$. */
function interpolate(src: string, env: Record<string, string | undefined>, errors: string[]): string {
  return src.replace(
    /\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?)([-?])([^}]*))?\}/g,
    (m, name: string | undefined, colon: string | undefined, op: string | undefined, arg: string) => {
      if (m === '$$' || name === undefined) return '$$'
      const v = env[name]
      const unset = v === undefined || (colon === ':' && v === '')
      if (op === undefined) return v ?? ''
      if (op === '-') return unset ? arg : v
      if (unset) errors.push(`interpolation: ${name} is required: ${arg}`)
      return v ?? ''
    },
  )
}

/**
 * `docker compose -f base -f override`: mappings merge key by key (environment, depends_on,
 * services), anything else in the override replaces the base's value.
 */
function mergeCompose<T>(base: T, override: unknown): T {
  if (
    typeof base !== 'object' ||
    base === null ||
    Array.isArray(base) ||
    typeof override !== 'object' ||
    override === null ||
    Array.isArray(override)
  ) {
    return structuredClone(override) as T
  }
  const out: Record<string, unknown> = { ...(base as Record<string, unknown>) }
  for (const [k, v] of Object.entries(override))
    out[k] = k in out ? mergeCompose(out[k], v) : structuredClone(v)
  return out as T
}

/** Parse and interpolate like `docker compose config`, with an empty shell environment. */
function loadCompose(
  text: string,
  env: Record<string, string | undefined> = {},
): { doc: Compose; errors: string[] } {
  const errors: string[] = []
  const parsed = parseDocument(interpolate(text, env, errors), { merge: true, uniqueKeys: true })
  if (parsed.errors.length > 0)
    return { doc: { services: {} }, errors: parsed.errors.map((e) => `YAML: ${e.message}`) }
  return { doc: parsed.toJS() as Compose, errors }
}

let composeValidator: ((doc: unknown) => string[]) | undefined
/** The compose-spec schema dclint ships (current spec: name, profiles, start_period, required ...). */
function schemaErrors(doc: unknown): string[] {
  if (composeValidator === undefined) {
    const require = createRequire(import.meta.url)
    const schemaPath = require
      .resolve('dclint/package.json')
      .replace(/package\.json$/, 'schemas/compose.schema.json')
    const schema = JSON.parse(readFileSync(schemaPath, 'utf8')) as Record<string, unknown>
    delete schema.$schema // draft-07, which Ajv 8 has built in
    const validate = new Ajv({ allErrors: true, strict: false, allowUnionTypes: true }).compile(schema)
    composeValidator = (d) => {
      if (validate(d)) return []
      return (validate.errors ?? [])
        .filter((e) => e.keyword !== 'oneOf' && e.keyword !== 'anyOf')
        .map((e) => {
          const p = e.params as { additionalProperty?: string; allowedValues?: unknown }
          const extra = p.additionalProperty ?? (p.allowedValues ? JSON.stringify(p.allowedValues) : '')
          return `schema: ${e.instancePath || '/'} ${e.message ?? ''}${extra ? ` (${extra})` : ''}`
        })
    }
  }
  return composeValidator(doc)
}

const asList = (v: string | string[] | undefined): string[] =>
  v === undefined ? [] : Array.isArray(v) ? v : v.split(/\s+/).filter(Boolean)

function envOf(s: Service): Record<string, string> {
  const out: Record<string, string> = {}
  if (Array.isArray(s.environment)) {
    for (const kv of s.environment) {
      const i = kv.indexOf('=')
      out[i < 0 ? kv : kv.slice(0, i)] = i < 0 ? '' : kv.slice(i + 1)
    }
  } else {
    for (const [k, v] of Object.entries(s.environment ?? {})) out[k] = v === null ? '' : String(v)
  }
  return out
}

function depsOf(s: Service): Record<string, { condition: string }> {
  if (Array.isArray(s.depends_on))
    return Object.fromEntries(s.depends_on.map((d) => [d, { condition: 'service_started' }]))
  return Object.fromEntries(
    Object.entries(s.depends_on ?? {}).map(([k, v]) => [k, { condition: v.condition ?? 'service_started' }]),
  )
}

/** "HOST:PORT" / "PORT" -> port number (NaN when there is none). */
function portOf(addr: string | undefined): number {
  const m = /(?:^|:)(\d{1,5})$/.exec(addr ?? '')
  return m ? Number(m[1]) : NaN
}
function hostOf(addr: string | undefined): string {
  const a = addr ?? ''
  const i = a.lastIndexOf(':')
  return i < 0 ? a : a.slice(0, i)
}

/** Compose durations: 1m30s, 25s, 500ms, 2h. */
function durationMs(d: string | undefined): number {
  if (d === undefined) return NaN
  let total = 0
  let rest = d.trim()
  const unit: Record<string, number> = { us: 0.001, ms: 1, s: 1000, m: 60_000, h: 3_600_000 }
  while (rest.length > 0) {
    const m = /^(\d+(?:\.\d+)?)(us|ms|s|m|h)/.exec(rest)
    if (!m) return NaN
    total += Number(m[1]) * unit[m[2]!]!
    rest = rest.slice(m[0].length)
  }
  return total
}

interface PublishedPort {
  target: number
  published: string | undefined
}
function portsOf(s: Service): PublishedPort[] {
  return (s.ports ?? []).map((p) => {
    if (typeof p === 'object') return { target: Number(p.target), published: p.published?.toString() }
    const parts = String(p)
      .replace(/\/(tcp|udp)$/, '')
      .split(':')
    return { target: Number(parts.at(-1)), published: parts.length > 1 ? parts.at(-2) : undefined }
  })
}

function roleOf(s: Service): 'coordinator' | 'worker' | undefined {
  const cmd = asList(s.command)[0]
  return cmd === 'coordinator' || cmd === 'worker' ? cmd : undefined
}

/**
 * Every problem `docker compose up --scale <scale>` would hit at run time, and every departure
 * from Shoal's deployment contract. Empty when the file is good.
 */
function checkCompose(
  doc: Compose,
  scale: Record<string, number> = {},
  activeProfiles: readonly string[] = [],
): string[] {
  const errs: string[] = []
  const services = doc.services ?? {}
  // profiles: a service outside every active profile is not started, so nothing started may need it
  const enabled = (n: string): boolean => {
    const p = services[n]?.profiles ?? []
    return p.length === 0 || p.some((x) => activeProfiles.includes(x))
  }
  for (const [name, s] of Object.entries(services)) {
    if (!enabled(name)) continue
    for (const dep of Object.keys(depsOf(s))) {
      if (services[dep] && !enabled(dep)) {
        errs.push(
          `${name}: depends_on ${dep}, which only profile ${(services[dep].profiles ?? []).join(', ')} starts`,
        )
      }
    }
  }
  for (const want of ['redis', 'coordinator', 'worker'])
    if (!services[want]) errs.push(`missing service "${want}"`)

  // depends_on targets, health-gated dependencies, cycles
  for (const [name, s] of Object.entries(services)) {
    for (const [dep, { condition }] of Object.entries(depsOf(s))) {
      const target = services[dep]
      if (!target) {
        errs.push(`${name}: depends_on unknown service "${dep}"`)
        continue
      }
      const hc = target.healthcheck
      const noCheck =
        !hc || hc.disable === true || asList(hc.test)[0] === 'NONE' || asList(hc.test).length === 0
      if (condition === 'service_healthy' && noCheck) {
        errs.push(`${name}: depends_on ${dep} with service_healthy, but ${dep} has no healthcheck`)
      }
    }
    const t = s.healthcheck?.test
    if (Array.isArray(t) && !['CMD', 'CMD-SHELL', 'NONE'].includes(t[0] ?? '')) {
      errs.push(`${name}: healthcheck.test[0] must be CMD, CMD-SHELL or NONE`)
    }
  }
  const state: Record<string, number> = {}
  const visit = (n: string, path: string[]): void => {
    if (state[n] === 1) errs.push(`depends_on cycle: ${[...path, n].join(' -> ')}`)
    if (state[n] !== undefined || !services[n]) return
    state[n] = 1
    for (const d of Object.keys(depsOf(services[n]))) visit(d, [...path, n])
    state[n] = 2
  }
  for (const n of Object.keys(services)) visit(n, [])

  // what breaks replicas 2..N
  for (const [name, s] of Object.entries(services)) {
    if (s.scale !== undefined && s.deploy?.replicas !== undefined) {
      errs.push(`${name}: set only one of scale and deploy.replicas`)
    }
    const replicas = scale[name] ?? s.scale ?? s.deploy?.replicas ?? 1
    if (replicas <= 1) continue
    if (s.container_name !== undefined)
      errs.push(`${name}: container_name cannot be used with ${replicas} replicas`)
    if (s.hostname !== undefined)
      errs.push(`${name}: a fixed hostname gives ${replicas} replicas one identity`)
    for (const p of portsOf(s)) {
      if (p.published !== undefined && !p.published.includes('-')) {
        errs.push(`${name}: host port ${p.published} is published; ${replicas} replicas would collide`)
      }
    }
  }

  // Shoal nodes: roles, image, environment, ports, probes
  for (const [name, s] of Object.entries(services)) {
    const role = roleOf(s)
    const env = envOf(s)
    for (const k of Object.keys(env)) {
      if (k.startsWith('SHOAL_') && !KNOWN_SHOAL_ENV.has(k)) errs.push(`${name}: unknown variable ${k}`)
    }
    if (role === undefined) continue
    const build = typeof s.build === 'string' ? { context: s.build } : s.build
    if (build?.dockerfile !== 'cluster/Dockerfile' || (build.context ?? '.') !== '.') {
      errs.push(`${name}: must build context "." with dockerfile cluster/Dockerfile`)
    }
    if (s.env_file !== undefined || Array.isArray(s.environment)) {
      errs.push(`${name}: configure with an environment map only`)
    }
    const want = PORTS[role]
    if (portOf(env.SHOAL_LISTEN) !== want.transport) {
      errs.push(`${name}: SHOAL_LISTEN must listen on ${want.transport} (got ${env.SHOAL_LISTEN})`)
    }
    if (portOf(env.SHOAL_HTTP) !== want.http) {
      errs.push(`${name}: SHOAL_HTTP must listen on ${want.http} (got ${env.SHOAL_HTTP})`)
    }
    for (const k of ['SHOAL_LISTEN', 'SHOAL_HTTP'] as const) {
      if (!['0.0.0.0', '[::]', ''].includes(hostOf(env[k]))) {
        errs.push(`${name}: ${k} must bind all interfaces inside the container (got ${env[k]})`)
      }
    }
    if (!['tcp', 'grpc'].includes(env.SHOAL_TRANSPORT ?? 'tcp'))
      errs.push(`${name}: SHOAL_TRANSPORT must be tcp or grpc`)
    const state = env.SHOAL_STATE
    if (state === undefined) errs.push(`${name}: SHOAL_STATE is not set`)
    else if (/^rediss?:/.test(state)) {
      const u = new URL(state)
      if (!services[u.hostname]) errs.push(`${name}: SHOAL_STATE host "${u.hostname}" is not a service`)
      else if (!(u.hostname in depsOf(s))) errs.push(`${name}: uses ${u.hostname} but does not depend on it`)
    }
    if (env.SHOAL_TOKEN === undefined || env.SHOAL_TOKEN === '') errs.push(`${name}: SHOAL_TOKEN is not set`)
    // --source / --sink: every URL parses; its Redis or Postgres host is a service this one
    // waits for (healthy); a bundled Postgres is reached with the credentials it is started with.
    for (const [k, parse] of [
      ['SHOAL_SOURCE', parseSourceUrl],
      ['SHOAL_SINK', parseSinkUrl],
    ] as const) {
      if (env[k] !== undefined && role !== 'worker') errs.push(`${name}: ${k} is a worker setting`)
      for (const url of asList(env[k])) {
        let spec: ReturnType<typeof parse>
        try {
          spec = parse(url, k)
        } catch (e) {
          errs.push(`${name}: ${(e as Error).message}`)
          continue
        }
        if (spec.kind === 'file') continue
        const u = new URL(spec.kind === 'postgres' ? spec.url : spec.redis)
        const target = services[u.hostname]
        if (!target) {
          errs.push(`${name}: ${k} host "${u.hostname}" is not a service`)
          continue
        }
        if (depsOf(s)[u.hostname]?.condition !== 'service_healthy') {
          errs.push(`${name}: ${k} uses ${u.hostname}; depend on it with condition service_healthy`)
        }
        if (spec.kind === 'postgres') {
          const dbEnv = envOf(target)
          const user = dbEnv.POSTGRES_USER ?? 'postgres'
          if (
            decodeURIComponent(u.username) !== user ||
            decodeURIComponent(u.password) !== dbEnv.POSTGRES_PASSWORD ||
            u.pathname.slice(1) !== (dbEnv.POSTGRES_DB ?? user) ||
            Number(u.port || 5432) !== 5432
          ) {
            errs.push(
              `${name}: ${k} must use ${u.hostname}'s POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB and port 5432`,
            )
          }
        }
      }
    }

    // healthcheck: the node's own probe command against its readiness endpoint
    const test = asList(s.healthcheck?.test)
    const [kind, ...cmd] = test
    const httpProbe = ['node', IMAGE_ENTRY, 'probe', 'http', `http://127.0.0.1:${want.http}/readyz`]
    const grpcProbe = ['node', IMAGE_ENTRY, 'probe', 'grpc', `127.0.0.1:${want.transport}`]
    const sameAs = (a: string[], b: string[]): boolean =>
      a.length >= b.length && b.every((x, i) => a[i] === x)
    if (kind !== 'CMD' || !(sameAs(cmd, httpProbe) || sameAs(cmd, grpcProbe))) {
      errs.push(`${name}: healthcheck must be ["CMD", ${httpProbe.map((x) => JSON.stringify(x)).join(', ')}]`)
    }
    if (durationMs(s.healthcheck?.timeout ?? '30s') < 1000) {
      errs.push(`${name}: healthcheck.timeout is below the probe's own 1 s timeout`)
    }

    if (role === 'coordinator') {
      const published = portsOf(s)
      for (const port of [want.transport, want.http]) {
        const p = published.find((x) => x.target === port)
        if (!p || p.published !== String(port))
          errs.push(`${name}: container port ${port} must be published as ${port}`)
      }
      for (const p of published) {
        if (p.target !== want.transport && p.target !== want.http)
          errs.push(`${name}: unexpected port ${p.target}`)
      }
    } else {
      if (portsOf(s).length > 0) errs.push(`${name}: workers must not publish ports to the host`)
      const exposed = new Set((s.expose ?? []).map(Number))
      for (const port of [want.transport, want.http]) {
        if (!exposed.has(port)) errs.push(`${name}: expose ${port}`)
      }
      // one value shared by all replicas would give every worker the same identity/address
      for (const k of ['SHOAL_NODE_ID', 'SHOAL_ADVERTISE']) {
        if (env[k] !== undefined) errs.push(`${name}: ${k} is shared by all replicas; leave it unset`)
      }
      const coordinatorName = Object.keys(services).find((n) => roleOf(services[n]!) === 'coordinator')
      const coordinator = coordinatorName === undefined ? undefined : services[coordinatorName]
      const expected = `${coordinatorName}:${portOf(coordinator && envOf(coordinator).SHOAL_LISTEN)}`
      if (env.SHOAL_COORDINATOR !== expected) {
        errs.push(`${name}: SHOAL_COORDINATOR must be ${expected} (got ${env.SHOAL_COORDINATOR})`)
      }
      if (depsOf(s)[coordinatorName ?? '']?.condition !== 'service_healthy') {
        errs.push(`${name}: must depend on ${coordinatorName} with condition service_healthy`)
      }
      const drain = Number(env.SHOAL_DRAIN_TIMEOUT_MS ?? 20_000)
      if (!(durationMs(s.stop_grace_period ?? '10s') > drain)) {
        errs.push(
          `${name}: stop_grace_period ${s.stop_grace_period ?? '10s'} must exceed the drain timeout ${drain} ms`,
        )
      }
    }
  }

  // the token must be the same everywhere
  const tokens = new Set(
    Object.values(services)
      .map((s) => envOf(s).SHOAL_TOKEN)
      .filter((t) => t !== undefined),
  )
  if (tokens.size > 1) errs.push('SHOAL_TOKEN differs between services')

  // redis: AOF, a named volume, a healthcheck
  const redis = services.redis
  if (redis) {
    const cmd = asList(redis.command)
    const i = cmd.indexOf('--appendonly')
    if (i < 0 || cmd[i + 1] !== 'yes') errs.push('redis: run with --appendonly yes')
    if (asList(redis.healthcheck?.test).join(' ') !== 'CMD redis-cli ping')
      errs.push('redis: healthcheck redis-cli ping')
    const data = (redis.volumes ?? []).map((v) =>
      typeof v === 'string' ? v.split(':') : [v.source, v.target],
    )
    const named = data.find(
      ([src, dst]) => dst === '/data' && src !== undefined && /^[a-zA-Z0-9][\w.-]*$/.test(src),
    )
    if (!named) errs.push('redis: mount a named volume at /data')
    else if (!(named[0]! in (doc.volumes ?? {}))) errs.push(`redis: volume ${named[0]} is not declared`)
  }

  // postgres (any service running the postgres image): pg_isready, its data on a named volume
  for (const [name, s] of Object.entries(services)) {
    if (!/^postgres(:|$)/.test(s.image ?? '')) continue
    const test = asList(s.healthcheck?.test)
    if (test[0] !== 'CMD' || test[1] !== 'pg_isready')
      errs.push(`${name}: healthcheck must be ["CMD", "pg_isready", ...]`)
    const env = envOf(s)
    if (!env.POSTGRES_PASSWORD) errs.push(`${name}: POSTGRES_PASSWORD is not set`)
    const dataDir = env.PGDATA ?? '/var/lib/postgresql/data'
    const mount = (s.volumes ?? [])
      .map((v) => (typeof v === 'string' ? v.split(':') : [v.source, v.target]))
      .find(
        ([src, dst]) =>
          src !== undefined &&
          dst !== undefined &&
          dataDir.startsWith(dst) &&
          /^[a-zA-Z0-9][\w.-]*$/.test(src),
      )
    if (!mount) errs.push(`${name}: mount a named volume at ${dataDir}`)
    else if (!(mount[0]! in (doc.volumes ?? {}))) errs.push(`${name}: volume ${mount[0]} is not declared`)
  }
  return errs
}

// ---- Dockerfile + .dockerignore ---------------------------------------------------------------------

interface Instruction {
  op: string
  args: string
}
function parseDockerfile(text: string): Instruction[] {
  const out: Instruction[] = []
  let cur = ''
  for (const raw of text.split('\n')) {
    const line = raw.trimEnd()
    if (cur === '' && /^\s*#/.test(line)) continue
    if (line.endsWith('\\')) {
      cur += line.slice(0, -1) + ' '
      continue
    }
    cur += line
    const m = /^\s*([A-Za-z]+)\s+([\s\S]*)$/.exec(cur)
    if (m) out.push({ op: m[1]!.toUpperCase(), args: m[2]!.trim() })
    cur = ''
  }
  return out
}

/** .dockerignore semantics: patterns in order, the last match wins, `!` re-includes. */
function dockerIgnored(patterns: string[], path: string): boolean {
  const toRe = (p: string): RegExp =>
    new RegExp(
      '^' +
        p
          .replace(/[.+^${}()|[\]\\]/g, '\\$&')
          .replace(/\*\*\/?/g, '<GLOBSTAR>')
          .replace(/\*/g, '[^/]*')
          .replace(/\?/g, '[^/]')
          .replace(/<GLOBSTAR>/g, '(?:.*/)?') +
        '$',
    )
  const parts = path.split('/')
  const prefixes = parts.map((_, i) => parts.slice(0, i + 1).join('/'))
  let ignored = false
  for (const raw of patterns) {
    const negate = raw.startsWith('!')
    const p = (negate ? raw.slice(1) : raw).replace(/^\/+/, '').replace(/\/+$/, '')
    const re = toRe(p)
    if (prefixes.some((x) => re.test(x))) ignored = !negate
  }
  return ignored
}

// ---- live nodes -----------------------------------------------------------------------------------------

async function freePort(): Promise<number> {
  const srv = createServer()
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r))
  const port = (srv.address() as { port: number }).port
  await new Promise<void>((r) => srv.close(() => r()))
  return port
}

interface Proc {
  child: ChildProcess
  output: () => string
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
}
const procs: Proc[] = []
function startProcess(cmd: string, args: string[], env: Record<string, string>): Proc {
  const base = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !k.startsWith('SHOAL_') && !k.startsWith('POD_')),
  )
  const child = spawn(cmd, args, { cwd: ROOT, env: { ...base, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  const keep = (d: Buffer): void => {
    out = (out + d.toString()).slice(-40_000)
  }
  child.stdout.on('data', keep)
  child.stderr.on('data', keep)
  const exited = once(child, 'exit').then(([code, signal]) => ({
    code: code as number | null,
    signal: signal as NodeJS.Signals | null,
  }))
  const p = { child, output: () => out, exited }
  procs.push(p)
  return p
}

async function stopAll(): Promise<void> {
  await Promise.all(
    procs.splice(0).map(async (p) => {
      if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL')
      await p.exited
    }),
  )
}

async function startRedis(dir: string): Promise<number> {
  const port = await freePort()
  // The compose service's own flags (--appendonly yes), on loopback in a temporary directory.
  const redis = startProcess(
    'redis-server',
    ['--bind', '127.0.0.1', '--port', String(port), '--appendonly', 'yes', '--save', '', '--dir', dir],
    {},
  )
  const deadline = Date.now() + 10_000
  while (!redis.output().includes('Ready to accept connections')) {
    if (redis.child.exitCode !== null || Date.now() > deadline) {
      throw new Error(`redis-server did not start (is it installed?)\n${redis.output()}`)
    }
    await new Promise((r) => setTimeout(r, 20))
  }
  return port
}

async function httpGet(
  url: string,
  timeoutMs = 3000,
  headers: Record<string, string> = {},
): Promise<{ status: number; text: string; ms: number }> {
  const t0 = performance.now()
  const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs), headers })
  const text = await res.text()
  return { status: res.status, text, ms: performance.now() - t0 }
}

async function waitForStatus(url: string, want: number, proc: Proc, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  let last = 'no answer'
  for (;;) {
    if (proc.child.exitCode !== null)
      throw new Error(`node exited (${proc.child.exitCode})\n${proc.output()}`)
    try {
      const r = await httpGet(url, 1000)
      if (r.status === want) return
      last = `HTTP ${r.status} ${r.text.slice(0, 200)}`
    } catch (err) {
      last = (err as Error).message
    }
    if (Date.now() > deadline)
      throw new Error(`${url} not ${want} after ${timeoutMs} ms (${last})\n${proc.output()}`)
    await new Promise((r) => setTimeout(r, 100))
  }
}

function run(
  cmd: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      cmd,
      args,
      { cwd: ROOT, env: { ...process.env, ...env }, timeout: 15_000 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0
        resolve({ code, stdout, stderr })
      },
    )
  })
}

/** Rewrite compose addresses to the test's loopback ports: HOST:PORT, and URLs for SHOAL_STATE. */
function remapEnv(env: Record<string, string>, ports: Map<number, number>, hosts: Record<string, string>) {
  const out: Record<string, string> = {}
  const addr = (v: string): string => {
    const host = hostOf(v)
    const port = portOf(v)
    return `${hosts[host] ?? host}:${ports.get(port) ?? port}`
  }
  for (const [k, v] of Object.entries(env)) {
    if (
      ['SHOAL_LISTEN', 'SHOAL_HTTP', 'SHOAL_COORDINATOR', 'SHOAL_ADVERTISE'].includes(k) &&
      v.includes(':')
    ) {
      out[k] = addr(v)
    } else if (k === 'SHOAL_STATE' && /^rediss?:/.test(v)) {
      const u = new URL(v)
      u.hostname = hosts[u.hostname] ?? u.hostname
      u.port = String(ports.get(Number(u.port || 6379)) ?? u.port)
      out[k] = u.href.replace(/\/$/, '')
    } else out[k] = v
  }
  return out
}

/** The image's command line, run from the source tree: node /app/dist/src/cli/main.js -> tsx main.ts. */
function devCommand(cmd: string[]): string[] {
  if (cmd[0] !== 'node' || cmd[1] !== IMAGE_ENTRY) throw new Error(`not a shoal command: ${cmd.join(' ')}`)
  return ['--import', 'tsx', MAIN_TS, ...cmd.slice(2)]
}

function sourceFiles(dir: string): string[] {
  if (!existsSync(dir)) return []
  return readdirSync(dir).flatMap((f) => {
    const p = join(dir, f)
    return statSync(p).isDirectory() ? sourceFiles(p) : /\.(ts|mts|js|mjs)$/.test(f) ? [p] : []
  })
}

// ---- tests ------------------------------------------------------------------------------------------------

const composeText = readFileSync(COMPOSE_FILE, 'utf8')
const pipelineText = readFileSync(PIPELINE_FILE, 'utf8')

describe('docker-compose.yml (static)', () => {
  const { doc, errors } = loadCompose(composeText)

  it('parses (no duplicate keys) and interpolates with an empty environment', () => {
    expect(errors).toEqual([])
    expect(Object.keys(doc.services).sort()).toEqual(
      expect.arrayContaining(['coordinator', 'redis', 'worker']),
    )
  })

  it('is valid against the compose-spec schema', () => {
    expect(schemaErrors(doc)).toEqual([])
  })

  it.each([1, 3, 5])('meets the contract and the --scale rules with worker=%i', (n) => {
    expect(checkCompose(doc, { worker: n })).toEqual([])
  })

  it('is also valid with every interpolated variable set (gRPC transport)', () => {
    const env = { SHOAL_TRANSPORT: 'grpc', SHOAL_TOKEN: 'x'.repeat(32), SHOAL_LOG_LEVEL: 'debug' }
    const r = loadCompose(composeText, env)
    expect(r.errors).toEqual([])
    expect(schemaErrors(r.doc)).toEqual([])
    expect(checkCompose(r.doc, { worker: 3 })).toEqual([])
    expect(envOf(r.doc.services.worker!).SHOAL_TRANSPORT).toBe('grpc')
  })

  it('starts in health-gated order: redis, coordinator, then workers', () => {
    expect(depsOf(doc.services.coordinator!)).toEqual({ redis: { condition: 'service_healthy' } })
    expect(depsOf(doc.services.worker!).coordinator).toEqual({ condition: 'service_healthy' })
    expect(doc.services.worker!.deploy?.replicas).toBe(3)
  })

  it('the validator catches what would break at run time', () => {
    const mutate = (f: (d: Compose) => void): string[] => {
      const d = structuredClone(doc)
      f(d)
      return [...schemaErrors(d), ...checkCompose(d, { worker: 3 })]
    }
    expect(mutate((d) => (d.services.worker!.container_name = 'worker'))).toContain(
      'worker: container_name cannot be used with 3 replicas',
    )
    expect(mutate((d) => (d.services.worker!.ports = ['7410:7410']))).toEqual(
      expect.arrayContaining([
        'worker: host port 7410 is published; 3 replicas would collide',
        'worker: workers must not publish ports to the host',
      ]),
    )
    expect(mutate((d) => delete d.services.coordinator!.healthcheck)).toContain(
      'worker: depends_on coordinator with service_healthy, but coordinator has no healthcheck',
    )
    expect(
      mutate((d) => ((d.services.worker!.environment as Record<string, string>).SHOAL_WORKERS = '3')),
    ).toContain('worker: unknown variable SHOAL_WORKERS')
    expect(
      mutate((d) => ((d.services.worker!.environment as Record<string, string>).SHOAL_NODE_ID = 'w')),
    ).toContain('worker: SHOAL_NODE_ID is shared by all replicas; leave it unset')
    expect(
      mutate((d) => ((d.services.worker!.environment as Record<string, string>).SHOAL_HTTP = '0.0.0.0:8080')),
    ).toContain('worker: SHOAL_HTTP must listen on 7411 (got 0.0.0.0:8080)')
    expect(
      mutate(
        (d) => (d.services.worker!.healthcheck!.test = ['CMD', 'curl', '-f', 'http://127.0.0.1:7411/readyz']),
      ),
    ).toEqual(expect.arrayContaining([expect.stringMatching(/^worker: healthcheck must be/)]))
    expect(mutate((d) => (d.services.worker!.stop_grace_period = '10s'))).toEqual(
      expect.arrayContaining([expect.stringMatching(/stop_grace_period 10s must exceed/)]),
    )
    expect(mutate((d) => (d.services.coordinator!.ports = ['7400:7400']))).toContain(
      'coordinator: container port 7401 must be published as 7401',
    )
    expect(
      mutate((d) => (d.services.redis!.depends_on = { worker: { condition: 'service_started' } })),
    ).toEqual(expect.arrayContaining([expect.stringMatching(/^depends_on cycle/)]))
    expect(
      mutate((d) => ((d.services.worker as unknown as Record<string, unknown>).helthcheck = {})),
    ).toEqual(expect.arrayContaining([expect.stringMatching(/additional properties \(helthcheck\)/)]))
    expect(
      mutate((d) => (d.services.worker!.depends_on = { coordinator: { condition: 'service_ready' } })),
    ).toEqual(
      expect.arrayContaining([expect.stringMatching(/condition must be equal to one of the allowed values/)]),
    )
    expect(loadCompose('services:\n  a:\n    image: x\n    image: y\n').errors[0]).toMatch(/unique/)
  })
})

describe('cluster/Dockerfile and .dockerignore (static)', () => {
  const ins = parseDockerfile(readFileSync(DOCKERFILE, 'utf8'))
  const args = Object.fromEntries(
    ins.filter((i) => i.op === 'ARG').map((i) => i.args.split('=') as [string, string | undefined]),
  )
  const stages = ins
    .map((i, idx) => ({ i, idx }))
    .filter(({ i }) => i.op === 'FROM')
    .map(({ i, idx }, n, all) => ({
      from: i.args.split(/\s+/)[0]!.replace(/\$\{?(\w+)\}?/g, (_, a: string) => args[a] ?? ''),
      name: /\sAS\s+(\S+)/i.exec(i.args)?.[1],
      body: ins.slice(idx + 1, all[n + 1]?.idx ?? ins.length),
    }))
  const runtime = stages.at(-1)!
  const runs = (body: Instruction[]): string =>
    body
      .filter((i) => i.op === 'RUN')
      .map((i) => i.args)
      .join('\n')

  it('builds on node:24-bookworm-slim in two stages: npm ci + build, then npm ci --omit=dev', () => {
    expect(stages.length).toBe(2)
    for (const s of stages) expect(s.from).toBe('node:24-bookworm-slim')
    expect(runs(stages[0]!.body)).toMatch(/npm ci\b/)
    expect(runs(stages[0]!.body)).toMatch(/npm run build/)
    expect(runs(runtime.body)).toMatch(/npm ci\b[^\n]*--omit=dev/)
    expect(runtime.body.some((i) => i.op === 'COPY' && i.args.includes(`--from=${stages[0]!.name}`))).toBe(
      true,
    )
  })

  it('runs the CLI from package.json "bin" as a non-root user, role from CMD', () => {
    const last = (op: string): string | undefined => runtime.body.filter((i) => i.op === op).at(-1)?.args
    expect(JSON.parse(last('ENTRYPOINT') ?? 'null')).toEqual(['node', IMAGE_ENTRY])
    expect(['coordinator', 'worker']).toContain((JSON.parse(last('CMD') ?? '[]') as string[])[0])
    expect(last('USER')).toBe('node')
    // the build stage checks the entry point exists, whichever layout tsc emitted
    expect(runs(stages[0]!.body)).toContain(`test -f ${IMAGE_ENTRY.replace(/^\/app\//, '')}`)
  })

  it('exposes the contract ports, ships proto/, and health-checks with the probe (no curl)', () => {
    const exposed = runtime.body
      .filter((i) => i.op === 'EXPOSE')
      .flatMap((i) => i.args.split(/\s+/))
      .map((p) => Number(p.replace(/\/tcp$/, '')))
    expect(exposed.sort()).toEqual([7400, 7401, 7410, 7411])
    expect(runtime.body.some((i) => i.op === 'COPY' && /^proto\s/.test(i.args))).toBe(true)
    const hc = runtime.body.find((i) => i.op === 'HEALTHCHECK')?.args ?? ''
    expect(hc).toContain(`node ${IMAGE_ENTRY} probe http`)
    expect(hc).toContain('/readyz')
    for (const i of ins) expect(i.args, `${i.op} ${i.args}`).not.toMatch(/\b(curl|wget)\b/)
  })

  it('.dockerignore sends what the build copies and nothing heavy', () => {
    const patterns = readFileSync(DOCKERIGNORE, 'utf8')
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l !== '' && !l.startsWith('#'))
    const copied = ins
      .filter((i) => i.op === 'COPY' && !i.args.includes('--from='))
      .flatMap((i) => i.args.split(/\s+/).slice(0, -1))
    expect(copied).toEqual(expect.arrayContaining(['package.json', 'package-lock.json', 'src', 'proto']))
    for (const src of copied) expect(dockerIgnored(patterns, src), src).toBe(false)
    for (const p of ['src/cli/main.ts', 'proto/shoal.proto', 'tsconfig.build.json']) {
      expect(dockerIgnored(patterns, p), p).toBe(false)
    }
    for (const p of [
      'node_modules',
      'node_modules/x/index.js',
      'dist/src/index.js',
      '.git/HEAD',
      'src/node_modules/x',
    ]) {
      expect(dockerIgnored(patterns, p), p).toBe(true)
    }
  })
})

describe('docker-compose.pipeline.yml (static, merged over docker-compose.yml)', () => {
  const base = loadCompose(composeText).doc
  const override = loadCompose(pipelineText)
  const merged = mergeCompose(base, override.doc)

  it('parses, and the override and the merged file are valid against the compose-spec schema', () => {
    expect(override.errors).toEqual([])
    expect(schemaErrors(override.doc)).toEqual([])
    expect(schemaErrors(merged)).toEqual([])
    expect(Object.keys(override.doc.services)).toEqual(['worker'])
  })

  it.each([1, 3])('meets the contract with profile pipeline and worker=%i', (n) => {
    expect(checkCompose(merged, { worker: n }, ['pipeline'])).toEqual([])
  })

  it('without the override, postgres is in profile pipeline and nothing else changes', () => {
    expect(base.services.postgres!.profiles).toEqual(['pipeline'])
    expect(envOf(base.services.worker!).SHOAL_SINK).toBeUndefined()
    expect(Object.keys(depsOf(base.services.worker!))).not.toContain('postgres')
    expect(checkCompose(base, { worker: 3 })).toEqual([])
  })

  it('every worker reads events and writes its state behind to postgres', () => {
    const env = envOf(merged.services.worker!)
    expect(env.SHOAL_SOURCE).toBe('redis://redis:6379?stream=events&group=shoal')
    expect(env.SHOAL_SINK).toBe('postgres://shoal:shoal@postgres:5432/shoal?table=shoal_state&mode=state')
    expect(parseSourceUrl(env.SHOAL_SOURCE!)).toMatchObject({ stream: 'events', group: 'shoal' })
    expect(parseSinkUrl(env.SHOAL_SINK!)).toMatchObject({
      kind: 'postgres',
      table: 'shoal_state',
      mode: 'state',
    })
    expect(depsOf(merged.services.worker!)).toMatchObject({
      coordinator: { condition: 'service_healthy' },
      redis: { condition: 'service_healthy' },
      postgres: { condition: 'service_healthy' },
    })
    // one POSTGRES_PASSWORD for the database and the sink
    const r = loadCompose(pipelineText, { POSTGRES_PASSWORD: 's3cret' })
    const m = mergeCompose(loadCompose(composeText, { POSTGRES_PASSWORD: 's3cret' }).doc, r.doc)
    expect(envOf(m.services.worker!).SHOAL_SINK).toContain('shoal:s3cret@postgres')
    expect(checkCompose(m, { worker: 3 }, ['pipeline'])).toEqual([])
  })

  it('the validator catches what would break the pipeline', () => {
    const mutate = (f: (d: Compose) => void, profiles = ['pipeline']): string[] => {
      const d = structuredClone(merged)
      f(d)
      return checkCompose(d, { worker: 3 }, profiles)
    }
    const env = (d: Compose): Record<string, string> =>
      d.services.worker!.environment as Record<string, string>
    expect(mutate(() => {}, [])).toEqual(['worker: depends_on postgres, which only profile pipeline starts'])
    expect(mutate((d) => delete (d.services.worker!.depends_on as Record<string, unknown>).postgres)).toEqual(
      ['worker: SHOAL_SINK uses postgres; depend on it with condition service_healthy'],
    )
    expect(mutate((d) => (env(d).SHOAL_SINK = 'postgres://shoal:wrong@postgres:5432/shoal?table=t'))).toEqual(
      ["worker: SHOAL_SINK must use postgres's POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB and port 5432"],
    )
    expect(
      mutate((d) => (env(d).SHOAL_SINK = env(d).SHOAL_SINK!.replace('mode=state', 'mode=rows'))),
    ).toEqual([
      'worker: SHOAL_SINK "postgres://shoal:***@postgres:5432/shoal?table=shoal_state&mode=rows": mode must be one of state, events, got "rows"',
    ])
    expect(mutate((d) => (env(d).SHOAL_SOURCE = 'redis://redis:6379?stream=events'))).toEqual([
      expect.stringContaining('missing required query parameter group'),
    ])
    expect(mutate((d) => (env(d).SHOAL_SOURCE = 'redis://cache:6379?stream=events&group=g'))).toEqual([
      'worker: SHOAL_SOURCE host "cache" is not a service',
    ])
    expect(
      mutate((d) => ((d.services.coordinator!.environment as Record<string, string>).SHOAL_SINK = 'file:/x')),
    ).toEqual(['coordinator: SHOAL_SINK is a worker setting'])
    expect(mutate((d) => (d.services.postgres!.healthcheck = { test: ['CMD', 'true'] }))).toEqual([
      'postgres: healthcheck must be ["CMD", "pg_isready", ...]',
    ])
    expect(mutate((d) => (d.services.postgres!.volumes = ['/srv/pg:/var/lib/postgresql/data']))).toEqual([
      'postgres: mount a named volume at /var/lib/postgresql/data',
    ])
  })
})

describe("the CLI knows the deploy files' variables", () => {
  it('every SHOAL_* variable the compose file sets is read by src/cli or src/config', () => {
    const doc = mergeCompose(loadCompose(composeText).doc, loadCompose(pipelineText).doc)
    expect(existsSync(MAIN_TS), 'src/cli/main.ts does not exist yet').toBe(true)
    const source = [...sourceFiles(join(ROOT, 'src/cli')), ...sourceFiles(join(ROOT, 'src/config'))]
      .map((f) => readFileSync(f, 'utf8'))
      .join('\n')
    const used = new Set(['SHOAL_ADVERTISE', 'SHOAL_NODE_ID'])
    for (const s of Object.values(doc.services)) for (const k of Object.keys(envOf(s))) used.add(k)
    const missing = [...used].filter((v) => v.startsWith('SHOAL_') && !source.includes(`'${v}'`))
    expect(missing, 'variables no file in src/cli or src/config mentions').toEqual([])
  })
})

describe('compose environment on real nodes', () => {
  const { doc } = loadCompose(composeText)
  const coordinator = doc.services.coordinator!
  const worker = doc.services.worker!
  const ports = new Map<number, number>()
  const hosts = { '0.0.0.0': '127.0.0.1', redis: '127.0.0.1', coordinator: '127.0.0.1' }
  const url = (port: number, path: string): string => `http://127.0.0.1:${ports.get(port)}${path}`
  let dir = ''
  let coordinatorEnv: Record<string, string> = {}

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'shoal-compose-'))
    ports.set(6379, await startRedis(dir))
    for (const p of [7400, 7401, 7410, 7411]) ports.set(p, await freePort())
    // `command: [coordinator]` after the image's ENTRYPOINT, with the service's environment
    coordinatorEnv = remapEnv(envOf(coordinator), ports, hosts)
    const node = startProcess(
      process.execPath,
      devCommand(['node', IMAGE_ENTRY, ...asList(coordinator.command)]),
      coordinatorEnv,
    )
    await waitForStatus(url(7401, '/readyz'), 200, node)
  }, 40_000)
  afterAll(async () => {
    await stopAll()
    if (dir) rmSync(dir, { recursive: true, force: true })
  })

  it('coordinator: /healthz /readyz /metrics /status answer on SHOAL_HTTP', async () => {
    expect((await httpGet(url(7401, '/healthz'))).status).toBe(200)
    expect((await httpGet(url(7401, '/readyz'))).status).toBe(200)
    const metrics = await httpGet(url(7401, '/metrics'))
    expect(metrics.status).toBe(200)
    expect(metrics.text).toMatch(/^# (HELP|TYPE) /m)
    // The compose file sets SHOAL_TOKEN: /status (not the probes, not /metrics) needs it.
    const token = coordinatorEnv.SHOAL_TOKEN
    expect(token).toBeTruthy()
    expect((await httpGet(url(7401, '/status'))).status).toBe(401)
    const status = await httpGet(url(7401, '/status'), 3000, { authorization: `Bearer ${token}` })
    expect(status.status).toBe(200)
    expect(() => JSON.parse(status.text) as unknown).not.toThrow()
  })

  it('coordinator: the compose healthcheck and the image HEALTHCHECK pass', async () => {
    const [, ...cmd] = asList(coordinator.healthcheck!.test)
    const r = await run(
      process.execPath,
      devCommand(cmd.map((a) => a.replace(':7401/', `:${ports.get(7401)}/`))),
    )
    expect(r, r.stderr).toMatchObject({ code: 0 })
    expect(r.stdout).toMatch(/^status: SERVING/)

    // the Dockerfile's HEALTHCHECK (shell form) takes the port from SHOAL_HTTP
    const dockerfile = parseDockerfile(readFileSync(DOCKERFILE, 'utf8'))
    const hc = dockerfile.find((i) => i.op === 'HEALTHCHECK')!.args.replace(/^(--\S+\s+)*CMD\s+/, '')
    const shell = hc.replace(`node ${IMAGE_ENTRY}`, `"${process.execPath}" --import tsx "${MAIN_TS}"`)
    const viaImage = await run('/bin/sh', ['-c', shell], { SHOAL_HTTP: coordinatorEnv.SHOAL_HTTP! })
    expect(viaImage, viaImage.stderr).toMatchObject({ code: 0 })
  }, 30_000)

  it('worker: joins through SHOAL_COORDINATOR, passes its healthcheck, and drains on SIGTERM', async () => {
    const env = remapEnv(envOf(worker), ports, hosts)
    const node = startProcess(
      process.execPath,
      devCommand(['node', IMAGE_ENTRY, ...asList(worker.command)]),
      env,
    )
    await waitForStatus(url(7411, '/readyz'), 200, node)
    expect((await httpGet(url(7411, '/healthz'))).status).toBe(200)

    const [, ...cmd] = asList(worker.healthcheck!.test)
    const r = await run(
      process.execPath,
      devCommand(cmd.map((a) => a.replace(':7411/', `:${ports.get(7411)}/`))),
    )
    expect(r, r.stderr).toMatchObject({ code: 0 })

    // `docker compose stop` / scale-down: SIGTERM, then SIGKILL after stop_grace_period.
    const grace = durationMs(worker.stop_grace_period)
    node.child.kill('SIGTERM')
    const exit = await Promise.race([
      node.exited,
      new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), grace).unref()),
    ])
    expect(exit, `worker did not exit within stop_grace_period\n${node.output()}`).toEqual({
      code: 0,
      signal: null,
    })
  }, 60_000)
})
