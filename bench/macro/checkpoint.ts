/**
 * Checkpoint and restore cost of the Redis PartitionStore (src/state/checkpoint/) against a real
 * redis-server this benchmark starts (test/helpers/redis.ts: loopback, no persistence unless
 * CHECKPOINT_AOF=1, which turns on AOF with appendfsync always).
 *
 * Keys are spread over 256 partitions (key i -> partition i % 256) with 16-byte values, and every
 * partition's checkpoint is written concurrently, as a worker checkpointing all its partitions
 * would. A checkpoint's duration runs from the writeCheckpoint calls to the last commit (the state
 * is restorable from then on); for an incremental checkpoint over an existing base, the background
 * fold of the delta into the base is timed separately ("settled").
 *
 *   100k dirty (first)   100k keys into empty partitions (the segment becomes the base)
 *   1M dirty (first)     the same with 1M keys
 *   1M dirty (all)       every one of 1M existing keys changed: an incremental checkpoint
 *   1% dirty of 1M       10k of 1M keys changed
 *   restore 100k         loadCheckpoint + read every entry of 100k keys, all partitions at once
 *   append               10k appends of 1 KiB batches, pipelined (appends/s)
 *
 * Redis and Node CPU seconds over each case are reported next to the wall time (on a small
 * machine both share the cores). The goal (1M dirty keys in <= 2 s) is reported, not asserted.
 */
import { createStateBackend } from '../../src/state/index.ts'
import {
  openPartitionStore,
  readCheckpoint,
  type CheckpointResult,
  type PartitionStore,
} from '../../src/state/checkpoint/partition-store.ts'
import type { RedisBackend } from '../../src/state/redis/redis-backend.ts'
import { startRedis, type RedisServer } from '../../test/helpers/redis.ts'
import { fmtRate, median, runsOf, type Benchmark, type BenchOptions, type BenchResult } from '../lib.ts'

const PARTITIONS = 256
const GOAL_MS = 2000

interface Sample {
  ms: number
  redisCpuS: number
  nodeCpuS: number
  /** Incremental checkpoints: until the background fold finished. */
  settledMs?: number
}

interface Case {
  id: string
  label: string
  samples: Sample[]
}

function keyOf(i: number): string {
  return `user-${String(i).padStart(7, '0')}`
}

function valueOf(i: number, gen: number): Buffer {
  const b = Buffer.allocUnsafe(16)
  b.writeUInt32BE(i, 0)
  b.writeUInt32BE(gen, 4)
  b.writeDoubleBE(i * 0.5 + gen, 8)
  return b
}

/** [key, value] pairs of keys `ids`, grouped by partition. */
function byPartition(ids: Iterable<number>, gen: number): [string, Buffer][][] {
  const parts: [string, Buffer][][] = Array.from({ length: PARTITIONS }, () => [])
  for (const i of ids) parts[i % PARTITIONS]!.push([keyOf(i), valueOf(i, gen)])
  return parts
}

function range(n: number, step = 1): Iterable<number> {
  return {
    *[Symbol.iterator]() {
      for (let i = 0; i < n; i += step) yield i
    },
  }
}

class Bench {
  readonly server: RedisServer
  #seq = 0

  constructor(server: RedisServer) {
    this.server = server
  }

  redisCpu(): number {
    const info = this.server.cli('info', 'cpu')
    const user = Number(/used_cpu_user:([\d.]+)/.exec(info)?.[1] ?? 0)
    const sys = Number(/used_cpu_sys:([\d.]+)/.exec(info)?.[1] ?? 0)
    return user + sys
  }

  async open(prefix: string): Promise<{ store: PartitionStore; close: () => Promise<void> }> {
    const backend = (await createStateBackend(this.server.url, {
      prefix,
      commandTimeoutMs: 60_000,
    })) as RedisBackend
    const store = await openPartitionStore(backend)
    return {
      store,
      close: async () => {
        await store.close()
        await backend.close()
      },
    }
  }

  /** Checkpoint every partition's share of `parts` at once; time to the last commit (and fold). */
  async checkpoint(store: PartitionStore, parts: [string, Buffer][][], full: boolean): Promise<Sample> {
    const cpu0 = process.cpuUsage()
    const redis0 = this.redisCpu()
    const t0 = performance.now()
    const id = `cp-${++this.#seq}`
    const results: CheckpointResult[] = await Promise.all(
      parts.map((changed, p) =>
        store.writeCheckpoint(p, 1, {
          checkpointId: id,
          changed,
          logOffset: this.#seq,
          dedup: { 'producer-1': this.#seq },
          full,
        }),
      ),
    )
    const ms = performance.now() - t0
    let settledMs: number | undefined
    if (results.some((r) => r.merging)) {
      await Promise.all(parts.map((_, p) => store.settle(p, 1)))
      settledMs = performance.now() - t0
    }
    const cpu = process.cpuUsage(cpu0)
    return {
      ms,
      redisCpuS: this.redisCpu() - redis0,
      nodeCpuS: (cpu.user + cpu.system) / 1e6,
      ...(settledMs === undefined ? {} : { settledMs }),
    }
  }

  async restore(store: PartitionStore, expected: number): Promise<Sample> {
    const cpu0 = process.cpuUsage()
    const redis0 = this.redisCpu()
    const t0 = performance.now()
    const sizes = await Promise.all(
      Array.from({ length: PARTITIONS }, async (_, p) => (await readCheckpoint(store, p)).state.size),
    )
    const ms = performance.now() - t0
    const total = sizes.reduce((a, b) => a + b, 0)
    if (total !== expected) throw new Error(`restore read ${total} keys, expected ${expected}`)
    const cpu = process.cpuUsage(cpu0)
    return { ms, redisCpuS: this.redisCpu() - redis0, nodeCpuS: (cpu.user + cpu.system) / 1e6 }
  }

  async append(store: PartitionStore, n: number): Promise<Sample> {
    const payload = Buffer.alloc(1024, 7)
    const cpu0 = process.cpuUsage()
    const redis0 = this.redisCpu()
    const t0 = performance.now()
    const inflight: Promise<number>[] = []
    for (let i = 0; i < n; i++) {
      inflight.push(
        store.appendBatch(i % PARTITIONS, 1, { producerId: 'producer-1', sequence: i, payload, count: 100 }),
      )
      if (inflight.length >= 1024) await Promise.all(inflight.splice(0))
    }
    await Promise.all(inflight)
    const ms = performance.now() - t0
    const cpu = process.cpuUsage(cpu0)
    return { ms, redisCpuS: this.redisCpu() - redis0, nodeCpuS: (cpu.user + cpu.system) / 1e6 }
  }
}

const benchmark: Benchmark = {
  name: 'checkpoint',
  description:
    'Redis PartitionStore: checkpoint 100k / 1M / 1% dirty keys over 256 partitions, restore 100k, appends',
  async run(opts: BenchOptions): Promise<BenchResult> {
    const runs = runsOf(opts)
    const aof = process.env.CHECKPOINT_AOF === '1'
    const server = await startRedis({ aof })
    const bench = new Bench(server)
    const cases: Case[] = [
      { id: '100k-first', label: '100k dirty (first)', samples: [] },
      { id: '1m-first', label: '1M dirty (first)', samples: [] },
      { id: '1m-all', label: '1M dirty (all, incremental)', samples: [] },
      { id: '1pct', label: '1% dirty of 1M (10k)', samples: [] },
      { id: 'restore-100k', label: 'restore 100k', samples: [] },
      { id: 'append', label: 'append 10k x 1 KiB', samples: [] },
    ]
    const at = (id: string): Case => cases.find((c) => c.id === id)!
    try {
      for (let run = 1; run <= runs; run++) {
        server.cli('flushall')
        // 100k into empty partitions, then restore them.
        {
          const prefix = `b100k-${run}`
          const { store, close } = await bench.open(prefix)
          at('100k-first').samples.push(await bench.checkpoint(store, byPartition(range(100_000), 1), false))
          at('restore-100k').samples.push(await bench.restore(store, 100_000))
          at('append').samples.push(await bench.append(store, 10_000))
          await close()
        }
        server.cli('flushall')
        // 1M: first, then all changed, then 1%.
        {
          const prefix = `b1m-${run}`
          const { store, close } = await bench.open(prefix)
          at('1m-first').samples.push(await bench.checkpoint(store, byPartition(range(1_000_000), 1), false))
          at('1m-all').samples.push(await bench.checkpoint(store, byPartition(range(1_000_000), 2), false))
          at('1pct').samples.push(await bench.checkpoint(store, byPartition(range(1_000_000, 100), 3), false))
          await close()
        }
        console.error(
          `  checkpoint run ${run}/${runs}: ` +
            cases.map((c) => `${c.id} ${c.samples[c.samples.length - 1]!.ms.toFixed(0)} ms`).join(', '),
        )
      }
    } finally {
      await server.dispose()
    }
    const spread = (values: number[]): string =>
      values.length === 1
        ? values[0]!.toFixed(0)
        : `${median(values).toFixed(0)} (${Math.min(...values).toFixed(0)}-${Math.max(...values).toFixed(0)})`
    const rows = cases.map((c) => {
      const settled = c.samples.map((s) => s.settledMs).filter((x): x is number => x !== undefined)
      const keys =
        c.id === '100k-first' || c.id === 'restore-100k'
          ? 100_000
          : c.id === '1pct'
            ? 10_000
            : c.id === 'append'
              ? 10_000
              : 1_000_000
      const rate = keys / (median(c.samples.map((s) => s.ms)) / 1000)
      return [
        c.label,
        spread(c.samples.map((s) => s.ms)),
        settled.length > 0 ? spread(settled) : '-',
        `${fmtRate(rate)}/s`,
        median(c.samples.map((s) => s.redisCpuS)).toFixed(2),
        median(c.samples.map((s) => s.nodeCpuS)).toFixed(2),
      ]
    })
    const first = median(at('1m-first').samples.map((s) => s.ms))
    const all = median(at('1m-all').samples.map((s) => s.ms))
    const allSettled = median(at('1m-all').samples.map((s) => s.settledMs ?? NaN))
    return {
      tables: [
        {
          title: `Redis PartitionStore, ${PARTITIONS} partitions, 16-byte values, ${runs} run(s)${aof ? ', AOF always' : ''}`,
          columns: [
            'case',
            'committed ms (median, range)',
            'settled ms',
            'keys/s',
            'redis CPU s',
            'node CPU s',
          ],
          rows,
        },
      ],
      headlines: [
        {
          label: '1M dirty keys, first checkpoint (committed)',
          value: `${first.toFixed(0)} ms`,
          goal: `<= ${GOAL_MS} ms`,
          pass: first <= GOAL_MS,
        },
        {
          label: '1M dirty keys, incremental over 1M (committed)',
          value: `${all.toFixed(0)} ms`,
          goal: `<= ${GOAL_MS} ms`,
          pass: all <= GOAL_MS,
        },
        {
          label: '1M dirty keys, incremental, until folded into the base',
          value: `${allSettled.toFixed(0)} ms`,
        },
        {
          label: 'restore 100k keys',
          value: `${median(at('restore-100k').samples.map((s) => s.ms)).toFixed(0)} ms`,
        },
      ],
      notes: [
        "committed: every partition's writeCheckpoint resolved (restorable from then on); settled: the delta was folded into the base (background work, not needed for restore)",
        'redis-server and this process share the machine; CPU columns are the seconds each spent on the case',
        aof ? 'AOF appendfsync always' : 'no persistence on the server (CHECKPOINT_AOF=1 for AOF always)',
      ],
      data: Object.fromEntries(cases.map((c) => [c.id, c.samples])),
    }
  },
}

export default benchmark
