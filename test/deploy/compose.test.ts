/**
 * docker-compose.yml, cluster/Dockerfile and .dockerignore, checked without a Docker engine.
 *
 * 1. Static: the compose-spec JSON schema (the copy dclint ships, so it follows the current spec)
 *    via ajv, plus the rules `docker compose up --scale worker=N` and health-gated startup only
 *    enforce at run time, plus Shoal's contract (ports, SHOAL_* variables, probe commands).
 *    Each rule is also shown to fire on a broken copy of the file. docker-compose.pipeline.yml is
 *    checked the same way, merged over docker-compose.yml with its profile active.
 * 2. Live: both coordinator replicas and a worker (`node --import tsx src/cli/main.ts`) started
 *    with the exact environment compose gives them (each service's ports remapped to free
 *    loopback ports, service names to 127.0.0.1, a real redis-server): exactly one replica leads
 *    (ready), the other stands by (alive, not ready, transport port closed); every healthcheck
 *    command the file and the image define is run against them; the worker joins through its
 *    list of replicas; the leader is paused until the standby leads and the worker follows,
 *    then resumed: it exits 3 and, restarted as the restart policy would, stands by; the cli
 *    service's `shoal status` reaches each leader; a worker is stopped with SIGTERM.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs'
import { once } from 'node:events'
import { connect, createServer } from 'node:net'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Ajv } from 'ajv'
import { parseDocument } from 'yaml'
import { NODE_ENV_DEFAULTS, SOURCE_WORKER_SEMI_SPACE_MB } from '../../src/cli/up.ts'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { parseSinkUrl, parseSourceUrl } from '../../src/connectors/url.ts'
import type { ClusterStatus } from '../../src/coordinator/coordinator.ts'

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
  restart?: string
  init?: boolean
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
  /** The host address it is published on; undefined means every interface. */
  hostIp: string | undefined
}
function portsOf(s: Service): PublishedPort[] {
  return (s.ports ?? []).map((p) => {
    if (typeof p === 'object')
      return { target: Number(p.target), published: p.published?.toString(), hostIp: p.host_ip }
    const parts = String(p)
      .replace(/\/(tcp|udp)$/, '')
      .split(':')
    return {
      target: Number(parts.at(-1)),
      published: parts.length > 1 ? parts.at(-2) : undefined,
      hostIp: parts.length > 2 ? parts.slice(0, -2).join(':') : undefined,
    }
  })
}

/** The compose services that run `shoal coordinator`, by name. */
function coordinatorServices(doc: Compose): string[] {
  return Object.keys(doc.services ?? {})
    .filter((n) => roleOf(doc.services[n]!) === 'coordinator')
    .sort()
}

/** Whether a compose restart policy starts a container again after it exited with `code`. */
function restartsAfterExit(policy: string | undefined, code: number): boolean {
  const p = policy ?? 'no'
  if (p === 'always' || p === 'unless-stopped') return true
  // on-failure[:max-retries]: a retry limit would leave a replica down for good after a few
  // depositions, so only the unlimited form counts.
  return p === 'on-failure' && code !== 0
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
  for (const want of ['redis', 'worker']) if (!services[want]) errs.push(`missing service "${want}"`)
  const coordinators = coordinatorServices(doc)
  if (coordinators.length < 2) {
    errs.push(
      `need at least 2 coordinator services (one leads, the others stand by), got ${coordinators.length}`,
    )
  }

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

    // healthcheck: the node's own probe command. A worker: its readiness (HTTP /readyz, or gRPC
    // health on the transport port). A coordinator: its liveness, /healthz: a standby is alive
    // but never ready and does not listen on its transport port, and must still count as healthy.
    const test = asList(s.healthcheck?.test)
    const [kind, ...cmd] = test
    const httpProbe = [
      'node',
      IMAGE_ENTRY,
      'probe',
      'http',
      `http://127.0.0.1:${want.http}/${role === 'coordinator' ? 'healthz' : 'readyz'}`,
    ]
    const grpcProbe = ['node', IMAGE_ENTRY, 'probe', 'grpc', `127.0.0.1:${want.transport}`]
    const sameAs = (a: string[], b: string[]): boolean =>
      a.length >= b.length && b.every((x, i) => a[i] === x)
    if (kind !== 'CMD' || !(sameAs(cmd, httpProbe) || (role === 'worker' && sameAs(cmd, grpcProbe)))) {
      errs.push(
        `${name}: healthcheck must be ["CMD", ${httpProbe.map((x) => JSON.stringify(x)).join(', ')}]` +
          (role === 'coordinator' ? ' (a standby is alive but never ready)' : ''),
      )
    }
    if (durationMs(s.healthcheck?.timeout ?? '30s') < 1000) {
      errs.push(`${name}: healthcheck.timeout is below the probe's own 1 s timeout`)
    }

    if (role === 'coordinator') {
      // Either replica may lead: both publish their transport and HTTP ports, on loopback.
      const published = portsOf(s)
      for (const port of [want.transport, want.http]) {
        const ps = published.filter((x) => x.target === port)
        if (ps.length !== 1 || !/^\d+$/.test(ps[0]!.published ?? ''))
          errs.push(`${name}: publish container port ${port} once, on a fixed host port`)
      }
      for (const p of published) {
        if (p.target !== want.transport && p.target !== want.http)
          errs.push(`${name}: unexpected port ${p.target}`)
        if (p.hostIp !== '127.0.0.1')
          errs.push(
            `${name}: publish ${p.target} on the host's loopback (127.0.0.1:...), not every interface`,
          )
      }
      if (!restartsAfterExit(s.restart, 3)) {
        errs.push(
          `${name}: restart must be unless-stopped, always or on-failure (got ${s.restart ?? 'no'}): a deposed leader exits 3 and must come back as a standby`,
        )
      }
      if (!/^rediss?:/.test(env.SHOAL_STATE ?? '')) {
        errs.push(`${name}: coordinator replicas need SHOAL_STATE redis:// (the leader lease lives there)`)
      }
      if (env.SHOAL_NODE_ID === undefined || env.SHOAL_NODE_ID === '')
        errs.push(`${name}: set SHOAL_NODE_ID (the replica's name in the leader lease and /status)`)
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
      if (env.SHOAL_COORDINATOR === undefined) errs.push(`${name}: SHOAL_COORDINATOR is not set`)
      const drain = Number(env.SHOAL_DRAIN_TIMEOUT_MS ?? 20_000)
      if (!(durationMs(s.stop_grace_period ?? '10s') > drain)) {
        errs.push(
          `${name}: stop_grace_period ${s.stop_grace_period ?? '10s'} must exceed the drain timeout ${drain} ms`,
        )
      }
    }
  }

  // Every service that dials the coordinator (workers, the cli) lists every replica, each once,
  // at its transport port, and starts once they are all healthy (alive: leader or standby).
  const wantList = coordinators.map((n) => `${n}:${portOf(envOf(services[n]!).SHOAL_LISTEN)}`)
  for (const [name, s] of Object.entries(services)) {
    const list = envOf(s).SHOAL_COORDINATOR
    if (list === undefined) continue
    const got = list.split(',').map((x) => x.trim())
    if (got.length !== wantList.length || [...got].sort().join(',') !== wantList.join(',')) {
      errs.push(
        `${name}: SHOAL_COORDINATOR must list every coordinator replica once: ${wantList.join(',')} (got ${list})`,
      )
    }
    for (const c of coordinators) {
      if (depsOf(s)[c]?.condition !== 'service_healthy')
        errs.push(`${name}: must depend on ${c} with condition service_healthy`)
    }
  }

  // The coordinator replicas: one configuration (but the node id), distinct ids, host ports
  // that differ, and one of them on the default 7400/7401.
  const first = coordinators[0]
  for (const name of coordinators.slice(1)) {
    const a = envOf(services[first!]!)
    const b = envOf(services[name]!)
    for (const k of [...new Set([...Object.keys(a), ...Object.keys(b)])].sort()) {
      if (k === 'SHOAL_NODE_ID') continue
      if (a[k] !== b[k])
        errs.push(`${name}: ${k} differs from ${first} (replicas share every setting but SHOAL_NODE_ID)`)
    }
    if (JSON.stringify(services[name]!.command) !== JSON.stringify(services[first!]!.command))
      errs.push(`${name}: command differs from ${first}`)
  }
  const ids = coordinators.map((n) => envOf(services[n]!).SHOAL_NODE_ID).filter((x) => x)
  if (new Set(ids).size !== ids.length) errs.push('coordinator replicas must have distinct SHOAL_NODE_IDs')
  const hostPorts = new Map<string, string>()
  for (const [name, s] of Object.entries(services)) {
    for (const p of portsOf(s)) {
      if (p.published === undefined) continue
      const other = hostPorts.get(p.published)
      if (other !== undefined && other !== name)
        errs.push(`host port ${p.published} is published by both ${other} and ${name}`)
      hostPorts.set(p.published, name)
    }
  }
  const defaults = coordinators.filter((n) =>
    [PORTS.coordinator.transport, PORTS.coordinator.http].every((port) =>
      portsOf(services[n]!).some((p) => p.target === port && p.published === String(port)),
    ),
  )
  if (coordinators.length > 0 && defaults.length !== 1)
    errs.push(
      'exactly one coordinator replica publishes 7400 and 7401 as themselves (the documented address)',
    )

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

/** Where each service's container ports are on loopback: service -> container port -> port. */
type Endpoints = Map<string, Map<number, number>>

/**
 * Rewrite compose addresses to the test's loopback ports: the service's own listen addresses
 * (0.0.0.0:PORT), other services by name (SERVICE:PORT, comma lists for SHOAL_COORDINATOR), and
 * the Redis URL of SHOAL_STATE. A name or port no service has is an error: compose DNS would
 * not resolve it either.
 */
function remapEnv(env: Record<string, string>, self: string, endpoints: Endpoints): Record<string, string> {
  const out: Record<string, string> = {}
  const port = (service: string, p: number, what: string): number => {
    const mapped = endpoints.get(service)?.get(p)
    if (mapped === undefined) throw new Error(`${self}: ${what}: no service "${service}" with port ${p}`)
    return mapped
  }
  const addr = (v: string): string => {
    const host = hostOf(v)
    const service = ['0.0.0.0', '[::]', ''].includes(host) ? self : host
    return `127.0.0.1:${port(service, portOf(v), v)}`
  }
  for (const [k, v] of Object.entries(env)) {
    if (['SHOAL_LISTEN', 'SHOAL_HTTP', 'SHOAL_ADVERTISE'].includes(k) && v.includes(':')) {
      out[k] = addr(v)
    } else if (k === 'SHOAL_COORDINATOR') {
      out[k] = v
        .split(',')
        .map((x) => addr(x.trim()))
        .join(',')
    } else if (k === 'SHOAL_STATE' && /^rediss?:/.test(v)) {
      const u = new URL(v)
      u.port = String(port(u.hostname, Number(u.port || 6379), v))
      u.hostname = '127.0.0.1'
      out[k] = u.href.replace(/\/$/, '')
    } else out[k] = v
  }
  return out
}

/** Whether something accepts TCP connections on 127.0.0.1:port. */
async function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1', () => {
      s.destroy()
      resolve(true)
    })
    s.setTimeout(1000, () => s.destroy(new Error('timeout')))
    s.on('error', () => resolve(false))
  })
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
      expect.arrayContaining(['coordinator-a', 'coordinator-b', 'redis', 'worker']),
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

  it('starts in health-gated order: redis, both coordinator replicas, then workers', () => {
    for (const c of ['coordinator-a', 'coordinator-b'])
      expect(depsOf(doc.services[c]!)).toEqual({ redis: { condition: 'service_healthy' } })
    expect(depsOf(doc.services.worker!)).toEqual({
      'coordinator-a': { condition: 'service_healthy' },
      'coordinator-b': { condition: 'service_healthy' },
      redis: { condition: 'service_healthy' },
    })
    expect(doc.services.worker!.deploy?.replicas).toBe(3)
  })

  it('runs two coordinator replicas (HA): same settings, distinct ids, both dialled by workers and the cli', () => {
    expect(coordinatorServices(doc)).toEqual(['coordinator-a', 'coordinator-b'])
    const [a, b] = [doc.services['coordinator-a']!, doc.services['coordinator-b']!]
    expect(envOf(a).SHOAL_NODE_ID).toBe('coordinator-a')
    expect(envOf(b).SHOAL_NODE_ID).toBe('coordinator-b')
    expect({ ...envOf(a), SHOAL_NODE_ID: '' }).toEqual({ ...envOf(b), SHOAL_NODE_ID: '' })
    expect(envOf(a).SHOAL_STATE).toBe('redis://redis:6379')
    // only the leader is ready: the container health is liveness
    for (const c of [a, b]) {
      expect(asList(c.healthcheck?.test).at(-1)).toBe('http://127.0.0.1:7401/healthz')
      expect(restartsAfterExit(c.restart, 3)).toBe(true)
      expect(c.init).toBe(true)
    }
    expect(portsOf(a)).toEqual([
      { target: 7400, published: '7400', hostIp: '127.0.0.1' },
      { target: 7401, published: '7401', hostIp: '127.0.0.1' },
    ])
    expect(portsOf(b)).toEqual([
      { target: 7400, published: '7410', hostIp: '127.0.0.1' },
      { target: 7401, published: '7411', hostIp: '127.0.0.1' },
    ])
    for (const s of ['worker', 'cli'])
      expect(envOf(doc.services[s]!).SHOAL_COORDINATOR).toBe('coordinator-a:7400,coordinator-b:7400')
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
    expect(mutate((d) => delete d.services['coordinator-a']!.healthcheck)).toContain(
      'worker: depends_on coordinator-a with service_healthy, but coordinator-a has no healthcheck',
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
    expect(mutate((d) => (d.services['coordinator-a']!.ports = ['7400:7400']))).toEqual(
      expect.arrayContaining([
        'coordinator-a: publish container port 7401 once, on a fixed host port',
        "coordinator-a: publish 7400 on the host's loopback (127.0.0.1:...), not every interface",
      ]),
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

  it('the validator catches what would break coordinator high availability', () => {
    const mutate = (f: (d: Compose) => void): string[] => {
      const d = structuredClone(doc)
      f(d)
      return [...schemaErrors(d), ...checkCompose(d, { worker: 3 })]
    }
    const env = (d: Compose, s: string): Record<string, string> =>
      d.services[s]!.environment as Record<string, string>
    const b = (d: Compose): Service => d.services['coordinator-b']!
    expect(mutate(() => {})).toEqual([])
    // one replica only: no standby, and the workers' list names a service that is gone
    expect(
      mutate((d) => {
        delete d.services['coordinator-b']
        delete (d.services.worker!.depends_on as Record<string, unknown>)['coordinator-b']
        delete (d.services.cli!.depends_on as Record<string, unknown>)['coordinator-b']
      }),
    ).toEqual([
      'need at least 2 coordinator services (one leads, the others stand by), got 1',
      'worker: SHOAL_COORDINATOR must list every coordinator replica once: coordinator-a:7400 (got coordinator-a:7400,coordinator-b:7400)',
      'cli: SHOAL_COORDINATOR must list every coordinator replica once: coordinator-a:7400 (got coordinator-a:7400,coordinator-b:7400)',
    ])
    // a standby is never ready: a /readyz healthcheck would keep it unhealthy (and the workers down)
    expect(
      mutate(
        (d) =>
          (b(d).healthcheck!.test = [
            'CMD',
            'node',
            IMAGE_ENTRY,
            'probe',
            'http',
            'http://127.0.0.1:7401/readyz',
          ]),
      ),
    ).toEqual([
      `coordinator-b: healthcheck must be ["CMD", "node", "${IMAGE_ENTRY}", "probe", "http", "http://127.0.0.1:7401/healthz"] (a standby is alive but never ready)`,
    ])
    // ... and a standby does not listen on its transport port: no gRPC healthcheck either
    expect(
      mutate(
        (d) => (b(d).healthcheck!.test = ['CMD', 'node', IMAGE_ENTRY, 'probe', 'grpc', '127.0.0.1:7400']),
      ),
    ).toEqual([expect.stringMatching(/^coordinator-b: healthcheck must be .*\/healthz/)])
    expect(mutate((d) => (env(d, 'worker').SHOAL_COORDINATOR = 'coordinator-a:7400'))).toEqual([
      'worker: SHOAL_COORDINATOR must list every coordinator replica once: coordinator-a:7400,coordinator-b:7400 (got coordinator-a:7400)',
    ])
    expect(
      mutate((d) => (env(d, 'worker').SHOAL_COORDINATOR = 'coordinator-a:7400,coordinator-b:7401')),
    ).toEqual([expect.stringMatching(/^worker: SHOAL_COORDINATOR must list every coordinator replica once/)])
    expect(
      mutate((d) => (env(d, 'cli').SHOAL_COORDINATOR = 'coordinator-a:7400,coordinator-a:7400')),
    ).toEqual([expect.stringMatching(/^cli: SHOAL_COORDINATOR must list every coordinator replica once/)])
    expect(
      mutate((d) => delete (d.services.worker!.depends_on as Record<string, unknown>)['coordinator-b']),
    ).toEqual(['worker: must depend on coordinator-b with condition service_healthy'])
    expect(mutate((d) => (env(d, 'coordinator-b').SHOAL_NODE_ID = 'coordinator-a'))).toEqual([
      'coordinator replicas must have distinct SHOAL_NODE_IDs',
    ])
    expect(mutate((d) => delete env(d, 'coordinator-b').SHOAL_NODE_ID)).toEqual([
      "coordinator-b: set SHOAL_NODE_ID (the replica's name in the leader lease and /status)",
    ])
    expect(mutate((d) => (env(d, 'coordinator-b').SHOAL_PARTITIONS = '128'))).toEqual([
      'coordinator-b: SHOAL_PARTITIONS differs from coordinator-a (replicas share every setting but SHOAL_NODE_ID)',
    ])
    expect(
      mutate((d) => {
        env(d, 'coordinator-a').SHOAL_STATE = 'memory:'
        env(d, 'coordinator-b').SHOAL_STATE = 'memory:'
      }),
    ).toEqual(
      expect.arrayContaining([
        'coordinator-a: coordinator replicas need SHOAL_STATE redis:// (the leader lease lives there)',
        'coordinator-b: coordinator replicas need SHOAL_STATE redis:// (the leader lease lives there)',
      ]),
    )
    for (const restart of ['no', 'on-failure:3', undefined]) {
      expect(
        mutate((d) => {
          if (restart === undefined) delete b(d).restart
          else b(d).restart = restart
        }),
      ).toEqual([
        `coordinator-b: restart must be unless-stopped, always or on-failure (got ${restart ?? 'no'}): a deposed leader exits 3 and must come back as a standby`,
      ])
    }
    expect(mutate((d) => (b(d).restart = 'on-failure'))).toEqual([])
    expect(mutate((d) => (b(d).ports = ['127.0.0.1:7400:7400', '127.0.0.1:7401:7401']))).toEqual([
      'host port 7400 is published by both coordinator-a and coordinator-b',
      'host port 7401 is published by both coordinator-a and coordinator-b',
      'exactly one coordinator replica publishes 7400 and 7401 as themselves (the documented address)',
    ])
    expect(mutate((d) => (b(d).ports = ['7410:7400', '127.0.0.1:7411:7401']))).toEqual([
      "coordinator-b: publish 7400 on the host's loopback (127.0.0.1:...), not every interface",
    ])
    expect(mutate((d) => (b(d).ports = ['127.0.0.1:7411:7401']))).toEqual([
      'coordinator-b: publish container port 7400 once, on a fixed host port',
    ])
    // scaling a replica would give two containers one node id and one host port
    expect(mutate((d) => (b(d).scale = 2))).toEqual(
      expect.arrayContaining(['coordinator-b: host port 7410 is published; 2 replicas would collide']),
    )
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
    expect(JSON.parse(last('ENTRYPOINT') ?? 'null')).toEqual(['node', '--no-memory-reducer', IMAGE_ENTRY])
    expect(['coordinator', 'worker']).toContain((JSON.parse(last('CMD') ?? '[]') as string[])[0])
    expect(last('USER')).toBe('node')
    // The environment `shoal up` gives its nodes (NODE_ENV_DEFAULTS) is the image's too.
    const envs = runtime.body.filter((i) => i.op === 'ENV').map((i) => i.args)
    for (const [k, v] of Object.entries(NODE_ENV_DEFAULTS)) expect(envs).toContain(`${k}=${v}`)
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
    // The semi-spaces `shoal up` gives a worker that reads a source.
    expect(env.NODE_OPTIONS).toBe(`--max-semi-space-size=${SOURCE_WORKER_SEMI_SPACE_MB}`)
    expect(parseSourceUrl(env.SHOAL_SOURCE!)).toMatchObject({ stream: 'events', group: 'shoal' })
    expect(parseSinkUrl(env.SHOAL_SINK!)).toMatchObject({
      kind: 'postgres',
      table: 'shoal_state',
      mode: 'state',
    })
    expect(depsOf(merged.services.worker!)).toEqual({
      'coordinator-a': { condition: 'service_healthy' },
      'coordinator-b': { condition: 'service_healthy' },
      redis: { condition: 'service_healthy' },
      postgres: { condition: 'service_healthy' },
    })
    // the override leaves the coordinator replicas and the workers' list of them as they are
    expect(envOf(merged.services.worker!).SHOAL_COORDINATOR).toBe('coordinator-a:7400,coordinator-b:7400')
    for (const c of coordinatorServices(merged)) expect(merged.services[c]).toEqual(base.services[c])
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
      mutate((d) => {
        for (const c of coordinatorServices(d))
          (d.services[c]!.environment as Record<string, string>).SHOAL_SINK = 'file:/x'
      }),
    ).toEqual([
      'coordinator-a: SHOAL_SINK is a worker setting',
      'coordinator-b: SHOAL_SINK is a worker setting',
    ])
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
  const coordinators = coordinatorServices(doc)
  const worker = doc.services.worker!
  const endpoints: Endpoints = new Map()
  const url = (service: string, port: number, path: string): string =>
    `http://127.0.0.1:${endpoints.get(service)!.get(port)}${path}`
  const envFor = (service: string): Record<string, string> =>
    remapEnv(envOf(doc.services[service]!), service, endpoints)
  /** `command` after the image's ENTRYPOINT, with the service's environment. */
  const startService = (service: string): Proc =>
    startProcess(
      process.execPath,
      devCommand(['node', IMAGE_ENTRY, ...asList(doc.services[service]!.command)]),
      envFor(service),
    )
  /** A service's compose healthcheck command, run against its loopback ports. */
  const healthcheck = (service: string): Promise<{ code: number; stdout: string; stderr: string }> => {
    const [, ...cmd] = asList(doc.services[service]!.healthcheck!.test)
    const ports = endpoints.get(service)!
    return run(
      process.execPath,
      devCommand(cmd.map((a) => a.replace(/:(\d+)\//, (_m, p: string) => `:${ports.get(Number(p)) ?? p}/`))),
    )
  }
  const auth = (service: string): Record<string, string> => ({
    authorization: `Bearer ${envFor(service).SHOAL_TOKEN}`,
  })
  const nodeId = (service: string): string => envOf(doc.services[service]!).SHOAL_NODE_ID!
  /** `docker compose run --rm cli status --json`: the cli service's command and environment. */
  async function cliStatus(): Promise<ClusterStatus> {
    const cli = doc.services.cli!
    const r = await run(
      process.execPath,
      devCommand(['node', IMAGE_ENTRY, ...asList(cli.command), '--json']),
      remapEnv(envOf(cli), 'cli', endpoints),
    )
    expect(r, r.stderr).toMatchObject({ code: 0 })
    return JSON.parse(r.stdout) as ClusterStatus
  }
  const nodes = new Map<string, Proc>()
  let leader = ''
  let standby = ''
  let workerNode: Proc | undefined
  let dir = ''

  /** Poll every replica's /readyz until exactly one answers 200; that one leads. */
  async function waitForLeader(among: string[], timeoutMs = 20_000): Promise<string> {
    const deadline = Date.now() + timeoutMs
    let last = ''
    for (;;) {
      const codes = await Promise.all(
        among.map((c) =>
          httpGet(url(c, PORTS.coordinator.http, '/readyz'), 1000).then(
            (r) => r.status,
            () => 0,
          ),
        ),
      )
      const ready = among.filter((_, i) => codes[i] === 200)
      if (ready.length === 1) return ready[0]!
      last = among.map((c, i) => `${c} ${codes[i]}`).join(', ')
      if (Date.now() > deadline)
        throw new Error(
          `no single leader after ${timeoutMs} ms (${last})\n${among.map((c) => nodes.get(c)?.output() ?? '').join('\n')}`,
        )
      await new Promise((r) => setTimeout(r, 100))
    }
  }

  /** A standby: alive, not ready (naming the leader), transport port closed, /status says so. */
  async function expectStandby(service: string, leaderService: string): Promise<void> {
    expect((await httpGet(url(service, PORTS.coordinator.http, '/healthz'))).status).toBe(200)
    // a standby's probes answer from what it last read from Redis (refreshed every second)
    let ready = await httpGet(url(service, PORTS.coordinator.http, '/readyz'))
    for (let i = 0; i < 30 && !ready.text.includes(`"${nodeId(leaderService)}"`); i++) {
      await new Promise((r) => setTimeout(r, 100))
      ready = await httpGet(url(service, PORTS.coordinator.http, '/readyz'))
    }
    expect(ready.status).toBe(503)
    expect(JSON.parse(ready.text)).toMatchObject({ role: 'standby', leader: { id: nodeId(leaderService) } })
    expect(await accepts(endpoints.get(service)!.get(PORTS.coordinator.transport)!)).toBe(false)
    // the probes are open; /status needs the token, and on a standby names the leader
    expect((await httpGet(url(service, PORTS.coordinator.http, '/status'))).status).toBe(401)
    const status = await httpGet(url(service, PORTS.coordinator.http, '/status'), 3000, auth(service))
    expect(status.status).toBe(200)
    expect(JSON.parse(status.text)).toMatchObject({
      role: 'standby',
      nodeId: nodeId(service),
      leader: { id: nodeId(leaderService) },
    })
    const hc = await healthcheck(service)
    expect(hc, `${service} healthcheck: ${hc.stderr}`).toMatchObject({ code: 0 })
  }

  /** The leader's /status once the worker is its only member, alive and owning every partition. */
  async function waitWorkerServed(leaderService: string, timeoutMs = 30_000): Promise<ClusterStatus> {
    const deadline = Date.now() + timeoutMs
    let last = ''
    for (;;) {
      try {
        const r = await httpGet(
          url(leaderService, PORTS.coordinator.http, '/status'),
          1000,
          auth(leaderService),
        )
        const st = JSON.parse(r.text) as ClusterStatus
        const alive = st.members.filter((m) => m.state === 'alive')
        if (
          alive.length === 1 &&
          st.assignment.owners.every((o) => o === alive[0]!.id) &&
          alive[0]!.readyPartitions === st.coordinator.partitions
        )
          return st
        last = JSON.stringify(st.members.map((m) => [m.id, m.state, m.readyPartitions]))
      } catch (err) {
        last = (err as Error).message
      }
      if (Date.now() > deadline) {
        const logs = [leaderService, 'worker'].map(
          (n) => `--- ${n}\n${(n === 'worker' ? workerNode : nodes.get(n))?.output().slice(-6000) ?? ''}`,
        )
        throw new Error(
          `${leaderService} does not serve the worker after ${timeoutMs} ms: ${last}\n${logs.join('\n')}`,
        )
      }
      await new Promise((r) => setTimeout(r, 100))
    }
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'shoal-compose-'))
    endpoints.set('redis', new Map([[6379, await startRedis(dir)]]))
    // A port freePort() returned can be taken before the node binds it (another test's
    // outgoing connection gets it as its ephemeral port): then start again on new ports.
    for (let attempt = 1; ; attempt++) {
      for (const name of [...coordinators, 'worker']) {
        const want = PORTS[roleOf(doc.services[name]!)!]
        endpoints.set(
          name,
          new Map([
            [want.transport, await freePort()],
            [want.http, await freePort()],
          ]),
        )
      }
      // `docker compose up`: every replica at once (each depends only on redis being healthy)
      for (const c of coordinators) nodes.set(c, startService(c))
      try {
        await Promise.all(
          coordinators.map((c) =>
            waitForStatus(url(c, PORTS.coordinator.http, '/healthz'), 200, nodes.get(c)!),
          ),
        )
        break
      } catch (err) {
        const collided = coordinators.some((c) => nodes.get(c)!.output().includes('EADDRINUSE'))
        if (!collided || attempt >= 3) throw err
        await Promise.all(
          coordinators.map(async (c) => {
            const n = nodes.get(c)!
            n.child.kill('SIGKILL')
            await n.exited
          }),
        )
      }
    }
    leader = await waitForLeader(coordinators)
    standby = coordinators.find((c) => c !== leader)!
  }, 80_000)
  afterAll(async () => {
    await stopAll()
    if (dir) rmSync(dir, { recursive: true, force: true })
  })

  it('both coordinator replicas start at once: exactly one leads (ready), the other stands by', async () => {
    expect(coordinators.length).toBe(2)
    // stays that way: poll for a while, always exactly this leader
    for (let i = 0; i < 10; i++) {
      expect(await waitForLeader(coordinators, 1000)).toBe(leader)
      await new Promise((r) => setTimeout(r, 100))
    }
    expect(await accepts(endpoints.get(leader)!.get(PORTS.coordinator.transport)!)).toBe(true)
    await expectStandby(standby, leader)
  }, 30_000)

  it('coordinator (leader): /healthz /readyz /metrics /status answer on SHOAL_HTTP', async () => {
    const http = PORTS.coordinator.http
    expect((await httpGet(url(leader, http, '/healthz'))).status).toBe(200)
    expect((await httpGet(url(leader, http, '/readyz'))).status).toBe(200)
    const metrics = await httpGet(url(leader, http, '/metrics'))
    expect(metrics.status).toBe(200)
    expect(metrics.text).toMatch(/^# (HELP|TYPE) /m)
    // The compose file sets SHOAL_TOKEN: /status (not the probes, not /metrics) needs it.
    expect(envFor(leader).SHOAL_TOKEN).toBeTruthy()
    expect((await httpGet(url(leader, http, '/status'))).status).toBe(401)
    const status = await httpGet(url(leader, http, '/status'), 3000, auth(leader))
    expect(status.status).toBe(200)
    // (the leader's own id is what the standby's /readyz names, checked above)
    expect((JSON.parse(status.text) as ClusterStatus).coordinator).toMatchObject({ ready: true })
  })

  it('coordinators: the compose healthcheck passes on both; the image HEALTHCHECK (/readyz) only on the leader', async () => {
    for (const c of coordinators) {
      const r = await healthcheck(c)
      expect(r, `${c}: ${r.stderr}`).toMatchObject({ code: 0 })
      expect(r.stdout).toMatch(/^status: SERVING/)
    }
    // the Dockerfile's HEALTHCHECK (shell form) takes the port from SHOAL_HTTP; it probes
    // readiness, which is why compose overrides it for the coordinators
    const dockerfile = parseDockerfile(readFileSync(DOCKERFILE, 'utf8'))
    const hc = dockerfile.find((i) => i.op === 'HEALTHCHECK')!.args.replace(/^(--\S+\s+)*CMD\s+/, '')
    const shell = hc.replace(`node ${IMAGE_ENTRY}`, `"${process.execPath}" --import tsx "${MAIN_TS}"`)
    const viaImage = (c: string): ReturnType<typeof run> =>
      run('/bin/sh', ['-c', shell], { SHOAL_HTTP: envFor(c).SHOAL_HTTP! })
    const onLeader = await viaImage(leader)
    expect(onLeader, onLeader.stderr).toMatchObject({ code: 0 })
    expect(await viaImage(standby)).toMatchObject({ code: 4 }) // NOT_SERVING: HTTP 503
  }, 30_000)

  it('worker: joins through SHOAL_COORDINATOR (both replicas) and passes its healthcheck', async () => {
    expect(envOf(worker).SHOAL_COORDINATOR!.split(',')).toHaveLength(coordinators.length)
    workerNode = startService('worker')
    await waitForStatus(url('worker', PORTS.worker.http, '/readyz'), 200, workerNode)
    expect((await httpGet(url('worker', PORTS.worker.http, '/healthz'))).status).toBe(200)
    const r = await healthcheck('worker')
    expect(r, r.stderr).toMatchObject({ code: 0 })
    const served = await waitWorkerServed(leader)
    // the cli service reaches the leader through the same list
    expect((await cliStatus()).members.map((m) => [m.id, m.state])).toEqual(
      served.members.map((m) => [m.id, 'alive']),
    )
  }, 60_000)

  it('a deposed leader exits 3, restarts as a standby; the worker follows the new leader', async () => {
    const old = nodes.get(leader)!
    // paused past its lease: the standby takes over, and the worker follows it
    old.child.kill('SIGSTOP')
    const next = await waitForLeader([standby])
    expect(next).toBe(standby)
    await waitWorkerServed(standby)
    await waitForStatus(url('worker', PORTS.worker.http, '/readyz'), 200, workerNode!)
    // resumed, the old leader finds its lease gone and exits with 3 ...
    old.child.kill('SIGCONT')
    const exit = await Promise.race([
      old.exited,
      new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), 10_000).unref()),
    ])
    expect(exit, old.output()).toEqual({ code: 3, signal: null })
    // ... which the service's restart policy restarts: it comes back as a standby
    expect(restartsAfterExit(doc.services[leader]!.restart, 3)).toBe(true)
    const restarted = startService(leader)
    nodes.set(leader, restarted)
    await waitForStatus(url(leader, PORTS.coordinator.http, '/healthz'), 200, restarted)
    await expectStandby(leader, standby)
    expect(await waitForLeader(coordinators, 1000)).toBe(standby)
    // the cli service (every replica in SHOAL_COORDINATOR) finds the new leader
    expect((await cliStatus()).members.filter((m) => m.state === 'alive')).toHaveLength(1)
    ;[leader, standby] = [standby, leader]
  }, 60_000)

  it('worker: drains on SIGTERM within stop_grace_period', async () => {
    const node = workerNode!
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
    // it said goodbye to the leader it followed
    const st = JSON.parse(
      (await httpGet(url(leader, PORTS.coordinator.http, '/status'), 3000, auth(leader))).text,
    ) as ClusterStatus
    expect(st.members.map((m) => m.state)).toEqual(['left'])
  }, 60_000)
})
