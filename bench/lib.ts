/**
 * Shared helpers for the benchmarks run by bench/run.ts: the module contract, machine info,
 * statistics and formatting, and a two-process harness (a receiver and a sender child,
 * coordinated by the parent over IPC) for loopback throughput measurements.
 *
 * Benchmarks measure and print; they never assert. A goal is reported as pass/fail.
 */
import { fork, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import inspector from 'node:inspector/promises'
import os from 'node:os'
import { join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'
import { Packr } from 'msgpackr'

export { sleep }

// --- the module contract -----------------------------------------------------------------------

export interface BenchOptions {
  /** Shorter warm-ups and measurements, one repetition: a smoke run, not a result. */
  quick: boolean
  /** Repetitions of every case (median and range are reported). @default 3, 1 with quick */
  runs?: number
  /**
   * For shared machines: before each measurement wait for the machine to be idle, and repeat a
   * measurement that other processes disturbed (up to 3 attempts; the least disturbed is kept).
   */
  settle?: boolean
  /** Benchmarks that read or write a stream of entries: how many (`--entries N`). */
  entries?: number
}

export interface Table {
  title?: string
  columns: string[]
  /** Cells are printed as given; numbers with String(). */
  rows: (string | number)[][]
}

/** A headline figure, optionally compared with a goal (reported, never asserted). */
export interface Headline {
  label: string
  value: string
  goal?: string
  pass?: boolean
}

export interface BenchResult {
  tables: Table[]
  headlines: Headline[]
  notes: string[]
  /** Raw measurements, written to .tmp/bench/<name>.json. */
  data: unknown
  /**
   * Correctness checks that failed (wrong state, lost entries): printed as FAILED lines after the
   * figures, and the run exits non-zero. Goals missed are not failures.
   */
  failed?: string[]
}

export interface Benchmark {
  name: string
  description: string
  run(opts: BenchOptions): Promise<BenchResult>
}

export function runsOf(opts: BenchOptions): number {
  return Math.max(1, opts.runs ?? (opts.quick ? 1 : 3))
}

// --- machine -------------------------------------------------------------------------------------

export interface MachineInfo {
  cpuModel: string
  cores: number
  node: string
  os: string
  memGiB: number
  loadavg: number[]
}

export function machineInfo(): MachineInfo {
  const cpus = os.cpus()
  return {
    cpuModel: cpus[0]?.model.trim() ?? 'unknown',
    cores: os.availableParallelism(),
    node: process.version,
    os: `${os.type()} ${os.release()} ${os.arch()}`,
    memGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    loadavg: os.loadavg().map((x) => Math.round(x * 100) / 100),
  }
}

export function formatMachine(m: MachineInfo): string {
  return (
    `machine: ${m.cpuModel}, ${m.cores} cores, ${m.memGiB} GiB, ${m.os}, node ${m.node}, ` +
    `loadavg ${m.loadavg.join(' ')}`
  )
}

// --- statistics and formatting --------------------------------------------------------------------

/** Linear-interpolated percentile (p in [0, 100]) of unsorted values; NaN for none. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return NaN
  const s = [...values].sort((a, b) => a - b)
  const idx = (p / 100) * (s.length - 1)
  const lo = Math.floor(idx)
  const hi = Math.ceil(idx)
  return s[lo]! + (s[hi]! - s[lo]!) * (idx - lo)
}

export function median(values: readonly number[]): number {
  return percentile(values, 50)
}

/** '1.23M', '456k', '789' */
export function fmtRate(n: number): string {
  if (!Number.isFinite(n)) return '-'
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)}M`
  if (n >= 1e4) return `${(n / 1e3).toFixed(0)}k`
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}k`
  return n.toFixed(0)
}

/** Median with the range of the runs: '1.23M (1.20M-1.25M)'; just the value for one run. */
export function fmtSpread(values: readonly number[], fmt: (n: number) => string = fmtRate): string {
  if (values.length === 0) return '-'
  if (values.length === 1) return fmt(values[0]!)
  return `${fmt(median(values))} (${fmt(Math.min(...values))}-${fmt(Math.max(...values))})`
}

function fmtCpu(pct: number): string {
  return Number.isFinite(pct) ? `${pct.toFixed(0)}%` : '-'
}

export function fmtPct(ratio: number): string {
  return Number.isFinite(ratio) ? `${(ratio * 100).toFixed(0)}%` : '-'
}

export function formatTable(t: Table): string {
  const cells = [t.columns, ...t.rows.map((r) => r.map(String))]
  const widths = t.columns.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)))
  const line = (r: string[]): string =>
    r
      .map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!)))
      .join('  ')
      .trimEnd()
  const out = [line(t.columns), widths.map((w) => '-'.repeat(w)).join('  ')]
  for (const r of cells.slice(1)) out.push(line(r))
  if (t.title !== undefined) out.unshift(t.title)
  return out.join('\n')
}

// --- child processes ------------------------------------------------------------------------------

/** True when `moduleUrl` (import.meta.url) is the script node was started with. */
export function isMain(moduleUrl: string): boolean {
  const entry = process.argv[1]
  return entry !== undefined && pathToFileURL(entry).href === moduleUrl
}

/**
 * Extra node flags for every benchmark child, e.g. BENCH_CHILD_FLAGS="--cpu-prof
 * --cpu-prof-dir=.tmp/prof" to profile senders and receivers (children exit cleanly, so the
 * profiles are written).
 */
function childFlags(): string[] {
  return (process.env.BENCH_CHILD_FLAGS ?? '').split(/\s+/).filter((f) => f.length > 0)
}

/** Parent -> child commands and child -> parent replies of the harness. */
type ToChild = { cmd: 'start' } | { cmd: 'stop' } | { cmd: 'exit' }
type FromChild =
  | { type: 'ready'; port?: number }
  | { type: 'started' }
  | { type: 'stopped'; stats: WindowStats }
  | { type: 'error'; message: string }

/** What one side saw over the measured window (between 'start' and 'stop'). */
export interface WindowStats {
  events: number
  bytes: number
  ms: number
  /** Process CPU time (user + system) over the window / wall time, in percent. */
  cpuPct: number
}

export class BenchChild {
  readonly #child: ChildProcess
  readonly #inbox: FromChild[] = []
  #waiter: ((m: FromChild) => void) | null = null
  #exit: Error | null = null

  constructor(modulePath: string, env: Record<string, string>) {
    this.#child = fork(modulePath, [], {
      execArgv: ['--import', 'tsx', ...childFlags()],
      env: { ...process.env, ...env },
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    })
    this.#child.on('message', (m: FromChild) => {
      const w = this.#waiter
      if (w === null) this.#inbox.push(m)
      else {
        this.#waiter = null
        w(m)
      }
    })
    this.#child.once('exit', (code, signal) => {
      this.#exit = new Error(`benchmark child exited (code ${code}, signal ${signal})`)
      const w = this.#waiter
      this.#waiter = null
      w?.({ type: 'error', message: this.#exit.message })
    })
  }

  send(m: ToChild): void {
    this.#child.send(m)
  }

  /** The next reply, which must be of `type`. */
  async expect<T extends FromChild['type']>(
    type: T,
    timeoutMs = 30_000,
  ): Promise<Extract<FromChild, { type: T }>> {
    const next =
      this.#inbox.shift() ??
      (this.#exit !== null
        ? { type: 'error' as const, message: this.#exit.message }
        : await Promise.race([
            new Promise<FromChild>((resolve) => (this.#waiter = resolve)),
            sleep(timeoutMs, undefined, { ref: false }).then((): FromChild => {
              this.#waiter = null
              return { type: 'error', message: `no '${type}' within ${timeoutMs} ms` }
            }),
          ]))
    if (next.type === 'error') throw new Error(next.message)
    if (next.type !== type) throw new Error(`expected '${type}' from the child, got '${next.type}'`)
    return next as Extract<FromChild, { type: T }>
  }

  /** Ask for a clean exit (profiles get written), kill after a grace period. */
  async stop(): Promise<void> {
    const c = this.#child
    if (c.exitCode !== null || c.signalCode !== null) return
    const exited = once(c, 'exit')
    if (c.connected) c.send({ cmd: 'exit' } satisfies ToChild)
    const t = setTimeout(() => c.kill('SIGKILL'), 5000)
    await exited
    clearTimeout(t)
  }
}

/**
 * A macro benchmark's load client in a child process (a fork of the benchmark's own module,
 * told its role by `env`), driven by IPC: `ask` sends a command and awaits the reply of a type;
 * an `error` reply, or the child exiting, rejects.
 */
export class ClientProcess<Cmd extends { cmd: string }, Reply extends { type: string }> {
  readonly child: ChildProcess
  readonly #inbox: (Reply | ErrorReply)[] = []
  #waiter: ((m: Reply | ErrorReply) => void) | null = null

  constructor(modulePath: string, env: Record<string, string>) {
    this.child = fork(modulePath, [], {
      execArgv: ['--import', 'tsx', ...childFlags()],
      env: { ...process.env, ...env },
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    })
    const deliver = (m: Reply | ErrorReply): void => {
      const w = this.#waiter
      this.#waiter = null
      if (w === null) this.#inbox.push(m)
      else w(m)
    }
    this.child.on('message', deliver)
    this.child.once('exit', (code, signal) =>
      deliver({ type: 'error', message: `client exited (${code ?? signal})` }),
    )
  }

  async ask<T extends Reply['type']>(cmd: Cmd | null, type: T): Promise<Extract<Reply, { type: T }>> {
    if (cmd !== null) this.child.send(cmd)
    const m = this.#inbox.shift() ?? (await new Promise<Reply | ErrorReply>((r) => (this.#waiter = r)))
    if (isErrorReply(m)) throw new Error(m.message)
    if (m.type !== type) throw new Error(`expected ${type} from the client, got ${m.type}`)
    return m as Extract<Reply, { type: T }>
  }

  /** Ask it to exit; kill it after 10 s. */
  async stop(): Promise<void> {
    const c = this.child
    if (c.exitCode !== null || c.signalCode !== null) return
    const exited = once(c, 'exit')
    if (c.connected) c.send({ cmd: 'exit' })
    const t = setTimeout(() => c.kill('SIGKILL'), 10_000)
    await exited
    clearTimeout(t)
  }
}

interface ErrorReply {
  type: 'error'
  message: string
}

function isErrorReply(m: { type: string }): m is ErrorReply {
  return m.type === 'error'
}

export interface PairSpec {
  /** The module that runs both sides when started as a child (see childMain). */
  modulePath: string
  /** Parameters for both children (JSON in BENCH_PARAMS). */
  params: Record<string, unknown>
  warmupMs: number
  durationMs: number
}

export interface PairResult {
  receiver: WindowStats
  sender: WindowStats
  /**
   * CPU used by everything else on the machine during the window, in percent of one core
   * (machine busy time from /proc/stat minus both children); NaN where /proc/stat is missing.
   * On a shared machine this says whether a run was disturbed.
   */
  otherCpuPct: number
}

/**
 * Start a receiver child (it listens and reports its port), then a sender child (it connects
 * and sends as fast as it can); after warmupMs both snapshot their counters, after durationMs
 * more they report what happened in between. The rate is what the receiver counted over its
 * own clock, so it is what was delivered and decoded, not what was queued.
 */
export async function measurePair(spec: PairSpec): Promise<PairResult> {
  const params = JSON.stringify(spec.params)
  const rx = new BenchChild(spec.modulePath, { BENCH_ROLE: 'receiver', BENCH_PARAMS: params })
  let tx: BenchChild | undefined
  try {
    const { port } = await rx.expect('ready')
    tx = new BenchChild(spec.modulePath, {
      BENCH_ROLE: 'sender',
      BENCH_PARAMS: params,
      BENCH_PORT: String(port),
    })
    await tx.expect('ready')
    await sleep(spec.warmupMs)
    rx.send({ cmd: 'start' })
    tx.send({ cmd: 'start' })
    const cpu0 = await machineCpu()
    await Promise.all([rx.expect('started'), tx.expect('started')])
    await sleep(spec.durationMs)
    rx.send({ cmd: 'stop' })
    tx.send({ cmd: 'stop' })
    const cpu1 = await machineCpu()
    const [r, s] = await Promise.all([rx.expect('stopped'), tx.expect('stopped')])
    const busyPct = busyCoresPct(cpu0, cpu1)
    const otherCpuPct = Math.max(0, busyPct - r.stats.cpuPct - s.stats.cpuPct)
    return { receiver: r.stats, sender: s.stats, otherCpuPct }
  } finally {
    // Sender first: a receiver that exits under a running sender makes its next write fail
    // (ECONNRESET), which the sender would report as a failure.
    await tx?.stop()
    await rx.stop()
  }
}

// --- machine load ---------------------------------------------------------------------------------

interface CpuTicks {
  busy: number
  total: number
}

/** Aggregate CPU ticks from /proc/stat (Linux); null elsewhere. */
async function machineCpu(): Promise<CpuTicks | null> {
  try {
    const line = (await readFile('/proc/stat', 'utf8')).split('\n', 1)[0]!
    const f = line.trim().split(/\s+/).slice(1).map(Number)
    // user nice system idle iowait irq softirq steal (guest is already in user)
    const idle = (f[3] ?? 0) + (f[4] ?? 0)
    const total = f.slice(0, 8).reduce((a, b) => a + b, 0)
    return { busy: total - idle, total }
  } catch {
    return null
  }
}

/** Busy time between two snapshots, in percent of one core (0 .. cores * 100). */
function busyCoresPct(a: CpuTicks | null, b: CpuTicks | null): number {
  if (a === null || b === null || b.total <= a.total) return NaN
  return ((b.busy - a.busy) / (b.total - a.total)) * os.availableParallelism() * 100
}

/** Machine CPU use over `ms`, in percent of one core. */
export async function machineBusyPct(ms: number): Promise<number> {
  const a = await machineCpu()
  await sleep(ms)
  return busyCoresPct(a, await machineCpu())
}

/**
 * Wait (at most maxWaitMs) until the machine has been nearly idle for a 2 s sample: other
 * processes using under `thresholdPct` of one core. Returns the last sample.
 */
export async function waitForIdle(thresholdPct = 25, maxWaitMs = 120_000): Promise<number> {
  const until = performance.now() + maxWaitMs
  for (;;) {
    const busy = await machineBusyPct(2000)
    if (!(busy >= thresholdPct) || performance.now() >= until) return busy
  }
}

/** The counters a side keeps; the harness snapshots them at 'start' and 'stop'. */
export interface Counters {
  events: number
  bytes: number
}

export interface Side {
  counters: Counters
  /** Receivers: the port they listen on. */
  port?: number
}

export interface ChildContext {
  params: Record<string, unknown>
  /** Senders: the receiver's port. */
  port: number
}

export type SideFactory = (ctx: ChildContext) => Promise<Side>

/**
 * The child half of measurePair: build the side named by BENCH_ROLE from `sides`, tell the
 * parent it is ready, then answer start/stop/exit. Call it when isMain(import.meta.url).
 */
export async function childMain(sides: { receiver: SideFactory; sender: SideFactory }): Promise<void> {
  const reply = (m: FromChild): void => void process.send?.(m)
  const role = process.env.BENCH_ROLE
  try {
    if (process.send === undefined) throw new Error('a benchmark child needs an IPC channel')
    if (role !== 'receiver' && role !== 'sender') throw new Error(`BENCH_ROLE is ${role}`)
    const ctx: ChildContext = {
      params: JSON.parse(process.env.BENCH_PARAMS ?? '{}') as Record<string, unknown>,
      port: Number(process.env.BENCH_PORT ?? 0),
    }
    const side = await sides[role](ctx)
    const profiler = await windowProfiler(role, ctx.params)
    let t0 = 0
    let cpu0 = process.cpuUsage()
    let events0 = 0
    let bytes0 = 0
    let profileWritten: Promise<void> = Promise.resolve()
    process.on('message', (m: ToChild) => {
      if (m.cmd === 'start') {
        t0 = performance.now()
        cpu0 = process.cpuUsage()
        events0 = side.counters.events
        bytes0 = side.counters.bytes
        profiler?.start()
        reply({ type: 'started' })
      } else if (m.cmd === 'stop') {
        const ms = performance.now() - t0
        const cpu = process.cpuUsage(cpu0)
        const events = side.counters.events - events0
        const bytes = side.counters.bytes - bytes0
        if (profiler !== undefined) profileWritten = profiler.stop()
        reply({
          type: 'stopped',
          stats: { events, bytes, ms, cpuPct: ((cpu.user + cpu.system) / 1000 / ms) * 100 },
        })
      } else {
        void profileWritten.finally(() => process.exit(0))
      }
    })
    reply(side.port === undefined ? { type: 'ready' } : { type: 'ready', port: side.port })
  } catch (err) {
    reply({ type: 'error', message: `${role} failed: ${(err as Error).stack ?? String(err)}` })
    setTimeout(() => process.exit(1), 100)
  }
}

/**
 * With BENCH_PROFILE_DIR set, every child records a V8 CPU profile of exactly the measured
 * window (no start-up, no warm-up) into <dir>/<params>-<role>-<pid>.cpuprofile; open it in
 * Chrome DevTools or speedscope.
 */
async function windowProfiler(
  role: string,
  params: Record<string, unknown>,
): Promise<{ start(): void; stop(): Promise<void> } | undefined> {
  const dir = process.env.BENCH_PROFILE_DIR
  if (dir === undefined || dir === '') return undefined
  const session = new inspector.Session()
  session.connect()
  await session.post('Profiler.enable')
  await session.post('Profiler.setSamplingInterval', { interval: 100 })
  const file = join(dir, `${Object.values(params).join('-')}-${role}-${process.pid}.cpuprofile`)
  return {
    start: () => void session.post('Profiler.start'),
    stop: async () => {
      const { profile } = await session.post('Profiler.stop')
      await mkdir(dir, { recursive: true })
      await writeFile(file, JSON.stringify(profile))
    },
  }
}

/**
 * Fail the child loudly (the parent sees it exit) when a background loop dies, e.g. a sender
 * whose connection broke mid-measurement.
 */
export function fatal(what: string): (err: unknown) => void {
  return (err) => {
    console.error(`${what}:`, err)
    process.exit(1)
  }
}

/**
 * A sender loop that never awaits (every write accepted) would starve the event loop and the
 * IPC channel; call this once per iteration: it returns a promise to await every ~10 ms, and
 * undefined otherwise. Await it only when defined (`const p = maybeYield(); if (p) await p`):
 * even `await undefined` is a microtask turn, and the connection flushes its outbound queue in
 * a microtask, so awaiting after every send() would write every message on its own and
 * measure a transport without its coalescing.
 */
export function yielder(): () => Promise<void> | undefined {
  let n = 0
  let last = performance.now()
  return () => {
    if ((++n & 63) !== 0) return undefined
    const now = performance.now()
    if (now - last < 10) return undefined
    last = now
    return new Promise<void>((resolve) => setImmediate(resolve))
  }
}

export function modulePath(moduleUrl: string): string {
  return fileURLToPath(moduleUrl)
}

// --- event workload -------------------------------------------------------------------------------

/**
 * `pool` distinct msgpackr payloads of `batch` events each, packed once up front with
 * Packr({ useRecords: true }) (each payload is self-contained: it carries its record
 * definition). Events look like { key: 'user-000123', value: 30.85, ts: 1700000000123,
 * type: 'click' }: about 37 bytes each once packed, the shape bench/macro/grpc-raw.ts uses.
 */
export function eventPayloads(batch: number, pool = 8): { payloads: Buffer[]; bytesPerEvent: number } {
  const packr = new Packr({ useRecords: true })
  const payloads: Buffer[] = []
  for (let p = 0; p < pool; p++) {
    const events: Record<string, unknown>[] = []
    for (let i = 0; i < batch; i++) {
      const n = p * batch + i
      events.push({
        key: `user-${String(n % 100_000).padStart(6, '0')}`,
        value: n * 0.25 + 0.1,
        ts: 1_700_000_000_000 + n,
        type: 'click',
      })
    }
    payloads.push(packr.pack(events))
  }
  const bytes = payloads.reduce((a, b) => a + b.length, 0)
  return { payloads, bytesPerEvent: bytes / (pool * batch) }
}

// --- throughput matrix ----------------------------------------------------------------------------

export interface ThroughputCase {
  id: string
  label: string
}

export interface ThroughputSpec {
  /** The module whose childMain() implements every case (params.case, params.batch). */
  modulePath: string
  cases: readonly ThroughputCase[]
  batches: readonly number[]
  runs: number
  timing(batch: number): { warmupMs: number; durationMs: number }
  /** See BenchOptions.settle. */
  settle?: boolean
}

/** Other processes above this share of one core during a window make it 'disturbed'. */
const DISTURBED_PCT = 30

export interface CaseRuns {
  caseId: string
  batch: number
  runs: PairResult[]
}

/** Events/s the receiver counted in one run. */
export function rxRate(r: PairResult): number {
  return r.receiver.events / (r.receiver.ms / 1000)
}

/**
 * Events per second of CPU time of both processes together: the cost of moving an event,
 * which a busy machine distorts far less than the rate itself.
 */
export function perCpuSecond(r: PairResult): number {
  return rxRate(r) / ((r.sender.cpuPct + r.receiver.cpuPct) / 100)
}

/**
 * Every case at every batch size, `runs` times. Cases are interleaved within a repetition
 * (a, b, c, a, b, c, ...) so a burst of background load hits all of them alike.
 */
export async function runThroughputMatrix(spec: ThroughputSpec, tag: string): Promise<CaseRuns[]> {
  const out: CaseRuns[] = []
  for (const batch of spec.batches) {
    const byCase = spec.cases.map((c) => ({ caseId: c.id, batch, runs: [] as PairResult[] }))
    out.push(...byCase)
    for (let run = 1; run <= spec.runs; run++) {
      for (const [i, c] of spec.cases.entries()) {
        let best: PairResult | undefined
        for (let attempt = 1; attempt <= (spec.settle === true ? 3 : 1); attempt++) {
          if (spec.settle === true) await waitForIdle()
          const r = await measurePair({
            modulePath: spec.modulePath,
            params: { case: c.id, batch },
            ...spec.timing(batch),
          })
          console.error(
            `  ${tag} batch ${batch} run ${run}/${spec.runs} ${c.id}: ${fmtRate(rxRate(r))} events/s ` +
              `(CPU: sender ${r.sender.cpuPct.toFixed(0)}%, receiver ${r.receiver.cpuPct.toFixed(0)}%, ` +
              `other processes ${r.otherCpuPct.toFixed(0)}%)`,
          )
          if (best === undefined || r.otherCpuPct < best.otherCpuPct) best = r
          if (!(r.otherCpuPct > DISTURBED_PCT)) break
        }
        byCase[i]!.runs.push(best!)
      }
    }
  }
  return out
}

/**
 * One row per (batch, case): events/s (median and range), payload MB/s, the share of the
 * baseline case at the same batch size, events per CPU-second, the CPU of both sides and the
 * most CPU other processes used during any of the runs (percent of one core).
 */
export function throughputTable(
  results: readonly CaseRuns[],
  spec: { cases: readonly ThroughputCase[]; baselineId: string; bytesPerEvent: (batch: number) => number },
): Table {
  const rows: (string | number)[][] = []
  for (const r of results) {
    const rates = r.runs.map(rxRate)
    const base = results.find((x) => x.batch === r.batch && x.caseId === spec.baselineId)
    const baseRate = base === undefined ? NaN : median(base.runs.map(rxRate))
    const label = spec.cases.find((c) => c.id === r.caseId)?.label ?? r.caseId
    rows.push([
      r.batch,
      label,
      fmtSpread(rates),
      ((median(rates) * spec.bytesPerEvent(r.batch)) / 1e6).toFixed(1),
      fmtPct(median(rates) / baseRate),
      fmtRate(median(r.runs.map(perCpuSecond))),
      `${median(r.runs.map((x) => x.sender.cpuPct)).toFixed(0)}%`,
      `${median(r.runs.map((x) => x.receiver.cpuPct)).toFixed(0)}%`,
      fmtCpu(Math.max(...r.runs.map((x) => x.otherCpuPct))),
    ])
  }
  return {
    columns: [
      'batch',
      'case',
      'events/s (median, range)',
      'MB/s',
      'vs ceiling',
      'events/CPU-s',
      'send CPU',
      'recv CPU',
      'other (max)',
    ],
    rows,
  }
}

/** median(a) / median(b) at one batch size, and the range of the per-run ratios. */
export function ratioAt(
  results: readonly CaseRuns[],
  batch: number,
  a: string,
  b: string,
): { ratio: number; min: number; max: number } {
  const ra = results.find((x) => x.batch === batch && x.caseId === a)?.runs.map(rxRate) ?? []
  const rb = results.find((x) => x.batch === batch && x.caseId === b)?.runs.map(rxRate) ?? []
  const per = ra.map((x, i) => x / (rb[i] ?? NaN))
  return { ratio: median(ra) / median(rb), min: Math.min(...per), max: Math.max(...per) }
}
