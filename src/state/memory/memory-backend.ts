/**
 * In-process state: the reference implementation of the StateBackend contract, and the engine
 * the file backend persists.
 *
 * Every operation runs synchronously inside one call, so JavaScript's run-to-completion is the
 * mutex: a compare-and-set, a batch or a fenced write (check the epoch record, then apply) can
 * never interleave with another operation. TTLs use the wall clock (Date.now), are checked on
 * every access and swept once a second for keys nobody reads again.
 *
 * `memory:` gives a private store; `memory:NAME` a store shared by every backend opened with
 * the same name and prefix in this process (an in-process cluster's workers see one state), kept
 * while at least one of them is open.
 */
import { setImmediate as yieldToLoop } from 'node:timers/promises'
import {
  FencedError,
  badKey,
  closedError,
  normalizeBatch,
  parseKey,
  scanScope,
  validateEpoch,
  validateIncrement,
  validatePartition,
  validatePrefix,
  validateScanCount,
  validateTtl,
  validateValue,
  wrongType,
  type NormalizedBatch,
  type PutOptions,
  type ScanOptions,
  type StateBackend,
  type StateBackendKind,
  type WriteBatch,
} from '../backend.ts'

export type Entry =
  | { kind: 'bytes'; value: Buffer; expiresAt: number }
  | { kind: 'hash'; fields: Map<string, number>; expiresAt: number }

/** Where a key lives: a partition's bucket, or the bucket of one global key. */
export type Bucket = { partition: number } | { global: string }

const SWEEP_INTERVAL_MS = 1000
const INTEGER_RE = /^(0|-?[1-9][0-9]*)$/

/**
 * The synchronous engine: keys grouped by partition, plus global keys, plus the fencing epoch
 * of each partition. `onChange` hears about every bucket a write touched (the file backend
 * persists those); expiry does not call it.
 */
export class MemoryStore {
  readonly partitions = new Map<number, Map<string, Entry>>()
  readonly globals = new Map<string, Entry>()
  readonly epochs = new Map<number, number>()
  #expiring = new Set<string>()
  #sweepTimer: NodeJS.Timeout | undefined
  #now: () => number
  onChange: (bucket: Bucket) => void = () => {}

  constructor(now: () => number = Date.now) {
    this.#now = now
  }

  /** Start the background sweep of expired keys (unref'd). */
  startSweeper(): void {
    if (this.#sweepTimer !== undefined) return
    const tick = (): void => {
      this.sweep()
      this.#sweepTimer = setTimeout(tick, SWEEP_INTERVAL_MS)
      this.#sweepTimer.unref()
    }
    this.#sweepTimer = setTimeout(tick, SWEEP_INTERVAL_MS)
    this.#sweepTimer.unref()
  }

  stopSweeper(): void {
    clearTimeout(this.#sweepTimer)
    this.#sweepTimer = undefined
  }

  /** Drop every expired key with a TTL. */
  sweep(): void {
    for (const key of this.#expiring) this.#lookup(key)
  }

  #mapFor(partition: number | undefined, create: boolean): Map<string, Entry> | undefined {
    if (partition === undefined) return this.globals
    let map = this.partitions.get(partition)
    if (map === undefined && create) {
      // Partition maps are never removed, so a scan's live iterator is never orphaned.
      map = new Map()
      this.partitions.set(partition, map)
    }
    return map
  }

  /** The live entry of `key` (removing it if expired). */
  #lookup(key: string): Entry | undefined {
    const { partition } = parseKey(key)
    const map = this.#mapFor(partition, false)
    const entry = map?.get(key)
    if (entry === undefined) return undefined
    if (entry.expiresAt !== 0 && entry.expiresAt <= this.#now()) {
      map?.delete(key)
      this.#expiring.delete(key)
      return undefined
    }
    return entry
  }

  /** Store an entry (or remove it when undefined) and report the touched bucket. */
  setEntry(key: string, entry: Entry | undefined, notify = true): void {
    const { partition } = parseKey(key)
    const map = this.#mapFor(partition, true)
    if (entry === undefined) map?.delete(key)
    else map?.set(key, entry)
    if (entry !== undefined && entry.expiresAt !== 0) this.#expiring.add(key)
    else this.#expiring.delete(key)
    if (notify) this.onChange(partition === undefined ? { global: key } : { partition })
  }

  #expiry(ttlMs: number | undefined): number {
    return ttlMs === undefined ? 0 : this.#now() + ttlMs
  }

  #bytes(key: string): Buffer | undefined {
    const entry = this.#lookup(key)
    if (entry === undefined) return undefined
    if (entry.kind !== 'bytes') throw wrongType(`key ${JSON.stringify(key)} holds a hash, not bytes`)
    return entry.value
  }

  get(key: string): Buffer | undefined {
    const value = this.#bytes(key)
    return value === undefined ? undefined : Buffer.from(value)
  }

  put(key: string, value: Uint8Array, ttlMs: number | undefined): void {
    this.setEntry(key, { kind: 'bytes', value: Buffer.from(value), expiresAt: this.#expiry(ttlMs) })
  }

  compareAndSet(
    key: string,
    expected: Uint8Array | null,
    next: Uint8Array | null,
    ttlMs: number | undefined,
  ): boolean {
    const current = this.#bytes(key)
    const matches =
      expected === null ? current === undefined : current !== undefined && current.equals(expected)
    if (!matches) return false
    if (next === null) {
      if (current !== undefined) this.setEntry(key, undefined)
    } else {
      this.put(key, next, ttlMs)
    }
    return true
  }

  delete(key: string): boolean {
    const existed = this.#lookup(key) !== undefined
    if (existed) this.setEntry(key, undefined)
    return existed
  }

  incrBy(key: string, by: number): number {
    const current = this.#bytes(key)
    let base = 0
    if (current !== undefined) {
      const text = current.toString('latin1')
      if (!INTEGER_RE.test(text) || !Number.isSafeInteger(Number(text))) {
        throw wrongType(`key ${JSON.stringify(key)}: value is not an integer or out of range`)
      }
      base = Number(text)
    }
    const next = checkedAdd(key, base, by)
    const expiresAt = this.#lookup(key)?.expiresAt ?? 0
    this.setEntry(key, { kind: 'bytes', value: Buffer.from(String(next), 'latin1'), expiresAt })
    return next
  }

  hIncrBy(key: string, field: string, by: number): number {
    const entry = this.#lookup(key)
    if (entry !== undefined && entry.kind !== 'hash') {
      throw wrongType(`key ${JSON.stringify(key)} holds bytes, not a hash`)
    }
    const fields = entry?.fields ?? new Map<string, number>()
    const next = checkedAdd(`${key} field ${field}`, fields.get(field) ?? 0, by)
    fields.set(field, next)
    this.setEntry(key, { kind: 'hash', fields, expiresAt: entry?.expiresAt ?? 0 })
    return next
  }

  hGetAll(key: string): Record<string, number> {
    const entry = this.#lookup(key)
    const out: Record<string, number> = Object.create(null) as Record<string, number>
    if (entry === undefined) return out
    if (entry.kind !== 'hash') throw wrongType(`key ${JSON.stringify(key)} holds bytes, not a hash`)
    for (const [f, v] of entry.fields) out[f] = v
    return out
  }

  /** Apply a validated batch; the partition's bucket is reported once. */
  applyBatch(batch: NormalizedBatch): void {
    for (const d of batch.deletes) {
      if (this.#lookup(d.key) !== undefined) this.setEntry(d.key, undefined, false)
    }
    for (const p of batch.puts) {
      const entry: Entry = { kind: 'bytes', value: Buffer.from(p.value), expiresAt: this.#expiry(p.ttlMs) }
      this.setEntry(p.key, entry, false)
    }
    this.#mapFor(batch.partition, true)
    this.onChange({ partition: batch.partition })
  }

  /** The epoch check and the batch, in one synchronous critical section. */
  fencedWrite(batch: NormalizedBatch, epoch: number): void {
    const stored = this.epochs.get(batch.partition)
    if (stored !== undefined && stored > epoch) throw new FencedError(batch.partition, epoch, stored)
    this.epochs.set(batch.partition, epoch)
    this.applyBatch(batch)
  }

  /** Live keys starting with `prefix`, in batches of about `count`. */
  *keys(prefix: string, count: number): Generator<string[]> {
    const scope = scanScope(prefix)
    const maps: Iterable<Map<string, Entry>> = scope.partitions
      ? scope.partition !== undefined
        ? [this.partitions.get(scope.partition) ?? new Map<string, Entry>()]
        : this.partitions.values()
      : []
    const sources = scope.globals ? [this.globals, ...maps] : maps
    const now = this.#now()
    let batch: string[] = []
    for (const map of sources) {
      for (const [key, entry] of map) {
        if (!key.startsWith(prefix)) continue
        if (entry.expiresAt !== 0 && entry.expiresAt <= now) continue
        batch.push(key)
        if (batch.length >= count) {
          yield batch
          batch = []
        }
      }
    }
    if (batch.length > 0) yield batch
  }

  /** Every live entry of a bucket (for persistence). */
  bucketEntries(bucket: Bucket): [string, Entry][] {
    const now = this.#now()
    const live = (e: Entry): boolean => e.expiresAt === 0 || e.expiresAt > now
    if ('global' in bucket) {
      const e = this.globals.get(bucket.global)
      return e !== undefined && live(e) ? [[bucket.global, e]] : []
    }
    return [...(this.partitions.get(bucket.partition) ?? [])].filter(([, e]) => live(e))
  }

  clear(): void {
    this.partitions.clear()
    this.globals.clear()
    this.epochs.clear()
    this.#expiring.clear()
  }
}

function checkedAdd(what: string, a: number, b: number): number {
  const sum = a + b
  if (!Number.isSafeInteger(sum)) throw wrongType(`${what}: increment would overflow`)
  return sum
}

/**
 * Shared base for backends over a MemoryStore: validation, the closed check and the
 * synchronous critical sections. `afterWrite` lets the file backend wait for durability.
 */
export abstract class StoreBackend implements StateBackend {
  abstract readonly kind: StateBackendKind
  readonly prefix: string
  protected readonly store: MemoryStore
  protected closed = false

  constructor(prefix: string, store: MemoryStore) {
    this.prefix = validatePrefix(prefix)
    this.store = store
  }

  /** Resolves once the buckets touched so far are durable (no-op in memory). */
  protected abstract afterWrite(): Promise<void>
  abstract health(): Promise<boolean>
  abstract close(): Promise<void>

  protected check(): void {
    if (this.closed) throw closedError(this.kind)
  }

  /** Run a synchronous read; a throw becomes a rejection. */
  #read<T>(fn: () => T): Promise<T> {
    return new Promise<T>((resolve) => {
      this.check()
      resolve(fn())
    })
  }

  async #write<T>(fn: () => T): Promise<T> {
    this.check()
    const result = fn()
    await this.afterWrite()
    return result
  }

  get(key: string): Promise<Buffer | undefined> {
    return this.#read(() => this.store.get(key))
  }

  getMany(keys: readonly string[]): Promise<(Buffer | undefined)[]> {
    return this.#read(() => keys.map((k) => this.store.get(k)))
  }

  put(key: string, value: Uint8Array, options?: PutOptions): Promise<void> {
    return this.#write(() => {
      parseKey(key)
      this.store.put(key, validateValue(value), validateTtl(options?.ttlMs))
    })
  }

  compareAndSet(
    key: string,
    expected: Uint8Array | null,
    next: Uint8Array | null,
    options?: PutOptions,
  ): Promise<boolean> {
    return this.#write(() => {
      parseKey(key)
      if (expected !== null) validateValue(expected, 'expected')
      if (next !== null) validateValue(next, 'next')
      return this.store.compareAndSet(key, expected, next, validateTtl(options?.ttlMs))
    })
  }

  delete(key: string): Promise<boolean> {
    return this.#write(() => this.store.delete(key))
  }

  incrBy(key: string, by?: number): Promise<number> {
    return this.#write(() => this.store.incrBy(key, validateIncrement(by)))
  }

  hIncrBy(key: string, field: string, by?: number): Promise<number> {
    return this.#write(() => {
      if (typeof field !== 'string') throw badKey(`hash field must be a string (got ${typeof field})`)
      return this.store.hIncrBy(key, field, validateIncrement(by))
    })
  }

  hGetAll(key: string): Promise<Record<string, number>> {
    return this.#read(() => this.store.hGetAll(key))
  }

  async *scan(prefix: string, options?: ScanOptions): AsyncGenerator<string[]> {
    this.check()
    if (typeof prefix !== 'string') throw badKey(`scan prefix must be a string (got ${typeof prefix})`)
    const count = validateScanCount(options?.count)
    for (const batch of this.store.keys(prefix, count)) {
      yield batch
      // Let I/O run between batches of a long scan.
      await yieldToLoop()
      this.check()
    }
  }

  writeBatch(partition: number, batch: WriteBatch): Promise<void> {
    return this.#write(() => {
      const b = normalizeBatch(partition, batch)
      if (b.puts.length + b.deletes.length > 0) this.store.applyBatch(b)
    })
  }

  fencedWrite(partition: number, epoch: number, batch: WriteBatch): Promise<void> {
    return this.#write(() => this.store.fencedWrite(normalizeBatch(partition, batch), validateEpoch(epoch)))
  }

  getEpoch(partition: number): Promise<number | undefined> {
    return this.#read(() => this.store.epochs.get(validatePartition(partition)))
  }
}

export interface MemoryBackendOptions {
  /** Key prefix (cluster/job). @default 'shoal' */
  prefix?: string
  /** Share one store with every backend opened with the same name (and prefix) in this process. */
  name?: string
}

const shared = new Map<string, { store: MemoryStore; refs: number }>()

export class MemoryBackend extends StoreBackend {
  readonly kind = 'memory' as const
  #sharedKey: string | undefined

  constructor(options: MemoryBackendOptions = {}) {
    const prefix = validatePrefix(options.prefix ?? 'shoal')
    let store: MemoryStore
    let sharedKey: string | undefined
    if (options.name !== undefined && options.name !== '') {
      sharedKey = `${options.name}\u0000${prefix}`
      let s = shared.get(sharedKey)
      if (s === undefined) {
        s = { store: new MemoryStore(), refs: 0 }
        s.store.startSweeper()
        shared.set(sharedKey, s)
      }
      s.refs++
      store = s.store
    } else {
      store = new MemoryStore()
      store.startSweeper()
    }
    super(prefix, store)
    this.#sharedKey = sharedKey
  }

  protected afterWrite(): Promise<void> {
    return Promise.resolve()
  }

  health(): Promise<boolean> {
    return Promise.resolve(!this.closed)
  }

  close(): Promise<void> {
    if (this.closed) return Promise.resolve()
    this.closed = true
    if (this.#sharedKey === undefined) {
      this.store.stopSweeper()
      this.store.clear()
      return Promise.resolve()
    }
    const s = shared.get(this.#sharedKey)
    if (s !== undefined && --s.refs === 0) {
      s.store.stopSweeper()
      shared.delete(this.#sharedKey)
    }
    return Promise.resolve()
  }
}

export function createMemoryBackend(options: MemoryBackendOptions = {}): MemoryBackend {
  return new MemoryBackend(options)
}
