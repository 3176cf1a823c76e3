/**
 * The piscina task module: runs in a worker thread, never on a worker's main thread. Each
 * thread owns the keyed state of the partitions routed to it (partition % threads), so a
 * partition's batches, queries and snapshots run one after another in the order they were
 * submitted: a snapshot taken after batch N sees exactly batches 1..N (a consistent cut).
 */
import { Packr } from 'msgpackr'
import { parentPort, workerData } from 'node:worker_threads'
import { decodeEvents } from './event-decoder.ts'
import { loadJob } from './job-loader.ts'
import { isTimedJob } from './job.ts'
import { TimedPartition, type TimeOutput } from './time/runtime.ts'
import type {
  BatchFailure,
  BatchItem,
  BatchResult,
  DeadLetter,
  JobInfo,
  PackedStates,
  TaskRequest,
  TaskResult,
} from './task-types.ts'

const packr = new Packr({ useRecords: true, moreTypes: true })
/** Checkpointed states: self-contained plain msgpack, readable by any thread or process later. */
const statePackr = new Packr({ useRecords: false, moreTypes: true })

function packStates(list: Iterable<readonly [string, unknown]>): PackedStates {
  const keys: string[] = []
  const ends: number[] = []
  let data = new Uint8Array(64 * 1024)
  let at = 0
  for (const [key, state] of list) {
    const b = statePackr.pack(state)
    if (at + b.length > data.length) {
      const bigger = new Uint8Array(Math.max(data.length * 2, at + b.length))
      bigger.set(data.subarray(0, at))
      data = bigger
    }
    data.set(b, at)
    at += b.length
    keys.push(key)
    ends.push(at)
  }
  return { keys, data: data.slice(0, at), ends: Uint32Array.from(ends) }
}

/** Both maps' entries (a key is in one of them). */
function* allEntries(s: PartitionState): Iterable<readonly [string, unknown]> {
  yield* s.dirty
  yield* s.clean
}
// piscina passes its workerData through; engine.ts checkJob runs this module in a plain thread
// with `check: true` to load the job once, before a node starts.
// The checking thread bundles a job file (built code: job-bundle.ts) and hands the bundle to
// the processing threads, which then load it without loader hooks.
const {
  job: jobRef,
  check,
  bundle,
} = workerData as { job: string; check?: boolean; bundle?: string | undefined }

const loaded = await loadJob(jobRef, check === true ? { makeBundle: true } : { bundle })
const job = loaded.job
if (check === true) parentPort?.postMessage({ shoal: 'job-loaded', name: job.name, bundle: loaded.bundle })

/** Jobs with event time, timers or TTL run on the time-aware runtime (docs/time.md). */
const timed = isTimedJob(job)
const info: JobInfo = {
  name: job.name,
  timed,
  eventTime: job.eventTime !== undefined,
  idleMs: job.watermark?.idleMs ?? null,
  processingTime: job.onTimer !== undefined || job.ttlMs !== undefined,
}
const timedPartitions = new Map<number, TimedPartition>()

function timedOf(partition: number): TimedPartition {
  let t = timedPartitions.get(partition)
  if (t === undefined) {
    t = new TimedPartition(job, partition)
    timedPartitions.set(partition, t)
  }
  return t
}

function runTimed(b: BatchItem): BatchResult {
  const tp = timedOf(b.partition)
  const out: TimeOutput = { emitted: null, deadLetters: null }
  let count = 0
  if (b.tick !== undefined) {
    tp.tick(b.tick.now, b.tick.idle, out)
  } else {
    const events = unpackEvents(b.payload)
    count = events.length
    tp.apply(events, out)
  }
  return {
    op: 'batch',
    count,
    emitted: out.emitted === null ? null : packr.pack(out.emitted),
    deadLetters: out.deadLetters,
    time: tp.status,
  }
}

/**
 * A partition's keyed state, in two maps of key -> state: the keys changed since the last
 * snapshot (`dirty`: what an incremental snapshot takes) and the others (`clean`). A key is in
 * exactly one of them. Why not one map of `{ state, dirty }` entries: that wrapper object cost
 * ~48 B of RSS per key (a fifth of a count job's worker at 1M keys, docs/benchmarks.md "Worker
 * memory"); here a key costs its map slot, its string and the job's own state. A worker without
 * a state store never snapshots, so every key stays in `dirty` and an event costs one lookup.
 */
interface PartitionState {
  dirty: Map<string, unknown>
  clean: Map<string, unknown>
}

const partitions = new Map<number, PartitionState>()

function stateOf(partition: number): PartitionState {
  let s = partitions.get(partition)
  if (s === undefined) {
    s = { dirty: new Map(), clean: new Map() }
    partitions.set(partition, s)
  }
  return s
}

/** After a snapshot every key is clean: merge the smaller map into the larger. */
function markClean(s: PartitionState): void {
  if (s.dirty.size > s.clean.size) {
    for (const [k, v] of s.clean) s.dirty.set(k, v)
    s.clean = s.dirty
  } else {
    for (const [k, v] of s.dirty) s.clean.set(k, v)
  }
  s.dirty = new Map()
}

function stateGet(s: PartitionState | undefined, key: string): unknown {
  if (s === undefined) return undefined
  return s.dirty.has(key) ? s.dirty.get(key) : s.clean.get(key)
}

/** A batch's events: Shoal's own decoder for the usual forms, msgpackr for the rest. */
function unpackEvents(payload: Uint8Array): [string, unknown][] {
  return (decodeEvents(payload) ?? packr.unpack(payload)) as [string, unknown][]
}

/**
 * The context of every untimed batch, one object: a job sees it during process(), where its key
 * and partition are the current event's (a context built per batch was a getter, two closures
 * and an object for each of a round's ~85 small batches).
 */
let ctxKey = ''
let ctxPartition = 0
let ctxEmitted: [string, string, unknown][] | null = null
const ctx = {
  get partition(): number {
    return ctxPartition
  },
  get key(): string {
    return ctxKey
  },
  emit(stream: string, event: unknown): void {
    ;(ctxEmitted ??= []).push([stream, ctxKey, event])
  },
}

function runBatch(partition: number, payload: Uint8Array): BatchResult {
  const events = unpackEvents(payload)
  const s = stateOf(partition)
  const dirty = s.dirty
  const clean = s.clean
  let deadLetters: DeadLetter[] | null = null
  let key = ''
  ctxPartition = partition
  ctxEmitted = null
  for (let i = 0; i < events.length; i++) {
    const entry = events[i]!
    key = entry[0]
    ctxKey = key
    // The usual case, a key already changed since the last snapshot: one lookup.
    const prev = dirty.get(key)
    if (prev !== undefined) {
      try {
        const next = job.process(prev, entry[1], ctx)
        if (next !== undefined && next !== prev) dirty.set(key, next)
      } catch (err) {
        // Dead-letter the event: the key's state stays as it was; the batch goes on.
        ;(deadLetters ??= []).push({ index: i, key, error: err instanceof Error ? err.message : String(err) })
      }
      continue
    }
    // A clean key, a new one, or a state stored as undefined (an init that returns nothing:
    // initialized again).
    let state = clean.get(key)
    const wasClean = state !== undefined
    if (!wasClean) state = job.init(key)
    let next: unknown
    try {
      next = job.process(state, entry[1], ctx)
    } catch (err) {
      // Dead-letter the event: a new key gets no state from it; a clean key moves to `dirty`
      // as it is (a job may have changed its state in place before throwing).
      ;(deadLetters ??= []).push({ index: i, key, error: err instanceof Error ? err.message : String(err) })
      if (wasClean) {
        clean.delete(key)
        dirty.set(key, state)
      }
      continue
    }
    if (next !== undefined) state = next
    if (clean.size > 0) clean.delete(key)
    dirty.set(key, state)
  }
  const emitted = ctxEmitted
  ctxEmitted = null
  return {
    op: 'batch',
    count: events.length,
    emitted: emitted === null ? null : packr.pack(emitted),
    deadLetters,
  }
}

/**
 * One batch's result. A failure here is not the job's per-event error (those are
 * dead-lettered): e.g. a payload that is not msgpack, or init() threw. Only this batch fails;
 * the others of the task stand.
 */
function runOne(b: BatchItem): BatchResult | BatchFailure {
  try {
    return timed ? runTimed(b) : runBatch(b.partition, b.payload)
  } catch (err) {
    return { op: 'failed', error: err instanceof Error ? err.message : String(err) }
  }
}

function runBatches(batches: BatchItem[]): (BatchResult | BatchFailure)[] {
  return batches.map(runOne)
}

/** A 'packed' task: its counts when every batch only counted, else every batch's result. */
function runPacked(data: Uint8Array, index: Int32Array): TaskResult {
  const n = index.length >> 1
  const counts = new Int32Array(n)
  let results: (BatchResult | BatchFailure)[] | null = null
  let start = 0
  for (let i = 0; i < n; i++) {
    const end = index[2 * i + 1]!
    const r = runOne({ partition: index[2 * i]!, payload: data.subarray(start, end) })
    start = end
    if (
      results === null &&
      r.op === 'batch' &&
      r.emitted === null &&
      r.deadLetters === null &&
      r.time === undefined
    ) {
      counts[i] = r.count
      continue
    }
    if (results === null) {
      // The batches before this one only counted.
      results = []
      for (let j = 0; j < i; j++)
        results.push({ op: 'batch', count: counts[j]!, emitted: null, deadLetters: null })
    }
    results.push(r)
  }
  return results === null ? { op: 'counts', counts } : { op: 'batches', results }
}

export default function handle(req: TaskRequest): TaskResult {
  switch (req.op) {
    case 'batches':
      return { op: 'batches', results: runBatches(req.batches) }
    case 'packed':
      return runPacked(req.data, req.index)
    case 'describe':
      return { op: 'describe', info }
    case 'get': {
      const v = timed
        ? timedPartitions.get(req.partition)?.view(req.key)
        : stateGet(partitions.get(req.partition), req.key)
      return { op: 'get', found: v !== undefined, data: v === undefined ? null : packr.pack(v) }
    }
    case 'dump': {
      if (timed) {
        const all = timedPartitions.get(req.partition)?.dump() ?? []
        return { op: 'dump', keys: all.length, data: packr.pack(all) }
      }
      const s = partitions.get(req.partition)
      const all = s === undefined ? [] : Array.from(allEntries(s))
      return { op: 'dump', keys: all.length, data: packr.pack(all) }
    }
    case 'snapshot': {
      // Incremental: the keys changed since the last snapshot, then forget them.
      if (timed) {
        const snap = timedOf(req.partition).snapshot(req.full)
        const kv = packStates(snap.entries)
        return { op: 'snapshot', kv, deleted: snap.deleted }
      }
      const s = stateOf(req.partition)
      const kv = packStates(req.full ? allEntries(s) : s.dirty)
      markClean(s)
      return { op: 'snapshot', kv, deleted: [] }
    }
    case 'load': {
      if (timed) {
        const tp = timedOf(req.partition)
        if (req.replace) tp.clear()
        const { keys, data, ends } = req.kv
        for (let i = 0; i < keys.length; i++) {
          tp.load(keys[i]!, statePackr.unpack(data.subarray(i === 0 ? 0 : ends[i - 1], ends[i])))
        }
        return { op: 'load', keys: keys.length }
      }
      const s = stateOf(req.partition)
      if (req.replace) {
        // The loaded state is the checkpoint: nothing has changed since.
        s.dirty = new Map()
        s.clean = new Map()
      }
      const { keys, data, ends } = req.kv
      for (let i = 0; i < keys.length; i++) {
        const k = keys[i]!
        const v: unknown = statePackr.unpack(data.subarray(i === 0 ? 0 : ends[i - 1], ends[i]))
        // A loaded key keeps its place (one changed since the last snapshot stays changed).
        if (s.dirty.has(k)) s.dirty.set(k, v)
        else s.clean.set(k, v)
      }
      return { op: 'load', keys: keys.length }
    }
    case 'drop':
      partitions.delete(req.partition)
      timedPartitions.delete(req.partition)
      return { op: 'drop' }
  }
}
