/**
 * Event-time windows (issue 12) end to end, against the plain `count` job, on the cluster of the
 * e2e benchmark (bench/macro/e2e.ts: a coordinator and 3 workers as processes on loopback, TCP,
 * memory state, CPUs / workers processing threads each), one cluster per job:
 *
 *   count     the built-in `count` job (the reference, 100%);
 *   tumbling  a job like cluster/jobs/per-minute.ts: count and sum per key per minute of event
 *             time (`windows.tumbling({ sizeMs: 60_000 })`, 2 s out-of-orderness), without
 *             `idleMs`: the runs continue one stream and need no idleness (idle ticks could
 *             once stall a worker's data connection; fixed in 5d922e5);
 *   sliding   the same with `windows.sliding({ sizeMs: 300_000, slideMs: 60_000 })`: every event
 *             is folded into 5 windows, one window per key closes every minute.
 *
 * The windowed jobs are job files written to a temporary directory (they import from 'shoal',
 * as a job outside the repository does), and every worker has `--sink file:<tmp>/<job>.ndjson`
 * (the count cluster too, so the setups are the same; it emits nothing).
 *
 * A client process (ShoalClient, default options) sends the e2e workload, events of ~40 B
 * `{ value, ts, type: 'click' }` over 100k keys (key i % 100k), as fast as send()/drain() allow,
 * then flush(): events/s is every event applied (folded into its windows, due windows fired and
 * handed to the sink) and acknowledged. Event time moves through the runs: each key gets
 * WINDOWS_PER_MINUTE (10) events per minute of event time, in order, so 10M events span 10
 * minutes and the watermark closes one minute (100k windows, for both jobs) every 1M events. The
 * runs (a warm-up run of 2M events, not counted, then --runs N) continue one stream on the same
 * cluster, so windows span runs as they would in a stream that never stops. The three clusters
 * stay up and the jobs' runs are interleaved (count, tumbling, sliding, count, ...), so a change
 * in the machine's load falls on all of them alike; each run also says how many cores other
 * processes used meanwhile.
 *
 * After the runs the cluster is stopped (the sinks flush) and the sink file is checked against
 * what was sent: every window result once, with the exact count and sum of its events; every
 * window the watermark has passed present; no late events. The number of window results fired
 * during each run is printed: the benchmark measures windows that really fire.
 *
 * Memory: a cluster with one worker (same threads) running a job with one tumbling window of an
 * hour per key, fed one event for each of 1M keys with event times inside the same hour, so 1M
 * windows stay open; the worker's RSS (its /metrics) before, at peak, and 5 s after the last
 * ack. For reference, the same with the `count` job and 1M keys.
 *
 * CPU: besides the rates, the CPU time per event of the workers (split from /proc into their main
 * threads, processing threads and the rest) and of the client, and count's total over each
 * job's: what the throughput ratio would be on a machine where Shoal's processes are CPU-bound
 * and alone, which other load on a shared machine distorts far less than the rates.
 *
 * Options: --quick (2M events per run, 1M windows for memory), --runs N (measured runs per job,
 * default 3; 1 with --quick), --settle (wait for an idle machine before each cluster and run).
 * Knobs (environment): WINDOWS_EVENTS (events per run, 10M), WINDOWS_PER_MINUTE (events per key
 * per minute, 10), WINDOWS_JOBS (count,tumbling,sliding), WINDOWS_MEMORY_KEYS (1000000),
 * WINDOWS_MEMORY (1: run the memory part; 0: skip it), E2E_WORKERS, E2E_THREADS and
 * E2E_NODE_FLAGS as for e2e. BENCH_PROFILE_DIR=<dir> records a CPU profile of every worker
 * (main and processing threads, --cpu-prof; written when the cluster stops) in <dir>/<job>/.
 */
import { createReadStream } from 'node:fs'
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises'
import os from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { ShoalClient } from '../../src/client/client.ts'
import { partitionForKey } from '../../src/protocol/partition.ts'
import { createTransport } from '../../src/transport/index.ts'
import {
  fmtPct,
  fmtRate,
  fmtSpread,
  isMain,
  median,
  runsOf,
  sleep,
  waitForIdle,
  type Benchmark,
  type BenchOptions,
  type BenchResult,
  type Headline,
  ClientProcess,
} from '../lib.ts'
import {
  KEYS,
  keyOf,
  machineCpu,
  startCluster,
  watchWorkers,
  workerProcessMetrics,
  type Cluster,
  buildDist,
  type NodeBinary,
} from './e2e.ts'

const SELF = fileURLToPath(import.meta.url)
/** 2026-01-01T00:00:00Z: event time of the first run (minute and hour aligned). */
const T0 = Date.UTC(2026, 0, 1)
const MINUTE = 60_000
const OUT_OF_ORDERNESS_MS = 2_000
const SLIDE_WINDOWS = 5 // sliding: size 5 min / slide 1 min
const GOAL_TUMBLING = 0.7
const GOAL_SLIDING = 0.4
const GOAL_RSS_MB = 300

type JobName = 'count' | 'tumbling' | 'sliding'

// --- the job files ------------------------------------------------------------------------------

const WINDOWED_JOB = (name: string, window: string): string => `import { defineJob, windows } from 'shoal'

export default defineJob({
  name: '${name}',
  eventTime: (e: { ts: number }) => e.ts,
  watermark: { outOfOrdernessMs: ${OUT_OF_ORDERNESS_MS} },
  window: ${window},
  init: () => ({ count: 0, sum: 0 }),
  process(acc: { count: number; sum: number }, e: { value: number }) {
    acc.count++
    acc.sum += e.value
  },
})
`

export const JOB_FILES: Record<string, string> = {
  'tumbling.ts': WINDOWED_JOB('bench-tumbling', 'windows.tumbling({ sizeMs: 60_000 })'),
  'sliding.ts': WINDOWED_JOB('bench-sliding', 'windows.sliding({ sizeMs: 300_000, slideMs: 60_000 })'),
  // One window of an hour per key and no idleness: nothing fires while the benchmark looks.
  'open-windows.ts': `import { defineJob, windows } from 'shoal'

export default defineJob({
  name: 'bench-open-windows',
  eventTime: (e: { ts: number }) => e.ts,
  watermark: { outOfOrdernessMs: ${OUT_OF_ORDERNESS_MS} },
  window: windows.tumbling({ sizeMs: 3_600_000 }),
  init: () => ({ count: 0, sum: 0 }),
  process(acc: { count: number; sum: number }, e: { value: number }) {
    acc.count++
    acc.sum += e.value
  },
})
`,
}

// --- the workload (client and checker compute the same events) -----------------------------------

/** Exact in a double (multiples of 1/8), so sums compare exactly. */
function valueOf(i: number): number {
  return (i % 1000) * 0.25 + 0.125
}

/** Event i's event time: `perMinute` events per minute from `tsBase`. */
function tsOf(tsBase: number, i: number, perMinute: number): number {
  return tsBase + Math.floor((i * MINUTE) / perMinute)
}

// --- the client process ---------------------------------------------------------------------------

interface RunCommand {
  cmd: 'run'
  /** Number of the run's first event in the stream: event i goes to key i % keyCount, at time tsOf(tsBase, i). */
  first: number
  events: number
  tsBase: number
  perMinute: number
  keyCount: number
}
type ClientCommand = RunCommand | { cmd: 'get'; keys: string[] } | { cmd: 'exit' }

interface RunResult {
  type: 'run'
  events: number
  seconds: number
  batches: number
  retries: number
  cpuPct: number
}
type ClientReply =
  | { type: 'ready'; partitions: number }
  | RunResult
  | { type: 'get'; states: unknown[] }
  | { type: 'error'; message: string }

class ClientChild extends ClientProcess<ClientCommand, ClientReply> {
  constructor(coordinator: string) {
    super(SELF, { WINDOWS_ROLE: 'client', WINDOWS_COORDINATOR: coordinator })
  }
}

async function clientMain(): Promise<void> {
  const reply = (m: ClientReply): void => void process.send!(m)
  const transport = createTransport('tcp', { nodeId: `bench-${process.pid}`, role: 'client' })
  const client = await ShoalClient.connect({ coordinator: process.env.WINDOWS_COORDINATOR!, transport })
  let keys: string[] = []

  async function run(c: RunCommand): Promise<RunResult> {
    if (keys.length !== c.keyCount) keys = Array.from({ length: c.keyCount }, (_, i) => keyOf(i))
    const batches0 = client.stats.batches
    const retries0 = client.stats.retries
    const cpu0 = process.cpuUsage()
    const t0 = performance.now()
    for (let j = 0; j < c.events; j++) {
      const i = c.first + j
      const event = { value: valueOf(i), ts: tsOf(c.tsBase, i, c.perMinute), type: 'click' }
      if (!client.send(keys[i % c.keyCount]!, event)) await client.drain()
    }
    await client.flush()
    const seconds = (performance.now() - t0) / 1000
    const cpu = process.cpuUsage(cpu0)
    return {
      type: 'run',
      events: c.events,
      seconds,
      batches: client.stats.batches - batches0,
      retries: client.stats.retries - retries0,
      cpuPct: ((cpu.user + cpu.system) / 1e6 / seconds) * 100,
    }
  }

  process.on('message', (m: ClientCommand) => {
    const p: Promise<ClientReply | undefined> =
      m.cmd === 'run'
        ? run(m)
        : m.cmd === 'get'
          ? Promise.all(m.keys.map((k) => client.getState(k))).then((states) => ({ type: 'get', states }))
          : client.close().then(() => process.exit(0))
    p.then(
      (r) => r !== undefined && reply(r),
      (err: unknown) => reply({ type: 'error', message: String((err as Error).stack ?? err) }),
    )
  })
  reply({ type: 'ready', partitions: client.partitions })
}

// --- checking the window results ------------------------------------------------------------------

interface RunPlan {
  first: number
  events: number
}

interface WindowCheck {
  ok: boolean
  detail: string
  /**
   * Window results fired during each run (warm-up first): the windows whose end lies in the
   * run's stretch of event time (they fire once its events pass end + out-of-orderness).
   */
  perRun: number[]
  results: number
  late: number
}

/**
 * Read the sink file of a windowed job and compare it with what the runs sent: each result once,
 * count and sum exact, every window the watermark passed present, no late events.
 */
async function checkWindows(
  file: string,
  kind: 'tumbling' | 'sliding',
  plan: RunPlan[],
  perMinute: number,
  partitions: number,
): Promise<WindowCheck> {
  const span = kind === 'tumbling' ? 1 : SLIDE_WINDOWS
  const sizeMs = span * MINUTE
  const total = plan.reduce((a, r) => a + r.events, 0)
  const minutes = Math.ceil(total / perMinute)
  const partOf = Int32Array.from({ length: KEYS }, (_, k) => partitionForKey(keyOf(k), partitions))
  // Events per (key, minute of event time) and their sums, and each partition's highest time.
  const counts = new Int32Array(KEYS * minutes)
  const sums = new Float64Array(KEYS * minutes)
  const maxTs = new Float64Array(partitions).fill(-Infinity)
  for (let i = 0; i < total; i++) {
    const k = i % KEYS
    const ts = tsOf(T0, i, perMinute)
    const at = k * minutes + Math.floor((ts - T0) / MINUTE)
    counts[at]!++
    sums[at]! += valueOf(i)
    if (ts > maxTs[partOf[k]!]!) maxTs[partOf[k]!] = ts
  }
  // Window (key, a) starts at minute a - (span - 1): a sliding window may start before T0.
  const slots = minutes + span - 1
  const seen = new Uint8Array(KEYS * slots)
  const expected = (k: number, a: number): { count: number; sum: number } => {
    let count = 0
    let sum = 0
    for (let m = Math.max(0, a - span + 1); m <= Math.min(minutes - 1, a); m++) {
      count += counts[k * minutes + m]!
      sum += sums[k * minutes + m]!
    }
    return { count, sum }
  }
  // The stretch of event time of each run: [its first event's minute, the next run's).
  const runStart = plan.map((r) => tsOf(T0, r.first, perMinute))
  const runOf = (end: number): number => {
    for (let r = plan.length - 1; r >= 0; r--) if (end >= runStart[r]!) return r
    return -1
  }
  const bad: string[] = []
  const perRun = plan.map(() => 0)
  let results = 0
  let late = 0
  let other = 0
  const lines = createInterface({ input: createReadStream(file), crlfDelay: Infinity })
  for await (const line of lines) {
    if (line === '') continue
    let rec: { stream: string; key: string; event: Record<string, unknown> }
    try {
      rec = JSON.parse(line) as typeof rec
    } catch {
      if (bad.length < 5) bad.push(`a line that is not JSON: ${line.slice(0, 100)}`)
      continue
    }
    if (rec.stream === 'late') {
      late++
      continue
    }
    if (rec.stream !== 'windows') {
      other++
      continue
    }
    results++
    const e = rec.event as { key: string; start: number; end: number; state: { count: number; sum: number } }
    const k = Number(e.key.slice('user-'.length))
    const a = (e.start - T0) / MINUTE + span - 1
    if (!Number.isInteger(a) || a < 0 || a >= slots || !(Number.isInteger(k) && k >= 0 && k < KEYS)) {
      if (bad.length < 5) bad.push(`a result for a window nothing was sent to: ${line.slice(0, 200)}`)
      continue
    }
    const r = runOf(e.end)
    if (r >= 0) perRun[r]!++
    if (seen[k * slots + a] !== 0 && bad.length < 5) bad.push(`fired twice: ${line.slice(0, 200)}`)
    seen[k * slots + a] = 1
    const want = expected(k, a)
    if (
      e.end - e.start !== sizeMs ||
      'late' in e ||
      e.state.count !== want.count ||
      e.state.sum !== want.sum
    ) {
      if (bad.length < 5) bad.push(`${line.slice(0, 200)}: expected ${JSON.stringify(want)}`)
    }
  }
  // Every window the watermark has passed: end <= the partition's highest event time minus the
  // out-of-orderness.
  let missing = 0
  let must = 0
  for (let k = 0; k < KEYS; k++) {
    const watermark = maxTs[partOf[k]!]! - OUT_OF_ORDERNESS_MS
    for (let a = 0; a < slots; a++) {
      const end = T0 + (a + 1) * MINUTE
      if (end > watermark || expected(k, a).count === 0) continue
      must++
      if (seen[k * slots + a] === 0) {
        missing++
        if (bad.length < 5) bad.push(`missing: key ${keyOf(k)} window [${end - sizeMs}, ${end})`)
      }
    }
  }
  if (late > 0) bad.push(`${late} events on stream late (all events were in order)`)
  if (other > 0) bad.push(`${other} records on other streams`)
  return {
    ok: bad.length === 0,
    detail:
      bad.length === 0
        ? `${results} window results, each once, count and sum exact; all ${must} windows the watermark passed present`
        : `${missing} of ${must} due windows missing; ${bad.join('; ')}`,
    perRun,
    results,
    late,
  }
}

// --- the benchmark --------------------------------------------------------------------------------

interface JobRun {
  job: JobName
  warmup: RunResult
  runs: RunResult[]
  peakRssMiB: number[]
  workerCpuPct: number[]
  machineBusyCores: number
  /**
   * Per measured run: cores used by everything but the job's workers and client (the machine's
   * busy time from /proc/stat minus theirs): other processes, the coordinator, the kernel.
   */
  otherCores: number[]
  /** CPU microseconds per event over the measured runs: the workers (all threads) and the client. */
  workerUsPerEvent: number
  clientUsPerEvent: number
  /**
   * Of workerUsPerEvent (Linux): the workers' main threads (network, replay log, sinks), their
   * processing threads (the busiest threads after the main one, as many as --threads) and the
   * rest (V8's GC and compiler helpers, libuv's pool).
   */
  mainUsPerEvent: number
  processingUsPerEvent: number
  check: WindowCheck | null
  nodeLogLines: number
  nodeLogSample: string[]
}

const mib = (b: number): number => Math.round(b / 2 ** 20)

function profileFlags(sub: string): string[] {
  const dir = process.env.BENCH_PROFILE_DIR
  if (dir === undefined || dir === '') return []
  return ['--cpu-prof', `--cpu-prof-dir=${join(dir, sub)}`, '--cpu-prof-interval=500']
}

interface JobOptions {
  dir: string
  workers: number
  threads: number
  events: number
  warmupEvents: number
  perMinute: number
  settle: boolean
}

/** A job's cluster and client, kept between its runs (the runs of all jobs are interleaved). */
interface LiveJob {
  out: JobRun
  cluster: Cluster
  client: ClientChild
  partitions: number
  sinkFile: string
  plan: RunPlan[]
  measuredSeconds: number
  cpuSeconds: number[]
  /** CPU seconds of the workers' main and processing threads over the measured runs (NaN without /proc). */
  mainCpuSeconds: number
  processingCpuSeconds: number
  busy: number
  total: number
}

/** CPU seconds of each thread of a process, by thread id (Linux /proc; empty elsewhere). */
async function threadCpu(pid: number | undefined): Promise<Map<number, number>> {
  const out = new Map<number, number>()
  if (pid === undefined) return out
  try {
    for (const tid of await readdir(`/proc/${pid}/task`)) {
      const text = await readFile(`/proc/${pid}/task/${tid}/stat`, 'utf8').catch(() => null)
      if (text === null) continue
      // Fields after the command name (in parentheses, may hold spaces): utime 12th, stime 13th.
      const f = text.slice(text.lastIndexOf(')') + 2).split(' ')
      out.set(Number(tid), (Number(f[11]) + Number(f[12])) / 100) // USER_HZ is 100 on Linux
    }
  } catch {
    // not Linux: no split
  }
  return out
}

/** Split a process's CPU between two samples: main thread, the `threads` busiest others. */
function splitCpu(
  pid: number | undefined,
  before: Map<number, number>,
  after: Map<number, number>,
  threads: number,
): { main: number; processing: number } {
  if (after.size === 0) return { main: NaN, processing: NaN }
  const others: number[] = []
  let main = 0
  for (const [tid, t] of after) {
    const d = t - (before.get(tid) ?? 0)
    if (tid === pid) main = d
    else others.push(d)
  }
  others.sort((a, b) => b - a)
  return { main, processing: others.slice(0, threads).reduce((a, b) => a + b, 0) }
}

/** Start the job's cluster and client and send the warm-up run. */
async function openJob(job: JobName, o: JobOptions): Promise<LiveJob> {
  const sinkFile = join(o.dir, `${job}.ndjson`)
  if (o.settle) await waitForIdle()
  console.error(`  windows ${job}: starting coordinator + ${o.workers} workers x ${o.threads} thread(s)`)
  const cluster: Cluster = await startCluster('tcp', o.workers, o.threads, {
    job: job === 'count' ? 'count' : join(o.dir, `${job}.ts`),
    sinks: [`file:${sinkFile}`],
    workerFlags: profileFlags(job),
  })
  const live: LiveJob = {
    out: {
      job,
      warmup: { type: 'run', events: 0, seconds: NaN, batches: 0, retries: 0, cpuPct: NaN },
      runs: [],
      peakRssMiB: cluster.workers.map(() => 0),
      workerCpuPct: [],
      machineBusyCores: NaN,
      otherCores: [],
      workerUsPerEvent: NaN,
      clientUsPerEvent: NaN,
      mainUsPerEvent: NaN,
      processingUsPerEvent: NaN,
      check: null,
      nodeLogLines: 0,
      nodeLogSample: [],
    },
    cluster,
    client: new ClientChild(cluster.coordinator.info.address),
    partitions: 0,
    sinkFile,
    plan: [],
    measuredSeconds: 0,
    cpuSeconds: cluster.workers.map(() => 0),
    mainCpuSeconds: 0,
    processingCpuSeconds: 0,
    busy: 0,
    total: 0,
  }
  try {
    live.partitions = (await live.client.ask(null, 'ready')).partitions
    const w = (live.out.warmup = await live.client.ask(planRun(live, o.warmupEvents, o.perMinute), 'run'))
    console.error(
      `  windows ${job} warm-up: ${fmtRate(w.events / w.seconds)} events/s (${w.events} events in ${w.seconds.toFixed(2)} s)`,
    )
  } catch (err) {
    await closeJob(live, o)
    throw err
  }
  return live
}

/** The runs continue one stream: event i has time T0 + i / perMinute minutes. */
function planRun(live: LiveJob, events: number, perMinute: number): RunCommand {
  const last = live.plan[live.plan.length - 1]
  const first = last === undefined ? 0 : last.first + last.events
  live.plan.push({ first, events })
  return { cmd: 'run', first, events, tsBase: T0, perMinute, keyCount: KEYS }
}

/** One measured run. */
async function measureJob(live: LiveJob, o: JobOptions, label: string): Promise<void> {
  if (o.settle) await waitForIdle()
  const c0 = await machineCpu()
  const pids = live.cluster.workers.map((w) => w.child.pid)
  const threads0 = await Promise.all(pids.map(threadCpu))
  const watched = await watchWorkers(live.cluster.workers, () =>
    live.client.ask(planRun(live, o.events, o.perMinute), 'run'),
  )
  const c1 = await machineCpu()
  const threads1 = await Promise.all(pids.map(threadCpu))
  pids.forEach((pid, i) => {
    const split = splitCpu(pid, threads0[i]!, threads1[i]!, o.threads)
    live.mainCpuSeconds += split.main
    live.processingCpuSeconds += split.processing
  })
  const m = watched.result
  let other = NaN
  if (c0 !== null && c1 !== null) {
    live.busy += c1.busy - c0.busy
    live.total += c1.total - c0.total
    const busyCores = ((c1.busy - c0.busy) / (c1.total - c0.total)) * os.availableParallelism()
    const ours = watched.cpuSeconds.reduce((a, b) => a + b, 0) / m.seconds + m.cpuPct / 100
    other = Math.max(0, busyCores - ours)
  }
  live.out.otherCores.push(other)
  live.measuredSeconds += m.seconds
  watched.cpuSeconds.forEach((c, i) => (live.cpuSeconds[i]! += c))
  watched.peakRss.forEach((b, i) => (live.out.peakRssMiB[i] = Math.max(live.out.peakRssMiB[i]!, mib(b))))
  live.out.runs.push(m)
  console.error(
    `  windows ${live.out.job} ${label}: ${fmtRate(m.events / m.seconds)} events/s ` +
      `(${m.events} events in ${m.seconds.toFixed(2)} s, ${(m.events / m.batches).toFixed(0)} events/batch, ` +
      `client CPU ${m.cpuPct.toFixed(0)}%, other ${other.toFixed(2)} cores, retries ${m.retries}; worker RSS peak ${watched.peakRss.map(mib).join(' / ')} MiB)`,
  )
}

/** Stop the cluster (the sinks flush), then check the window results against the runs. */
async function closeJob(live: LiveJob, o: JobOptions): Promise<JobRun> {
  const out = live.out
  out.workerCpuPct = live.cpuSeconds.map((s) => Math.round((s / live.measuredSeconds) * 100))
  out.machineBusyCores = live.total > 0 ? (live.busy / live.total) * os.availableParallelism() : NaN
  const events = out.runs.reduce((a, m) => a + m.events, 0)
  out.workerUsPerEvent = (live.cpuSeconds.reduce((a, b) => a + b, 0) / events) * 1e6
  out.clientUsPerEvent = (out.runs.reduce((a, m) => a + (m.cpuPct / 100) * m.seconds, 0) / events) * 1e6
  out.mainUsPerEvent = (live.mainCpuSeconds / events) * 1e6
  out.processingUsPerEvent = (live.processingCpuSeconds / events) * 1e6
  try {
    await live.client.stop()
  } finally {
    await live.cluster.stop() // graceful: the sinks flush what they hold
    const nodes = [live.cluster.coordinator, ...live.cluster.workers]
    out.nodeLogLines = nodes.reduce((a, n) => a + n.logLines, 0)
    out.nodeLogSample = nodes.flatMap((n) => n.firstLines).slice(0, 3)
  }
  if (out.job !== 'count' && out.runs.length > 0) {
    const bytes = (await stat(live.sinkFile).catch(() => ({ size: 0 }))).size
    console.error(`  windows ${out.job}: checking ${(bytes / 2 ** 20).toFixed(0)} MiB of window results`)
    out.check = await checkWindows(live.sinkFile, out.job, live.plan, o.perMinute, live.partitions)
    console.error(`  windows ${out.job}: ${out.check.ok ? 'ok' : 'FAILED'}: ${out.check.detail}`)
  }
  await rm(live.sinkFile, { force: true })
  return out
}

export interface MemoryRun {
  job: 'open windows' | 'count'
  binary: NodeBinary
  /** The nodes' --state: 'memory' (none given) or 'file'. */
  state: string
  keys: number
  baseMiB: number
  peakMiB: number
  settledMiB: number
  seconds: number
  /** Keys written by checkpoints (shoal_checkpoint_keys_total; 0 without a state store). */
  checkpointed: number
  /** From the last ack until two more checkpoints completed. */
  checkpointSeconds: number
  sample: string
  ok: boolean
}

/**
 * One worker; one event for each of `keys` keys; its RSS before, at peak and 5 s after. `dir`
 * holds JOB_FILES; `binary: 'dist'` needs a current `npm run build`.
 */
export async function runMemory(
  job: MemoryRun['job'],
  o: { dir: string; threads: number; keys: number; settle: boolean; binary: NodeBinary; state?: string },
): Promise<MemoryRun> {
  if (o.settle) await waitForIdle()
  console.error(
    `  memory (${job}, ${o.binary}): coordinator + 1 worker x ${o.threads} thread(s), ${o.keys} keys`,
  )
  const cluster = await startCluster('tcp', 1, o.threads, {
    job: job === 'count' ? 'count' : join(o.dir, 'open-windows.ts'),
    binary: o.binary,
    ...(o.state === undefined ? {} : { state: o.state }),
    workerFlags: profileFlags(`memory-${job === 'count' ? 'count' : 'windows'}`),
  })
  const client = new ClientChild(cluster.coordinator.info.address)
  const worker = cluster.workers[0]!
  try {
    await client.ask(null, 'ready')
    await sleep(2000)
    const base = (await workerProcessMetrics(worker)).rss
    // Event times within the first minute of an hour-long window: every window stays open.
    const tsBase = T0 + 100 * 3_600_000
    const w = await watchWorkers([worker], () =>
      client.ask(
        { cmd: 'run', first: 0, events: o.keys, tsBase, perMinute: o.keys, keyCount: o.keys },
        'run',
      ),
    )
    let peak = w.peakRss[0]!
    let settled = 0
    // The steady state a user sees: two checkpoints completed after the last ack (with a state
    // store, the committed copy is part of what a worker holds), then 5 s more.
    const started = performance.now()
    const checkpoints0 = (await workerProcessMetrics(cluster.coordinator)).checkpoints
    let checkpoints = checkpoints0
    while (checkpoints < checkpoints0 + 2 && performance.now() - started < 120_000) {
      await sleep(250)
      peak = Math.max(peak, (await workerProcessMetrics(worker)).rss)
      checkpoints = (await workerProcessMetrics(cluster.coordinator)).checkpoints
    }
    const checkpointed = (await workerProcessMetrics(cluster.coordinator)).checkpointKeys
    const checkpointSeconds = (performance.now() - started) / 1000
    for (let t = 0; t < 20; t++) {
      await sleep(250)
      settled = (await workerProcessMetrics(worker)).rss
      peak = Math.max(peak, settled)
    }
    const probe = [0, 1, 4242, o.keys - 1]
    const { states } = await client.ask({ cmd: 'get', keys: probe.map(keyOf) }, 'get')
    const ok = states.every((s, n) => {
      const i = probe[n]!
      if (job === 'count') {
        const c = s as { count: number; sum: number } | undefined
        return c?.count === 1 && c.sum === valueOf(i)
      }
      const v = s as { windows: { start: number; end: number; state: { count: number; sum: number } }[] }
      const win = v?.windows
      return (
        win?.length === 1 &&
        win[0]!.start === tsBase &&
        win[0]!.end === tsBase + 3_600_000 &&
        win[0]!.state.count === 1 &&
        win[0]!.state.sum === valueOf(i)
      )
    })
    const r: MemoryRun = {
      job,
      binary: o.binary,
      state: o.state === undefined ? 'memory' : o.state.split(':')[0]!,
      keys: o.keys,
      baseMiB: mib(base),
      peakMiB: mib(peak),
      settledMiB: mib(settled),
      seconds: w.result.seconds,
      checkpointed,
      checkpointSeconds,
      sample: JSON.stringify(states[0]),
      ok,
    }
    console.error(
      `  memory (${job}, ${o.binary}): RSS ${r.baseMiB} MiB before, peak ${r.peakMiB} MiB, ` +
        `${r.settledMiB} MiB 5 s after two more checkpoints (${r.checkpointSeconds.toFixed(1)} s after the last ack; ${r.checkpointed} keys checkpointed); ${job === 'count' ? 'key' : 'window'} ` +
        `${keyOf(0)}: ${r.sample}${ok ? '' : ' (WRONG)'}`,
    )
    return r
  } finally {
    await client.stop()
    await cluster.stop()
  }
}

const benchmark: Benchmark = {
  name: 'windows',
  description:
    'event-time windows end to end (issue 12): the count job, a tumbling 1-minute count and a sliding ' +
    '5-min/1-min count over 100k keys on the e2e cluster (3 workers, TCP, memory state), window ' +
    'results checked in a file sink; worker RSS with 1M open windows',
  async run(opts: BenchOptions): Promise<BenchResult> {
    const runs = runsOf(opts)
    const events = Number(process.env.WINDOWS_EVENTS ?? (opts.quick ? 2_000_000 : 10_000_000))
    const perKeyMinute = Number(process.env.WINDOWS_PER_MINUTE ?? 10)
    const perMinute = KEYS * perKeyMinute
    const workers = Number(process.env.E2E_WORKERS ?? 3)
    const threads = Number(
      process.env.E2E_THREADS ?? Math.max(1, Math.floor(os.availableParallelism() / workers)),
    )
    const memoryKeys = Number(process.env.WINDOWS_MEMORY_KEYS ?? 1_000_000)
    const jobs = (process.env.WINDOWS_JOBS ?? 'count,tumbling,sliding')
      .split(',')
      .filter((j): j is JobName => j === 'count' || j === 'tumbling' || j === 'sliding')
    const settle = opts.settle === true
    const dir = await mkdtemp(join(os.tmpdir(), 'shoal-bench-windows-'))
    try {
      for (const [name, text] of Object.entries(JOB_FILES)) await writeFile(join(dir, name), text)
      // Every job's cluster stays up and the jobs' runs are interleaved (count, tumbling, sliding,
      // count, ...), so a change in the machine's load falls on all of them alike.
      const jo: JobOptions = {
        dir,
        workers,
        threads,
        events,
        warmupEvents: Math.min(events, 2_000_000),
        perMinute,
        settle,
      }
      const live: LiveJob[] = []
      const results: JobRun[] = []
      try {
        for (const job of jobs) live.push(await openJob(job, jo))
        for (let r = 1; r <= runs; r++) {
          for (const l of live) await measureJob(l, jo, `run ${r}/${runs}`)
        }
      } finally {
        for (const l of live.splice(0)) results.push(await closeJob(l, jo))
      }
      const memory: MemoryRun[] = []
      if (process.env.WINDOWS_MEMORY !== '0') {
        // The built CLI, as the `shoal` binary and the image run it (see bench/macro/memory.ts).
        await buildDist()
        const mo = { dir, threads, keys: memoryKeys, settle, binary: 'dist' as const }
        memory.push(await runMemory('open windows', mo))
        memory.push(await runMemory('count', mo))
      }

      const rateOf = (r: JobRun | undefined): number =>
        r === undefined ? NaN : median(r.runs.map((m) => m.events / m.seconds))
      const count = results.find((r) => r.job === 'count')
      const base = rateOf(count)
      const label: Record<JobName, string> = {
        count: 'count (built-in)',
        tumbling: 'tumbling 1 min',
        sliding: 'sliding 5 min / 1 min',
      }
      // Runs are interleaved: run r of a job and run r of count had about the same machine.
      const perRound = (r: JobRun): string =>
        count === undefined
          ? '-'
          : r.runs
              .map((m, i) => {
                const c = count.runs[i]
                return c === undefined ? '-' : fmtPct(m.events / m.seconds / (c.events / c.seconds))
              })
              .join(' / ')
      const rows = results.map((r) => [
        label[r.job],
        fmtSpread(r.runs.map((m) => m.events / m.seconds)),
        fmtPct(rateOf(r) / base),
        perRound(r),
        r.check === null ? '-' : r.check.perRun.slice(1).join(' / '),
        r.peakRssMiB.join(' / '),
        r.workerCpuPct.map((c) => `${c}%`).join(' / '),
        `${median(r.runs.map((m) => m.cpuPct)).toFixed(0)}%`,
        `${r.workerUsPerEvent.toFixed(2)} + ${r.clientUsPerEvent.toFixed(2)}`,
        `${r.mainUsPerEvent.toFixed(2)} / ${r.processingUsPerEvent.toFixed(2)} / ${(r.workerUsPerEvent - r.mainUsPerEvent - r.processingUsPerEvent).toFixed(2)}`,
        count === undefined
          ? '-'
          : fmtPct(
              (count.workerUsPerEvent + count.clientUsPerEvent) / (r.workerUsPerEvent + r.clientUsPerEvent),
            ),
        `${median(r.otherCores).toFixed(2)} (${Math.max(...r.otherCores).toFixed(2)})`,
        r.check === null ? '-' : r.check.ok ? 'ok' : 'FAILED',
      ])
      const headlines: Headline[] = []
      const tumbling = results.find((r) => r.job === 'tumbling')
      const sliding = results.find((r) => r.job === 'sliding')
      if (count !== undefined)
        headlines.push({ label: 'count job end to end', value: `${fmtRate(base)} events/s` })
      if (tumbling !== undefined)
        headlines.push({
          label: 'tumbling 1-minute count / count job',
          value: `${fmtRate(rateOf(tumbling))} events/s, ${fmtPct(rateOf(tumbling) / base)}`,
          goal: `>= ${fmtPct(GOAL_TUMBLING)}`,
          pass: rateOf(tumbling) / base >= GOAL_TUMBLING,
        })
      if (sliding !== undefined)
        headlines.push({
          label: 'sliding 5 min / 1 min count / count job',
          value: `${fmtRate(rateOf(sliding))} events/s, ${fmtPct(rateOf(sliding) / base)}`,
          goal: `>= ${fmtPct(GOAL_SLIDING)}`,
          pass: rateOf(sliding) / base >= GOAL_SLIDING,
        })
      const open = memory.find((m) => m.job === 'open windows')
      if (open !== undefined)
        headlines.push({
          label: `worker RSS holding ${fmtRate(open.keys)} open windows, 5 s after the last ack`,
          value: `${open.settledMiB} MiB = ${((open.settledMiB * 2 ** 20) / 1e6).toFixed(0)} MB (peak while loading ${open.peakMiB} MiB)`,
          goal: `<= ${GOAL_RSS_MB} MB`,
          pass: open.settledMiB * 2 ** 20 <= GOAL_RSS_MB * 1e6,
        })
      const failed = [
        ...results.filter((r) => r.check !== null && !r.check.ok).map((r) => `${r.job}: ${r.check!.detail}`),
        ...memory.filter((m) => !m.ok).map((m) => `memory ${m.job}: wrong state ${m.sample}`),
      ]
      return {
        tables: [
          {
            title:
              `end to end, ${fmtRate(events)} events per run over ${fmtRate(KEYS)} keys, ` +
              `${perKeyMinute} events per key per minute of event time, ${workers} workers x ${threads} thread(s), TCP`,
            columns: [
              'job',
              'events/s (median, range)',
              'vs count',
              'each run vs count',
              'window results per run',
              'worker peak RSS MiB',
              'worker CPU',
              'client CPU',
              'CPU µs/event workers + client',
              'of which workers main / processing / other threads',
              'count CPU / this',
              'other cores (max)',
              'results',
            ],
            rows,
          },
          ...(memory.length === 0
            ? []
            : [
                {
                  title: `memory: one worker x ${threads} thread(s), one event for each of ${fmtRate(memoryKeys)} keys`,
                  columns: [
                    'job',
                    'keys',
                    'RSS before MiB',
                    'peak MiB',
                    '5 s after last ack MiB',
                    'per key (after - before)',
                    'state',
                  ],
                  rows: memory.map((m) => [
                    `${m.job === 'count' ? 'count (reference)' : 'one open 1-hour tumbling window per key'}, ${m.binary}`,
                    m.keys,
                    m.baseMiB,
                    m.peakMiB,
                    m.settledMiB,
                    `${(((m.settledMiB - m.baseMiB) * 2 ** 20) / m.keys).toFixed(0)} B`,
                    m.ok ? 'ok' : 'WRONG',
                  ]),
                },
              ]),
        ],
        headlines,
        notes: [
          `events { value, ts, type: 'click' } as in e2e; event time advances ${perKeyMinute} events per key ` +
            `per minute (${fmtRate(events / perMinute)} minutes per run), in order; each run after a warm-up ` +
            `run of ${fmtRate(Math.min(events, 2_000_000))} events on the same cluster`,
          'windowed jobs: job files importing from shoal, watermark outOfOrdernessMs 2000, no idleMs (see the ' +
            'header of windows.ts); every worker (count too) has --sink file:, where the results are checked',
          `worker CPU is process CPU over the measured runs, 100% = one core; ${os.availableParallelism()} cores in all; ` +
            'other cores: the machine busy (/proc/stat) minus the workers and the client during a run, median (max): ' +
            'the coordinator, the kernel and other processes',
          'runs are interleaved (count, tumbling, sliding, count, ...) on clusters that stay up; each run vs count ' +
            'compares run r of a job with run r of count',
          'CPU µs/event: CPU time of the workers (all threads) and of the client over the measured runs per event; ' +
            "workers main / processing / other threads (Linux /proc): the workers' main threads (network, replay, " +
            'sinks), their processing threads (the busiest threads after the main one, as many as --threads) and the ' +
            "rest (V8's GC and compiler helpers, libuv's pool); " +
            "count CPU / this: the throughput ratio to expect where Shoal's processes get the whole machine and are " +
            'CPU-bound (less sensitive to other load than the rates)',
          ...results
            .filter((r) => r.nodeLogLines > 0)
            .map(
              (r) =>
                `${r.job}: the nodes logged ${r.nodeLogLines} warning/error lines, e.g. ${r.nodeLogSample[0] ?? ''}`,
            ),
        ],
        data: { events, perKeyMinute, workers, threads, results, memory },
        failed,
      }
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  },
}

export default benchmark

if (isMain(import.meta.url) && process.env.WINDOWS_ROLE === 'client') await clientMain()
