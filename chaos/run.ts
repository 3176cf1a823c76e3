/**
 * The chaos suite (issue 14): `npm run chaos -- --cycles N --seed S`.
 *
 * A real cluster (redis-server with AOF, two coordinator replicas sharing `--state redis://`,
 * three workers with `--coordinator a,b`, heartbeat 200 ms, 32 partitions, checkpoints every
 * 500 ms; chaos/cluster.ts) under continuous load: a ShoalClient in this process sending counted
 * events, and a Redis stream the workers read through a consumer group (`--source`), fed with
 * XADD (chaos/load.ts). Each cycle injects one fault drawn from a PRNG seeded with S (the same
 * seed replays the same sequence of faults, targets and durations):
 *
 *   worker-kill       SIGKILL a worker, start a new one in its place
 *   worker-stop       SIGSTOP a worker for 1-3 s, then SIGCONT
 *   leader-kill       SIGKILL the leading coordinator, start it again (standby, or it wins the lease)
 *   leader-stop       SIGSTOP the leader for 2-4 s, then SIGCONT (deposed, it exits 3; restarted)
 *   redis-restart     SIGKILL redis-server, restart it from its AOF on the same port
 *   worker-partition  cut a worker's link for 2-4 s (network namespaces; needs root), then heal
 *   leader-partition  cut the leading coordinator's link (Redis, workers, clients) for 2-4 s,
 *                     then heal (deposed, it exits 3; restarted)
 *
 * and waits until the cluster has settled again (one leader ready, the other replica up, the
 * three worker processes alive, every partition owned, ready and balanced), recording the
 * recovery time. At the end the load stops, everything is flushed, and every key's state is
 * compared with what was acknowledged: lost, duplicated and wrong keys are printed with the
 * seed, and any discrepancy exits 1.
 *
 * Options: --cycles N (10) --seed S (random, printed) --rate EV/S (2000) --stream-rate EV/S (300)
 * --keys N (4000) --no-source --no-partitions --no-leader-partitions (the six-kind plans of
 * seeds recorded before 2026-12-04) --faults KIND,KIND (draw only these) --recover-timeout MS
 * (60000) --junit FILE
 * --report FILE (JSON) --log-dir DIR (.tmp/chaos); --self-test adds one lost and one
 * duplicated event behind the runner's back, to show the check catches them (that run FAILs).
 */
import { mkdirSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs'
import { loadavg, tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import type { ShoalClient } from '../src/client/client.ts'
import type { ClusterStatus } from '../src/coordinator/coordinator.ts'
import { partitionForKey } from '../src/protocol/partition.ts'
import {
  CHECKPOINT_MS,
  GROUP,
  HEARTBEAT_MS,
  PARTITIONS,
  STREAM,
  WORKERS,
  cleanNetns,
  observe,
  setUpNetns,
  startCluster,
  type Cluster,
  type Netns,
  type Observation,
} from './cluster.ts'
import { ClientLoad, StreamLoad, type Totals } from './load.ts'

const ROOT = fileURLToPath(new URL('../', import.meta.url))
const LOCK = join(tmpdir(), 'shoal-chaos.lock')

const ALL_KINDS = [
  'worker-kill',
  'worker-stop',
  'leader-kill',
  'leader-stop',
  'redis-restart',
  'worker-partition',
  'leader-partition',
] as const
type Kind = (typeof ALL_KINDS)[number]

const t0 = performance.now()
const since = (t: number): number => performance.now() - t
const sec = (ms: number): string => `${(ms / 1000).toFixed(2)}`
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))
const say = (line: string): void => {
  process.stdout.write(`${line}\n`)
}

// ---- options ---------------------------------------------------------------------------------------

const { values: opt } = parseArgs({
  options: {
    cycles: { type: 'string', default: '10' },
    seed: { type: 'string' },
    rate: { type: 'string', default: '2000' },
    'stream-rate': { type: 'string', default: '300' },
    keys: { type: 'string', default: '4000' },
    'no-source': { type: 'boolean', default: false },
    'no-partitions': { type: 'boolean', default: false },
    // Leader partitions are drawn like every other fault since 2026-12-04; this replays the
    // plans of seeds recorded before (six kinds).
    'no-leader-partitions': { type: 'boolean', default: false },
    // Draw only these kinds (comma-separated), e.g. to replay one fault under load.
    faults: { type: 'string' },
    'self-test': { type: 'boolean', default: false },
    'recover-timeout': { type: 'string', default: '60000' },
    junit: { type: 'string' },
    report: { type: 'string' },
    'log-dir': { type: 'string', default: join(ROOT, '.tmp/chaos') },
  },
  strict: true,
})

function intOpt(name: string, value: string | undefined, min: number): number {
  const n = Number(value)
  if (!Number.isInteger(n) || n < min) {
    say(`chaos: --${name} must be an integer >= ${min} (got ${JSON.stringify(value)})`)
    process.exit(2)
  }
  return n
}
const CYCLES = intOpt('cycles', opt.cycles, 0)
const SEED = opt.seed === undefined ? Math.floor(Math.random() * 2 ** 32) : intOpt('seed', opt.seed, 0)
const RATE = intOpt('rate', opt.rate, 1)
const STREAM_RATE = intOpt('stream-rate', opt['stream-rate'], 1)
const KEYS = intOpt('keys', opt.keys, 1)
const STREAM_KEYS = Math.max(1, Math.floor(KEYS / 4))
const RECOVER_MS = intOpt('recover-timeout', opt['recover-timeout'], 1000)
const SOURCE = !opt['no-source']
const LOG_DIR = opt['log-dir']
function kindsOpt(): readonly Kind[] {
  if (opt.faults !== undefined) {
    const names = opt.faults.split(',').map((s) => s.trim())
    const bad = names.filter((n) => !(ALL_KINDS as readonly string[]).includes(n))
    if (bad.length > 0 || names.length === 0) {
      say(
        `chaos: --faults takes a comma-separated list of ${ALL_KINDS.join(', ')} (got ${JSON.stringify(opt.faults)})`,
      )
      process.exit(2)
    }
    return ALL_KINDS.filter((k) => names.includes(k))
  }
  return opt['no-leader-partitions'] ? ALL_KINDS.filter((k) => k !== 'leader-partition') : ALL_KINDS
}
const KINDS = kindsOpt()

/** mulberry32: small, fast, and the same sequence on every platform for a given seed. */
function prng(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

interface Plan {
  kind: Kind
  worker: number
  /** SIGSTOP / partition length. */
  durationMs: number
  /** Steady load before the fault. */
  warmupMs: number
}

/** Four draws per cycle, always, so a cycle's plan depends only on the seed and its number. */
function plans(seed: number, cycles: number): Plan[] {
  const rnd = prng(seed)
  return Array.from({ length: cycles }, () => {
    const kind = KINDS[Math.floor(rnd() * KINDS.length)]!
    const worker = Math.floor(rnd() * WORKERS)
    const d = 1000 + Math.floor(rnd() * 2000)
    const warmupMs = 500 + Math.floor(rnd() * 1000)
    // A leader must stay stopped past its lease (1.5 s) to be replaced; a partition past the
    // detection time and the worker's own coordinator timeout.
    const durationMs =
      kind === 'leader-stop' || kind === 'worker-partition' || kind === 'leader-partition' ? d + 1000 : d
    return { kind, worker, durationMs, warmupMs }
  })
}

// ---- cycles -----------------------------------------------------------------------------------------

interface CycleRecord {
  cycle: number
  kind: Kind
  target: string
  durationMs: number | null
  /**
   * Fault injected -> serving again for good: a leader ready, the three worker processes
   * alive, every partition owned and ready (the start of the streak that lasted).
   */
  recoveredMs: number | null
  /** Fault injected -> everything back (the other replica up, partitions rebalanced). */
  fullMs: number | null
  /** Fault injected -> fault over (process restarted and up, resumed, healed). */
  restoredMs: number | null
  /** Leader faults: fault -> a replica ready (leading) again. */
  leaderMs: number | null
  /** Longest time without any client ack from the fault to recovery. */
  ackGapMs: number
  leaderAfter: string | null
  notes: string[]
  skipped: string | null
  failure: string | null
}

/** Everything back must hold this long: longer than the lease (1.5 s), so a deposition shows. */
const STABLE_MS = 2000

/**
 * Poll the cluster every 100 ms from the fault on. Done once, after the fault is over,
 * everything has been back for STABLE_MS; the serving and everything-back streaks that lasted
 * give the recovery times. Also: when a leader was ready again after having been absent.
 */
class Monitor {
  readonly #cluster: Cluster
  readonly #start = performance.now()
  #running = true
  readonly #loop: Promise<void>
  #restoredAt: number | null = null
  leaderGone: number | null = null
  leaderBack: number | null = null
  servingSince: number | null = null
  fullSince: number | null = null
  done: Observation | null = null
  last: Observation | null = null
  /** Distinct reasons seen, in order (for a failure message). */
  readonly whys: string[] = []

  constructor(cluster: Cluster) {
    this.#cluster = cluster
    this.#loop = this.#run()
  }

  async #run(): Promise<void> {
    while (this.#running) {
      const polled = performance.now()
      const obs = await observe(this.#cluster).catch((err: unknown): Observation => ({
        leader: null,
        status: null,
        why: String(err),
        fullWhy: String(err),
      }))
      const at = polled - this.#start
      this.last = obs
      if (obs.fullWhy !== null && this.whys[this.whys.length - 1] !== obs.fullWhy) this.whys.push(obs.fullWhy)
      if (obs.leader === null && this.leaderGone === null) this.leaderGone = at
      if (obs.leader !== null && this.leaderGone !== null && this.leaderBack === null) this.leaderBack = at
      if (obs.why === null) this.servingSince ??= at
      else this.servingSince = null
      if (obs.fullWhy === null) this.fullSince ??= at
      else this.fullSince = null
      if (
        this.#restoredAt !== null &&
        this.fullSince !== null &&
        at >= this.#restoredAt &&
        at - Math.max(this.fullSince, this.#restoredAt) >= STABLE_MS
      ) {
        this.done = obs
        return
      }
      await sleep(Math.max(0, 100 - (performance.now() - polled)))
    }
  }

  restored(): number {
    this.#restoredAt = performance.now() - this.#start
    return this.#restoredAt
  }

  async wait(timeoutMs: number): Promise<boolean> {
    const deadline = performance.now() + timeoutMs
    while (this.done === null && performance.now() < deadline) await sleep(20)
    this.#running = false
    await this.#loop
    return this.done !== null
  }
}

/** Everything back (see observe), or throw after timeoutMs. */
async function waitSettled(cluster: Cluster, timeoutMs: number): Promise<Observation> {
  const deadline = performance.now() + timeoutMs
  for (;;) {
    const last = await observe(cluster).catch((err: unknown): Observation => ({
      leader: null,
      status: null,
      why: String(err),
      fullWhy: String(err),
    }))
    if (last.fullWhy === null) return last
    if (performance.now() > deadline) throw new Error(`not settled within ${timeoutMs} ms: ${last.fullWhy}`)
    await sleep(100)
  }
}

async function runCycle(
  cycle: number,
  plan: Plan,
  cluster: Cluster,
  netns: Netns | null,
  netnsSkip: string | null,
  load: ClientLoad,
): Promise<CycleRecord> {
  const rec: CycleRecord = {
    cycle,
    kind: plan.kind,
    target: '',
    durationMs: null,
    recoveredMs: null,
    fullMs: null,
    restoredMs: null,
    leaderMs: null,
    ackGapMs: 0,
    leaderAfter: null,
    notes: [],
    skipped: null,
    failure: null,
  }
  await sleep(plan.warmupMs)
  let before: Observation
  try {
    before = await waitSettled(cluster, RECOVER_MS)
  } catch (err) {
    rec.failure = `not settled before the fault: ${(err as Error).message}`
    return rec
  }
  const leader = before.leader!
  const worker = cluster.workers[plan.worker]!
  const exitsBefore = cluster.exits.length
  if ((plan.kind === 'worker-partition' || plan.kind === 'leader-partition') && netns === null) {
    rec.target = plan.kind === 'worker-partition' ? worker.name : leader.name
    rec.skipped = `network partitions unavailable: ${netnsSkip}`
    return rec
  }
  load.takeAckGap()
  const monitor = new Monitor(cluster)
  try {
    switch (plan.kind) {
      case 'worker-kill': {
        rec.target = `${worker.name} (pid ${worker.pid})`
        await worker.kill()
        await worker.start()
        break
      }
      case 'worker-stop': {
        rec.target = `${worker.name} (pid ${worker.pid})`
        rec.durationMs = plan.durationMs
        worker.signal('SIGSTOP')
        await sleep(plan.durationMs)
        worker.signal('SIGCONT')
        break
      }
      case 'leader-kill': {
        rec.target = `${leader.name} (pid ${leader.pid})`
        await leader.kill()
        await leader.start()
        break
      }
      case 'leader-stop': {
        rec.target = `${leader.name} (pid ${leader.pid})`
        rec.durationMs = plan.durationMs
        const exited = leader.exited
        leader.signal('SIGSTOP')
        await sleep(plan.durationMs)
        leader.signal('SIGCONT')
        // Deposed while it slept, it exits 3 as it wakes (the supervisor restarts it).
        const gone = await Promise.race([exited.then(() => true), sleep(3000).then(() => false)])
        if (!gone) rec.notes.push(`${leader.name} still running 3 s after SIGCONT`)
        break
      }
      case 'redis-restart': {
        rec.target = `redis-server :${cluster.redis.port}`
        const t = performance.now()
        await cluster.redis.stop('SIGKILL')
        await cluster.redis.restart()
        cluster.afterRedisStart()
        rec.notes.push(`redis back in ${sec(since(t))} s`)
        break
      }
      case 'worker-partition': {
        rec.target = `${worker.name} (pid ${worker.pid}, ${netns!.topo.host(worker.name).ip})`
        rec.durationMs = plan.durationMs
        netns!.topo.setLink(worker.name, false)
        try {
          await sleep(plan.durationMs)
        } finally {
          netns!.topo.setLink(worker.name, true)
        }
        break
      }
      case 'leader-partition': {
        // Cut off from Redis, the workers and the clients: it stops acting once its lease's
        // safety margin is past, the standby takes the lease, and when the link heals its
        // fenced renewal fails and it exits 3 (the supervisor restarts it as a standby).
        rec.target = `${leader.name} (pid ${leader.pid}, ${netns!.topo.host(leader.name).ip})`
        rec.durationMs = plan.durationMs
        const exited = leader.exited
        netns!.topo.setLink(leader.name, false)
        try {
          await sleep(plan.durationMs)
        } finally {
          netns!.topo.setLink(leader.name, true)
        }
        const gone = await Promise.race([exited.then(() => true), sleep(3000).then(() => false)])
        if (!gone) rec.notes.push(`${leader.name} still running 3 s after the link healed`)
        break
      }
    }
  } catch (err) {
    rec.notes.push(`fault action failed: ${(err as Error).message.split('\n')[0]}`)
  }
  rec.restoredMs = monitor.restored()
  const ok = await monitor.wait(RECOVER_MS)
  rec.ackGapMs = load.takeAckGap()
  if (ok) {
    rec.recoveredMs = monitor.servingSince
    rec.fullMs = monitor.fullSince
    rec.leaderAfter = monitor.done!.leader?.name ?? null
  } else {
    rec.failure =
      `not recovered within ${RECOVER_MS} ms: ${monitor.last?.fullWhy ?? 'no observation'} ` +
      `(seen: ${monitor.whys.slice(-6).join(' | ')})`
  }
  if (plan.kind === 'leader-kill' || plan.kind === 'leader-stop' || plan.kind === 'leader-partition') {
    rec.leaderMs = monitor.leaderBack
  }
  for (const e of cluster.exits.slice(exitsBefore)) {
    rec.notes.push(`${e.node} exited by itself (${e.code !== null ? `code ${e.code}` : e.signal})`)
  }
  return rec
}

// ---- verification -----------------------------------------------------------------------------------

interface Comparison {
  keys: number
  lostKeys: number
  lostEvents: number
  duplicatedKeys: number
  duplicatedEvents: number
  wrongKeys: number
  unexpectedKeys: number
  examples: string[]
  /** Keys that are off, sorted. */
  bad: string[]
}

/**
 * Per key: fewer events than acknowledged is lost, more than acknowledged plus in doubt is
 * duplicated, a count in range with a sum that no outcome explains (exact check only when
 * nothing is in doubt for that key) is wrong.
 */
function compare(got: Map<string, unknown>, expected: Totals, inDoubt: Totals, prefix: string): Comparison {
  const c: Comparison = {
    keys: expected.size,
    lostKeys: 0,
    lostEvents: 0,
    duplicatedKeys: 0,
    duplicatedEvents: 0,
    wrongKeys: 0,
    unexpectedKeys: 0,
    examples: [],
    bad: [],
  }
  const example = (s: string): void => {
    c.bad.push(s.slice(s.indexOf(': ') + 2).split(' ')[0]!)
    if (c.examples.length < 8) c.examples.push(s)
  }
  const keys = new Set([...expected.keys(), ...inDoubt.keys()])
  for (const key of keys) {
    const want = expected.get(key) ?? { count: 0, sum: 0 }
    const doubt = inDoubt.get(key) ?? { count: 0, sum: 0 }
    const v = got.get(key) as { count?: unknown; sum?: unknown } | undefined
    const count = typeof v?.count === 'number' ? v.count : 0
    const sum = typeof v?.sum === 'number' ? v.sum : 0
    if (count < want.count) {
      c.lostKeys++
      c.lostEvents += want.count - count
      example(`lost: ${key} has ${JSON.stringify(v ?? null)}, acknowledged ${JSON.stringify(want)}`)
    } else if (count > want.count + doubt.count) {
      c.duplicatedKeys++
      c.duplicatedEvents += count - want.count - doubt.count
      example(
        `duplicated: ${key} has ${JSON.stringify(v)}, acknowledged ${JSON.stringify(want)}` +
          (doubt.count > 0 ? ` (+${doubt.count} in doubt)` : ''),
      )
    } else if (doubt.count === 0 && sum !== want.sum) {
      c.wrongKeys++
      example(`wrong: ${key} has ${JSON.stringify(v)}, acknowledged ${JSON.stringify(want)}`)
    }
  }
  for (const [key, v] of got) {
    if (!key.startsWith(prefix) || keys.has(key)) continue
    c.unexpectedKeys++
    example(`unexpected: ${key} = ${JSON.stringify(v)} was never sent`)
  }
  c.bad.sort()
  return c
}

/** One client key per partition (the lowest numbered), for the spot check after each cycle. */
function keysPerPartition(): string[] {
  const keys = new Map<number, string>()
  for (let k = 0; k < KEYS && keys.size < PARTITIONS; k++) {
    const p = partitionForKey(`c${k}`, PARTITIONS)
    if (!keys.has(p)) keys.set(p, `c${k}`)
  }
  return [...keys.values()]
}

/**
 * After each cycle, one key per partition read while the load goes on: it must hold at least
 * what was acknowledged before the read (an ack follows the application) and at most what was
 * sent by the end of it. Tells after which fault something went missing.
 */
async function spotCheck(load: ClientLoad, keys: string[]): Promise<string[]> {
  const client = load.client
  if (client === null) return []
  const found: string[] = []
  await Promise.all(
    keys.map(async (key) => {
      const acked = load.acked.get(key)?.count ?? 0
      let v: { count?: unknown } | undefined
      try {
        v = (await client.getState(key)) as { count?: unknown } | undefined
      } catch {
        return // not a finding: the final check reads every key
      }
      const sent = load.sentCounts.get(key) ?? 0
      const count = typeof v?.count === 'number' ? v.count : 0
      const p = partitionForKey(key, PARTITIONS)
      if (count < acked)
        found.push(
          `lost: ${key} (partition ${p}) holds ${count} events, ${acked} acknowledged before the read`,
        )
      else if (count > sent)
        found.push(`duplicated: ${key} (partition ${p}) holds ${count} events, ${sent} sent`)
    }),
  )
  return found
}

/** Every key's state, through `client` (all partitions, retried until queryTimeoutMs). */
async function dumpAll(client: ShoalClient): Promise<Map<string, unknown>> {
  const got = new Map<string, unknown>()
  for await (const [k, v] of client.dumpState()) got.set(k, v)
  return got
}

/** The partitions of the keys that are off, e.g. "26 (125 keys)". */
function partitionsOf(keys: string[]): string {
  const n = new Map<number, number>()
  for (const k of keys) {
    const p = partitionForKey(k, PARTITIONS)
    n.set(p, (n.get(p) ?? 0) + 1)
  }
  return [...n]
    .sort((a, b) => a[0] - b[0])
    .map(([p, c]) => `${p} (${c} keys)`)
    .join(', ')
}

const clean = (c: Comparison): boolean =>
  c.lostKeys === 0 && c.duplicatedKeys === 0 && c.wrongKeys === 0 && c.unexpectedKeys === 0

// ---- report ------------------------------------------------------------------------------------------

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  const m = Math.floor(s.length / 2)
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2
}

const COLUMNS: [string, number][] = [
  ['length', 6],
  ['recovered', 9],
  ['all back', 8],
  ['restored', 8],
  ['leader', 6],
  ['ack gap', 7],
  ['leads', 7],
]

function cycleLine(r: CycleRecord): string {
  const head = `${String(r.cycle).padStart(4)}  ${r.kind.padEnd(16)}  ${r.target.padEnd(36)}`
  if (r.skipped !== null) return `${head}  SKIPPED: ${r.skipped}`
  const s = (ms: number | null): string => (ms === null ? '' : sec(ms))
  const cells = [
    s(r.durationMs),
    r.recoveredMs === null ? 'FAILED' : sec(r.recoveredMs),
    s(r.fullMs),
    s(r.restoredMs),
    s(r.leaderMs),
    sec(r.ackGapMs),
    r.leaderAfter ?? '',
  ]
  const notes = [...r.notes, ...(r.failure === null ? [] : [r.failure])].join('; ')
  return `${head}  ${cells.map((c, i) => c.padStart(COLUMNS[i]![1])).join('  ')}${notes === '' ? '' : `  ${notes}`}`
}

const HEADER =
  `${'#'.padStart(4)}  ${'fault'.padEnd(16)}  ${'target'.padEnd(36)}  ` +
  `${COLUMNS.map(([n, w]) => n.padStart(w)).join('  ')}  notes (times in s from the fault)`

function xmlEscape(s: string): string {
  return s.replace(/[<>&"]/g, (ch) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;' })[ch]!)
}

interface Case {
  name: string
  seconds: number
  failure: string | null
  skipped?: string
}

function writeJunit(file: string, cases: Case[]): void {
  const failures = cases.filter((c) => c.failure !== null).length
  const body = cases
    .map(
      (c) =>
        `    <testcase classname="chaos" name="${xmlEscape(c.name)}" time="${c.seconds.toFixed(3)}">` +
        (c.failure === null ? '' : `<failure message="${xmlEscape(c.failure)}"/>`) +
        (c.skipped === undefined ? '' : `<skipped message="${xmlEscape(c.skipped)}"/>`) +
        `</testcase>`,
    )
    .join('\n')
  mkdirSync(dirname(file), { recursive: true })
  writeFileSync(
    file,
    `<?xml version="1.0" encoding="UTF-8"?>\n<testsuites name="chaos" tests="${cases.length}" failures="${failures}" errors="0">\n` +
      `  <testsuite name="chaos (seed ${SEED})" tests="${cases.length}" failures="${failures}" errors="0">\n${body}\n  </testsuite>\n</testsuites>\n`,
  )
}

// ---- main --------------------------------------------------------------------------------------------

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
    if (running) throw new Error(`another chaos run (pid ${pid}) holds ${LOCK}`)
  }
  writeFileSync(LOCK, String(process.pid))
}

async function main(): Promise<number> {
  const replay = `npm run chaos -- --cycles ${CYCLES} --seed ${SEED}`
  say(`chaos: seed ${SEED} (replay: ${replay})`)
  takeLock()
  rmSync(LOG_DIR, { recursive: true, force: true })
  mkdirSync(LOG_DIR, { recursive: true })
  const ns = setUpNetns(!opt['no-partitions'])
  const netns = 'skipped' in ns ? null : ns
  const netnsSkip = 'skipped' in ns ? ns.skipped : null
  let cluster: Cluster | null = null
  let load: ClientLoad | null = null
  let stream: StreamLoad | null = null
  const problems: string[] = []
  let teardownDone = false
  const teardown = async (): Promise<void> => {
    if (teardownDone) return
    teardownDone = true
    load?.stop()
    await stream?.stop().catch(() => {})
    stream?.close()
    await load?.close().catch(() => {})
    // On a failure, keep Redis's data (the AOF) with the logs for a post-mortem.
    const keep = problems.length > 0 ? join(LOG_DIR, 'redis-data') : undefined
    await cluster?.stop(keep).catch(() => {})
    if (keep !== undefined)
      say(`chaos: Redis data kept in ${keep} (redis-server --dir ${keep} --appendonly yes)`)
    if (netns !== null) cleanNetns(netns.topo)
    rmSync(LOCK, { force: true })
  }
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      say(`chaos: ${sig}: tearing down`)
      void teardown().finally(() => process.exit(130))
    })
  }
  const cases: Case[] = []
  const records: CycleRecord[] = []
  let verdict: Record<string, unknown> = {}
  try {
    say(
      `chaos: ${CYCLES} cycles; redis-server (AOF, appendfsync always), 2 coordinators, ${WORKERS} workers, ` +
        `${PARTITIONS} partitions, heartbeat ${HEARTBEAT_MS} ms x 3, checkpoints every ${CHECKPOINT_MS} ms; ` +
        `load ${RATE} events/s over ${KEYS} keys from a ShoalClient` +
        (SOURCE ? ` + ${STREAM_RATE} entries/s over ${STREAM_KEYS} keys through a Redis stream source` : ''),
    )
    say(
      netns === null
        ? `chaos: network partitions SKIPPED: ${netnsSkip} (partition cycles are recorded as skipped)`
        : `chaos: network partitions enabled: each worker and coordinator in its own network namespace (${netns.topo.prefix}-*, ` +
            `${netns.topo.hosts()[0]!.ip.replace(/\.\d+$/, '.0/24')}), this process at ${netns.hostIp}`,
    )
    say(
      `chaos: logs in ${LOG_DIR}; load average ${loadavg()
        .map((l) => l.toFixed(1))
        .join(' ')}`,
    )
    const setupStarted = performance.now()
    cluster = await startCluster({ logDir: LOG_DIR, netns, source: SOURCE, t0, say })
    const first = await waitSettled(cluster, 60_000)
    say(`chaos: cluster up and settled in ${sec(since(setupStarted))} s (${first.leader!.name} leads)`)
    cases.push({ name: 'cluster starts and settles', seconds: since(setupStarted) / 1000, failure: null })

    load = new ClientLoad({ rate: RATE, keys: KEYS, coordinatorList: cluster.coordinatorList, say })
    await load.connect(cluster.coordinatorAddress(first.leader!))
    say(
      load.mode === 'replica-list'
        ? `chaos: client: ShoalClient.connect({ coordinator: '${cluster.coordinatorList}' }) follows the leader itself`
        : `chaos: NOTE client: ShoalClient does not take a replica list yet (${load.modeReason}); ` +
            `it is connected to the leader ${load.currentCoordinator} and the runner opens a new client on each new leader`,
    )
    if (SOURCE) {
      stream = new StreamLoad({
        redisUrl: cluster.redisUrl,
        stream: STREAM,
        rate: STREAM_RATE,
        keys: STREAM_KEYS,
      })
      stream.start()
    }
    load.start()

    const spotKeys = keysPerPartition()
    say(`\n${HEADER}`)
    for (const [i, plan] of plans(SEED, CYCLES).entries()) {
      const started = performance.now()
      const rec = await runCycle(i + 1, plan, cluster, netns, netnsSkip, load)
      records.push(rec)
      if (rec.failure === null && rec.skipped === null) {
        const found = await spotCheck(load, spotKeys)
        for (const f of found) {
          rec.notes.push(`SPOT CHECK ${f}`)
          problems.push(`after cycle ${rec.cycle} (${rec.kind} ${rec.target}): ${f}`)
        }
      }
      if (rec.failure === null && rec.leaderAfter !== null) {
        const leaderNode = cluster.coordinators.find((c) => c.name === rec.leaderAfter)!
        if (await load.rotate(cluster.coordinatorAddress(leaderNode)))
          rec.notes.push(`client re-opened on ${rec.leaderAfter} by the runner`)
      }
      say(cycleLine(rec))
      cases.push({
        name: `cycle ${rec.cycle}: ${rec.kind} ${rec.target}`,
        seconds: since(started) / 1000,
        failure: rec.failure,
        ...(rec.skipped === null ? {} : { skipped: rec.skipped }),
      })
      if (rec.failure !== null) {
        problems.push(`cycle ${rec.cycle} (${rec.kind}): ${rec.failure}`)
        say(`chaos: stopping the cycles after a failure; verifying what was acknowledged so far`)
        break
      }
    }

    // ---- the end: stop, flush, settle, dump, compare ----
    const verifyStarted = performance.now()
    say(`\nchaos: stopping the load; flushing`)
    load.stop()
    await stream?.stop()
    const flushProblems = await load.flushAll(120_000)
    problems.push(...flushProblems)
    const failedEvents = load.failedEvents()
    if (failedEvents > 0)
      problems.push(`clients gave up on ${failedEvents} events (undelivered for 120 s; counted in doubt)`)
    let settledObs: Observation | null = null
    try {
      settledObs = await waitSettled(cluster, 60_000)
    } catch (err) {
      problems.push(`final settle: ${(err as Error).message}`)
    }
    let streamInfo: Awaited<ReturnType<StreamLoad['drained']>> | null = null
    if (stream !== null) {
      const deadline = performance.now() + 60_000
      for (;;) {
        streamInfo = await stream.drained(GROUP).catch(() => null)
        if (streamInfo !== null && streamInfo.delivered === streamInfo.last && streamInfo.pending === 0) break
        if (performance.now() > deadline) {
          problems.push(`stream group not drained within 60 s: ${JSON.stringify(streamInfo)}`)
          break
        }
        await sleep(200)
      }
    }
    if (opt['self-test']) {
      // The checker must catch these: key c0 gets an event nobody acknowledged (a duplicate),
      // key c1 an acknowledgement for an event never sent (a loss).
      say(`chaos: --self-test: one unrecorded event to c0 and one phantom ack for c1; this run must FAIL`)
      await load.sendUntracked('c0', 1000)
      load.phantomAck('c1', 7)
    }
    let got = new Map<string, unknown>()
    try {
      got = await dumpAll(load.client!)
    } catch (err) {
      problems.push(`state dump failed: ${(err as Error).message}`)
    }
    const doubt = load.inDoubt()
    let clientCmp = compare(got, load.acked, doubt.totals, 'c')
    let streamCmp = stream === null ? null : compare(got, stream.produced, new Map(), 's')
    if (!clean(clientCmp) || (streamCmp !== null && !clean(streamCmp))) {
      // Is the state wrong, or was that one read wrong? Ask again, from a new client.
      say(`chaos: the dump differs from what was acknowledged; dumping again from a new client in 2 s`)
      await sleep(2000)
      try {
        const again = await load.fresh('chaos-recheck')
        const second = await dumpAll(again).finally(() => again.close())
        const c2 = compare(second, load.acked, doubt.totals, 'c')
        const s2 = stream === null ? null : compare(second, stream.produced, new Map(), 's')
        const same = JSON.stringify([clientCmp.bad, streamCmp?.bad]) === JSON.stringify([c2.bad, s2?.bad])
        say(
          `chaos: second dump: ${c2.lostKeys + (s2?.lostKeys ?? 0)} keys lost, ` +
            `${c2.duplicatedKeys + (s2?.duplicatedKeys ?? 0)} duplicated, ${c2.wrongKeys + (s2?.wrongKeys ?? 0)} wrong` +
            (same ? ' (the same keys: the state is wrong)' : ' (different keys: the first read was wrong)'),
        )
        if (same) {
          clientCmp = c2
          streamCmp = s2
        } else problems.push('two dumps of the settled cluster disagree')
      } catch (err) {
        say(`chaos: second dump failed: ${(err as Error).message}`)
      }
    }
    const status: ClusterStatus | null = settledObs?.status ?? null
    say(
      `chaos: client events: ${load.sent} sent, ${load.ackedEvents} acknowledged, ${doubt.events} in doubt ` +
        `(sent, never acknowledged); ${load.pausedTicks} send ticks skipped for backpressure`,
    )
    say(
      `chaos: client keys: ${clientCmp.keys} expected, ${got.size} keys in the dump; ` +
        `lost ${clientCmp.lostKeys} keys (${clientCmp.lostEvents} events), ` +
        `duplicated ${clientCmp.duplicatedKeys} keys (${clientCmp.duplicatedEvents} events), ` +
        `wrong ${clientCmp.wrongKeys}, unexpected ${clientCmp.unexpectedKeys}`,
    )
    if (stream !== null && streamCmp !== null) {
      say(
        `chaos: stream source: ${stream.confirmed} entries in ${STREAM} (${stream.errors} XADD retries); group ${GROUP}: ` +
          `last delivered ${streamInfo?.delivered ?? '?'} of ${streamInfo?.last ?? '?'}, pending ${streamInfo?.pending ?? '?'}, ` +
          `dead letters ${streamInfo?.deadLetters ?? '?'}; ` +
          `${streamCmp.keys} keys: lost ${streamCmp.lostKeys} keys (${streamCmp.lostEvents} events), ` +
          `duplicated ${streamCmp.duplicatedKeys} keys (${streamCmp.duplicatedEvents} events), ` +
          `wrong ${streamCmp.wrongKeys}, unexpected ${streamCmp.unexpectedKeys}`,
      )
      if ((streamInfo?.deadLetters ?? 0) > 0)
        problems.push(`${streamInfo?.deadLetters} entries dead-lettered`)
    }
    for (const e of [...clientCmp.examples, ...(streamCmp?.examples ?? [])]) say(`  ${e}`)
    const badKeys = [...clientCmp.bad, ...(streamCmp?.bad ?? [])]
    if (badKeys.length > 0) say(`chaos: keys off by partition: ${partitionsOf(badKeys)}`)
    if (!clean(clientCmp)) problems.push('client keys differ from what was acknowledged')
    if (streamCmp !== null && !clean(streamCmp)) problems.push('stream keys differ from what was produced')
    if (status !== null) {
      say(
        `chaos: final: ${settledObs?.leader?.name ?? '?'} leads, assignment epoch ${status.assignment.epoch}, ` +
          `${status.checkpoints.completed} checkpoints completed by this leader`,
      )
    }
    cases.push({
      name: `every key exact after ${records.length} faults (seed ${SEED})`,
      seconds: since(verifyStarted) / 1000,
      failure: problems.length === 0 ? null : problems.join('; '),
    })

    // ---- summary ----
    const done = records.filter((r) => r.skipped === null && r.recoveredMs !== null)
    say(`\nchaos: recovery per fault (fault injected -> settled), seconds:`)
    for (const kind of KINDS) {
      const rs = done.filter((r) => r.kind === kind)
      const skipped = records.filter((r) => r.kind === kind && r.skipped !== null).length
      if (rs.length === 0 && skipped === 0) continue
      const rec = rs.map((r) => r.recoveredMs!)
      const full = rs.map((r) => r.fullMs!)
      const gaps = rs.map((r) => r.ackGapMs)
      const lead = rs.flatMap((r) => (r.leaderMs === null ? [] : [r.leaderMs]))
      say(
        `  ${kind.padEnd(16)} ${String(rs.length).padStart(3)}x` +
          (rs.length === 0
            ? ''
            : `  recovered median ${sec(median(rec))} max ${sec(Math.max(...rec))}` +
              `  all back median ${sec(median(full))} max ${sec(Math.max(...full))}` +
              `  ack gap median ${sec(median(gaps))} max ${sec(Math.max(...gaps))}` +
              (lead.length === 0
                ? ''
                : `  leader ready median ${sec(median(lead))} max ${sec(Math.max(...lead))}`)) +
          (skipped > 0 ? `  (${skipped} skipped: ${netnsSkip})` : ''),
      )
    }
    const exits = cluster.exits
    if (exits.length > 0) {
      const byNode = new Map<string, number>()
      for (const e of exits) {
        const k = `${e.node} ${e.code !== null ? `code ${e.code}` : e.signal}`
        byNode.set(k, (byNode.get(k) ?? 0) + 1)
      }
      say(
        `chaos: exits on their own (restarted by the runner): ${[...byNode].map(([k, n]) => `${k} x${n}`).join(', ')}`,
      )
    }
    verdict = {
      seed: SEED,
      cycles: CYCLES,
      clientMode: load.mode,
      partitions: netns === null ? `skipped: ${netnsSkip}` : 'enabled',
      client: { sent: load.sent, acked: load.ackedEvents, inDoubt: doubt.events, ...clientCmp },
      stream: stream === null ? null : { entries: stream.confirmed, ...streamInfo, ...streamCmp },
      records,
      exits,
      problems,
      seconds: since(t0) / 1000,
    }
  } catch (err) {
    problems.push(`run aborted: ${(err as Error).stack ?? String(err)}`)
    cases.push({ name: 'chaos run', seconds: since(t0) / 1000, failure: (err as Error).message })
  } finally {
    await teardown()
  }
  if (opt.junit !== undefined) writeJunit(opt.junit, cases)
  if (opt.report !== undefined) {
    mkdirSync(dirname(opt.report), { recursive: true })
    writeFileSync(opt.report, JSON.stringify({ ...verdict, problems }, null, 2))
  }
  const ok = problems.length === 0
  say(
    `\nchaos: ${ok ? 'PASS' : 'FAIL'}: seed ${SEED}, ${records.length} cycles in ${sec(since(t0))} s ` +
      `(load average now ${loadavg()
        .map((l) => l.toFixed(1))
        .join(' ')})`,
  )
  for (const p of problems) say(`  ${p}`)
  if (!ok) say(`chaos: replay with: ${replay}; node logs in ${LOG_DIR}`)
  return ok ? 0 : 1
}

process.exit(await main())
