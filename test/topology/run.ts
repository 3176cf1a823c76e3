/**
 * Topology run (issue 7): `docker compose up --scale worker=3` emulated with one network
 * namespace per service instance (redis, coordinator-a, coordinator-b, worker-1..N) plus one for
 * a client, each service started with the command and environment docker-compose.yml gives it.
 * Needs root.
 *
 *   npm run test:topology          # or: node --import tsx test/topology/run.ts
 *
 * Checks, in order (each printed as it passes; a PASS/FAIL summary and the exit code at the end):
 *  1. the cluster forms: one coordinator replica leads (ready), the others stand by (healthy, not
 *     ready); `shoal status` from the client host shows the compose replica count of workers
 *     alive, every partition assigned and ready, each worker advertising <hostname>:7410;
 *  2. `shoal send` from the client host, then `shoal state get` and `shoal state dump`: exact
 *     per-key {count, sum} (the built-in count job);
 *  3. scale to 5 workers (`--scale worker=5`), send more, exact state;
 *  4. back to 3: SIGTERM the two extra replicas, they drain and exit 0; send more, exact state;
 *  5. cut one worker's link (eth0 down in its namespace): it is declared dead and its partitions
 *     move to the others; send more;
 *  6. heal the link: the worker rejoins (fenced for its old partitions, same member id) and the
 *     cluster returns to every partition assigned and ready; send more;
 *  7. exact state of everything sent.
 *
 * Differences from a container, and only these: the image's entry point (`node /app/dist/...`)
 * is `node --import tsx src/cli/main.ts` from this repository; the redis image is the local
 * redis-server with the compose command's flags (plus the image's `--protected-mode no`) in
 * .tmp/topology/redis-data instead of the volume; processes run as root; health checks are polled every
 * 300 ms instead of every `interval`, which only makes start-up faster. Every environment value
 * is compose's own (heartbeat 500 ms x 3 is fast enough, nothing is shortened).
 *
 * Host names: each worker gets its own UTS namespace (`unshare --uts`) with the replica's name
 * (worker-1, ...) as host name, so with SHOAL_ADVERTISE unset it advertises `worker-1:7410` and
 * every other host resolves that through its /etc/hosts, as compose DNS resolves a container's
 * host name. The service name `worker` resolves to every replica.
 */
import { rmSync, mkdirSync, existsSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { ChildProcess } from 'node:child_process'
import type { ClusterStatus, MemberStatus } from '../../src/coordinator/coordinator.ts'
import { partitionForKey } from '../../src/protocol/partition.ts'
import {
  asList,
  durationMs,
  envOf,
  healthcheckArgv,
  imageOf,
  loadCompose,
  localCommand,
  redisArgs,
  type ComposeService,
} from './compose.ts'
import { Topology } from './netns.ts'

const ROOT = fileURLToPath(new URL('../../', import.meta.url))
const MAIN_TS = join(ROOT, 'src/cli/main.ts')
const CLI = [process.execPath, '--import', 'tsx', MAIN_TS]
const LOG_DIR = join(ROOT, '.tmp/topology')
const LOCK = join(tmpdir(), 'shoal-topology.lock')
/** Namespace prefix: a crashed run's leftovers carry it and are removed at the next start. */
const PREFIX = 'shtopo'
const SUBNET = '10.78.0'
const SCALE_OUT = 5
const KEYS = 3000
const EVENTS_PER_BATCH = 9000

const t0 = performance.now()
const elapsed = (): string => `${((performance.now() - t0) / 1000).toFixed(1)} s`
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))
/** A timer for Promise.race that does not keep the process alive once the race is decided. */
const timeout = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms).unref())
const log = (line: string): void => console.log(line)

// ---- the compose file ---------------------------------------------------------------------------

const compose = loadCompose(join(ROOT, 'docker-compose.yml'), process.env)
const image = imageOf(ROOT)
const service = (name: string): ComposeService => {
  const s = compose.services[name]
  if (s === undefined) throw new Error(`docker-compose.yml has no service ${name}`)
  return s
}
const REDIS = service('redis')
/** The coordinator replicas (services whose command is `coordinator`), by name. */
const COORDINATORS = Object.keys(compose.services)
  .filter((n) => asList(compose.services[n]!.command)[0] === 'coordinator')
  .sort()
const WORKER = service('worker')
const CLI_SERVICE = service('cli')
const REPLICAS = WORKER.deploy?.replicas ?? 1

/** A container's environment: the image's ENV, then the service's `environment`. */
function containerEnv(s: ComposeService): Record<string, string> {
  return {
    PATH: process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin',
    HOME: process.env.HOME ?? '/root',
    ...image.env,
    ...envOf(s),
  }
}
const local = (argv: string[]): string[] => localCommand(argv, { entry: image.entry, cliArgv: CLI })
/** `node <entry> <command>`: the image's ENTRYPOINT followed by the service's command. */
const serviceArgv = (s: ComposeService): string[] => local(['node', image.entry, ...asList(s.command)])
const portOf = (addr: string | undefined): number => Number(/:(\d+)$/.exec(addr ?? '')?.[1] ?? NaN)

// ---- hosts and processes ----------------------------------------------------------------------------

const topo = new Topology({ prefix: PREFIX, subnet: SUBNET })

interface Proc {
  host: string
  child: ChildProcess
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  exit: { code: number | null; signal: NodeJS.Signals | null } | null
}
const procs = new Map<string, Proc>()

function start(host: string, s: ComposeService, argv: string[], hostname?: string): Proc {
  const child = topo.spawn(host, argv, {
    env: containerEnv(s),
    cwd: ROOT,
    logFile: join(LOG_DIR, `${host}.log`),
    hostname,
  })
  const p: Proc = {
    host,
    child,
    exit: null,
    exited: new Promise((resolve) => {
      child.on('exit', (code, signal) => {
        p.exit = { code, signal }
        resolve(p.exit)
      })
      child.on('error', () => resolve({ code: null, signal: null }))
    }),
  }
  procs.set(host, p)
  return p
}

const logOf = (host: string): string => {
  const f = join(LOG_DIR, `${host}.log`)
  return existsSync(f) ? readFileSync(f, 'utf8') : ''
}
const tail = (host: string, n = 25): string =>
  logOf(host)
    .trimEnd()
    .split('\n')
    .slice(-n)
    .map((l) => `    ${host}| ${l}`)
    .join('\n')

/** Poll a service's compose healthcheck inside its host until it passes (depends_on: service_healthy). */
async function waitHealthy(host: string, s: ComposeService, timeoutMs = 40_000): Promise<void> {
  const argv = healthcheckArgv(s.healthcheck?.test)
  if (argv === null) throw new Error(`${host}: the service has no healthcheck`)
  const deadline = performance.now() + timeoutMs
  for (;;) {
    // The image runs compiled JS; here every probe compiles the CLI with tsx first, which takes
    // seconds on a busy machine (and several services are probed at once): allow for that.
    const r = await topo.exec(host, local(argv), { env: containerEnv(s), cwd: ROOT, timeoutMs: 15_000 })
    if (r.code === 0) return
    const p = procs.get(host)
    if (p?.exit != null) throw new Error(`${host} exited (${JSON.stringify(p.exit)})\n${tail(host)}`)
    if (performance.now() > deadline)
      throw new Error(
        `${host}: healthcheck ${argv.join(' ')} still failing: ${r.stdout}${r.stderr}\n${tail(host)}`,
      )
    await sleep(300)
  }
}

/** Redis's /data (the compose volume): removed at teardown, and with LOG_DIR at the next start. */
const REDIS_DIR = join(LOG_DIR, 'redis-data')

function startRedis(): Proc {
  mkdirSync(REDIS_DIR, { recursive: true })
  return start('redis', REDIS, redisArgs(asList(REDIS.command), REDIS_DIR))
}

function startWorker(i: number): Proc {
  const name = `worker-${i}`
  topo.addHost(name, ['worker'])
  return start(name, WORKER, serviceArgv(WORKER), name)
}

async function dependenciesHealthy(s: ComposeService): Promise<void> {
  const deps = Array.isArray(s.depends_on)
    ? []
    : Object.entries(s.depends_on ?? {}).filter(([, d]) => d.condition === 'service_healthy')
  await Promise.all(deps.map(([name]) => waitHealthy(name, service(name))))
}

// ---- the client host ----------------------------------------------------------------------------------

const cliEnv = containerEnv(CLI_SERVICE)

async function cli(
  args: string[],
  input?: string,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return topo.exec('cli', [...CLI, ...args], { env: cliEnv, cwd: ROOT, input, timeoutMs: 60_000 })
}

async function status(): Promise<ClusterStatus> {
  const r = await cli(['status', '--json'])
  if (r.code !== 0) throw new Error(`shoal status exited ${r.code}: ${r.stderr.trim()}`)
  return JSON.parse(r.stdout) as ClusterStatus
}

/** What a name resolves to on the client host (getaddrinfo, as every node resolves names). */
async function resolveAll(name: string): Promise<string[]> {
  const r = await topo.exec('cli', ['getent', 'ahostsv4', name], { env: cliEnv, cwd: ROOT, timeoutMs: 5000 })
  return [
    ...new Set(
      r.stdout
        .split('\n')
        .map((l) => l.split(/\s+/)[0]!)
        .filter(Boolean),
    ),
  ].sort()
}

/** The service name `worker` must resolve to exactly the replicas running now (compose DNS). */
async function workerDns(): Promise<string> {
  const want = topo
    .hosts()
    .filter((h) => h.aliases.includes('worker'))
    .map((h) => h.ip)
    .sort()
  const got = await resolveAll('worker')
  if (JSON.stringify(got) !== JSON.stringify(want))
    throw new Error(`"worker" resolves to ${got.join(' ') || 'nothing'}, expected ${want.join(' ')}`)
  return `"worker" resolves to ${got.length} replicas`
}

const alive = (s: ClusterStatus): MemberStatus[] => s.members.filter((m) => m.state === 'alive')
const summary = (s: ClusterStatus): string =>
  `${s.members.map((m) => `${m.id} ${m.state} ${m.readyPartitions}/${m.partitions}`).join(', ')}; ` +
  `${s.assignment.owners.filter((o) => o !== null).length}/${s.coordinator.partitions} assigned, epoch ${s.assignment.epoch}`

/** null when `workers` members are alive and own every partition, all of them ready; else why not. */
function settled(s: ClusterStatus, workers: number): string | null {
  if (!s.coordinator.ready) return 'coordinator not ready'
  const live = alive(s)
  if (live.length !== workers) return `${live.length} workers alive, expected ${workers}`
  const ids = new Set(live.map((m) => m.id))
  const bad = s.assignment.owners.filter((o) => o === null || !ids.has(o)).length
  if (bad > 0) return `${bad} partitions unassigned or owned by a member that is not alive`
  const notReady = live.filter((m) => m.partitions === 0 || m.readyPartitions !== m.partitions)
  if (notReady.length > 0)
    return `not ready: ${notReady.map((m) => `${m.id} ${m.readyPartitions}/${m.partitions}`).join(', ')}`
  return null
}

async function waitStatus(
  what: string,
  pred: (s: ClusterStatus) => string | null,
  timeoutMs: number,
): Promise<ClusterStatus> {
  const deadline = performance.now() + timeoutMs
  let last = 'no status yet'
  for (;;) {
    try {
      const s = await status()
      const why = pred(s)
      if (why === null) return s
      last = `${why} (${summary(s)})`
    } catch (e) {
      last = (e as Error).message
    }
    if (performance.now() > deadline) throw new Error(`${what}: not within ${timeoutMs / 1000} s: ${last}`)
    await sleep(250)
  }
}

// ---- events and expected state ------------------------------------------------------------------------

interface Count {
  count: number
  sum: number
}
const expected = new Map<string, Count>()
let nextEvent = 0

/** NDJSON for `n` more events over KEYS keys; every 25th has no `value` (counted, not summed). */
function batch(n: number): string {
  const lines: string[] = []
  for (let k = 0; k < n; k++) {
    const i = nextEvent++
    const key = `user-${(i * 7) % KEYS}`
    const e = expected.get(key) ?? { count: 0, sum: 0 }
    e.count++
    if (i % 25 === 0) {
      lines.push(JSON.stringify({ key, seq: i }))
    } else {
      const value = ((i * 37) % 201) - 100
      e.sum += value
      lines.push(JSON.stringify({ key, value, seq: i }))
    }
    expected.set(key, e)
  }
  return lines.join('\n') + '\n'
}

async function send(n: number): Promise<string> {
  const r = await cli(['send', '-'], batch(n))
  if (r.code !== 0) throw new Error(`shoal send exited ${r.code}: ${r.stderr.trim()}`)
  return r.stderr.trim()
}

/** Partitions owned by the worker whose link is cut, before the cut (for the failure message). */
let cutPartitions: Set<number> | null = null
let cutWorker = ''

/** `shoal state get` on a few keys and `shoal state dump` of all: exactly what was sent. */
async function exactState(partitions: number): Promise<string> {
  const sample = ['user-0', `user-${KEYS - 1}`, `user-${Math.floor(KEYS / 2)}`]
  const wrongGets: string[] = []
  for (const key of sample) {
    const r = await cli(['state', 'get', key])
    const want = JSON.stringify(expected.get(key))
    if (r.code !== 0 || r.stdout.trim() !== want) {
      wrongGets.push(`${key}: expected ${want}, got ${r.code === 0 ? r.stdout.trim() : r.stderr.trim()}`)
    }
  }
  let dump = ''
  for (let attempt = 1; ; attempt++) {
    const r = await cli(['state', 'dump'])
    if (r.code === 0) {
      dump = r.stdout
      break
    }
    if (attempt === 3) throw new Error(`shoal state dump exited ${r.code}: ${r.stderr.trim()}`)
    await sleep(500)
  }
  const got = new Map<string, Count>()
  for (const line of dump.split('\n')) {
    if (line.trim() === '') continue
    const { key, state } = JSON.parse(line) as { key: string; state: Count }
    got.set(key, state)
  }
  const off: string[] = []
  for (const [key, want] of expected) {
    const have = got.get(key)
    if (have?.count !== want.count || have.sum !== want.sum) off.push(key)
  }
  for (const key of got.keys()) if (!expected.has(key)) off.push(key)
  if (off.length === 0 && wrongGets.length === 0) {
    return `${expected.size} keys, ${nextEvent} events: every count and sum exact (state get: ${sample.join(', ')})`
  }
  const pOf = (k: string): number => partitionForKey(k, partitions)
  const offPartitions = [...new Set(off.map(pOf))].sort((a, b) => a - b)
  const lines = [
    `${off.length} of ${expected.size} keys off (${off.filter((k) => !got.has(k)).length} missing, ` +
      `${off.filter((k) => !expected.has(k)).length} unexpected) in ${offPartitions.length} partitions`,
  ]
  if (cutPartitions !== null) {
    const inCut = offPartitions.filter((p) => cutPartitions!.has(p)).length
    lines.push(
      `${inCut} of those ${offPartitions.length} partitions were owned by ${cutWorker} when its link was cut ` +
        `(${cutPartitions.size} partitions moved then)`,
    )
  }
  lines.push(`partitions: ${offPartitions.slice(0, 64).join(' ')}${offPartitions.length > 64 ? ' ...' : ''}`)
  for (const k of off.slice(0, 10)) {
    lines.push(
      `${k} (partition ${pOf(k)}): expected ${JSON.stringify(expected.get(k) ?? null)}, got ${JSON.stringify(got.get(k) ?? null)}`,
    )
  }
  if (off.length > 10)
    lines.push(
      `... and ${off.length - 10} more keys: ${off.slice(10, 60).join(' ')}${off.length > 60 ? ' ...' : ''}`,
    )
  lines.push(...wrongGets.map((w) => `state get ${w}`))
  throw new Error(lines.join('\n      '))
}

// ---- checks ---------------------------------------------------------------------------------------------

interface Result {
  name: string
  outcome: 'PASS' | 'FAIL' | 'SKIP'
  seconds: number
  detail: string
}
const results: Result[] = []
let aborted = false

/** Run one check. A failed `fatal` check skips every later one (they need what it sets up). */
async function check(name: string, fatal: boolean, f: () => Promise<string>): Promise<void> {
  if (aborted) {
    results.push({ name, outcome: 'SKIP', seconds: 0, detail: 'an earlier check failed' })
    log(`SKIP  ${name}`)
    return
  }
  const started = performance.now()
  try {
    const detail = await f()
    const seconds = (performance.now() - started) / 1000
    results.push({ name, outcome: 'PASS', seconds, detail })
    log(`PASS  ${name} (${seconds.toFixed(1)} s, at ${elapsed()})\n      ${detail}`)
  } catch (e) {
    const seconds = (performance.now() - started) / 1000
    const detail = e instanceof Error ? e.message : String(e)
    results.push({ name, outcome: 'FAIL', seconds, detail })
    log(`FAIL  ${name} (${seconds.toFixed(1)} s, at ${elapsed()})\n      ${detail}`)
    if (fatal) {
      aborted = true
      log(`      logs: ${LOG_DIR}/<host>.log; last lines of the leader's:\n${tail(leaderHost, 15)}`)
    }
  }
}

/**
 * `shoal probe http` against a coordinator replica's own HTTP port, inside its host: exit 0
 * serving (200), 4 not serving (503).
 */
async function probeCoordinator(host: string, path: '/healthz' | '/readyz'): Promise<number | null> {
  const s = service(host)
  const port = portOf(envOf(s).SHOAL_HTTP)
  const r = await topo.exec(host, [...CLI, 'probe', 'http', `http://127.0.0.1:${port}${path}`], {
    env: containerEnv(s),
    cwd: ROOT,
    timeoutMs: 15_000,
  })
  return r.code
}

/** Poll every replica's /readyz until exactly one is ready (the leader); the others are not. */
async function waitLeader(timeoutMs = 20_000): Promise<string> {
  const deadline = performance.now() + timeoutMs
  for (;;) {
    const codes = await Promise.all(COORDINATORS.map((c) => probeCoordinator(c, '/readyz')))
    const ready = COORDINATORS.filter((_, i) => codes[i] === 0)
    if (ready.length === 1 && codes.every((c) => c === 0 || c === 4)) return ready[0]!
    for (const c of COORDINATORS) {
      const p = procs.get(c)
      if (p?.exit != null) throw new Error(`${c} exited (${JSON.stringify(p.exit)})\n${tail(c)}`)
    }
    if (performance.now() > deadline)
      throw new Error(
        `no single leader: /readyz probes exited ${COORDINATORS.map((c, i) => `${c} ${codes[i]}`).join(', ')}`,
      )
    await sleep(300)
  }
}

/** The replica that leads now (its log has the fencing lines, its /status the cluster). */
let leaderHost = COORDINATORS[0] ?? 'coordinator'

async function run(): Promise<void> {
  const workerAddr = (i: number): string => `worker-${i}:${portOf(envOf(WORKER).SHOAL_LISTEN)}`
  let partitions = 256

  await check(
    `compose up: redis, coordinators ${COORDINATORS.join(', ')}, ${REPLICAS} workers; the cluster forms`,
    true,
    async () => {
      if (COORDINATORS.length < 2)
        throw new Error(`docker-compose.yml runs ${COORDINATORS.length} coordinator replicas, expected 2`)
      topo.up()
      topo.addHost('redis', ['redis'])
      for (const c of COORDINATORS) topo.addHost(c, [c])
      topo.addHost('cli', ['cli'])
      // A machine outside the compose network, like the Docker host: it reaches the coordinators
      // (the published ports) but cannot resolve the workers' container names.
      topo.addHost('outside', [], COORDINATORS)
      // compose's start order: each service once the services it depends on are healthy
      await dependenciesHealthy(REDIS)
      startRedis()
      // the replicas together (each depends on redis only); one takes the lease
      for (const c of COORDINATORS) await dependenciesHealthy(service(c))
      for (const c of COORDINATORS) start(c, service(c), serviceArgv(service(c)))
      await dependenciesHealthy(WORKER) // every coordinator's healthcheck (/healthz): standbys too
      leaderHost = await waitLeader()
      const standbys = COORDINATORS.filter((c) => c !== leaderHost).map(
        (c) => `${c} standing by (healthy, /readyz 503)`,
      )
      for (let i = 1; i <= REPLICAS; i++) startWorker(i)
      const s = await waitStatus(
        `${REPLICAS} workers, all partitions assigned`,
        (s) => settled(s, REPLICAS),
        40_000,
      )
      partitions = s.coordinator.partitions
      const addrs = alive(s)
        .map((m) => m.dataAddress)
        .sort()
      const want = Array.from({ length: REPLICAS }, (_, i) => workerAddr(i + 1)).sort()
      if (JSON.stringify(addrs) !== JSON.stringify(want))
        throw new Error(`workers advertise ${addrs.join(', ')}, expected ${want.join(', ')}`)
      await Promise.all(
        Array.from({ length: REPLICAS }, (_, i) => waitHealthy(`worker-${i + 1}`, WORKER, 10_000)),
      )
      const table = await cli(['status'])
      log(table.stdout.replace(/^/gm, '      | ').trimEnd())
      return (
        `${leaderHost} leads, ${standbys.join(', ')}; ${summary(s)}; advertised ${addrs.join(', ')}; ` +
        `worker healthchecks pass; ${await workerDns()}`
      )
    },
  )

  await check('shoal send, then exact state (state get + state dump)', false, async () => {
    const sent = await send(EVENTS_PER_BATCH)
    return `${sent}\n      ${await exactState(partitions)}`
  })

  await check(
    'from outside the network (only the coordinators resolve): send and state get through the gateway',
    false,
    async () => {
      const r = await topo.exec('outside', [...CLI, 'send', '-'], {
        env: cliEnv,
        cwd: ROOT,
        input: batch(EVENTS_PER_BATCH),
        timeoutMs: 60_000,
      })
      if (r.code !== 0) throw new Error(`shoal send from outside exited ${r.code}: ${r.stderr.trim()}`)
      const key = 'user-1'
      const g = await topo.exec('outside', [...CLI, 'state', 'get', key], {
        env: cliEnv,
        cwd: ROOT,
        timeoutMs: 30_000,
      })
      const want = JSON.stringify(expected.get(key))
      if (g.code !== 0 || g.stdout.trim() !== want)
        throw new Error(
          `state get ${key} from outside: expected ${want}, got ${g.code === 0 ? g.stdout.trim() : g.stderr.trim()}`,
        )
      return `${r.stderr.trim()}\n      state get ${key} = ${want}; ${await exactState(partitions)}`
    },
  )

  await check(`scale to ${SCALE_OUT} workers (--scale worker=${SCALE_OUT})`, true, async () => {
    for (let i = REPLICAS + 1; i <= SCALE_OUT; i++) startWorker(i)
    const s = await waitStatus(`${SCALE_OUT} workers`, (s) => settled(s, SCALE_OUT), 40_000)
    return `${summary(s)}; ${await workerDns()}`
  })

  await check(`send to ${SCALE_OUT} workers; exact state`, false, async () => {
    const sent = await send(EVENTS_PER_BATCH)
    return `${sent}\n      ${await exactState(partitions)}`
  })

  await check(
    `scale back to ${REPLICAS}: SIGTERM the extra workers, they drain and exit 0`,
    true,
    async () => {
      const grace = durationMs(WORKER.stop_grace_period, 10_000)
      const extra = Array.from({ length: SCALE_OUT - REPLICAS }, (_, i) =>
        procs.get(`worker-${REPLICAS + 1 + i}`)!,
      )
      const t = performance.now()
      for (const p of extra) p.child.kill('SIGTERM')
      const exits = await Promise.all(
        extra.map((p) =>
          Promise.race([p.exited, timeout(grace).then(() => ({ code: null, signal: 'timeout' as const }))]),
        ),
      )
      const drainS = ((performance.now() - t) / 1000).toFixed(1)
      exits.forEach((e, i) => {
        if (e.code !== 0)
          throw new Error(
            `${extra[i]!.host}: exit ${JSON.stringify(e)} within stop_grace_period ${grace} ms\n${tail(extra[i]!.host)}`,
          )
      })
      for (const p of extra) topo.removeHost(p.host) // compose removes the containers
      const s = await waitStatus(`${REPLICAS} workers`, (s) => settled(s, REPLICAS), 30_000)
      const left = s.members.filter((m) => m.state === 'left').map((m) => m.id)
      return `${extra.map((p) => p.host).join(', ')} exited 0 after ${drainS} s; left: ${left.join(', ')}; ${summary(s)}; ${await workerDns()}`
    },
  )

  await check(`send after scaling back; exact state`, false, async () => {
    const sent = await send(EVENTS_PER_BATCH)
    return `${sent}\n      ${await exactState(partitions)}`
  })

  let victimId = ''
  const victim = 'worker-2'
  await check(`cut ${victim}'s link: declared dead, its partitions move; send`, true, async () => {
    const before = await status()
    const m = before.members.find((x) => x.state === 'alive' && x.dataAddress === workerAddr(2))
    if (m === undefined) throw new Error(`no alive member advertising ${workerAddr(2)}: ${summary(before)}`)
    victimId = m.id
    cutWorker = `${victim} (${victimId})`
    cutPartitions = new Set(before.assignment.owners.flatMap((o, p) => (o === victimId ? [p] : [])))
    const t = performance.now()
    topo.setLink(victim, false)
    const s = await waitStatus(
      `${victimId} dead and its partitions moved`,
      (s) => {
        const v = s.members.find((x) => x.id === victimId)
        if (v?.state !== 'dead') return `${victimId} is ${v?.state ?? 'gone'}`
        return settled(s, REPLICAS - 1)
      },
      20_000,
    )
    const movedS = ((performance.now() - t) / 1000).toFixed(1)
    const sent = await send(EVENTS_PER_BATCH)
    return (
      `${victimId} dead and its ${cutPartitions.size} partitions owned by the others within ${movedS} s ` +
      `(heartbeat ${s.coordinator.heartbeatIntervalMs} ms x ${s.coordinator.heartbeatMisses}); ${summary(s)}\n      ${sent}`
    )
  })

  await check(`heal ${victim}'s link: it rejoins, every partition assigned again; send`, true, async () => {
    const t = performance.now()
    const coordLogAt = logOf(leaderHost).length
    const victimLogAt = logOf(victim).length
    topo.setLink(victim, true)
    const s = await waitStatus(
      `${victim} back and every partition assigned`,
      (s) => {
        const back = alive(s).find((x) => x.dataAddress === workerAddr(2))
        if (back === undefined) return `${victim} not alive yet`
        return settled(s, REPLICAS)
      },
      40_000,
    )
    const healS = ((performance.now() - t) / 1000).toFixed(1)
    const back = alive(s).find((x) => x.dataAddress === workerAddr(2))!
    const how = back.id === victimId ? `the same member id ${victimId} rejoined` : `a new member ${back.id}`
    const fencedCoord = logOf(leaderHost).slice(coordLogAt).includes('rejoining worker was fenced')
    const fencedWorker = logOf(victim)
      .slice(victimLogAt)
      .includes('fenced: partitions moved to another worker')
    if (!fencedCoord && !fencedWorker)
      throw new Error(`${victim} rejoined (${how}) but neither log shows it was fenced\n${tail(victim)}`)
    const sent = await send(EVENTS_PER_BATCH)
    return (
      `${how} after ${healS} s, fenced for its old partitions (coordinator log: ${fencedCoord}, ` +
      `worker log: ${fencedWorker}); it owns ${back.partitions} again; ${summary(s)}\n      ${sent}`
    )
  })

  await check('exact state of everything sent', false, () => exactState(partitions))
}

// ---- setup, teardown, summary ---------------------------------------------------------------------------

function takeLock(): void {
  if (existsSync(LOCK)) {
    const pid = Number(readFileSync(LOCK, 'utf8'))
    let running = false
    try {
      if (pid > 0 && pid !== process.pid) {
        process.kill(pid, 0)
        running = true
      }
    } catch {
      // stale
    }
    if (running) throw new Error(`another topology run (pid ${pid}) holds ${LOCK}`)
  }
  writeFileSync(LOCK, String(process.pid))
}

let tornDown = false
function teardown(): void {
  if (tornDown) return
  tornDown = true
  topo.down()
  rmSync(REDIS_DIR, { recursive: true, force: true })
  const left = topo.namespaces()
  if (left.length > 0) log(`topology: namespaces left behind: ${left.join(' ')}`)
  rmSync(LOCK, { force: true })
}

async function stopAll(): Promise<void> {
  // compose down: workers first (they drain), then the coordinators, then redis; KILL after 3 s each
  const all = [...procs.values()]
  const groups = [
    all.filter((p) => p.host.startsWith('worker')),
    all.filter((p) => COORDINATORS.includes(p.host)),
    all.filter((p) => p.host === 'redis'),
  ]
  for (const group of groups) {
    for (const p of group) if (p.exit === null) p.child.kill('SIGTERM')
    await Promise.race([Promise.all(group.map((p) => p.exited)), timeout(3000)])
    for (const p of group) if (p.exit === null) p.child.kill('SIGKILL')
  }
}

async function main(): Promise<number> {
  if (process.getuid?.() !== 0) {
    log('topology: needs root (network namespaces); FAIL')
    return 1
  }
  takeLock()
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.on(sig, () => {
      log(`topology: ${sig}: tearing down`)
      teardown()
      process.exit(130)
    })
  }
  const leftovers = topo.namespaces()
  if (leftovers.length > 0) log(`topology: removing ${leftovers.length} namespaces left by an earlier run`)
  topo.down()
  rmSync(LOG_DIR, { recursive: true, force: true })
  mkdirSync(LOG_DIR, { recursive: true })
  log(
    `topology: docker-compose.yml as network namespaces ${PREFIX}-* on ${SUBNET}.0/24 ` +
      `(${REPLICAS} workers, scale to ${SCALE_OUT}); logs in ${LOG_DIR}`,
  )
  try {
    await run()
  } catch (e) {
    results.push({
      name: 'topology run',
      outcome: 'FAIL',
      seconds: 0,
      detail: (e as Error).stack ?? String(e),
    })
    log(`FAIL  topology run: ${(e as Error).stack ?? String(e)}`)
  } finally {
    await stopAll().catch(() => {})
    teardown()
  }
  const count = (o: Result['outcome']): number => results.filter((r) => r.outcome === o).length
  const ok = count('FAIL') === 0 && count('SKIP') === 0
  log(`\ntopology summary (${elapsed()}):`)
  for (const r of results) log(`  ${r.outcome}  ${r.name}`)
  log(`${ok ? 'PASS' : 'FAIL'}: ${count('PASS')} passed, ${count('FAIL')} failed, ${count('SKIP')} skipped`)
  return ok ? 0 : 1
}

process.exitCode = await main()
