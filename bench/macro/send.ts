/**
 * The CLI ingest paths against the SDK, in one run, into one cluster (issue 13, "CLI").
 *
 * Starts a coordinator and three workers as real processes (bench/macro/e2e.ts's startCluster:
 * TCP, the built-in `count` job, memory state), writes N events (2M; 300k with --quick) as an
 * NDJSON file (.tmp/bench/send-events.ndjson, ~75 B per line, the e2e events: 100k keys), then
 * runs every case `--runs` times (default 3), the cases interleaved so that load from other
 * processes spreads over all of them:
 *
 *   sdk         a fresh process: ShoalClient.connect, then send() the same N events in a loop
 *               (drain() on backpressure), flush(): the SDK path
 *   cli file    `shoal send --json FILE` (node --import tsx src/cli/main.ts): the summary's own
 *               `seconds` (from the first read to the last ack, after connecting)
 *   cli stdin   `cat FILE | shoal send --json -`: the same through a pipe
 *   http        POST /events on the coordinator: the file's lines in bodies of 10k lines,
 *               20 requests in flight (the SDK's 200k-event window), from this process
 *               with node:http and a keep-alive agent (SEND_HTTP_CLIENT=fetch: undici's fetch)
 *
 * Every case is timed from its first event to its last ack; process start-up and connecting are
 * not in the rate (the wall time of the CLI processes is reported next to it). Headlines: each
 * path's median rate / the SDK's median rate (goal >= 60%). At the end a few keys' counts are
 * checked against what every case sent.
 *
 * Knobs (environment): SEND_EVENTS (events per case run), SEND_CASES (sdk,cli-file,cli-stdin,
 * http), SEND_HTTP_LINES (lines per POST body, 10000), SEND_HTTP_IN_FLIGHT (requests at once, 20),
 * SEND_HTTP_CLIENT (http or fetch), E2E_THREADS / E2E_WORKERS as for e2e, BENCH_CHILD_FLAGS (node flags for the SDK and CLI
 * processes, e.g. "--cpu-prof --cpu-prof-dir=.tmp/prof").
 */
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { createWriteStream } from 'node:fs'
import http from 'node:http'
import { mkdir, readFile, stat } from 'node:fs/promises'
import os from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { ShoalClient } from '../../src/client/client.ts'
import { createTransport } from '../../src/transport/index.ts'
import {
  fmtPct,
  fmtRate,
  fmtSpread,
  isMain,
  median,
  runsOf,
  waitForIdle,
  type Benchmark,
  type BenchOptions,
  type BenchResult,
} from '../lib.ts'
import { KEYS, keyOf, machineCpu, startCluster, type Cluster } from './e2e.ts'

const MAIN = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url))
const SELF = fileURLToPath(import.meta.url)
const ROOT = fileURLToPath(new URL('../..', import.meta.url))
const GOAL_RATIO = 0.6
const HTTP_LINES_PER_BODY = Number(process.env.SEND_HTTP_LINES ?? 10_000)
/**
 * 20 bodies of 10k lines: 200k events in flight, the SDK's own window (ShoalClient
 * maxBufferedEvents), so both paths have as much data in flight; HTTP's throughput is what is in
 * flight over a request's round trip, as for any bulk HTTP API. 4 was the setting until
 * 2026-12-05 (docs/benchmarks.md gives both).
 */
const HTTP_IN_FLIGHT = Number(process.env.SEND_HTTP_IN_FLIGHT ?? 20)
/** node:http with a keep-alive agent (default), or fetch (undici). */
const HTTP_CLIENT = process.env.SEND_HTTP_CLIENT === 'fetch' ? 'fetch' : 'http'

type CaseName = 'sdk' | 'cli-file' | 'cli-stdin' | 'http'
const ALL_CASES: readonly CaseName[] = ['sdk', 'cli-file', 'cli-stdin', 'http']

/** Event i, the same in the file and in the SDK loop: value a multiple of 1/8, so sums are exact. */
function eventOf(i: number): { key: string; value: number; ts: number; type: string } {
  return {
    key: keyOf((i * 7919) % KEYS),
    value: (i % 1000) * 0.25 + 0.125,
    ts: 1_700_000_000_000 + i,
    type: 'click',
  }
}

function childFlags(): string[] {
  return (process.env.BENCH_CHILD_FLAGS ?? '').split(/\s+/).filter((f) => f.length > 0)
}

async function writeEvents(file: string, events: number): Promise<number> {
  const out = createWriteStream(file)
  let chunk = ''
  for (let i = 0; i < events; i++) {
    chunk += JSON.stringify(eventOf(i)) + '\n'
    if (chunk.length > 1 << 20 || i === events - 1) {
      if (!out.write(chunk)) await once(out, 'drain')
      chunk = ''
    }
  }
  out.end()
  await once(out, 'finish')
  return (await stat(file)).size
}

interface CaseRun {
  name: CaseName
  events: number
  /** From the first event to the last ack. */
  seconds: number
  /** Of the process that sent (sdk, cli) from spawn to exit; NaN for http. */
  wallSeconds: number
  /** CPU of that process over `seconds` (sdk) or its whole life (cli), 100% = one core; NaN for http. */
  cpuPct: number
  batches: number
  loadavg1: number
  /** Whole machine CPU busy over the case, in cores. */
  machineBusyCores: number
}

// --- the SDK process ---------------------------------------------------------------------------

async function sdkMain(): Promise<void> {
  const events = Number(process.env.SEND_EVENTS)
  const client = await ShoalClient.connect({
    coordinator: process.env.SEND_COORDINATOR!,
    transport: createTransport('tcp', { nodeId: `bench-sdk-${process.pid}`, role: 'client' }),
  })
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  for (let i = 0; i < events; i++) {
    const e = eventOf(i)
    if (!client.send(e.key, e)) await client.drain()
  }
  await client.flush()
  const seconds = (performance.now() - t0) / 1000
  const cpu = process.cpuUsage(cpu0)
  await client.close()
  process.stdout.write(
    JSON.stringify({
      acked: client.stats.acked,
      seconds,
      cpuPct: (cpu.user + cpu.system) / 1e4 / seconds,
      batches: client.stats.batches,
    }) + '\n',
  )
}

// --- the cases ------------------------------------------------------------------------------------

interface RunResult {
  acked: number
  seconds: number
  cpuPct: number
  /** Batches the client sent; NaN for http (its client is in the coordinator). */
  batches: number
  wallSeconds: number
}

/** Run a process to completion; its stdout's last line is a JSON summary with acked and seconds. */
async function runProcess(cmd: string, args: string[], env: NodeJS.ProcessEnv): Promise<RunResult> {
  const t0 = performance.now()
  const child = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d))
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-4000)))
  const [code] = (await once(child, 'exit')) as [number | null]
  const wallSeconds = (performance.now() - t0) / 1000
  if (code !== 0) throw new Error(`${args.join(' ')} exited ${code}: ${stderr}`)
  const last = stdout.trim().split('\n').pop() ?? ''
  const s = JSON.parse(last) as { acked: number; seconds: number; cpuPct?: number; batches?: number }
  return {
    acked: s.acked,
    seconds: s.seconds,
    cpuPct: s.cpuPct ?? NaN,
    batches: s.batches ?? NaN,
    wallSeconds,
  }
}

async function runCase(name: CaseName, cluster: Cluster, file: string, events: number): Promise<CaseRun> {
  const address = cluster.coordinator.info.address
  const load = os.loadavg()[0]!
  const stat0 = await machineCpu()
  let r: RunResult
  if (name === 'sdk') {
    r = await runProcess(process.execPath, ['--import', 'tsx', ...childFlags(), SELF], {
      ...process.env,
      SEND_ROLE: 'sdk',
      SEND_EVENTS: String(events),
      SEND_COORDINATOR: address,
    })
  } else if (name === 'cli-file' || name === 'cli-stdin') {
    const cli = [process.execPath, '--import', 'tsx', ...childFlags(), MAIN, 'send']
    const common = ['--coordinator', address, '--transport', 'tcp', '--json']
    r =
      name === 'cli-file'
        ? await runProcess(cli[0]!, [...cli.slice(1), ...common, file], process.env)
        : await runProcess('sh', ['-c', `cat "$SEND_FILE" | "$@"`, 'sh', ...cli, ...common, '-'], {
            ...process.env,
            SEND_FILE: file,
          })
  } else {
    r = await postEvents(cluster.coordinator.info.http, file)
  }
  const stat1 = await machineCpu()
  if (r.acked !== events) throw new Error(`${name}: ${r.acked} of ${events} events acknowledged`)
  return {
    name,
    events,
    seconds: r.seconds,
    wallSeconds: r.wallSeconds,
    cpuPct: r.cpuPct,
    batches: r.batches,
    loadavg1: load,
    machineBusyCores:
      stat0 === null || stat1 === null
        ? NaN
        : ((stat1.busy - stat0.busy) / (stat1.total - stat0.total)) * os.availableParallelism(),
  }
}

/** POST /events with bodies of HTTP_LINES_PER_BODY lines, HTTP_IN_FLIGHT at a time. */
async function postEvents(address: string, file: string): Promise<RunResult> {
  const data = await readFile(file)
  const bodies: Buffer[] = []
  let start = 0
  let lines = 0
  for (let i = 0; i < data.length; i++) {
    if (data[i] !== 0x0a || ++lines < HTTP_LINES_PER_BODY) continue
    bodies.push(data.subarray(start, i + 1))
    start = i + 1
    lines = 0
  }
  if (start < data.length) bodies.push(data.subarray(start))
  const agent = new http.Agent({ keepAlive: true, maxSockets: HTTP_IN_FLIGHT })
  const url = `http://${address}/events`
  const post = async (body: Buffer): Promise<{ status: number; text: string }> => {
    if (HTTP_CLIENT === 'fetch') {
      const res = await fetch(url, {
        method: 'POST',
        headers: { 'content-type': 'application/x-ndjson' },
        body,
      })
      return { status: res.status, text: await res.text() }
    }
    return new Promise((resolve, reject) => {
      const req = http.request(
        url,
        {
          method: 'POST',
          agent,
          headers: { 'content-type': 'application/x-ndjson', 'content-length': body.length },
        },
        (res) => {
          let text = ''
          res.setEncoding('utf8')
          res.on('data', (d: string) => (text += d))
          res.on('end', () => resolve({ status: res.statusCode ?? 0, text }))
          res.on('error', reject)
        },
      )
      req.on('error', reject)
      req.end(body)
    })
  }
  let next = 0
  let acked = 0
  const t0 = performance.now()
  await Promise.all(
    Array.from({ length: HTTP_IN_FLIGHT }, async () => {
      while (next < bodies.length) {
        const body = bodies[next++]!
        const { status, text } = await post(body)
        if (status !== 200) throw new Error(`POST /events: ${status} ${text}`)
        acked += (JSON.parse(text) as { acked: number }).acked
      }
    }),
  )
  const seconds = (performance.now() - t0) / 1000
  agent.destroy()
  return { acked, seconds, cpuPct: NaN, batches: NaN, wallSeconds: seconds }
}

/** The count job's state of key `k` after `rounds` deliveries of events 0..events-1. */
function expectedState(k: number, events: number, rounds: number): { count: number; sum: number } {
  let count = 0
  let sum = 0
  for (let i = 0; i < events; i++) {
    if ((i * 7919) % KEYS !== k) continue
    count++
    sum += eventOf(i).value
  }
  return { count: count * rounds, sum: sum * rounds }
}

const benchmark: Benchmark = {
  name: 'send',
  description:
    'ingest paths into one cluster (coordinator + 3 workers, tcp, count job, memory state): ' +
    'ShoalClient.send in a loop vs `shoal send FILE`, `cat FILE | shoal send -` and POST /events, ' +
    'same NDJSON events, interleaved runs: events/s and the ratio to the SDK',
  async run(opts: BenchOptions): Promise<BenchResult> {
    const runs = runsOf(opts)
    const events = Number(process.env.SEND_EVENTS ?? (opts.quick ? 300_000 : 2_000_000))
    const workers = Number(process.env.E2E_WORKERS ?? 3)
    const threads = Number(
      process.env.E2E_THREADS ?? Math.max(1, Math.floor(os.availableParallelism() / workers)),
    )
    const cases = (process.env.SEND_CASES ?? ALL_CASES.join(','))
      .split(',')
      .filter((c): c is CaseName => (ALL_CASES as readonly string[]).includes(c))
    const dir = join(ROOT, '.tmp', 'bench')
    await mkdir(dir, { recursive: true })
    const file = join(dir, 'send-events.ndjson')
    const bytes = await writeEvents(file, events)

    if (opts.settle === true) await waitForIdle()
    console.error(`  send: starting coordinator + ${workers} workers x ${threads} thread(s)`)
    const cluster = await startCluster('tcp', workers, threads)
    const all: CaseRun[] = []
    const failed: string[] = []
    try {
      for (let r = 1; r <= runs; r++) {
        for (const name of cases) {
          if (opts.settle === true) await waitForIdle()
          const c = await runCase(name, cluster, file, events)
          all.push(c)
          console.error(
            `  send run ${r}/${runs} ${name}: ${fmtRate(c.events / c.seconds)} events/s ` +
              `(${c.seconds.toFixed(2)} s${Number.isNaN(c.batches) ? '' : `, ${(c.events / c.batches).toFixed(0)} events/batch`}; process ${c.wallSeconds.toFixed(2)} s; ` +
              `loadavg ${c.loadavg1.toFixed(2)}, machine ${c.machineBusyCores.toFixed(2)} cores busy)`,
          )
        }
      }
      // Every case run delivered events 0..N-1 once: check a few keys' state.
      for (const k of [0, 1, 4242, KEYS - 1]) {
        const want = expectedState(k, events, all.length)
        const res = await fetch(`http://${cluster.coordinator.info.http}/state/${keyOf(k)}`)
        const got = res.status === 200 ? ((await res.json()) as { state: unknown }).state : null
        if (JSON.stringify(got) !== JSON.stringify(want))
          failed.push(`${keyOf(k)}: ${JSON.stringify(got)}, expected ${JSON.stringify(want)}`)
      }
    } finally {
      await cluster.stop()
    }

    const rateOf = (c: CaseRun): number => c.events / c.seconds
    const medianOf = (name: CaseName): number => median(all.filter((c) => c.name === name).map(rateOf))
    const sdk = medianOf('sdk')
    const rows = cases.map((name) => {
      const cs = all.filter((c) => c.name === name)
      return [
        name,
        fmtSpread(cs.map(rateOf)),
        fmtPct(medianOf(name) / sdk),
        median(cs.map((c) => c.seconds)).toFixed(2),
        median(cs.map((c) => c.wallSeconds)).toFixed(2),
        name === 'sdk' ? `${median(cs.map((c) => c.cpuPct)).toFixed(0)}%` : '-',
        name === 'http' ? '-' : median(cs.map((c) => c.events / c.batches)).toFixed(0),
        median(cs.map((c) => c.machineBusyCores)).toFixed(2),
        fmtSpread(
          cs.map((c) => c.loadavg1),
          (n) => n.toFixed(1),
        ),
      ]
    })
    return {
      tables: [
        {
          title: `${fmtRate(events)} events per case run (${(bytes / events).toFixed(1)} B per NDJSON line), ${runs} run(s) each, ${workers} workers x ${threads} thread(s), tcp`,
          columns: [
            'path',
            'events/s (median, range)',
            'vs sdk',
            'seconds',
            'process s',
            'client CPU',
            'ev/batch',
            'machine busy (cores)',
            'loadavg 1m',
          ],
          rows,
        },
      ],
      headlines: cases
        .filter((c) => c !== 'sdk')
        .map((c) => ({
          label: `${c} / sdk`,
          value: fmtPct(medianOf(c) / sdk),
          goal: `>= ${fmtPct(GOAL_RATIO)}`,
          pass: medianOf(c) / sdk >= GOAL_RATIO,
        })),
      notes: [
        'rates are from the first event to the last ack; "process s" is the CLI process from spawn to exit ' +
          '(node + tsx start-up, connecting, sending)',
        `http: bodies of ${HTTP_LINES_PER_BODY} lines, ${HTTP_IN_FLIGHT} requests in flight, sent by the benchmark process (${HTTP_CLIENT === 'fetch' ? 'fetch' : 'node:http, keep-alive'})`,
        `${os.availableParallelism()} cores; "machine busy" includes the cluster and everything else running`,
      ],
      data: { events, bytes, workers, threads, runs: all },
      failed,
    }
  },
}

export default benchmark

if (isMain(import.meta.url) && process.env.SEND_ROLE === 'sdk') await sdkMain()
