/**
 * The piscina task module: runs in a worker thread, never on a worker's main thread. Each
 * thread owns the keyed state of the partitions routed to it (partition % threads), so a
 * partition's batches, queries and snapshots run one after another in the order they were
 * submitted: a snapshot taken after batch N sees exactly batches 1..N (a consistent cut).
 */
import { Packr } from 'msgpackr'
import { parentPort, workerData } from 'node:worker_threads'
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

function packStates(list: Iterable<{ key: string; state: unknown }>): PackedStates {
  const keys: string[] = []
  const ends: number[] = []
  let data = new Uint8Array(64 * 1024)
  let at = 0
  for (const e of list) {
    const b = statePackr.pack(e.state)
    if (at + b.length > data.length) {
      const bigger = new Uint8Array(Math.max(data.length * 2, at + b.length))
      bigger.set(data.subarray(0, at))
      data = bigger
    }
    data.set(b, at)
    at += b.length
    keys.push(e.key)
    ends.push(at)
  }
  return { keys, data: data.slice(0, at), ends: Uint32Array.from(ends) }
}
// piscina passes its workerData through; engine.ts checkJob runs this module in a plain thread
// with `check: true` to load the job once, before a node starts.
const { job: jobRef, check } = workerData as { job: string; check?: boolean }

const job = await loadJob(jobRef)
if (check === true) parentPort?.postMessage({ shoal: 'job-loaded', name: job.name })

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
    const events = packr.unpack(b.payload) as [string, unknown][]
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

/** A key's state. `dirty`: changed since the last snapshot (then it is listed in `changed`). */
interface Entry {
  key: string
  state: unknown
  dirty: boolean
}

interface PartitionState {
  entries: Map<string, Entry>
  /** The entries changed since the last snapshot, each once. */
  changed: Entry[]
}

const partitions = new Map<number, PartitionState>()

function stateOf(partition: number): PartitionState {
  let s = partitions.get(partition)
  if (s === undefined) {
    s = { entries: new Map(), changed: [] }
    partitions.set(partition, s)
  }
  return s
}

function runBatch(partition: number, payload: Uint8Array): BatchResult {
  const events = packr.unpack(payload) as [string, unknown][]
  const { entries, changed } = stateOf(partition)
  let emitted: [string, string, unknown][] | null = null
  let deadLetters: DeadLetter[] | null = null
  let key = ''
  const ctx = {
    partition,
    get key() {
      return key
    },
    emit(stream: string, event: unknown) {
      ;(emitted ??= []).push([stream, key, event])
    },
  }
  // One map lookup per event: the entry holds the state and its dirty flag.
  for (let i = 0; i < events.length; i++) {
    const entry = events[i]!
    key = entry[0]
    const e = entries.get(key)
    if (e === undefined) {
      const s = job.init(key)
      let next: unknown
      try {
        next = job.process(s, entry[1], ctx)
      } catch (err) {
        // Dead-letter the event: the key gets no state from it; the batch goes on.
        ;(deadLetters ??= []).push({ index: i, key, error: err instanceof Error ? err.message : String(err) })
        continue
      }
      const created: Entry = { key, state: next === undefined ? s : next, dirty: true }
      entries.set(key, created)
      changed.push(created)
      continue
    }
    // A state stored as undefined (an init that returns nothing) is initialized again.
    const s = e.state === undefined ? job.init(key) : e.state
    try {
      const next = job.process(s, entry[1], ctx)
      e.state = next === undefined ? s : next
    } catch (err) {
      // Dead-letter the event: its key's state stays as it was; the batch goes on.
      ;(deadLetters ??= []).push({ index: i, key, error: err instanceof Error ? err.message : String(err) })
    }
    if (!e.dirty) {
      e.dirty = true
      changed.push(e)
    }
  }
  return {
    op: 'batch',
    count: events.length,
    emitted: emitted === null ? null : packr.pack(emitted),
    deadLetters,
  }
}

function runBatches(batches: BatchItem[]): (BatchResult | BatchFailure)[] {
  const results: (BatchResult | BatchFailure)[] = []
  for (const b of batches) {
    try {
      results.push(timed ? runTimed(b) : runBatch(b.partition, b.payload))
    } catch (err) {
      // Not the job's per-event error (those are dead-lettered): e.g. a payload that is not
      // msgpack, or init() threw. Only this batch fails; the others of the task stand.
      results.push({ op: 'failed', error: err instanceof Error ? err.message : String(err) })
    }
  }
  return results
}

export default function handle(req: TaskRequest): TaskResult {
  switch (req.op) {
    case 'batches':
      return { op: 'batches', results: runBatches(req.batches) }
    case 'describe':
      return { op: 'describe', info }
    case 'get': {
      const v = timed
        ? timedPartitions.get(req.partition)?.view(req.key)
        : partitions.get(req.partition)?.entries.get(req.key)?.state
      return { op: 'get', found: v !== undefined, data: v === undefined ? null : packr.pack(v) }
    }
    case 'dump': {
      if (timed) {
        const all = timedPartitions.get(req.partition)?.dump() ?? []
        return { op: 'dump', keys: all.length, data: packr.pack(all) }
      }
      const s = partitions.get(req.partition)
      const all = s === undefined ? [] : Array.from(s.entries.values(), (e) => [e.key, e.state] as const)
      return { op: 'dump', keys: all.length, data: packr.pack(all) }
    }
    case 'snapshot': {
      // Incremental: the keys changed since the last snapshot, then forget them.
      if (timed) {
        const snap = timedOf(req.partition).snapshot(req.full)
        const kv = packStates(snap.entries.map(([key, state]) => ({ key, state })))
        return { op: 'snapshot', kv, deleted: snap.deleted }
      }
      const s = stateOf(req.partition)
      for (const e of s.changed) e.dirty = false
      const kv = packStates(req.full ? s.entries.values() : s.changed)
      s.changed = []
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
        s.entries.clear()
        s.changed = []
      }
      const { keys, data, ends } = req.kv
      for (let i = 0; i < keys.length; i++) {
        const k = keys[i]!
        const v: unknown = statePackr.unpack(data.subarray(i === 0 ? 0 : ends[i - 1], ends[i]))
        const e = s.entries.get(k)
        if (e === undefined) s.entries.set(k, { key: k, state: v, dirty: false })
        else e.state = v
      }
      return { op: 'load', keys: keys.length }
    }
    case 'drop':
      partitions.delete(req.partition)
      timedPartitions.delete(req.partition)
      return { op: 'drop' }
  }
}
