/**
 * End-to-end throughput and latency of a real cluster on loopback, against the raw-socket
 * ceiling.
 *
 * For each transport (tcp, then grpc; E2E_TRANSPORTS=tcp to pick), this starts a coordinator and
 * three workers as real processes (`node --import tsx src/cli/main.ts coordinator|worker ...`,
 * the built-in `count` job, memory state) and a client process (ShoalClient) that:
 *
 *   max   sends N events (10M; 1M with --quick) of about 40 bytes over 100k keys as fast as
 *         send()/drain() allow and waits for the last ack: events/s end to end (every event
 *         applied to state on its worker and acknowledged);
 *   rate  then sends at 50% of that rate, paced every millisecond, and measures send-to-ack
 *         latency (from the send() call to the ack of the batch that carried the event) on a
 *         sample of events: p50 / p99.
 *
 * The parent polls every worker's /metrics during the runs for process RSS (peak reported) and
 * CPU. At the end the cluster's counts are checked against what was sent (a few keys' state).
 *
 * The ceiling: a sender process pushing the same batch payload bytes (msgpackr [key, event][]
 * packed with the client's options, batches of the client's batch size) over a plain node:net
 * socket with the same framing and envelope (encodeFrame) to a receiver process that only
 * parses frames and counts (FrameParser + decodeEnvelope): what one TCP connection between two
 * Node processes carries with Shoal's wire format and nothing else. A second reference has the
 * receiver also unpack every event (msgpackr), the first thing a worker's thread does.
 *
 * Options: --quick (1M events), --runs N (max runs on the same cluster, and ceiling runs),
 * --settle (wait for an idle machine before each transport and each ceiling window). The notes
 * say how busy the whole machine was during the max runs and how much of it was Shoal.
 *
 * Knobs (environment): E2E_EVENTS (events of the max run), E2E_TRANSPORTS (tcp,grpc),
 * E2E_THREADS (processing threads per worker, default: the `shoal up` default, CPUs / workers),
 * E2E_WORKERS (3), E2E_NODE_FLAGS (extra node flags for the coordinator and workers, e.g.
 * "--cpu-prof --cpu-prof-dir=.tmp/prof"; the nodes always get MAIN_THREAD_FLAGS, as from
 * `shoal up` and the image, unless these set a semi-space size), BENCH_CHILD_FLAGS (the same for
 * the client process), E2E_STATE (memory; `file`: every node on `--state file:<tmp>`, the
 * durable default of `shoal up`), E2E_LOAD (the latency run's share of the max rate, 0.5),
 * E2E_PARTITIONS (the coordinator's partition count, default 256), E2E_RATE_EVENTS (events of
 * the latency run, at most 10 s worth; default half of E2E_EVENTS, at least 1M), E2E_RATE (the
 * latency run at this many events/s instead of E2E_LOAD of the max: to compare builds at one load).
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import net from 'node:net'
import os from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Packr } from 'msgpackr'
import { ShoalClient } from '../../src/client/client.ts'
import type { ClusterStatus } from '../../src/coordinator/coordinator.ts'
import { encodeFrame, decodeEnvelope } from '../../src/protocol/codec.ts'
import { FrameParser } from '../../src/protocol/framing.ts'
import type { EventBatchBody } from '../../src/protocol/messages.ts'
import { partitionForKey } from '../../src/protocol/partition.ts'
import { nodeEnvForNodes, nodeFlagsForNode, onListening } from '../../src/cli/up.ts'
import { createTransport } from '../../src/transport/index.ts'
import {
  childMain,
  fatal,
  fmtPct,
  fmtRate,
  fmtSpread,
  isMain,
  measurePair,
  median,
  percentile,
  rxRate,
  runsOf,
  sleep,
  waitForIdle,
  yielder,
  type Benchmark,
  type BenchOptions,
  type BenchResult,
  type ChildContext,
  type Counters,
  type Side,
  ClientProcess,
} from '../lib.ts'

const MAIN = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url))
/** The built CLI (`npm run build`): what the `shoal` binary and the image run. */
export const DIST_MAIN = fileURLToPath(new URL('../../dist/src/cli/main.js', import.meta.url))

/**
 * How nodes run: `tsx` (the sources, as `npm run shoal` does; the default of the benchmarks) or
 * `dist` (the built CLI, as the `shoal` binary and the image do: no TypeScript loader in the
 * process, which is ~60 MiB less RSS per worker).
 */
export type NodeBinary = 'tsx' | 'dist'

/** `npm run build`, so that `dist` nodes run the current sources. */
export async function buildDist(): Promise<void> {
  const root = fileURLToPath(new URL('../..', import.meta.url))
  const child = spawn('npm', ['run', 'build'], { cwd: root, stdio: ['ignore', 'ignore', 'inherit'] })
  const [code] = (await once(child, 'exit')) as [number | null]
  if (code !== 0) throw new Error(`npm run build failed (exit ${code})`)
}
const SELF = fileURLToPath(import.meta.url)
export const KEYS = 100_000
/** The client's default batch size (ShoalClientOptions.batchSize). */
const BATCH = 1000
const GOAL_RATE = 1_000_000
/** The latency run's rate, as a fraction of the max runs' (E2E_LOAD; issue 13's goal is at 0.5). */
const LOAD = Number(process.env.E2E_LOAD ?? 0.5)
const GOAL_RATIO = 0.25
/** Issue 13's goals: whole-cluster cost, latency at 50% load, gRPC against TCP. */
const GOAL_PER_CPU_SECOND = 1_500_000
const GOAL_P99_MS = 20
const GOAL_P50_MS = 5
const GOAL_VS_TCP = 0.7
const MAX_FRAME_BYTES = 8 * 1024 * 1024
/** One in this many events of the rate run is timed. */
const SAMPLE_EVERY = 16

export type TransportName = 'tcp' | 'grpc'

// --- the workload (client and ceiling sender build the same events) -----------------------------

export function keyOf(i: number): string {
  return `user-${String(i).padStart(6, '0')}`
}

/** About 40 bytes per [key, event] entry once packed (see bytesPerEvent). */
function eventOf(i: number): { value: number; ts: number; type: string } {
  return { value: (i % 1000) * 0.25 + 0.125, ts: 1_700_000_000_000 + i, type: 'click' }
}

/** The packed size per event of a batch of `batch` entries, packed as the client packs them. */
function samplePayloads(batch: number, pool: number): { payloads: Buffer[]; bytesPerEvent: number } {
  const packr = new Packr({ useRecords: true, moreTypes: true })
  const payloads: Buffer[] = []
  for (let p = 0; p < pool; p++) {
    const entries: [string, unknown][] = []
    for (let i = 0; i < batch; i++) {
      const n = (p * batch + i) * 7919
      entries.push([keyOf(n % KEYS), eventOf(n)])
    }
    payloads.push(packr.pack(entries))
  }
  return { payloads, bytesPerEvent: payloads.reduce((a, b) => a + b.length, 0) / (pool * batch) }
}

// --- the cluster ----------------------------------------------------------------------------------

interface Listening {
  address: string
  http: string
}

export interface NodeProc {
  child: ChildProcess
  info: Listening
  /** stderr lines (warnings and errors: nodes run at --log-level warn). */
  logLines: number
  firstLines: string[]
}

/** E2E_NODE_FLAGS, and the flags `shoal up` and the image give every node (MAIN_THREAD_FLAGS). */
function nodeFlags(args: readonly string[]): string[] {
  const extra = (process.env.E2E_NODE_FLAGS ?? '').split(/\s+/).filter((f) => f.length > 0)
  return nodeFlagsForNode(args, extra)
}

export async function startNode(
  args: string[],
  flags: string[] = [],
  binary: NodeBinary = 'tsx',
): Promise<NodeProc> {
  const entry = binary === 'dist' ? [DIST_MAIN] : ['--import', 'tsx', MAIN]
  // The environment `shoal up` and the image give every node (NODE_ENV_DEFAULTS).
  const child = spawn(process.execPath, [...nodeFlags(args), ...flags, ...entry, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: nodeEnvForNodes(process.env),
  })
  const proc: NodeProc = { child, info: { address: '', http: '' }, logLines: 0, firstLines: [] }
  let errBuf = ''
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    errBuf += d
    let i: number
    while ((i = errBuf.indexOf('\n')) >= 0) {
      const line = errBuf.slice(0, i)
      errBuf = errBuf.slice(i + 1)
      proc.logLines++
      if (proc.firstLines.length < 3) proc.firstLines.push(line.slice(0, 300))
    }
  })
  proc.info = await new Promise<Listening>((resolve, reject) => {
    onListening(child.stdout, (j) => resolve({ address: j.address, http: j.http }))
    child.once('exit', (code, signal) =>
      reject(
        new Error(
          `shoal ${args[0]} exited (${code ?? signal}) before it listened: ${errBuf.slice(-300)} ${proc.firstLines.join(' / ')}`,
        ),
      ),
    )
  })
  return proc
}

export async function stopNode(p: NodeProc): Promise<void> {
  const c = p.child
  if (c.exitCode !== null || c.signalCode !== null) return
  const exited = once(c, 'exit')
  c.kill('SIGTERM')
  const t = setTimeout(() => c.kill('SIGKILL'), 15_000)
  await exited
  clearTimeout(t)
}

export interface Cluster {
  coordinator: NodeProc
  workers: NodeProc[]
  stop(): Promise<void>
}

async function httpJson<T>(hostPort: string, path: string): Promise<T> {
  const r = await fetch(`http://${hostPort}${path}`)
  return (await r.json()) as T
}

/** What else the workers get (the e2e benchmark itself runs the built-in `count` job, no sink). */
export interface ClusterExtras {
  /** --job for every worker (a built-in name or a job file). @default 'count' */
  job?: string
  /** --sink URLs for every worker. */
  sinks?: string[]
  /** Extra node flags for the workers only (e.g. --cpu-prof). */
  workerFlags?: string[]
  /** How the nodes run. @default 'tsx' */
  binary?: NodeBinary
  /** --state for every node (e.g. `file:DIR`). @default none: memory state */
  state?: string
  /** The coordinator's --partitions. @default its own (256) */
  partitions?: number
}

export async function startCluster(
  transport: TransportName,
  workers: number,
  threads: number,
  extras: ClusterExtras = {},
): Promise<Cluster> {
  const common = [
    '--transport',
    transport,
    '--log-level',
    'warn',
    ...(extras.state === undefined ? [] : ['--state', extras.state]),
  ]
  const workerArgs = [
    ...(extras.job === undefined ? [] : ['--job', extras.job]),
    ...(extras.sinks ?? []).flatMap((s) => ['--sink', s]),
  ]
  const coordinator = await startNode(
    [
      'coordinator',
      '--listen',
      '127.0.0.1:0',
      '--http',
      '127.0.0.1:0',
      ...common,
      ...(extras.partitions === undefined ? [] : ['--partitions', String(extras.partitions)]),
    ],
    [],
    extras.binary,
  )
  const ws: NodeProc[] = []
  const stop = async (): Promise<void> => {
    await Promise.all(ws.map(stopNode))
    await stopNode(coordinator)
  }
  try {
    ws.push(
      ...(await Promise.all(
        Array.from({ length: workers }, () =>
          startNode(
            [
              'worker',
              '--coordinator',
              coordinator.info.address,
              '--listen',
              '127.0.0.1:0',
              '--http',
              '127.0.0.1:0',
              '--threads',
              String(threads),
              ...common,
              ...workerArgs,
            ],
            extras.workerFlags,
            extras.binary,
          ),
        ),
      )),
    )
    // Every partition owned by a live worker that has it ready.
    const deadline = performance.now() + 60_000
    for (;;) {
      const s = await httpJson<ClusterStatus>(coordinator.info.http, '/status')
      const alive = s.members.filter((m) => m.state === 'alive')
      if (
        s.coordinator.ready &&
        alive.length === workers &&
        s.assignment.owners.every((o) => o !== null) &&
        alive.every((m) => m.readyPartitions === m.partitions)
      )
        break
      if (performance.now() > deadline) throw new Error('the cluster did not settle within 60 s')
      await sleep(100)
    }
  } catch (err) {
    await stop()
    throw err
  }
  return { coordinator, workers: ws, stop }
}

/** Busy and total jiffies of the whole machine (Linux), to see load from other processes. */
export async function machineCpu(): Promise<{ busy: number; total: number } | null> {
  try {
    const line = (await readFile('/proc/stat', 'utf8')).split('\n')[0]!
    const f = line.trim().split(/\s+/).slice(1).map(Number)
    const idle = f[3]! + (f[4] ?? 0)
    const total = f.slice(0, 8).reduce((a, b) => a + b, 0)
    return { busy: total - idle, total }
  } catch {
    return null
  }
}

/** Process RSS and CPU seconds of a worker, from its /metrics. */
export async function workerProcessMetrics(
  w: NodeProc,
): Promise<{ rss: number; cpu: number; checkpoints: number; checkpointKeys: number }> {
  const text = await (await fetch(`http://${w.info.http}/metrics`)).text()
  const num = (name: string): number =>
    Number(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'm').exec(text)?.[1] ?? NaN)
  return {
    rss: num('process_resident_memory_bytes'),
    cpu: num('process_cpu_seconds_total'),
    // Absent until the first checkpoint completes.
    checkpoints: num('shoal_checkpoints_total') || 0,
    checkpointKeys: num('shoal_checkpoint_keys_total'),
  }
}

/** Polls the workers' metrics while `during` runs: peak RSS and CPU used per worker. */
export async function watchWorkers<T>(
  workers: NodeProc[],
  during: () => Promise<T>,
): Promise<{ result: T; peakRss: number[]; endRss: number[]; cpuSeconds: number[] }> {
  const first = await Promise.all(workers.map(workerProcessMetrics))
  const peak = first.map((m) => m.rss)
  let stop = false
  const poller = (async () => {
    while (!stop) {
      await sleep(250)
      const ms = await Promise.all(workers.map(workerProcessMetrics)).catch(() => null)
      ms?.forEach((m, i) => (peak[i] = Math.max(peak[i]!, m.rss)))
    }
  })()
  try {
    const result = await during()
    return await (async () => {
      stop = true
      await poller
      const last = await Promise.all(workers.map(workerProcessMetrics))
      last.forEach((m, i) => (peak[i] = Math.max(peak[i]!, m.rss)))
      return {
        result,
        peakRss: peak,
        endRss: last.map((m) => m.rss),
        cpuSeconds: last.map((m, i) => m.cpu - first[i]!.cpu),
      }
    })()
  } finally {
    stop = true
    await poller
  }
}

// --- the client process ---------------------------------------------------------------------------

type ClientCommand =
  | { cmd: 'max'; events: number }
  | { cmd: 'rate'; rate: number; events: number }
  | { cmd: 'check' }
  | { cmd: 'exit' }

interface MaxResult {
  type: 'max'
  events: number
  seconds: number
  batches: number
  retries: number
  cpuPct: number
}
interface RateResult {
  type: 'rate'
  events: number
  seconds: number
  achievedRate: number
  p50: number
  p99: number
  max: number
  samples: number
  batches: number
  cpuPct: number
}
interface CheckResult {
  type: 'check'
  ok: boolean
  detail: string
}
type ClientReply =
  { type: 'ready' } | MaxResult | RateResult | CheckResult | { type: 'error'; message: string }

class ClientChild extends ClientProcess<ClientCommand, ClientReply> {
  constructor(transport: TransportName, coordinator: string) {
    super(SELF, { E2E_ROLE: 'client', E2E_TRANSPORT: transport, E2E_COORDINATOR: coordinator })
  }
}

async function clientMain(): Promise<void> {
  const reply = (m: ClientReply): void => void process.send!(m)
  const transportName = process.env.E2E_TRANSPORT as TransportName
  const transport = createTransport(transportName, { nodeId: `bench-${process.pid}`, role: 'client' })
  const keys = Array.from({ length: KEYS }, (_, i) => keyOf(i))
  const partitions: number[] = []
  // Latency bookkeeping: per partition, events sent and acked, and the timed samples in order.
  let sentIn: Int32Array = new Int32Array(0)
  let ackedIn: Int32Array = new Int32Array(0)
  let samples: { idx: number; t: number }[][] = []
  let latencies: number[] = []
  let measuring = false
  const client = await ShoalClient.connect({
    coordinator: process.env.E2E_COORDINATOR!,
    transport,
    onAck: (partition, events) => {
      if (!measuring) return
      const acked = (ackedIn[partition]! += events)
      const q = samples[partition]!
      if (q.length === 0 || q[0]!.idx >= acked) return
      const now = performance.now()
      let n = 0
      while (n < q.length && q[n]!.idx < acked) latencies.push(now - q[n++]!.t)
      q.splice(0, n)
    },
  })
  for (const k of keys) partitions.push(partitionForKey(k, client.partitions))
  let next = 0 // the next event number; both runs continue the same sequence

  async function runMax(events: number): Promise<MaxResult> {
    const batches0 = client.stats.batches
    const retries0 = client.stats.retries
    const cpu0 = process.cpuUsage()
    const t0 = performance.now()
    const end = next + events
    for (let i = next; i < end; i++) {
      if (!client.send(keys[i % KEYS]!, eventOf(i))) await client.drain()
    }
    next = end
    await client.flush()
    const seconds = (performance.now() - t0) / 1000
    const cpu = process.cpuUsage(cpu0)
    return {
      type: 'max',
      events,
      seconds,
      batches: client.stats.batches - batches0,
      retries: client.stats.retries - retries0,
      cpuPct: ((cpu.user + cpu.system) / 1e6 / seconds) * 100,
    }
  }

  async function runRate(rate: number, events: number): Promise<RateResult> {
    const P = client.partitions
    sentIn = new Int32Array(P)
    ackedIn = new Int32Array(P)
    samples = Array.from({ length: P }, () => [])
    latencies = []
    measuring = true
    const batches0 = client.stats.batches
    const cpu0 = process.cpuUsage()
    const t0 = performance.now()
    const warmupEvents = Math.floor(events / 10)
    const burst = Math.max(1, Math.ceil(rate / 1000))
    let sent = 0
    while (sent < events) {
      const now = performance.now()
      // At most 1 ms worth of events per synchronous burst: a generator that fell behind (its
      // timer fired late) and sent 10 ms worth at once would hold the client's event loop, and
      // every ack waiting in its socket, for as long (measured: 13-17 ms gaps).
      const due = Math.min(events, Math.floor(((now - t0) / 1000) * rate), sent + burst)
      for (; sent < due; sent++) {
        const i = next + sent
        const k = i % KEYS
        const p = partitions[k]!
        const idx = sentIn[p]!++
        // Stamped at its own send() call, not at the start of this burst: a burst of a few
        // thousand events takes a while, and its last events were not sent when it started.
        if (sent >= warmupEvents && sent % SAMPLE_EVERY === 0) samples[p]!.push({ idx, t: performance.now() })
        if (!client.send(keys[k]!, eventOf(i))) await client.drain()
      }
      // Behind schedule: let I/O (acks) run, then go on; on schedule: wait for the next ms.
      if (Math.floor(((performance.now() - t0) / 1000) * rate) > sent) await new Promise(setImmediate)
      else await sleep(1)
    }
    next += events
    await client.flush()
    const seconds = (performance.now() - t0) / 1000
    measuring = false
    const cpu = process.cpuUsage(cpu0)
    return {
      type: 'rate',
      events,
      seconds,
      achievedRate: events / seconds,
      p50: percentile(latencies, 50),
      p99: percentile(latencies, 99),
      max: latencies.reduce((a, b) => Math.max(a, b), 0),
      samples: latencies.length,
      batches: client.stats.batches - batches0,
      cpuPct: ((cpu.user + cpu.system) / 1e6 / seconds) * 100,
    }
  }

  /** Every event i went to key i % KEYS: check a few keys' count and sum (exact: multiples of 1/8). */
  async function check(): Promise<CheckResult> {
    const bad: string[] = []
    for (const k of [0, 1, 4242, 77_777, KEYS - 1]) {
      let count = 0
      let sum = 0
      for (let i = k; i < next; i += KEYS) {
        count++
        sum += eventOf(i).value
      }
      const s = (await client.getState(keyOf(k))) as { count: number; sum: number } | undefined
      if (s?.count !== count || s.sum !== sum)
        bad.push(`${keyOf(k)}: ${JSON.stringify(s)}, expected ${JSON.stringify({ count, sum })}`)
    }
    return {
      type: 'check',
      ok: bad.length === 0,
      detail: bad.length === 0 ? `5 keys exact after ${next} events` : bad.join('; '),
    }
  }

  process.on('message', (m: ClientCommand) => {
    const run =
      m.cmd === 'max'
        ? runMax(m.events)
        : m.cmd === 'rate'
          ? runRate(m.rate, m.events)
          : m.cmd === 'check'
            ? check()
            : client.close().then(() => process.exit(0))
    run.then(
      (r) => r !== undefined && reply(r),
      (err: unknown) => reply({ type: 'error', message: String((err as Error).stack ?? err) }),
    )
  })
  reply({ type: 'ready' })
}

// --- the raw-socket ceiling -----------------------------------------------------------------------

function ceilingBody(batch: number, sequence: number, payload: Uint8Array): EventBatchBody {
  return { op: 'batch', partition: 0, epoch: 1, producerId: 'bench', sequence, count: batch, payload }
}

async function ceilingReceiver(ctx: ChildContext): Promise<Side> {
  const counters: Counters = { events: 0, bytes: 0 }
  // The 'decode' reference also unpacks every event (what a worker's thread does first).
  const unpackr = ctx.params.decode === true ? new Packr({ useRecords: true, moreTypes: true }) : null
  const server = net.createServer((s) => {
    s.setNoDelay(true)
    const parser = new FrameParser(MAX_FRAME_BYTES, (payload) => {
      const env = decodeEnvelope(payload)
      if (env.kind === 'event' && env.body.op === 'batch') {
        if (unpackr !== null) counters.events += (unpackr.unpack(env.body.payload) as unknown[]).length
        else counters.events += env.body.count
        counters.bytes += env.body.payload.length
      }
    })
    s.on('data', (chunk: Buffer) => parser.push(chunk))
    s.on('error', () => {})
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  return { counters, port: (server.address() as net.AddressInfo).port }
}

async function ceilingSender(ctx: ChildContext): Promise<Side> {
  const batch = ctx.params.batch as number
  const counters: Counters = { events: 0, bytes: 0 }
  const { payloads } = samplePayloads(batch, 8)
  const socket = net.connect({ host: '127.0.0.1', port: ctx.port })
  await once(socket, 'connect')
  socket.setNoDelay(true)
  const maybeYield = yielder()
  void (async () => {
    for (let sequence = 1; ; sequence++) {
      const payload = payloads[sequence & 7]!
      const frame = encodeFrame(
        {
          v: 1,
          from: 'bench-tx',
          seq: sequence,
          ts: Date.now(),
          kind: 'event',
          body: ceilingBody(batch, sequence, payload),
        },
        MAX_FRAME_BYTES,
      )
      if (!socket.write(frame)) await once(socket, 'drain')
      counters.events += batch
      counters.bytes += payload.length
      await maybeYield()
    }
  })().catch(fatal('ceiling sender'))
  return { counters }
}

// --- the benchmark --------------------------------------------------------------------------------

interface TransportRun {
  transport: TransportName
  max: MaxResult[]
  rate: RateResult | null
  check: CheckResult | null
  peakRssMiB: number[]
  endRssMiB: number[]
  workerCpuPct: number[]
  /** Whole-machine CPU busy during the max runs, in cores (Linux /proc/stat), and ours. */
  machineBusyCores: number
  shoalBusyCores: number
  /**
   * Events acknowledged per CPU-second of the whole cluster (coordinator + workers + client,
   * process CPU) over the max runs: issue 13's cost figure.
   */
  eventsPerCpuSecond: number
  nodeLogLines: number
  nodeLogSample: string[]
}

async function runTransport(
  transport: TransportName,
  o: { events: number; runs: number; workers: number; threads: number; rateEvents: number },
): Promise<TransportRun> {
  console.error(`  e2e ${transport}: starting coordinator + ${o.workers} workers x ${o.threads} thread(s)`)
  // E2E_STATE=file: the workers log every batch to disk and checkpoint there (`shoal up`'s
  // default, exactly-once); default: memory state (no log).
  const stateDir =
    process.env.E2E_STATE === 'file' ? await mkdtemp(join(os.tmpdir(), 'shoal-e2e-state-')) : null
  const cluster = await startCluster(transport, o.workers, o.threads, {
    ...(stateDir === null ? {} : { state: `file:${stateDir}` }),
    ...(process.env.E2E_PARTITIONS === undefined ? {} : { partitions: Number(process.env.E2E_PARTITIONS) }),
  })
  const client = new ClientChild(transport, cluster.coordinator.info.address)
  const out: TransportRun = {
    transport,
    max: [],
    rate: null,
    check: null,
    peakRssMiB: [],
    endRssMiB: [],
    workerCpuPct: [],
    machineBusyCores: NaN,
    shoalBusyCores: NaN,
    eventsPerCpuSecond: NaN,
    nodeLogLines: 0,
    nodeLogSample: [],
  }
  const mib = (b: number): number => Math.round(b / 2 ** 20)
  try {
    await client.ask(null, 'ready')
    const stat0 = await machineCpu()
    const coordinatorCpu0 = (await workerProcessMetrics(cluster.coordinator)).cpu
    const watched = await watchWorkers(cluster.workers, async () => {
      for (let r = 1; r <= o.runs; r++) {
        const m = await client.ask({ cmd: 'max', events: o.events }, 'max')
        out.max.push(m)
        console.error(
          `  e2e ${transport} max run ${r}/${o.runs}: ${fmtRate(m.events / m.seconds)} events/s ` +
            `(${m.events} events in ${m.seconds.toFixed(2)} s, ${(m.events / m.batches).toFixed(0)} events/batch, ` +
            `client CPU ${m.cpuPct.toFixed(0)}%, retries ${m.retries})`,
        )
      }
      return median(out.max.map((m) => m.seconds))
    })
    out.peakRssMiB = watched.peakRss.map(mib)
    const maxSeconds = out.max.reduce((a, m) => a + m.seconds, 0)
    out.workerCpuPct = watched.cpuSeconds.map((s) => Math.round((s / maxSeconds) * 100))
    const coordinatorCpu = (await workerProcessMetrics(cluster.coordinator)).cpu - coordinatorCpu0
    const clientCpu = out.max.reduce((a, m) => a + (m.cpuPct / 100) * m.seconds, 0)
    const clusterCpu = watched.cpuSeconds.reduce((a, b) => a + b, 0) + clientCpu + coordinatorCpu
    out.eventsPerCpuSecond = out.max.reduce((a, m) => a + m.events, 0) / clusterCpu
    const stat1 = await machineCpu()
    if (stat0 !== null && stat1 !== null) {
      out.machineBusyCores =
        ((stat1.busy - stat0.busy) / (stat1.total - stat0.total)) * os.availableParallelism()
      out.shoalBusyCores =
        watched.cpuSeconds.reduce((a, b) => a + b, 0) / maxSeconds +
        out.max.reduce((a, m) => a + (m.cpuPct / 100) * m.seconds, 0) / maxSeconds
    }
    const maxRate = median(out.max.map((m) => m.events / m.seconds))
    const rate =
      process.env.E2E_RATE === undefined ? Math.round(maxRate * LOAD) : Number(process.env.E2E_RATE)
    const events = Math.min(o.rateEvents, Math.round(rate * 10))
    const rr = await watchWorkers(cluster.workers, () => client.ask({ cmd: 'rate', rate, events }, 'rate'))
    out.rate = rr.result
    out.endRssMiB = rr.endRss.map(mib)
    rr.peakRss.forEach((b, i) => (out.peakRssMiB[i] = Math.max(out.peakRssMiB[i]!, mib(b))))
    console.error(
      `  e2e ${transport} at ${fmtPct(LOAD)} (${fmtRate(rate)} events/s target, ${fmtRate(rr.result.achievedRate)} achieved): ` +
        `p50 ${rr.result.p50.toFixed(1)} ms, p99 ${rr.result.p99.toFixed(1)} ms (${rr.result.samples} samples), ` +
        `${rr.result.batches} batches, client CPU ${rr.result.cpuPct.toFixed(0)}%, workers ` +
        rr.cpuSeconds.map((c) => `${((c / rr.result.seconds) * 100).toFixed(0)}%`).join(' / '),
    )
    out.check = await client.ask({ cmd: 'check' }, 'check')
    if (!out.check.ok) console.error(`  e2e ${transport}: STATE CHECK FAILED: ${out.check.detail}`)
  } finally {
    await client.stop()
    await cluster.stop()
    if (stateDir !== null) await rm(stateDir, { recursive: true, force: true })
    const nodes = [cluster.coordinator, ...cluster.workers]
    out.nodeLogLines = nodes.reduce((a, n) => a + n.logLines, 0)
    out.nodeLogSample = nodes.flatMap((n) => n.firstLines).slice(0, 3)
  }
  return out
}

const benchmark: Benchmark = {
  name: 'e2e',
  description:
    'end to end: coordinator + 3 workers + a ShoalClient as processes on loopback, count job, ' +
    '~40 B events over 100k keys, over tcp and grpc: events/s, latency at 50% load, worker RSS; ' +
    'and the raw-socket ceiling with the same payloads and framing',
  async run(opts: BenchOptions): Promise<BenchResult> {
    const runs = opts.runs ?? 1
    const events = Number(process.env.E2E_EVENTS ?? (opts.quick ? 1_000_000 : 10_000_000))
    const workers = Number(process.env.E2E_WORKERS ?? 3)
    const threads = Number(
      process.env.E2E_THREADS ?? Math.max(1, Math.floor(os.availableParallelism() / workers)),
    )
    const transports = (process.env.E2E_TRANSPORTS ?? 'tcp,grpc')
      .split(',')
      .filter((t): t is TransportName => t === 'tcp' || t === 'grpc')
    const { bytesPerEvent } = samplePayloads(BATCH, 4)
    const results: TransportRun[] = []
    for (const t of transports) {
      if (opts.settle === true) await waitForIdle()
      results.push(
        await runTransport(t, {
          events,
          runs,
          workers,
          threads,
          rateEvents: Number(process.env.E2E_RATE_EVENTS ?? Math.max(1_000_000, events / 2)),
        }),
      )
    }

    // The ceiling, same payloads (batches of BATCH) and framing, two processes, one connection;
    // and the same with a receiver that also unpacks every event, for reference.
    const ceilingRuns: number[] = []
    const decodeRuns: number[] = []
    for (let r = 1; r <= runsOf(opts); r++) {
      for (const decode of [false, true]) {
        if (opts.settle === true) await waitForIdle()
        const pr = await measurePair({
          modulePath: SELF,
          params: { case: decode ? 'e2e-ceiling-decode' : 'e2e-ceiling', batch: BATCH, decode },
          warmupMs: opts.quick ? 500 : 1000,
          durationMs: opts.quick ? 1000 : 3000,
        })
        ;(decode ? decodeRuns : ceilingRuns).push(rxRate(pr))
        console.error(
          `  e2e ceiling${decode ? ' + decode' : ''} run ${r}: ${fmtRate(rxRate(pr))} events/s ` +
            `(sender CPU ${pr.sender.cpuPct.toFixed(0)}%, receiver CPU ${pr.receiver.cpuPct.toFixed(0)}%)`,
        )
      }
    }
    const ceiling = median(ceilingRuns)
    const decodeCeiling = median(decodeRuns)

    const rows = results.map((r) => {
      const rate = median(r.max.map((m) => m.events / m.seconds))
      const evPerBatch = r.max.reduce((a, m) => a + m.events, 0) / r.max.reduce((a, m) => a + m.batches, 0)
      return [
        r.transport,
        fmtSpread(r.max.map((m) => m.events / m.seconds)),
        fmtPct(rate / ceiling),
        r.rate === null ? '-' : `${fmtRate(r.rate.achievedRate)}`,
        r.rate === null ? '-' : r.rate.p50.toFixed(1),
        r.rate === null ? '-' : r.rate.p99.toFixed(1),
        r.peakRssMiB.join(' / '),
        r.workerCpuPct.map((c) => `${c}%`).join(' / '),
        `${median(r.max.map((m) => m.cpuPct)).toFixed(0)}%`,
        evPerBatch.toFixed(0),
        r.check?.ok === true ? 'ok' : 'FAILED',
      ]
    })
    const tcp = results.find((r) => r.transport === 'tcp')
    const tcpRate = tcp === undefined ? NaN : median(tcp.max.map((m) => m.events / m.seconds))
    return {
      tables: [
        {
          title: `end to end, ${fmtRate(events)} events per max run, ${workers} workers x ${threads} thread(s)`,
          columns: [
            'transport',
            'events/s (median, range)',
            'vs ceiling',
            '50% load',
            'p50 ms',
            'p99 ms',
            'worker peak RSS MiB',
            'worker CPU',
            'client CPU',
            'ev/batch',
            'state',
          ],
          rows,
        },
        {
          title: 'raw-socket ceiling: same payloads and framing over a plain socket, two processes',
          columns: ['receiver', 'batch', 'events/s', 'MB/s'],
          rows: [
            [
              'parses frames and counts (the ceiling)',
              BATCH,
              fmtRate(ceiling),
              ((ceiling * bytesPerEvent) / 1e6).toFixed(0),
            ],
            [
              'also unpacks every event (reference)',
              BATCH,
              fmtRate(decodeCeiling),
              ((decodeCeiling * bytesPerEvent) / 1e6).toFixed(0),
            ],
          ],
        },
      ],
      headlines: [
        {
          label: 'end to end over TCP',
          value: `${fmtRate(tcpRate)} events/s`,
          goal: `>= ${fmtRate(GOAL_RATE)} events/s`,
          pass: tcpRate >= GOAL_RATE,
        },
        {
          label: 'end to end over TCP / raw-socket ceiling',
          value: fmtPct(tcpRate / ceiling),
          goal: `>= ${fmtPct(GOAL_RATIO)}`,
          pass: tcpRate / ceiling >= GOAL_RATIO,
        },
        {
          label: 'end to end over TCP / raw socket + unpacking every event',
          value: fmtPct(tcpRate / decodeCeiling),
        },
        ...(tcp === undefined
          ? []
          : [
              {
                label: 'whole-cluster cost over TCP (coordinator + workers + client, process CPU)',
                value: `${fmtRate(tcp.eventsPerCpuSecond)} events per CPU-second`,
                goal: `>= ${fmtRate(GOAL_PER_CPU_SECOND)}`,
                pass: tcp.eventsPerCpuSecond >= GOAL_PER_CPU_SECOND,
              },
              ...(tcp.rate === null
                ? []
                : [
                    {
                      label: 'send-to-ack latency over TCP at 50% of max load, p99 / p50',
                      value: `${tcp.rate.p99.toFixed(1)} ms / ${tcp.rate.p50.toFixed(1)} ms`,
                      goal: `<= ${GOAL_P99_MS} ms / <= ${GOAL_P50_MS} ms`,
                      pass: tcp.rate.p99 <= GOAL_P99_MS && tcp.rate.p50 <= GOAL_P50_MS,
                    },
                  ]),
            ]),
        ...results
          .filter((r) => r.transport !== 'tcp' && tcp !== undefined)
          .map((r) => {
            const ratio = median(r.max.map((m) => m.events / m.seconds)) / tcpRate
            return {
              label: `end to end over ${r.transport} / over TCP`,
              value: fmtPct(ratio),
              goal: `>= ${fmtPct(GOAL_VS_TCP)}`,
              pass: ratio >= GOAL_VS_TCP,
            }
          }),
        ...results
          .filter((r) => r.transport !== 'tcp')
          .map((r) => ({
            label: `end to end over ${r.transport} / raw-socket ceiling`,
            value: fmtPct(median(r.max.map((m) => m.events / m.seconds)) / ceiling),
          })),
      ],
      notes: [
        `${bytesPerEvent.toFixed(1)} B per event packed ([key, {value, ts, type}], msgpackr records), ` +
          `${KEYS} keys, client batch size ${BATCH}`,
        `worker CPU is process CPU (main + processing threads) over the max runs, 100% = one core; ` +
          `${os.availableParallelism()} cores in all`,
        ...results.map(
          (r) =>
            `${r.transport} max runs: ${fmtRate(r.eventsPerCpuSecond)} events per CPU-second of the whole cluster; the machine was ${r.machineBusyCores.toFixed(2)} cores busy, ` +
            `Shoal's client and workers ${r.shoalBusyCores.toFixed(2)} of them (the rest: coordinator, ` +
            `kernel, other processes)`,
        ),
        ...results
          .filter((r) => r.nodeLogLines > 0)
          .map(
            (r) =>
              `${r.transport}: the nodes logged ${r.nodeLogLines} warning/error lines, e.g. ${r.nodeLogSample[0] ?? ''}`,
          ),
      ],
      data: { events, workers, threads, bytesPerEvent, ceilingRuns, decodeRuns, results },
    }
  },
}

export default benchmark

if (isMain(import.meta.url)) {
  if (process.env.E2E_ROLE === 'client') await clientMain()
  else await childMain({ receiver: ceilingReceiver, sender: ceilingSender })
}
