/**
 * The PartitionStore contract: types, options, argument validation and small helpers shared by
 * the implementations (redis-store.ts, local-store.ts). Import the public API from
 * partition-store.ts, which re-exports this module and adds the factory.
 */
import { ErrorCodes, ShoalError } from '../../errors.ts'
import { validateEpoch, validatePartition, type StateBackendKind } from '../backend.ts'

// ---------------------------------------------------------------------------------------------
// Types

/** One accepted batch, as the worker appends it to the partition's replay log. */
export interface LogAppend {
  /** The sender's producer id (non-empty). */
  producerId: string
  /** The sender's sequence for this partition: a safe integer >= 0, increasing per producer. */
  sequence: number
  /** The batch exactly as received (msgpack bytes); copied. */
  payload: Uint8Array
  /** Number of events in the batch (informational; a safe integer >= 0). */
  count: number
}

/** A replayed log entry. */
export interface LogEntry {
  /** Position in the partition's log: 1, 2, 3, ... never reused, never decreasing. */
  offset: number
  /** The epoch of the owner that appended it. */
  epoch: number
  producerId: string
  sequence: number
  count: number
  /** A fresh copy of the appended bytes. */
  payload: Buffer
}

/**
 * Changed keys packed as the processing threads send them: the value of keys[i] is
 * data[ends[i-1] ?? 0 .. ends[i]). Same meaning as [key, value] pairs, without an object per key
 * (a checkpoint of 1M keys built 1M pairs and views of ~100 B each).
 */
export interface PackedChanges {
  readonly keys: readonly string[]
  readonly data: Uint8Array
  readonly ends: Uint32Array
}

export function isPackedChanges(changed: CheckpointWrite['changed']): changed is PackedChanges {
  return !Array.isArray(changed)
}

export function changedCount(changed: CheckpointWrite['changed']): number {
  return isPackedChanges(changed) ? changed.keys.length : changed.length
}

/**
 * The changed entries as validated [key, value] pairs (values of packed changes are views into
 * their data, made one at a time). Throws as checkChanged does.
 */
export function* changedPairs(
  changed: CheckpointWrite['changed'],
  deleted: ReadonlySet<string>,
): Generator<readonly [string, Uint8Array]> {
  if (!isPackedChanges(changed)) {
    for (const pair of changed) {
      checkChanged(pair, deleted)
      yield pair
    }
    return
  }
  for (let i = 0; i < changed.keys.length; i++) {
    const pair = [
      changed.keys[i],
      changed.data.subarray(i === 0 ? 0 : changed.ends[i - 1], changed.ends[i]),
    ] as const
    checkChanged(pair, deleted)
    yield pair
  }
}

/** What one checkpoint writes. */
export interface CheckpointWrite {
  /** The coordinator's checkpoint id (non-empty); reported back by loadCheckpoint. */
  checkpointId: string
  /**
   * Keys whose value changed since the last committed checkpoint (incremental), or every key of
   * the partition (full). Keys are the job's state keys (any string); values are bytes. A key
   * listed twice keeps its last value.
   */
  changed: readonly (readonly [key: string, value: Uint8Array])[] | PackedChanges
  /** Keys deleted since the last committed checkpoint (incremental only; ignored when full). */
  deleted?: readonly string[]
  /** The offset of the last log entry this state includes (0: none); replay resumes after it. */
  logOffset: number
  /** The dedup table at that point: producer id -> last applied sequence. Replaced, not merged. */
  dedup: Readonly<Record<string, number>>
  /** Replace the partition's whole state with `changed` (a savepoint) instead of updating it. */
  full: boolean
}

export interface CheckpointResult {
  /** Distinct keys written. */
  changed: number
  /** Keys deleted (0 for a full checkpoint). */
  deleted: number
  /**
   * Redis: the changed keys were committed as a delta segment that is being folded into the
   * partition's base segment in the background (see settle()). Always false elsewhere.
   */
  merging: boolean
}

/** The last committed checkpoint of a partition. */
export interface LoadedCheckpoint {
  partition: number
  /** Undefined when no checkpoint was ever committed (empty state, replay from 0). */
  checkpointId: string | undefined
  /** Replay the log after this offset (0 when there is no checkpoint). */
  logOffset: number
  /** The dedup table recorded with the checkpoint (empty when none); a fresh object. */
  dedup: Record<string, number>
  /** The epoch of the owner that committed the checkpoint. */
  epoch: number | undefined
  /** Wall-clock ms at commit (0 when none). */
  committedAt: number
  /**
   * The state in batches of [key, value]. Read it once. Every live key appears, with its
   * committed value; Redis may (rarely, under concurrent rehashing) repeat a key, always with the
   * same value. If a new checkpoint of the partition commits while this is being read, the
   * iteration fails with CHECKPOINT_ABORTED: load again (the owner does not checkpoint while it
   * restores, so this only affects readers that are not the owner).
   */
  entries(): AsyncIterable<[string, Buffer][]>
}

export interface ReplayOptions {
  /**
   * Skip entries already reflected in the state: an entry whose sequence is <= dedup[producerId]
   * is not yielded, and yielded entries advance a copy of the table (so a batch appended twice,
   * e.g. after a sender retry, is yielded once). Pass the checkpoint's dedup table.
   */
  dedup?: Readonly<Record<string, number>>
  /** Stop after this offset (inclusive). */
  toOffset?: number
  /** Entries fetched per round trip (Redis XRANGE COUNT). @default 256 */
  pageSize?: number
}

export interface TrimResult {
  /** Entries with offsets <= this are gone: min(upToOffset, committed checkpoint offset). */
  trimmedTo: number
  /** Entries removed by this call. */
  removed: number
}

export interface LogInfo {
  /** Entries in the log now. */
  length: number
  /** Offset of the oldest entry, undefined when empty. */
  firstOffset: number | undefined
  /** Highest offset ever appended (0 when none); survives trimming. */
  lastOffset: number
}

export interface PartitionStore {
  readonly kind: StateBackendKind
  /**
   * Record `epoch` as the partition's owner epoch before restoring, fencing every older owner:
   * their appends and checkpoints are refused from now on. FENCED if a newer epoch is stored.
   * Uses the same epoch record as StateBackend.fencedWrite.
   *
   * With `leader` (the leadership epoch of the coordinator that assigned the partition, under
   * coordinator HA): also FENCED when a claim made for a newer leader is recorded, and the
   * leader is recorded with the claim. A deposed coordinator's late assignment then cannot take
   * a partition from an owner a newer leader confirmed.
   */
  claim(partition: number, epoch: number, leader?: number): Promise<void>
  /**
   * Append an accepted batch to the partition's replay log (call before acking the sender);
   * resolves with its offset once it is durable as configured. FENCED (nothing appended) when the
   * stored epoch is greater than `epoch`; a stored epoch lower than `epoch` is raised to it.
   * DURABILITY_TIMEOUT (Redis WAIT/WAITAOF unmet) and STATE_UNAVAILABLE mean the entry may or may
   * not be in the log: do not ack; the sender's retry is deduplicated on replay.
   */
  appendBatch(partition: number, epoch: number, entry: LogAppend): Promise<number>
  /** Log entries with offset > fromOffset, in offset order. */
  replay(partition: number, fromOffset: number, options?: ReplayOptions): AsyncIterable<LogEntry>
  /**
   * Commit a checkpoint atomically: the state changes, `logOffset`, `dedup` and the epoch become
   * visible together or not at all. FENCED when the stored epoch is greater than `epoch`;
   * CHECKPOINT_ABORTED when it could not commit (retry it). Checkpoints of one partition are
   * serialized by the store. A retried checkpoint (after a lost reply) is harmless.
   */
  writeCheckpoint(partition: number, epoch: number, cp: CheckpointWrite): Promise<CheckpointResult>
  /** The last committed checkpoint (metadata now, state through entries()). */
  loadCheckpoint(partition: number): Promise<LoadedCheckpoint>
  /**
   * Drop log entries with offset <= upToOffset, never beyond the committed checkpoint's offset
   * (so trimming cannot lose a batch the state does not include).
   */
  trim(partition: number, upToOffset: number): Promise<TrimResult>
  logInfo(partition: number): Promise<LogInfo>
  /**
   * Finish background work of the partition's last checkpoint (Redis: fold a committed delta
   * into the base segment). Never needed for correctness; fenced like writes. No-op elsewhere.
   */
  settle(partition: number, epoch: number): Promise<void>
  /** Wait for background work, then refuse further calls (CLOSED). Does not close the backend. */
  close(): Promise<void>
  /**
   * Optional: this process no longer serves the partition (it moved, or was fenced). A store
   * that holds per-partition resources (PartitionedFileStore: a locked directory) frees them.
   */
  release?(partition: number): Promise<void>
}

// ---------------------------------------------------------------------------------------------
// Options

export interface DurabilityOptions {
  /**
   * Redis: after each append and checkpoint commit, `WAIT replicas timeoutMs`; fewer
   * acknowledgements than this reject with DURABILITY_TIMEOUT. @default 0 (no WAIT)
   */
  replicas?: number
  /**
   * Redis >= 7.2: `WAITAOF local replicas timeoutMs` after each append and checkpoint commit:
   * `local` fsyncs the primary's AOF, `replicas` that many replicas' AOFs.
   */
  aof?: { local: boolean; replicas: number }
  /** How long WAIT/WAITAOF may block (keep it below the backend's commandTimeoutMs). @default 1000 */
  timeoutMs?: number
}

/** Fault injection for tests: throwing from a hook stops the operation there, like a crash. */
export interface PartitionStoreHooks {
  /** The checkpoint's data is staged (Redis segments, file temp file) but not committed. */
  beforeCommit?(partition: number, checkpointId: string): void | Promise<void>
  /** The checkpoint is committed; background work (Redis delta merge) has not started. */
  afterCommit?(partition: number, checkpointId: string): void | Promise<void>
}

export interface PartitionStoreOptions {
  /** Redis replication / AOF acknowledgements for appends and commits. */
  durability?: DurabilityOptions
  /** Redis: changed keys per staging command. @default 1000 */
  chunkKeys?: number
  /** Redis: staging commands in flight at once. @default 32 */
  chunkWindow?: number
  /**
   * Redis: a staged (not yet committed) segment expires after this long, so an abandoned
   * checkpoint (crash, fenced owner) leaves no garbage. A checkpoint must finish staging within
   * it (the commit verifies that nothing expired). @default 600000
   */
  stageTtlMs?: number
  /** Redis: fold committed deltas into the base in the background (else inside writeCheckpoint). @default true */
  backgroundMerge?: boolean
  /** File: fsync the log and checkpoint files. @default true */
  fsync?: boolean
  hooks?: PartitionStoreHooks
}

// ---------------------------------------------------------------------------------------------
// Helpers on top of the interface

/** Collect a partition's committed checkpoint into a Map (tests, tools, restore of small partitions). */
export async function readCheckpoint(
  store: PartitionStore,
  partition: number,
  maxAttempts = 5,
): Promise<{ checkpoint: LoadedCheckpoint; state: Map<string, Buffer> }> {
  for (let attempt = 1; ; attempt++) {
    const checkpoint = await store.loadCheckpoint(partition)
    const state = new Map<string, Buffer>()
    try {
      for await (const batch of checkpoint.entries()) for (const [k, v] of batch) state.set(k, v)
      return { checkpoint, state }
    } catch (err) {
      if (
        !(err instanceof ShoalError) ||
        err.code !== ErrorCodes.CHECKPOINT_ABORTED ||
        attempt >= maxAttempts
      ) {
        throw err
      }
    }
  }
}

/** Every replayed entry of a partition after `fromOffset`, in an array. */
export async function replayAll(
  store: PartitionStore,
  partition: number,
  fromOffset: number,
  options?: ReplayOptions,
): Promise<LogEntry[]> {
  const out: LogEntry[] = []
  for await (const e of store.replay(partition, fromOffset, options)) out.push(e)
  return out
}

// ---------------------------------------------------------------------------------------------
// Validation shared by the implementations

export function invalid(message: string, data?: Record<string, unknown>): ShoalError {
  return new ShoalError(ErrorCodes.INVALID_OPTION, message, data === undefined ? {} : { data })
}

export function checkpointAborted(message: string, data?: Record<string, unknown>): ShoalError {
  return new ShoalError(ErrorCodes.CHECKPOINT_ABORTED, message, {
    retryable: true,
    ...(data === undefined ? {} : { data }),
  })
}

function safeCount(value: unknown, name: string, min = 0): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min) {
    throw invalid(`${name} must be an integer >= ${min} (got ${describe(value)})`)
  }
  return value
}

export function validateOffset(offset: number, name = 'offset'): number {
  return safeCount(offset, name)
}

export function validateAppend(partition: number, epoch: number, entry: LogAppend): void {
  validatePartition(partition)
  validateEpoch(epoch)
  if (typeof entry !== 'object' || entry === null) throw invalid('log entry must be an object')
  if (typeof entry.producerId !== 'string' || entry.producerId === '') {
    throw invalid(`producerId must be a non-empty string (got ${describe(entry.producerId)})`)
  }
  safeCount(entry.sequence, 'sequence')
  safeCount(entry.count, 'count')
  if (!(entry.payload instanceof Uint8Array)) {
    throw invalid(`payload must be a Uint8Array (got ${describe(entry.payload)})`)
  }
}

/** Validate a checkpoint's scalar fields and deletes (changed entries are checked while encoding). */
export function validateCheckpoint(partition: number, epoch: number, cp: CheckpointWrite): Set<string> {
  validatePartition(partition)
  validateEpoch(epoch)
  if (typeof cp !== 'object' || cp === null) throw invalid('checkpoint must be an object')
  if (typeof cp.checkpointId !== 'string' || cp.checkpointId === '') {
    throw invalid(`checkpointId must be a non-empty string (got ${describe(cp.checkpointId)})`)
  }
  safeCount(cp.logOffset, 'logOffset')
  if (typeof cp.full !== 'boolean') throw invalid(`full must be a boolean (got ${describe(cp.full)})`)
  if (!Array.isArray(cp.changed)) validatePacked(cp.changed)
  validateDedup(cp.dedup)
  const deleted = new Set<string>()
  if (cp.deleted !== undefined && !cp.full) {
    if (!Array.isArray(cp.deleted)) throw invalid('deleted must be an array of keys')
    for (const k of cp.deleted) {
      if (typeof k !== 'string') throw invalid(`deleted keys must be strings (got ${describe(k)})`)
      deleted.add(k)
    }
  }
  return deleted
}

/** The shape of packed changes (keys are checked one by one as they are read). */
function validatePacked(changed: unknown): void {
  const c = changed as Partial<PackedChanges> | null
  if (
    typeof c !== 'object' ||
    c === null ||
    !Array.isArray(c.keys) ||
    !(c.data instanceof Uint8Array) ||
    !(c.ends instanceof Uint32Array) ||
    c.ends.length !== c.keys.length
  ) {
    throw invalid('changed must be an array of [key, value] pairs or packed { keys, data, ends }')
  }
  let prev = 0
  for (const e of c.ends) {
    if (e < prev || e > c.data.length) throw invalid('changed: packed ends must ascend within data')
    prev = e
  }
}

export function validateDedup(dedup: unknown): Readonly<Record<string, number>> {
  if (typeof dedup !== 'object' || dedup === null || Array.isArray(dedup)) {
    throw invalid('dedup must be an object of producerId -> last sequence')
  }
  for (const [producer, seq] of Object.entries(dedup)) {
    if (typeof seq !== 'number' || !Number.isSafeInteger(seq) || seq < 0) {
      throw invalid(`dedup[${JSON.stringify(producer)}] must be an integer >= 0 (got ${describe(seq)})`)
    }
  }
  return dedup as Readonly<Record<string, number>>
}

/** Check one [key, value] pair of `changed`; throws INVALID_OPTION (or STATE_BAD_KEY for a deleted key). */
export function checkChanged(
  pair: unknown,
  deleted: ReadonlySet<string>,
): asserts pair is readonly [string, Uint8Array] {
  if (!Array.isArray(pair) || pair.length < 2) throw invalid('changed entries must be [key, value] pairs')
  const key: unknown = pair[0]
  const value: unknown = pair[1]
  checkChangedKey(key, deleted)
  if (!(value instanceof Uint8Array)) {
    throw invalid(`value of ${JSON.stringify(key)} must be a Uint8Array (got ${describe(value)})`)
  }
}

/** Check one changed key (of pairs or packed changes); throws as checkChanged does. */
export function checkChangedKey(key: unknown, deleted: ReadonlySet<string>): asserts key is string {
  if (typeof key !== 'string') throw invalid(`changed keys must be strings (got ${describe(key)})`)
  if (deleted.size > 0 && deleted.has(key)) {
    throw new ShoalError(
      ErrorCodes.STATE_BAD_KEY,
      `key ${JSON.stringify(key)} is both changed and deleted in one checkpoint`,
      { data: { key } },
    )
  }
}

export function validateReplay(partition: number, fromOffset: number, options: ReplayOptions = {}): void {
  validatePartition(partition)
  validateOffset(fromOffset, 'fromOffset')
  if (options.toOffset !== undefined) validateOffset(options.toOffset, 'toOffset')
  if (options.pageSize !== undefined) safeCount(options.pageSize, 'pageSize', 1)
  if (options.dedup !== undefined) validateDedup(options.dedup)
}

/** A filter that yields each (producer, sequence) at most once, beyond the given table. */
export function dedupFilter(table: Readonly<Record<string, number>> | undefined): (e: LogEntry) => boolean {
  if (table === undefined) return () => true
  const last = new Map<string, number>(Object.entries(table))
  return (e) => {
    const seen = last.get(e.producerId)
    if (seen !== undefined && e.sequence <= seen) return false
    last.set(e.producerId, e.sequence)
    return true
  }
}

export function validateStoreOptions(kind: StateBackendKind, options: PartitionStoreOptions): void {
  const d = options.durability
  if (d !== undefined) {
    if (d.replicas !== undefined) safeCount(d.replicas, 'durability.replicas')
    if (d.aof !== undefined) {
      if (typeof d.aof.local !== 'boolean') throw invalid('durability.aof.local must be a boolean')
      safeCount(d.aof.replicas, 'durability.aof.replicas')
    }
    if (d.timeoutMs !== undefined) safeCount(d.timeoutMs, 'durability.timeoutMs', 1)
    const wants = (d.replicas ?? 0) > 0 || d.aof !== undefined
    if (wants && kind !== 'redis') {
      throw invalid(`durability (WAIT/WAITAOF) options need a Redis backend, not ${kind}`)
    }
  }
  if (options.chunkKeys !== undefined) safeCount(options.chunkKeys, 'chunkKeys', 1)
  if (options.chunkWindow !== undefined) safeCount(options.chunkWindow, 'chunkWindow', 1)
  if (options.stageTtlMs !== undefined) safeCount(options.stageTtlMs, 'stageTtlMs', 1000)
}

export function closedStore(kind: StateBackendKind): ShoalError {
  return new ShoalError(ErrorCodes.CLOSED, `${kind} partition store is closed`)
}

/**
 * Runs tasks of one key one after another (a per-partition mutex). A failed task does not
 * block the next one.
 */
export class KeyedQueue {
  #tails = new Map<number, Promise<unknown>>()

  run<T>(key: number, task: () => Promise<T>): Promise<T> {
    const prev = this.#tails.get(key) ?? Promise.resolve()
    const next = prev.then(task, task)
    const tail = next.then(
      () => undefined,
      () => undefined,
    )
    this.#tails.set(key, tail)
    void tail.then(() => {
      if (this.#tails.get(key) === tail) this.#tails.delete(key)
    })
    return next
  }

  /** Resolves when every queued task has finished. */
  async idle(): Promise<void> {
    while (this.#tails.size > 0) await Promise.all(this.#tails.values())
  }
}

export function describe(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value)
  if (value instanceof Uint8Array) return `Uint8Array(${value.length})`
  if (typeof value === 'object' && value !== null) return Array.isArray(value) ? 'an array' : 'an object'
  return String(value)
}
