/**
 * Worker memory (issues 13 and 12): one coordinator and ONE worker (TCP, memory state, the e2e
 * benchmark's processing threads), fed one event for each of 1M keys, so the worker holds every
 * key; its RSS (its /metrics) before, at peak and 5 s after the last ack, and a sample of the
 * keys' state read back to check it. Two jobs:
 *
 *   count         the built-in `count` job: 1M keys of `{ count, sum }` (issue 13's goal);
 *   open windows  one tumbling window of an hour per key, the events' times inside the same
 *                 hour, so 1M windows stay open (issue 12's goal).
 *
 * State: no store (MEMORY_STATES=memory, the e2e setup the goals refer to) and `--state file:DIR`
 * (`shoal up`'s default), where a worker also holds its partitions' committed checkpoint; the RSS
 * is taken 5 s after two checkpoints that followed the last ack.
 *
 * Nodes run the built CLI (`dist/`, built first), as the `shoal` binary and the image do;
 * MEMORY_BINARIES=dist,tsx adds runs from the sources through tsx (`npm run shoal`), whose
 * TypeScript loader costs ~60 MiB per worker before any key.
 *
 * Options: --quick (250k keys), --settle (wait for an idle machine first). Knobs: MEMORY_KEYS
 * (1000000), MEMORY_JOBS (count,windows), MEMORY_STATES (memory,file), MEMORY_BINARIES (dist), E2E_THREADS (processing
 * threads; default CPUs / 3 as in e2e), E2E_NODE_FLAGS. The client is the windows benchmark's.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import { join } from 'node:path'
import { fmtRate, type Benchmark, type BenchOptions, type BenchResult, type Headline } from '../lib.ts'
import { buildDist, type NodeBinary } from './e2e.ts'
import { JOB_FILES, runMemory, type MemoryRun } from './windows.ts'

const GOAL_RSS_MB = 300

const mb = (mib: number): number => (mib * 2 ** 20) / 1e6

const benchmark: Benchmark = {
  name: 'memory',
  description:
    'worker RSS holding 1M keys (count job) and 1M open windows, one worker, the built CLI (issues 13, 12)',
  async run(opts: BenchOptions): Promise<BenchResult> {
    const keys = Number(process.env.MEMORY_KEYS ?? (opts.quick === true ? 250_000 : 1_000_000))
    const jobs = (process.env.MEMORY_JOBS ?? 'count,windows').split(',')
    const binaries = (process.env.MEMORY_BINARIES ?? 'dist')
      .split(',')
      .filter((b): b is NodeBinary => b === 'dist' || b === 'tsx')
    // As in e2e: the processing threads a worker of a 3-worker cluster gets on this machine.
    const threads = Number(process.env.E2E_THREADS ?? Math.max(1, Math.floor(os.availableParallelism() / 3)))
    // memory: no state store (the e2e setup; the goals'); file: `shoal up`'s default, where a
    // worker also holds the committed checkpoint of its partitions.
    const states = (process.env.MEMORY_STATES ?? 'memory,file').split(',')
    const settle = opts.settle === true
    if (binaries.includes('dist')) await buildDist()
    const dir = await mkdtemp(join(os.tmpdir(), 'shoal-bench-memory-'))
    const runs: MemoryRun[] = []
    try {
      for (const [name, text] of Object.entries(JOB_FILES)) await writeFile(join(dir, name), text)
      for (const binary of binaries) {
        for (const state of states) {
          for (const job of jobs) {
            const which = job === 'windows' ? ('open windows' as const) : ('count' as const)
            const stateDir = join(dir, `state-${binary}-${state}-${job}`)
            runs.push(
              await runMemory(which, {
                dir,
                threads,
                keys,
                settle,
                binary,
                ...(state === 'file' ? { state: `file:${stateDir}` } : {}),
              }),
            )
          }
        }
      }
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
    const headlines: Headline[] = runs
      .filter((r) => r.binary === 'dist')
      .map((r) => ({
        label: `worker RSS holding ${fmtRate(r.keys)} ${r.job === 'count' ? 'keys (count job)' : 'open windows'}, ${r.state} state`,
        value: `${mb(r.settledMiB).toFixed(0)} MB = ${r.settledMiB} MiB (idle ${r.baseMiB} MiB, peak ${r.peakMiB} MiB)`,
        goal: `<= ${GOAL_RSS_MB} MB`,
        pass: r.ok && mb(r.settledMiB) <= GOAL_RSS_MB,
      }))
    const wrong = runs.filter((r) => !r.ok)
    return {
      tables: [
        {
          title: `one worker x ${threads} processing thread(s), TCP, one event per key; RSS 5 s after two checkpoints that followed the last ack`,
          columns: [
            'job',
            'binary',
            'state store',
            'keys',
            'RSS idle MiB',
            'peak MiB',
            'settled MiB',
            'MB',
            'per key',
            'state',
          ],
          rows: runs.map((r) => [
            r.job,
            r.binary,
            r.state,
            r.keys,
            r.baseMiB,
            r.peakMiB,
            r.settledMiB,
            mb(r.settledMiB).toFixed(0),
            `${(((r.settledMiB - r.baseMiB) * 2 ** 20) / r.keys).toFixed(0)} B`,
            r.ok ? 'ok' : `WRONG ${r.sample}`,
          ]),
        },
      ],
      headlines,
      notes: [
        'RSS from the worker\'s /metrics (process_resident_memory_bytes); "per key" is (settled - idle) / keys.',
        "state store memory: none (the e2e setup); file: `shoal up`'s default, the worker also holds its partitions' committed checkpoint.",
      ],
      ...(wrong.length > 0
        ? { failed: wrong.map((r) => `${r.job} (${r.binary}): wrong state ${r.sample}`) }
        : {}),
      data: { threads, runs },
    }
  },
}

export default benchmark
