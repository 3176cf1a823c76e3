/**
 * The StateBackend contract: byte values under string keys, with millisecond TTLs,
 * compare-and-set, atomic counters, SCAN-style prefix listing, batched reads, atomic
 * per-partition batches and epoch-fenced writes. Three implementations pass one conformance
 * suite (test/conformance/state-suite.ts): memory, file and Redis. See docs/state.md.
 *
 * This file is the interface plus the key grammar and argument validation every backend
 * shares. It imports nothing heavy, so fakes and the conformance suite stay cheap.
 *
 * **Keys** are non-empty strings. A key of the form `{p<N>}:<name>` (build it with
 * {@link partitionKey}) belongs to partition N: all keys of one partition live together
 * (one hash slot on Redis, one snapshot file on disk), so a batch over them is atomic.
 * Any other key is a global key. Keys are scoped by the backend's `prefix` (cluster/job),
 * which callers never include in keys themselves.
 *
 * **Values** are bytes (callers msgpack them). Reads return Buffers (a Uint8Array subclass);
 * writes accept any Uint8Array and copy it. A counter is a value holding a decimal integer
 * in ASCII, exactly as in Redis: `incrBy` creates it, `get` returns its digits.
 */
import { ErrorCodes, ShoalError, type ShoalErrorOptions } from '../errors.ts'
import { MAX_PARTITIONS } from '../protocol/partition.ts'

export type StateBackendKind = 'memory' | 'file' | 'redis'

export interface PutOptions {
  /** Expire the key this many milliseconds from now (an integer >= 1). No TTL when absent. */
  ttlMs?: number
}

export interface BatchPut {
  key: string
  value: Uint8Array
  /** As {@link PutOptions.ttlMs}. */
  ttlMs?: number
}

/** Puts and deletes applied all-or-nothing. A key may appear at most once in a batch. */
export interface WriteBatch {
  puts?: readonly BatchPut[]
  deletes?: readonly string[]
}

export interface ScanOptions {
  /** Target number of keys per yielded batch (a hint, like SCAN's COUNT). @default 256 */
  count?: number
}

export interface StateBackend {
  readonly kind: StateBackendKind
  /** The cluster/job key prefix given at construction. */
  readonly prefix: string

  /** The value, or undefined when the key is absent or expired. WRONG_TYPE on a hash key. */
  get(key: string): Promise<Buffer | undefined>
  /** Values of many keys (any partitions), aligned with `keys`; pipelined on Redis. */
  getMany(keys: readonly string[]): Promise<(Buffer | undefined)[]>
  /** Set a value (replacing any value or hash), with an optional TTL; without one, any TTL is cleared. */
  put(key: string, value: Uint8Array, options?: PutOptions): Promise<void>
  /**
   * Atomically replace the value if the current one equals `expected` (`null`: only if the key
   * is absent). `next === null` deletes the key. Returns whether the write happened.
   */
  compareAndSet(
    key: string,
    expected: Uint8Array | null,
    next: Uint8Array | null,
    options?: PutOptions,
  ): Promise<boolean>
  /** Delete a key of any type. Returns whether it existed. */
  delete(key: string): Promise<boolean>
  /** Add `by` (default 1) to the integer at `key` (0 when absent), keeping its TTL; returns the new value. */
  incrBy(key: string, by?: number): Promise<number>
  /** Add `by` (default 1) to `field` of the hash at `key`; returns the new value. */
  hIncrBy(key: string, field: string, by?: number): Promise<number>
  /** All fields of the hash at `key` (empty when absent). WRONG_TYPE on a bytes key. */
  hGetAll(key: string): Promise<Record<string, number>>
  /**
   * Keys starting with `prefix` ('' lists all), in batches, in no particular order. Each key that
   * exists for the whole iteration is yielded exactly once; keys written or deleted meanwhile
   * may or may not appear. Never KEYS: Redis iterates with SCAN on every master.
   */
  scan(prefix: string, options?: ScanOptions): AsyncIterable<string[]>
  /** Apply puts and deletes atomically. Every key must belong to `partition`. */
  writeBatch(partition: number, batch: WriteBatch): Promise<void>
  /**
   * As writeBatch, guarded by the partition's epoch record, in one atomic step: if the stored
   * epoch is greater than `epoch` it rejects with {@link FencedError} (code FENCED) and writes
   * nothing; otherwise it stores `epoch` and applies the batch. An empty batch just claims the epoch.
   */
  fencedWrite(partition: number, epoch: number, batch: WriteBatch): Promise<void>
  /** The partition's stored fencing epoch, or undefined if no fenced write has happened. */
  getEpoch(partition: number): Promise<number | undefined>
  /** True when operations can currently succeed (readiness). Never rejects. */
  health(): Promise<boolean>
  /** Release connections, files and timers. Idempotent; later operations reject with CLOSED. */
  close(): Promise<void>
}

// ---------------------------------------------------------------------------------------------
// Errors

/** A state operation failed. `retryable` says whether the same call may succeed later. */
export class StateError extends ShoalError {}

/** The backend is unreachable or not ready. Always retryable. A write that failed this way may or may not have been applied. */
export class StateUnavailableError extends StateError {
  constructor(message: string, options: Omit<ShoalErrorOptions, 'retryable'> = {}) {
    super(ErrorCodes.STATE_UNAVAILABLE, message, { ...options, retryable: true })
  }
}

/** A fenced write carried an epoch older than the partition's stored epoch. Nothing was written. */
export class FencedError extends StateError {
  constructor(partition: number, epoch: number, storedEpoch: number) {
    super(
      ErrorCodes.FENCED,
      `partition ${partition}: write with epoch ${epoch} fenced off by stored epoch ${storedEpoch}`,
      { data: { partition, epoch, storedEpoch } },
    )
  }
}

/** A claim for a coordinator older than the one whose assignment the stored owner holds. */
export class LeaderFencedError extends StateError {
  constructor(partition: number, leader: number, storedLeader: number) {
    super(
      ErrorCodes.FENCED,
      `partition ${partition}: claim by leadership epoch ${leader} fenced off by a claim under leadership epoch ${storedLeader} (the assigning coordinator was deposed)`,
      { data: { partition, leader, storedLeader } },
    )
  }
}

export function badKey(message: string, data?: Record<string, unknown>): StateError {
  return new StateError(ErrorCodes.STATE_BAD_KEY, message, data === undefined ? {} : { data })
}

export function wrongType(message: string): StateError {
  return new StateError(ErrorCodes.STATE_WRONG_TYPE, message)
}

export function closedError(kind: StateBackendKind): StateError {
  return new StateError(ErrorCodes.CLOSED, `${kind} state backend is closed`)
}

// ---------------------------------------------------------------------------------------------
// Keys

const PARTITION_KEY = /^\{p(\d+)\}:/
/** Key prefixes: letters, digits and `_ . : -`; no braces or glob characters. */
const PREFIX_RE = /^[A-Za-z0-9_.:-]{1,128}$/

/** The key of `name` in partition `partition`: `{p<N>}:<name>`. */
export function partitionKey(partition: number, name: string): string {
  return `${partitionKeyPrefix(partition)}${name}`
}

/** The common prefix of every key of `partition` (for scan): `{p<N>}:`. */
export function partitionKeyPrefix(partition: number): string {
  return `{p${validatePartition(partition)}}:`
}

export interface ParsedKey {
  /** The owning partition, or undefined for a global key. */
  partition: number | undefined
  /** The key without its `{p<N>}:` part (the whole key for a global key). */
  name: string
}

/** Split a key into partition and name. Throws STATE_BAD_KEY for an empty key or a non-canonical partition. */
export function parseKey(key: string): ParsedKey {
  if (typeof key !== 'string' || key.length === 0) {
    throw badKey(`state key must be a non-empty string (got ${describe(key)})`)
  }
  const m = PARTITION_KEY.exec(key)
  if (m === null) return { partition: undefined, name: key }
  const digits = m[1] ?? ''
  const partition = Number(digits)
  if (String(partition) !== digits || partition >= MAX_PARTITIONS) {
    throw badKey(
      `state key ${JSON.stringify(key)}: partition must be a canonical integer in [0, ${MAX_PARTITIONS - 1}]`,
    )
  }
  return { partition, name: key.slice(m[0].length) }
}

/**
 * Whether some key of the form `{p<N>}:...` could start with `prefix`, i.e. a scan with this
 * prefix must look at partition keys. `partition` is set when the prefix pins one partition.
 */
export function scanScope(prefix: string): { partitions: boolean; partition?: number; globals: boolean } {
  const m = PARTITION_KEY.exec(prefix)
  if (m !== null) return { partitions: true, partition: parseKey(prefix).partition ?? 0, globals: false }
  // A strict prefix of "{p<digits>}:" may still grow into a partition key.
  const couldBePartition = /^(\{(p(\d+(\})?)?)?)?$/.test(prefix)
  return { partitions: couldBePartition, globals: true }
}

export function validatePartition(partition: number): number {
  if (!Number.isInteger(partition) || partition < 0 || partition >= MAX_PARTITIONS) {
    throw badKey(`partition must be an integer in [0, ${MAX_PARTITIONS - 1}] (got ${describe(partition)})`)
  }
  return partition
}

export function validatePrefix(prefix: string, name = 'prefix'): string {
  if (typeof prefix !== 'string' || !PREFIX_RE.test(prefix)) {
    throw new ShoalError(
      ErrorCodes.INVALID_OPTION,
      `${name} must be 1-128 characters of [A-Za-z0-9_.:-] (got ${describe(prefix)})`,
    )
  }
  return prefix
}

// ---------------------------------------------------------------------------------------------
// Argument validation shared by every backend

export function validateTtl(ttlMs: number | undefined): number | undefined {
  if (ttlMs === undefined) return undefined
  if (!Number.isSafeInteger(ttlMs) || ttlMs < 1) {
    throw new ShoalError(ErrorCodes.INVALID_OPTION, `ttlMs must be an integer >= 1 (got ${describe(ttlMs)})`)
  }
  return ttlMs
}

export function validateValue(value: unknown, what = 'value'): Uint8Array {
  if (!(value instanceof Uint8Array)) {
    throw new ShoalError(ErrorCodes.INVALID_OPTION, `${what} must be a Uint8Array (got ${describe(value)})`)
  }
  return value
}

export function validateIncrement(by: number | undefined): number {
  const n = by ?? 1
  if (!Number.isSafeInteger(n)) {
    throw new ShoalError(ErrorCodes.INVALID_OPTION, `increment must be a safe integer (got ${describe(by)})`)
  }
  return n
}

export function validateEpoch(epoch: number): number {
  if (!Number.isSafeInteger(epoch) || epoch < 0) {
    throw new ShoalError(
      ErrorCodes.INVALID_OPTION,
      `epoch must be a non-negative integer (got ${describe(epoch)})`,
    )
  }
  return epoch
}

export function validateScanCount(count: number | undefined): number {
  const n = count ?? 256
  if (!Number.isSafeInteger(n) || n < 1) {
    throw new ShoalError(
      ErrorCodes.INVALID_OPTION,
      `scan count must be an integer >= 1 (got ${describe(count)})`,
    )
  }
  return n
}

export interface NormalizedPut {
  key: string
  name: string
  value: Uint8Array
  ttlMs: number | undefined
}
export interface NormalizedBatch {
  partition: number
  puts: NormalizedPut[]
  deletes: { key: string; name: string }[]
}

/** Check a batch: every key in `partition`, no key twice, values are bytes, TTLs valid. */
export function normalizeBatch(partition: number, batch: WriteBatch): NormalizedBatch {
  validatePartition(partition)
  const seen = new Set<string>()
  const check = (key: string): string => {
    const parsed = parseKey(key)
    if (parsed.partition !== partition) {
      throw badKey(
        `batch for partition ${partition} names key ${JSON.stringify(key)} of ${
          parsed.partition === undefined ? 'no partition (a global key)' : `partition ${parsed.partition}`
        }; build keys with partitionKey(${partition}, name)`,
        { partition, key },
      )
    }
    if (seen.has(key)) throw badKey(`batch names key ${JSON.stringify(key)} twice`, { partition, key })
    seen.add(key)
    return parsed.name
  }
  const puts = (batch.puts ?? []).map((p) => ({
    key: p.key,
    name: check(p.key),
    value: validateValue(p.value, `value of ${JSON.stringify(p.key)}`),
    ttlMs: validateTtl(p.ttlMs),
  }))
  const deletes = (batch.deletes ?? []).map((key) => ({ key, name: check(key) }))
  return { partition, puts, deletes }
}

// ---------------------------------------------------------------------------------------------
// Helpers on top of the interface

export interface UpdateOptions extends PutOptions {
  /** Give up (STATE_UNAVAILABLE, retryable) after this many lost races. @default 16 */
  maxAttempts?: number
}

/**
 * Optimistic read-modify-write with compareAndSet: `fn` gets the current value (undefined when
 * absent) and returns the next one (undefined deletes). Retries when another writer won the race.
 * Returns what was written.
 */
export async function updateValue(
  backend: StateBackend,
  key: string,
  fn: (current: Buffer | undefined) => Uint8Array | undefined,
  options: UpdateOptions = {},
): Promise<Uint8Array | undefined> {
  const maxAttempts = options.maxAttempts ?? 16
  const putOptions = options.ttlMs === undefined ? undefined : { ttlMs: options.ttlMs }
  for (let attempt = 1; attempt <= maxAttempts; attempt++) {
    const current = await backend.get(key)
    const next = fn(current)
    if (await backend.compareAndSet(key, current ?? null, next ?? null, putOptions)) return next
  }
  throw new StateUnavailableError(`update of ${JSON.stringify(key)} lost ${maxAttempts} races in a row`, {
    data: { key, maxAttempts },
  })
}

/** Collect a whole scan into one sorted array (tests, dumps; not for huge key spaces). */
export async function scanAll(backend: StateBackend, prefix: string): Promise<string[]> {
  const out: string[] = []
  for await (const batch of backend.scan(prefix)) out.push(...batch)
  return out.sort()
}

function describe(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value)
  if (value instanceof Uint8Array) return `Uint8Array(${value.length})`
  if (typeof value === 'object' && value !== null) return Array.isArray(value) ? 'an array' : 'an object'
  return String(value)
}
