/**
 * Benchmark runner.
 *
 *   npm run bench -- [names...] [--quick] [--runs N] [--settle] [--entries N] [--list]
 *
 *   --quick   short warm-ups and windows, one run: a smoke test, not a result
 *   --runs N  repetitions of every case (default 3; 1 with --quick)
 *   --settle  shared machine: wait for idle before each measurement, repeat disturbed ones
 *   --entries N  entries for benchmarks that take it (connectors: the stream's length)
 *   --list    the registered benchmarks
 *
 * Runs the registered benchmarks (all by default, in registry order), prints a table per
 * benchmark and a machine line, and writes each result as JSON to .tmp/bench/<name>.json.
 * A benchmark whose correctness checks failed (BenchResult.failed) prints FAILED lines and
 * makes the exit code 1.
 * A benchmark is a module exporting { name, description, run(opts) } (bench/lib.ts); add one by
 * adding its import to REGISTRY. Benchmarks measure and print; goals are reported, not asserted,
 * so the exit code only says whether every benchmark ran.
 */
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { formatMachine, formatTable, machineInfo, type Benchmark, type BenchOptions } from './lib.ts'

/** Loaded lazily, so a benchmark's dependencies are only imported when it runs. */
const REGISTRY: Record<string, () => Promise<{ default: Benchmark }>> = {
  tcp: () => import('./macro/tcp-throughput.ts'),
  grpc: () => import('./macro/grpc-throughput.ts'),
  e2e: () => import('./macro/e2e.ts'),
  checkpoint: () => import('./macro/checkpoint.ts'),
  failover: () => import('./macro/failover.ts'),
  connectors: () => import('./macro/connectors.ts'),
  'pg-write-behind': () => import('./macro/pg-write-behind.ts'),
  windows: () => import('./macro/windows.ts'),
  send: () => import('./macro/send.ts'),
  memory: () => import('./macro/memory.ts'),
}

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const OUT_DIR = join(ROOT, '.tmp', 'bench')

function usage(): string {
  return `usage: npm run bench -- [${Object.keys(REGISTRY).join('|')}...] [--quick] [--runs N] [--settle] [--entries N] [--list]`
}

function parseArgs(argv: string[]): { names: string[]; opts: BenchOptions; list: boolean } {
  const names: string[] = []
  const opts: BenchOptions = { quick: false }
  let list = false
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!
    if (a === '--quick') opts.quick = true
    else if (a === '--settle') opts.settle = true
    else if (a === '--list') list = true
    else if (a === '--runs' || a.startsWith('--runs=')) {
      const v = a === '--runs' ? argv[++i] : a.slice('--runs='.length)
      const n = Number(v)
      if (!Number.isInteger(n) || n < 1)
        throw new Error(`--runs needs a positive integer (got ${v})\n${usage()}`)
      opts.runs = n
    } else if (a === '--entries' || a.startsWith('--entries=')) {
      const v = a === '--entries' ? argv[++i] : a.slice('--entries='.length)
      const n = Number(v)
      if (!Number.isInteger(n) || n < 1)
        throw new Error(`--entries needs a positive integer (got ${v})\n${usage()}`)
      opts.entries = n
    } else if (a === '--help' || a === '-h') {
      console.log(usage())
      process.exit(0)
    } else if (a.startsWith('-')) throw new Error(`unknown option ${a}\n${usage()}`)
    else if (!(a in REGISTRY)) throw new Error(`unknown benchmark ${JSON.stringify(a)}\n${usage()}`)
    else names.push(a)
  }
  return { names: names.length > 0 ? names : Object.keys(REGISTRY), opts, list }
}

async function main(): Promise<number> {
  const { names, opts, list } = parseArgs(process.argv.slice(2))
  if (list) {
    for (const [name, load] of Object.entries(REGISTRY))
      console.log(`${name}: ${(await load()).default.description}`)
    return 0
  }
  const machine = machineInfo()
  console.log(formatMachine(machine))
  console.log(`options: ${JSON.stringify(opts)}`)
  await mkdir(OUT_DIR, { recursive: true })
  let failed = 0
  for (const name of names) {
    const bench = (await REGISTRY[name]!()).default
    console.log(`\n== ${bench.name}: ${bench.description}`)
    const startedAt = new Date()
    const t0 = performance.now()
    try {
      const result = await bench.run(opts)
      const seconds = (performance.now() - t0) / 1000
      console.log('')
      for (const t of result.tables) console.log(formatTable(t) + '\n')
      for (const h of result.headlines) {
        const verdict = h.goal === undefined ? '' : `  goal ${h.goal}: ${h.pass === true ? 'PASS' : 'FAIL'}`
        console.log(`${h.label}: ${h.value}${verdict}`)
      }
      for (const n of result.notes) console.log(`note: ${n}`)
      for (const f of result.failed ?? []) console.log(`FAILED: ${bench.name}: ${f}`)
      if ((result.failed ?? []).length > 0) failed++
      const file = join(OUT_DIR, `${bench.name}.json`)
      const record = {
        name: bench.name,
        description: bench.description,
        startedAt: startedAt.toISOString(),
        seconds,
        options: opts,
        machine: { ...machine, loadavgAtEnd: machineInfo().loadavg },
        ...result,
      }
      await writeFile(file, JSON.stringify(record, null, 2) + '\n')
      console.log(`(${seconds.toFixed(0)} s; results in ${file})`)
    } catch (err) {
      failed++
      console.error(`benchmark ${name} failed:`, err)
    }
  }
  console.log(`\n${formatMachine(machineInfo())}`)
  return failed === 0 ? 0 : 1
}

try {
  process.exitCode = await main()
} catch (err) {
  console.error((err as Error).message)
  process.exitCode = 2
}
