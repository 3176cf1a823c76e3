/**
 * The Sink contract: where a job's emitted records and its committed keyed state leave Shoal.
 *
 * A worker never calls a Sink directly: it wraps each one in a SinkRunner (runner.ts), which
 * owns buffering, retries with backoff, backpressure, dead letters and metrics, so a Sink only
 * has to write one chunk well and say whether a failure is transient or permanent.
 *
 * Identity and "effectively once": a record is identified by (partition, offset, index): the
 * replay-log offset of the batch that emitted it and its position among that batch's records.
 * A batch replayed after a crash emits the same records with the same identity, so a sink that
 * stores the identity (a unique column, a guard in Redis) writes each record once. Without a
 * replay log (`offset` null) there is no identity and sinks append: at least once.
 *
 * Committed state ("write-behind"): after a partition's checkpoint commits, the worker hands
 * state sinks the keys that checkpoint wrote, with a `version` that only grows per partition
 * (across owners and restarts). A sink must never let an older version overwrite a newer one.
 * After a partition is restored on a new owner, the worker hands the whole restored state
 * (`full`: every live key of the partition) so that writes lost in a crash are redone.
 *
 * Errors: throw a ShoalError with code SINK_UNAVAILABLE (retryable: true) for a failure that
 * may pass (connection lost, server restarting, timeout), SINK_REJECTED for one that will not
 * (the runner then writes the chunk record by record and dead-letters the records that keep
 * failing), SINK_SCHEMA from open() for a target that does not fit. Any other error is treated
 * as transient.
 */
import { Packr } from 'msgpackr'

/** One emitted record as a job produced it: `ctx.emit(stream, event)` while processing `key`. */
export type EmittedRecord = readonly [stream: string, key: string, event: unknown]

/** The records that one applied batch emitted. */
export interface EmittedBatch {
  readonly partition: number
  /**
   * The replay-log offset of the batch that emitted these records: stable across replays and
   * increasing per partition. Null when the worker runs without a replay log (no identity).
   */
  readonly offset: number | null
  /**
   * Index of records[0] among everything the batch emitted (a runner may split a batch's
   * records across writes, or retry part of them). Record i's identity is firstIndex + i.
   */
  readonly firstIndex: number
  readonly records: readonly EmittedRecord[]
}

/**
 * Emitted records still as the processing thread packed them (msgpack [stream, key, event][]):
 * a SinkRunner holds these and decodes them only when it writes them, so the records it buffers
 * while a write is in flight are one buffer each, not objects that outlive the young generation.
 */
export interface PackedEmittedBatch {
  readonly partition: number
  readonly offset: number | null
  readonly firstIndex: number
  /** Records in `payload`. */
  readonly count: number
  readonly payload: Uint8Array
}

/**
 * A packed batch as the runner hands it to a sink: `records` decoded when first read; a sink
 * that reads the packed records itself (the file sink) never pays for the decoding.
 */
export class LazyEmittedBatch implements EmittedBatch {
  readonly partition: number
  readonly offset: number | null
  readonly firstIndex: number
  readonly count: number
  readonly payload: Uint8Array
  #records: EmittedRecord[] | null = null

  constructor(b: PackedEmittedBatch) {
    this.partition = b.partition
    this.offset = b.offset
    this.firstIndex = b.firstIndex
    this.count = b.count
    this.payload = b.payload
  }

  get records(): readonly EmittedRecord[] {
    return (this.#records ??= unpackr.unpack(this.payload) as EmittedRecord[])
  }
}

const unpackr = new Packr({ useRecords: true, moreTypes: true })

/** Committed keyed state of one partition, behind one checkpoint. */
export interface StateBatch {
  readonly partition: number
  /** Increases with every checkpoint of the partition, across owners and restarts. */
  readonly version: number
  /** Keys written by the checkpoint (all live keys when `full`), with their decoded state. */
  readonly upserts: readonly (readonly [key: string, state: unknown])[]
  /** Keys deleted by the checkpoint. */
  readonly deletes: readonly string[]
  /** `upserts` is the partition's whole state: rows of this partition not in it may be deleted. */
  readonly full: boolean
}

/** A record the runner gave up on, as handed to Sink.deadLetter. */
export interface DeadLetterRecord {
  readonly partition: number
  readonly offset: number | null
  readonly index: number
  readonly record: EmittedRecord
  /** The last error, as `CODE: message`. */
  readonly error: string
  readonly attempts: number
}

export interface Sink {
  /** A short name for logs, metrics labels and /status (no password): e.g. `redis:out`, `postgres:clicks`. */
  readonly name: string
  /** What this sink takes: emitted records, committed state, or both. */
  readonly accepts: { readonly events: boolean; readonly state: boolean }
  /**
   * Connect, create what is missing (tables, nothing for streams), check that what exists fits.
   * Throws SINK_SCHEMA for a target that does not fit (not retried), SINK_UNAVAILABLE when the
   * system cannot be reached (the runner retries).
   */
  open(): Promise<void>
  /** Write emitted records (only when accepts.events). Idempotent for a record's identity. */
  writeEvents?(batches: readonly EmittedBatch[]): Promise<void>
  /** Write committed state (only when accepts.state). Idempotent by version. */
  writeState?(batches: readonly StateBatch[]): Promise<void>
  /**
   * Store records that can never be written (a stream `NAME:dlq`, a table `NAME_dlq`, a file
   * `PATH.dlq`, as the sink documents). Failing here is retried like a write: nothing is dropped.
   */
  deadLetter(records: readonly DeadLetterRecord[]): Promise<void>
  close(): Promise<void>
}
