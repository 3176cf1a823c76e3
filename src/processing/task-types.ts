/** Messages between a worker's main thread and its processing threads. */

/**
 * Keyed states in one buffer: the state of keys[i] is msgpack (plain maps, no records) at
 * data[ends[i-1] ?? 0 .. ends[i]). One transferable buffer instead of an object per key.
 */
export interface PackedStates {
  keys: string[]
  data: Uint8Array
  ends: Uint32Array
}

/** One event batch of one partition: msgpack [key, event][]; or a tick of time-enabled jobs. */
export interface BatchItem {
  partition: number
  payload: Uint8Array
  /** A tick from the replay log (docs/time.md): payload is empty. */
  tick?: Tick
}

/** A time record of the replay log: the worker's wall clock and the partition's silence. */
export interface Tick {
  now: number
  idle: number
}

/** What the worker's main thread learns about a job's use of time. */
export interface JobInfo {
  name: string
  /** Runs on the time-aware runtime (eventTime, window, onTimer or ttlMs). */
  timed: boolean
  eventTime: boolean
  idleMs: number | null
  /** Needs a fresh processing clock: onTimer (processing timers) or ttlMs. */
  processingTime: boolean
}

/** A time-enabled partition's time after a batch or tick (see TimedPartition.status). */
export interface PartitionTimeStatus {
  watermark: number
  base: number
  nextEvent: number
  nextProcessing: number
}

export type TaskRequest =
  /**
   * Event batches, applied in order (each to its partition's state). The engine merges the
   * batches waiting for the same thread into one task: one round trip for all of them.
   */
  | { op: 'batches'; partition: number; batches: BatchItem[] }
  /**
   * Batches without ticks, packed: batch i is partition index[2i], payload data[index[2i-1]
   * (0 for the first) .. index[2i+1]). Two typed arrays to clone instead of an object and a view
   * per batch (piscina's postTask was 16% of a worker's main thread at 50% load). Answered with
   * 'counts' when no batch emitted, dead-lettered or failed, else with 'batches'.
   */
  | { op: 'packed'; partition: number; data: Uint8Array; index: Int32Array }
  | { op: 'get'; partition: number; key: string }
  | { op: 'dump'; partition: number }
  /** Changed keys since the last snapshot (or all with full), each state packed on its own. */
  | { op: 'snapshot'; partition: number; full: boolean }
  /** Restore keys (each state packed on its own); replace clears the partition first. */
  | { op: 'load'; partition: number; kv: PackedStates; replace: boolean }
  | { op: 'drop'; partition: number }
  | { op: 'describe'; partition: number }

export interface DeadLetter {
  /** Position of the event in its batch (-1: not an event, e.g. a timer). */
  index: number
  key: string
  error: string
}

/** The outcome of one batch. */
export interface BatchResult {
  op: 'batch'
  count: number
  emitted: Uint8Array | null
  deadLetters: DeadLetter[] | null
  /** Time-enabled jobs: the partition's time after the batch. */
  time?: PartitionTimeStatus
}

/** A batch that could not be applied at all (e.g. its payload is not msgpack). */
export interface BatchFailure {
  op: 'failed'
  error: string
}

export type TaskResult =
  | { op: 'batches'; results: (BatchResult | BatchFailure)[] }
  /** A 'packed' task whose batches only counted: the events of each. */
  | { op: 'counts'; counts: Int32Array }
  | { op: 'get'; found: boolean; data: Uint8Array | null }
  | { op: 'dump'; keys: number; data: Uint8Array }
  /** deleted: keys gone since the last snapshot (time-enabled jobs drop keys). */
  | { op: 'snapshot'; kv: PackedStates; deleted: string[] }
  | { op: 'load'; keys: number }
  | { op: 'drop' }
  | { op: 'describe'; info: JobInfo }
