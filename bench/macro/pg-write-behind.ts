/**
 * Postgres write-behind through PostgresStateSink (src/connectors/postgres/state-sink.ts) against
 * a real PostgreSQL server this benchmark starts (test/helpers/postgres.ts: loopback, fsync,
 * synchronous_commit and full_page_writes off unless PG_WB_DURABLE=1).
 *
 * N keys (PG_WB_KEYS, default 1M; 200k with --quick) spread over 256 partitions (key i ->
 * partition i % 256), states like {"count":i,"sum":2i,"last":"..."} (about 50 bytes of JSON),
 * written in ONE writeState call of 256 StateBatches, as a worker hands a checkpoint's dirty keys
 * to the sink. Each run uses a fresh table:
 *
 *   N new keys        the first write (inserts)
 *   N changed keys    every key again at the next version (updates)
 *   1% changed        N/100 keys at the next version (a typical later checkpoint)
 *   N full (restore)  every key again as full batches (a new owner's first write)
 *
 * Time is from the call to its resolution (the transaction committed). CPU seconds of this
 * process and of the server's processes (/proc) are reported per case: on a shared machine the
 * wall time says more about the neighbours than about the sink. The goal (1M keys in <= 5 s)
 * is reported, not asserted. PG_WB_PARALLELISM=N (default 1: one transaction per call) splits a
 * call over N connections (the sink's `parallelism` option).
 */
import { readFileSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { PostgresStateSink } from '../../src/connectors/postgres/index.ts'
import type { StateBatch } from '../../src/connectors/sink.ts'
import { startPostgres, type PostgresServer } from '../../test/helpers/postgres.ts'
import {
  fmtRate,
  machineInfo,
  median,
  runsOf,
  type Benchmark,
  type BenchOptions,
  type BenchResult,
} from '../lib.ts'

const PARTITIONS = 256
const GOAL_S = 5

interface Sample {
  ms: number
  nodeCpuS: number
  /** CPU seconds of the postmaster and its children (backends, walwriter, ...) over the case. */
  serverCpuS: number
}

const CLK_TCK = 100

/** CPU seconds used so far by the server's processes (Linux /proc; NaN elsewhere). */
function serverCpu(server: PostgresServer): number {
  try {
    const postmaster = Number(
      readFileSync(join(server.dir, 'data', 'postmaster.pid'), 'utf8').split('\n', 1)[0],
    )
    let ticks = 0
    for (const entry of readdirSync('/proc')) {
      if (!/^\d+$/.test(entry)) continue
      let stat: string
      try {
        stat = readFileSync(`/proc/${entry}/stat`, 'utf8')
      } catch {
        continue // exited meanwhile
      }
      // Fields after the command (which may contain spaces): state ppid ... utime(14) stime(15)
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      if (Number(entry) === postmaster || Number(f[1]) === postmaster) ticks += Number(f[11]) + Number(f[12])
    }
    return ticks / CLK_TCK
  } catch {
    return NaN
  }
}

interface Case {
  id: 'first' | 'all' | '1pct' | 'full'
  label: string
  keys: number
  samples: Sample[]
}

const keyOf = (i: number): string => `user-${String(i).padStart(7, '0')}`

/** StateBatches for keys `ids` (every `step`-th of n) at `version`. */
function batches(n: number, step: number, version: number, full: boolean): StateBatch[] {
  const upserts: [string, unknown][][] = Array.from({ length: PARTITIONS }, () => [])
  for (let i = 0; i < n; i += step) {
    upserts[i % PARTITIONS]!.push([keyOf(i), { count: i + version, sum: i * 2, last: `v${version}` }])
  }
  return upserts.map((u, p) => ({ partition: p, version, upserts: u, deletes: [], full }))
}

async function measure(server: PostgresServer, sink: PostgresStateSink, b: StateBatch[]): Promise<Sample> {
  const server0 = serverCpu(server)
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  await sink.writeState(b)
  const ms = performance.now() - t0
  const cpu = process.cpuUsage(cpu0)
  return {
    ms,
    nodeCpuS: (cpu.user + cpu.system) / 1e6, // A process that exited during the case (an autovacuum worker) takes its ticks along: >= 0.
    serverCpuS: Math.max(0, serverCpu(server) - server0),
  }
}

async function check(server: PostgresServer, table: string, n: number, version: number): Promise<void> {
  const rows = await server.query<{ n: string; v: string }>(
    `select count(*) as n, count(*) filter (where version = $1) as v from ${table}`,
    [version],
  )
  if (Number(rows[0]!.n) !== n || Number(rows[0]!.v) !== n) {
    throw new Error(`${table}: ${rows[0]!.n} rows, ${rows[0]!.v} at version ${version}; expected ${n}`)
  }
}

const benchmark: Benchmark = {
  name: 'pg-write-behind',
  description: `PostgresStateSink: ${PARTITIONS} partitions' state in one writeState call (1M new, 1M changed, 1%, full)`,
  async run(opts: BenchOptions): Promise<BenchResult> {
    const runs = runsOf(opts)
    const n = Number(process.env.PG_WB_KEYS ?? (opts.quick ? 200_000 : 1_000_000))
    const durable = process.env.PG_WB_DURABLE === '1'
    const parallelism = Number(process.env.PG_WB_PARALLELISM ?? 1)
    const server = await startPostgres(
      durable ? { settings: { fsync: 'on', synchronous_commit: 'on', full_page_writes: 'on' } } : {},
    )
    const cases: Case[] = [
      { id: 'first', label: `${fmtRate(n)} new keys`, keys: n, samples: [] },
      { id: 'all', label: `${fmtRate(n)} changed keys`, keys: n, samples: [] },
      { id: '1pct', label: `1% changed (${fmtRate(n / 100)})`, keys: Math.ceil(n / 100), samples: [] },
      { id: 'full', label: `${fmtRate(n)} full (restore)`, keys: n, samples: [] },
    ]
    const at = (id: Case['id']): Case => cases.find((c) => c.id === id)!
    try {
      for (let run = 1; run <= runs; run++) {
        const table = `bench_wb_${run}`
        const sink = new PostgresStateSink(
          { url: server.url, table },
          { statementTimeoutMs: 600_000, queryTimeoutMs: 660_000, parallelism },
        )
        try {
          await sink.open()
          at('first').samples.push(await measure(server, sink, batches(n, 1, 1, false)))
          await check(server, table, n, 1)
          at('all').samples.push(await measure(server, sink, batches(n, 1, 2, false)))
          await check(server, table, n, 2)
          at('1pct').samples.push(await measure(server, sink, batches(n, 100, 3, false)))
          at('full').samples.push(await measure(server, sink, batches(n, 1, 4, true)))
          await check(server, table, n, 4)
        } finally {
          await sink.close()
          await server.query(
            `drop table if exists ${table}, ${table}_dlq, ${table}_tombstones, ${table}_partitions`,
          )
        }
        console.error(
          `  pg-write-behind run ${run}/${runs}: ` +
            cases.map((c) => `${c.id} ${c.samples[c.samples.length - 1]!.ms.toFixed(0)} ms`).join(', ') +
            ` (loadavg ${machineInfo().loadavg.join(' ')})`,
        )
      }
    } finally {
      await server.dispose()
    }
    const spread = (values: number[]): string =>
      values.length === 1
        ? (values[0]! / 1000).toFixed(2)
        : `${(median(values) / 1000).toFixed(2)} (${(Math.min(...values) / 1000).toFixed(2)}-${(Math.max(...values) / 1000).toFixed(2)})`
    const rows = cases.map((c) => [
      c.label,
      spread(c.samples.map((s) => s.ms)),
      `${fmtRate(c.keys / (median(c.samples.map((s) => s.ms)) / 1000))}/s`,
      median(c.samples.map((s) => s.nodeCpuS)).toFixed(2),
      median(c.samples.map((s) => s.serverCpuS)).toFixed(2),
    ])
    const first = median(at('first').samples.map((s) => s.ms)) / 1000
    const all = median(at('all').samples.map((s) => s.ms)) / 1000
    const scaled = n === 1_000_000 ? '' : ` (${fmtRate(n)} keys, not 1M)`
    return {
      tables: [
        {
          title: `PostgresStateSink, ${PARTITIONS} partitions, one writeState call, ${runs} run(s)${durable ? ', durable server' : ''}`,
          columns: ['case', 'seconds (median, range)', 'keys/s', 'node CPU s', 'postgres CPU s'],
          rows,
        },
      ],
      headlines: [
        {
          label: `write-behind of new keys${scaled}`,
          value: `${first.toFixed(2)} s`,
          goal: `<= ${GOAL_S} s`,
          pass: first <= GOAL_S,
        },
        {
          label: `write-behind of changed keys${scaled}`,
          value: `${all.toFixed(2)} s`,
          goal: `<= ${GOAL_S} s`,
          pass: all <= GOAL_S,
        },
      ],
      notes: [
        parallelism === 1
          ? 'one transaction per call: COPY into a temporary table, then one INSERT ... ON CONFLICT with the version guard'
          : `parallelism ${parallelism}: the call split by partition over ${parallelism} connections, one transaction each (PG_WB_PARALLELISM)`,
        'PostgreSQL and this process share the machine; node CPU is this process, postgres CPU the server processes (/proc), per case',
        durable
          ? 'server: fsync on, synchronous_commit on, full_page_writes on'
          : 'server: fsync, synchronous_commit, full_page_writes off (PG_WB_DURABLE=1 for durable settings)',
      ],
      data: Object.fromEntries(cases.map((c) => [c.id, c.samples])),
    }
  },
}

export default benchmark
