/**
 * Micro-benchmark of the processing thread's per-event cost (issue 12): the plain keyed loop of
 * task.ts against TimedPartition with a tumbling and a sliding window, on the workload of
 * `npm run bench -- windows` (100k keys, 10 events per key per minute of event time, in order,
 * batches of ~500 events of one partition, msgpack-decoded as the processing thread does), and
 * the heap held per open window. No cluster, no transport: what runtime.ts itself costs.
 *
 *   node --import tsx --expose-gc bench/micro/timed-partition.ts [events] [--cpu-prof]
 *
 * Prints CPU ns/event per case (minimum and median of PASSES - 1 passes after a warm-up one, default
 * 8) and heap bytes per open window.
 */
import { Packr } from 'msgpackr'
import { defineJob, windows } from '../../src/index.ts'
import type { JobDefinition } from '../../src/processing/job.ts'
import { partitionForKey } from '../../src/protocol/partition.ts'
import { TimedPartition, type TimeOutput } from '../../src/processing/time/runtime.ts'

const KEYS = 100_000
const PARTITIONS = 256
const PER_KEY_MINUTE = 10
const BATCH = 500
const T0 = Date.UTC(2026, 0, 1)
const EVENTS = Number(process.argv[2] ?? 2_000_000)

type Acc = { count: number; sum: number }
const process_ = (acc: Acc, e: { value: number }): void => {
  acc.count++
  acc.sum += e.value
}
const base = { init: (): Acc => ({ count: 0, sum: 0 }), process: process_ }
const jobs = {
  tumbling: defineJob({
    name: 'tumbling',
    eventTime: (e: { ts: number }) => e.ts,
    watermark: { outOfOrdernessMs: 2_000 },
    window: windows.tumbling({ sizeMs: 60_000 }),
    ...base,
  }),
  sliding: defineJob({
    name: 'sliding',
    eventTime: (e: { ts: number }) => e.ts,
    watermark: { outOfOrdernessMs: 2_000 },
    window: windows.sliding({ sizeMs: 300_000, slideMs: 60_000 }),
    ...base,
  }),
}

const packr = new Packr({ useRecords: true, moreTypes: true })
const keyName = (i: number): string => `user-${String(i).padStart(6, '0')}`
const keyParts = Int32Array.from({ length: KEYS }, (_, i) => partitionForKey(keyName(i), PARTITIONS))

/** The stream from event `first`, cut into per-partition batches of about BATCH events. */
function batches(first: number, n: number): [number, Uint8Array][] {
  const perPart: [string, unknown][][] = Array.from({ length: PARTITIONS }, () => [])
  const out: [number, Uint8Array][] = []
  const perMinute = KEYS * PER_KEY_MINUTE
  for (let i = first; i < first + n; i++) {
    const k = i % KEYS
    const p = keyParts[k]!
    const ts = T0 + Math.floor((i * 60_000) / perMinute)
    perPart[p]!.push([keyName(k), { value: (i % 1000) * 0.25 + 0.125, ts, type: 'click' }])
    if (perPart[p]!.length >= BATCH) out.push([p, packr.pack(perPart[p]!.splice(0))])
  }
  perPart.forEach((b, p) => b.length > 0 && out.push([p, packr.pack(b)]))
  return out
}

/** The plain loop of task.ts (runBatch), as it is there. */
function plainRunner(): (p: number, payload: Uint8Array) => number {
  const job = base as unknown as JobDefinition<unknown, unknown>
  const parts = new Map<
    number,
    { entries: Map<string, { key: string; state: unknown; dirty: boolean }>; changed: unknown[] }
  >()
  return function runPlain(partition, payload) {
    const events = packr.unpack(payload) as [string, unknown][]
    let s = parts.get(partition)
    if (s === undefined) parts.set(partition, (s = { entries: new Map(), changed: [] }))
    let key = ''
    const ctx = {
      partition,
      get key() {
        return key
      },
      emit() {},
    }
    for (let i = 0; i < events.length; i++) {
      const entry = events[i]!
      key = entry[0]
      const e = s.entries.get(key)
      if (e === undefined) {
        const st = job.init(key)
        const created = { key, state: job.process(st, entry[1], ctx) ?? st, dirty: true }
        s.entries.set(key, created)
        s.changed.push(created)
        continue
      }
      const st = e.state === undefined ? job.init(key) : e.state
      e.state = job.process(st, entry[1], ctx) ?? st
      if (!e.dirty) {
        e.dirty = true
        s.changed.push(e)
      }
    }
    return 0
  }
}

function timedRunner(job: JobDefinition<unknown, unknown>): (p: number, payload: Uint8Array) => number {
  const parts = new Map<number, TimedPartition>()
  return function runTimed(partition, payload) {
    let tp = parts.get(partition)
    if (tp === undefined) parts.set(partition, (tp = new TimedPartition(job, partition)))
    const out: TimeOutput = { emitted: null, deadLetters: null }
    tp.apply(packr.unpack(payload) as [string, unknown][], out)
    // The thread packs what was emitted for the main thread: part of the per-event cost.
    if (out.emitted !== null) packr.pack(out.emitted)
    void tp.status
    return out.emitted?.length ?? 0
  }
}

function measure(name: string, run: (p: number, payload: Uint8Array) => number): void {
  const passes: number[] = []
  let first = 0
  let fired = 0
  const PASSES = Number(process.env.PASSES ?? 8)
  for (let pass = 0; pass < PASSES; pass++) {
    const bs = batches(first, EVENTS)
    first += EVENTS
    // CPU time of the process (this thread and V8's GC helpers), not wall time: less sensitive to
    // other processes on a shared machine.
    const c0 = process.cpuUsage()
    for (const [p, payload] of bs) fired += run(p, payload)
    const c = process.cpuUsage(c0)
    const ns = (c.user + c.system) * 1000
    if (pass > 0) passes.push(ns / EVENTS) // the first pass warms up (keys created)
  }
  passes.sort((a, b) => a - b)
  // The minimum is the figure least disturbed by other load on the machine.
  console.log(
    `${name.padEnd(9)} min ${passes[0]!.toFixed(0).padStart(4)} ns/event, median ${passes[passes.length >> 1]!.toFixed(0)}, ${fired} window results`,
  )
}

function openWindows(n: number): void {
  const gc = (globalThis as { gc?: () => void }).gc
  if (gc === undefined) return console.log('heap per open window: run with --expose-gc')
  const job = defineJob({
    name: 'open',
    eventTime: (e: { ts: number }) => e.ts,
    watermark: { outOfOrdernessMs: 2_000 },
    window: windows.tumbling({ sizeMs: 3_600_000 }),
    ...base,
  }) as JobDefinition<unknown, unknown>
  const parts = Array.from({ length: PARTITIONS }, (_, p) => new TimedPartition(job, p))
  const keys = Array.from({ length: n }, (_, i) => keyName(i))
  gc()
  const h0 = process.memoryUsage().heapUsed
  const tsBase = T0 + 100 * 3_600_000
  const per: [string, unknown][][] = Array.from({ length: PARTITIONS }, () => [])
  for (let i = 0; i < n; i++) {
    per[partitionForKey(keys[i]!, PARTITIONS)]!.push([
      keys[i]!,
      { value: 1, ts: tsBase + (i % 60_000), type: 'click' },
    ])
  }
  for (let p = 0; p < PARTITIONS; p++) {
    const out: TimeOutput = { emitted: null, deadLetters: null }
    for (let i = 0; i < per[p]!.length; i += BATCH) parts[p]!.apply(per[p]!.slice(i, i + BATCH), out)
  }
  per.length = 0
  gc()
  const h1 = process.memoryUsage().heapUsed
  console.log(
    `heap per open window: ${((h1 - h0) / n).toFixed(0)} B (${n} windows, key strings excluded, ${parts.reduce((a, t) => a + t.size, 0)} keys)`,
  )
}

const which = (process.env.CASES ?? 'plain,tumbling,sliding,memory').split(',')
if (which.includes('plain')) measure('plain', plainRunner())
if (which.includes('tumbling'))
  measure('tumbling', timedRunner(jobs.tumbling as JobDefinition<unknown, unknown>))
if (which.includes('sliding'))
  measure('sliding', timedRunner(jobs.sliding as JobDefinition<unknown, unknown>))
if (which.includes('memory')) openWindows(Number(process.env.OPEN_WINDOWS ?? 1_000_000))
