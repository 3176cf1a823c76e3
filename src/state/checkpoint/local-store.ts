/**
 * PartitionStore for the memory and file backends: the replay log and the committed checkpoint of
 * each partition live in this process (shared by every PartitionStore over the same backend
 * store, so an in-process cluster's workers see one log), and the file backend writes them
 * through to disk under `<state dir>/<prefix>/checkpoint/`:
 *
 * ```
 * p<N>.log   append-only: header (SHLG, version, base offset), then records
 *            [u32 length][u32 crc32][msgpack [offset, epoch, producerId, sequence, count, payload]]
 * p<N>.cp    the committed checkpoint: SHCP, version 2, crc32, msgpack
 *            [2, partition, [checkpointId, logOffset, dedup, epoch, committedAt], keys, values, ends]
 *            (values end to end in one bin, ends: little-endian u32 per key; version 1 files,
 *            [1, partition, [...], [[key, value], ...]], are still read)
 * ```
 *
 * Appends are group-committed per partition (one write + fdatasync for every append made while
 * the previous write was in flight) and resolve once durable; replay only sees durable entries.
 * A checkpoint rewrites the partition's `.cp` file (temp file, fsync, rename, directory fsync):
 * the rename is the commit, so a crash leaves the old or the new checkpoint, never a mix. Trimming
 * rewrites the log the same way. A torn last log record (crash mid-append) is dropped on load;
 * a corrupt record before the end stops the load with STATE_BACKEND.
 *
 * Fencing uses the backend's own epoch record (MemoryStore.epochs, persisted by fencedWrite in
 * the file backend). The epoch check and the in-memory mutation run in one synchronous section;
 * claims and checkpoints of a partition are serialized, so no claim can slip between a
 * checkpoint's check and its commit.
 */
import { mkdir, open, readFile, readdir, rename, unlink, type FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import { setImmediate as yieldToLoop } from 'node:timers/promises'
import { crc32 } from 'node:zlib'
import { Packr } from 'msgpackr'
import { ErrorCodes } from '../../errors.ts'
import { deferred, type Deferred } from '../../util/deferred.ts'
import {
  FencedError,
  LeaderFencedError,
  StateError,
  StateUnavailableError,
  validateEpoch,
  validatePartition,
  type StateBackend,
  type StateBackendKind,
} from '../backend.ts'
import type { FileBackend } from '../file/file-backend.ts'
import { MemoryStore } from '../memory/memory-backend.ts'
import { CommittedState, packPairs } from './committed.ts'
import {
  KeyedQueue,
  checkChanged,
  checkChangedKey,
  closedStore,
  isPackedChanges,
  dedupFilter,
  invalid,
  validateAppend,
  validateCheckpoint,
  validateOffset,
  validateReplay,
  type CheckpointResult,
  type CheckpointWrite,
  type LoadedCheckpoint,
  type LogAppend,
  type LogEntry,
  type LogInfo,
  type PackedChanges,
  type PartitionStore,
  type PartitionStoreHooks,
  type PartitionStoreOptions,
  type ReplayOptions,
  type TrimResult,
} from './contract.ts'

interface Meta {
  checkpointId: string
  logOffset: number
  dedup: Record<string, number>
  epoch: number
  committedAt: number
}

interface LocalPartition {
  /** Entries not trimmed, ascending offsets; those above durableOffset are still being written. */
  log: LogEntry[]
  /** Highest offset handed out. */
  lastOffset: number
  /** Highest offset on disk (memory: == lastOffset). */
  durableOffset: number
  meta: Meta | undefined
  /** The committed state. Replaced only at a commit, synchronously (it is immutable). */
  state: CommittedState
}

const packr = new Packr({ useRecords: false, moreTypes: false })

/** The in-process data of one backend store, shared by every PartitionStore over it. */
class LocalEngine {
  readonly partitions = new Map<number, LocalPartition>()
  readonly #loading = new Map<number, Promise<LocalPartition>>()
  /** Claims, checkpoints and trims of a partition, one at a time (across stores). */
  readonly queue = new KeyedQueue()
  /** Appends waiting for their partition to load or their epoch to be stored, in call order. */
  readonly appendGates = new Map<number, Promise<void>>()
  readonly epochs: Map<number, number>
  /** Per partition: the leadership epoch of the newest claim (see PartitionStore.claim). */
  readonly leaders = new Map<number, number>()
  readonly disk: DiskLog | undefined

  constructor(epochs: Map<number, number>, disk: DiskLog | undefined) {
    this.epochs = epochs
    this.disk = disk
  }

  partition(p: number): Promise<LocalPartition> {
    const have = this.partitions.get(p)
    if (have !== undefined) return Promise.resolve(have)
    let loading = this.#loading.get(p)
    if (loading === undefined) {
      loading = (async () => {
        const part = this.disk === undefined ? emptyPartition() : await this.disk.load(p)
        this.partitions.set(p, part)
        this.#loading.delete(p)
        return part
      })()
      loading.catch(() => this.#loading.delete(p))
      this.#loading.set(p, loading)
    }
    return loading
  }
}

function emptyPartition(): LocalPartition {
  return { log: [], lastOffset: 0, durableOffset: 0, meta: undefined, state: CommittedState.EMPTY }
}

const engines = new WeakMap<MemoryStore, LocalEngine>()

/** The MemoryStore behind a memory or file backend (a runtime field of StoreBackend). */
function storeOf(backend: StateBackend): MemoryStore {
  const store = (backend as unknown as { store?: unknown }).store
  if (!(store instanceof MemoryStore)) {
    throw invalid(`a ${backend.kind} PartitionStore needs a backend built on MemoryStore`)
  }
  return store
}

export function openLocalPartitionStore(
  backend: StateBackend,
  options: PartitionStoreOptions,
): PartitionStore {
  const store = storeOf(backend)
  let engine = engines.get(store)
  if (engine === undefined) {
    let disk: DiskLog | undefined
    if (backend.kind === 'file') {
      const path = (backend as FileBackend).path
      if (typeof path !== 'string') throw invalid('a file PartitionStore needs a FileBackend')
      disk = new DiskLog(join(path, 'checkpoint'), options.fsync ?? true)
    }
    engine = new LocalEngine(store.epochs, disk)
    engines.set(store, engine)
  }
  return new LocalPartitionStore(backend, engine, options.hooks ?? {})
}

class LocalPartitionStore implements PartitionStore {
  readonly kind: StateBackendKind
  readonly #backend: StateBackend
  readonly #engine: LocalEngine
  readonly #hooks: PartitionStoreHooks
  #closed = false

  constructor(backend: StateBackend, engine: LocalEngine, hooks: PartitionStoreHooks) {
    this.kind = backend.kind
    this.#backend = backend
    this.#engine = engine
    this.#hooks = hooks
  }

  #check(): void {
    if (this.#closed) throw closedStore(this.kind)
  }

  /** Synchronous: FENCED if a newer epoch is stored. Call right before mutating. */
  #checkFence(p: number, epoch: number): void {
    const stored = this.#engine.epochs.get(p)
    if (stored !== undefined && stored > epoch) throw new FencedError(p, epoch, stored)
  }

  /** Check, and raise the stored epoch to `epoch` (persisted by the backend) if it is lower. */
  async #fence(p: number, epoch: number): Promise<void> {
    this.#checkFence(p, epoch)
    const stored = this.#engine.epochs.get(p)
    if (stored === undefined || stored < epoch) await this.#backend.fencedWrite(p, epoch, {})
  }

  async claim(partition: number, epoch: number, leader?: number): Promise<void> {
    this.#check()
    validatePartition(partition)
    validateEpoch(epoch)
    if (leader !== undefined) validateEpoch(leader)
    await this.#engine.queue.run(partition, async () => {
      this.#check()
      await this.#engine.partition(partition)
      // Leadership needs Redis state; here the record lives as long as the store (it keeps the
      // contract for in-process clusters sharing one store).
      const storedLeader = this.#engine.leaders.get(partition)
      if (leader !== undefined && storedLeader !== undefined && storedLeader > leader) {
        this.#checkFence(partition, epoch)
        throw new LeaderFencedError(partition, leader, storedLeader)
      }
      await this.#backend.fencedWrite(partition, epoch, {})
      if (leader !== undefined) this.#engine.leaders.set(partition, leader)
    })
  }

  /**
   * Offsets follow the order of the calls: when the partition is loaded and its epoch already
   * stored, the entry is placed synchronously; otherwise it waits in the partition's append gate,
   * behind which every later append of the partition queues too.
   */
  appendBatch(partition: number, epoch: number, entry: LogAppend): Promise<number> {
    try {
      this.#check()
      validateAppend(partition, epoch, entry)
    } catch (err) {
      return Promise.reject(asError(err))
    }
    const payload = Buffer.from(entry.payload)
    const engine = this.#engine
    const part = engine.partitions.get(partition)
    const gate = engine.appendGates.get(partition)
    if (gate === undefined && part !== undefined && engine.epochs.get(partition) === epoch) {
      try {
        return this.#place(partition, part, epoch, entry, payload)
      } catch (err) {
        return Promise.reject(asError(err))
      }
    }
    const placed = (gate ?? Promise.resolve()).then(async () => {
      const loaded = await engine.partition(partition)
      await this.#fence(partition, epoch)
      this.#check()
      return { durable: this.#place(partition, loaded, epoch, entry, payload) }
    })
    const next = placed.then(
      () => undefined,
      () => undefined,
    )
    engine.appendGates.set(partition, next)
    void next.then(() => {
      if (engine.appendGates.get(partition) === next) engine.appendGates.delete(partition)
    })
    return placed.then((r) => r.durable)
  }

  /** Synchronously: check the epoch, give the entry the next offset; resolves once durable. */
  #place(p: number, part: LocalPartition, epoch: number, entry: LogAppend, payload: Buffer): Promise<number> {
    this.#checkFence(p, epoch)
    const e: LogEntry = {
      offset: ++part.lastOffset,
      epoch,
      producerId: entry.producerId,
      sequence: entry.sequence,
      count: entry.count,
      payload,
    }
    part.log.push(e)
    if (this.#engine.disk === undefined) {
      part.durableOffset = e.offset
      return Promise.resolve(e.offset)
    }
    return this.#engine.disk.append(p, part, e).then(() => e.offset)
  }

  async *replay(
    partition: number,
    fromOffset: number,
    options: ReplayOptions = {},
  ): AsyncGenerator<LogEntry> {
    this.#check()
    validateReplay(partition, fromOffset, options)
    const part = await this.#engine.partition(partition)
    const keep = dedupFilter(options.dedup)
    const to = options.toOffset ?? Number.MAX_SAFE_INTEGER
    let after = fromOffset
    let n = 0
    for (;;) {
      this.#check()
      // The log array may be replaced (trim) or grow between steps: find the position anew.
      const e = part.log[firstAfter(part.log, after)]
      if (e === undefined || e.offset > part.durableOffset || e.offset > to) return
      after = e.offset
      if (keep(e)) yield { ...e, payload: Buffer.from(e.payload) }
      if (++n % 256 === 0) await yieldToLoop()
    }
  }

  writeCheckpoint(partition: number, epoch: number, cp: CheckpointWrite): Promise<CheckpointResult> {
    return new Promise<CheckpointResult>((resolve) => {
      this.#check()
      const deleted = validateCheckpoint(partition, epoch, cp)
      resolve(this.#engine.queue.run(partition, () => this.#writeCheckpoint(partition, epoch, cp, deleted)))
    })
  }

  async #writeCheckpoint(
    p: number,
    epoch: number,
    cp: CheckpointWrite,
    deleted: Set<string>,
  ): Promise<CheckpointResult> {
    this.#check()
    const part = await this.#engine.partition(p)
    await this.#fence(p, epoch)
    if (part.meta !== undefined && cp.logOffset < part.meta.logOffset) {
      throw invalid(
        `partition ${p}: checkpoint logOffset ${cp.logOffset} is behind the committed checkpoint's ${part.meta.logOffset}`,
        { partition: p, logOffset: cp.logOffset, committed: part.meta.logOffset },
      )
    }
    let changes: PackedChanges
    if (isPackedChanges(cp.changed)) {
      changes = cp.changed
      for (const k of changes.keys) checkChangedKey(k, deleted)
    } else {
      for (const pair of cp.changed) checkChanged(pair, deleted)
      changes = packPairs(cp.changed)
    }
    // Built now (values copied), swapped in at the commit: this partition's checkpoints, claims
    // and trims run one at a time, so nothing else replaces part.state meanwhile.
    const latest = CommittedState.latest(changes)
    // (A full checkpoint starts from nothing; its `deleted` is empty: validateCheckpoint.)
    const next = (cp.full ? CommittedState.EMPTY : part.state).merge(changes, deleted, latest)
    const meta: Meta = {
      checkpointId: cp.checkpointId,
      logOffset: cp.logOffset,
      dedup: { ...cp.dedup },
      epoch,
      committedAt: Date.now(),
    }
    const apply = (): void => {
      this.#checkFence(p, epoch)
      part.state = next
      part.meta = meta
    }
    const result = {
      changed: latest.size,
      deleted: cp.full ? 0 : deleted.size,
      merging: false,
    }
    const disk = this.#engine.disk
    if (disk === undefined) {
      await this.#hooks.beforeCommit?.(p, cp.checkpointId)
      apply()
    } else {
      const staged = await disk.stageCheckpoint(p, meta, next)
      try {
        await this.#hooks.beforeCommit?.(p, cp.checkpointId)
        this.#checkFence(p, epoch)
        await staged.commit()
      } catch (err) {
        await staged.discard()
        throw err
      }
      // Renamed: this is the committed checkpoint on disk, so memory follows at once, even if
      // the directory fsync below fails (then the caller hears STATE_UNAVAILABLE: maybe durable).
      apply()
      await staged.sync()
    }
    await this.#hooks.afterCommit?.(p, cp.checkpointId)
    return result
  }

  async loadCheckpoint(partition: number): Promise<LoadedCheckpoint> {
    this.#check()
    validatePartition(partition)
    const part = await this.#engine.partition(partition)
    const meta = part.meta
    // A consistent snapshot: commits replace the (immutable) committed state, never change it.
    const snapshot = part.state
    return {
      partition,
      checkpointId: meta?.checkpointId,
      logOffset: meta?.logOffset ?? 0,
      dedup: { ...meta?.dedup },
      epoch: meta?.epoch,
      committedAt: meta?.committedAt ?? 0,
      entries: () => batches(snapshot, () => this.#check()),
    }
  }

  async trim(partition: number, upToOffset: number): Promise<TrimResult> {
    this.#check()
    validatePartition(partition)
    validateOffset(upToOffset, 'upToOffset')
    return this.#engine.queue.run(partition, async () => {
      this.#check()
      const part = await this.#engine.partition(partition)
      const to = Math.min(upToOffset, part.meta?.logOffset ?? 0)
      const keepFrom = firstAfter(part.log, to)
      if (keepFrom === 0) return { trimmedTo: to, removed: 0 }
      part.log = part.log.slice(keepFrom)
      await this.#engine.disk?.rewrite(partition, part, to)
      return { trimmedTo: to, removed: keepFrom }
    })
  }

  async logInfo(partition: number): Promise<LogInfo> {
    this.#check()
    validatePartition(partition)
    const part = await this.#engine.partition(partition)
    const durable = firstAfter(part.log, part.durableOffset)
    return {
      length: durable,
      firstOffset: durable > 0 ? part.log[0]?.offset : undefined,
      lastOffset: part.durableOffset,
    }
  }

  async settle(partition: number, epoch: number): Promise<void> {
    this.#check()
    validatePartition(partition)
    validateEpoch(epoch)
    await this.#engine.partition(partition)
    this.#checkFence(partition, epoch)
  }

  async close(): Promise<void> {
    this.#closed = true
    await this.#engine.disk?.flushed()
  }
}

/** Index of the first entry with offset > `offset` (entries ascending). */
function firstAfter(log: readonly LogEntry[], offset: number): number {
  let lo = 0
  let hi = log.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if ((log[mid] as LogEntry).offset <= offset) lo = mid + 1
    else hi = mid
  }
  return lo
}

async function* batches(
  snapshot: CommittedState,
  check: () => void,
  size = 1024,
): AsyncGenerator<[string, Buffer][]> {
  for (let i = 0; i < snapshot.size; i += size) {
    check()
    const batch: [string, Buffer][] = []
    for (let j = i; j < Math.min(i + size, snapshot.size); j++) {
      batch.push([snapshot.keys[j]!, Buffer.from(snapshot.value(j))])
    }
    yield batch
    if (i > 0 && i % (size * 64) === 0) await yieldToLoop()
  }
}

// ---------------------------------------------------------------------------------------------
// On disk

const LOG_MAGIC = Buffer.from('SHLG', 'latin1')
const CP_MAGIC = Buffer.from('SHCP', 'latin1')
const FORMAT_VERSION = 1
/**
 * Checkpoint files: 1 held [key, value] pairs (still read); 2 holds the keys, the values end to
 * end and their ends (see CommittedState).
 */
const CP_FORMAT_VERSION = 2
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1

/** The ends as little-endian u32 bytes (a view of them on little-endian machines). */
function endsBytes(ends: Uint32Array): Buffer {
  if (LITTLE_ENDIAN) return Buffer.from(ends.buffer, ends.byteOffset, ends.byteLength)
  const b = Buffer.allocUnsafe(ends.length * 4)
  ends.forEach((e, i) => b.writeUInt32LE(e, i * 4))
  return b
}
const LOG_HEADER_BYTES = LOG_MAGIC.length + 1 + 8
const CP_HEADER_BYTES = CP_MAGIC.length + 1 + 4
const RECORD_HEADER_BYTES = 8

function logHeader(baseOffset: number): Buffer {
  const b = Buffer.alloc(LOG_HEADER_BYTES)
  LOG_MAGIC.copy(b, 0)
  b.writeUInt8(FORMAT_VERSION, LOG_MAGIC.length)
  b.writeBigUInt64BE(BigInt(baseOffset), LOG_MAGIC.length + 1)
  return b
}

function encodeRecord(e: LogEntry): Buffer {
  const payload = packr.pack([e.offset, e.epoch, e.producerId, e.sequence, e.count, e.payload])
  const b = Buffer.allocUnsafe(RECORD_HEADER_BYTES + payload.length)
  b.writeUInt32BE(payload.length, 0)
  b.writeUInt32BE(crc32(payload), 4)
  payload.copy(b, RECORD_HEADER_BYTES)
  return b
}

function isErrno(err: unknown, code: string): boolean {
  return typeof err === 'object' && err !== null && (err as NodeJS.ErrnoException).code === code
}

interface PendingAppend {
  entry: LogEntry
  bytes: Buffer
  done: Deferred<void>
}

interface LogWriter {
  /** Bytes of the log file that are durable. */
  size: number
  pending: PendingAppend[]
  running: Promise<void> | undefined
  /**
   * The log file, open between group writes: opening and closing it for each one took a fifth
   * of a durable worker's main thread (docs/benchmarks.md, "Worker memory"). Closed when the
   * file is replaced (trim), after a failed write, and when the store closes.
   */
  fh: FileHandle | undefined
}

interface StagedCheckpoint {
  /** The rename: from here on the new checkpoint is the one on disk. */
  commit(): Promise<void>
  /** Make the rename durable (directory fsync). */
  sync(): Promise<void>
  discard(): Promise<void>
}

/** The file backend's persistence of logs and checkpoints. */
class DiskLog {
  readonly #dir: string
  readonly #fsync: boolean
  readonly #writers = new Map<number, LogWriter>()
  /** File-level operations of a partition's log (group writes, rewrites), one at a time. */
  readonly #fileLock = new KeyedQueue()
  #ready: Promise<void> | undefined
  #seq = 0

  constructor(dir: string, fsync: boolean) {
    this.#dir = dir
    this.#fsync = fsync
  }

  #logFile(p: number): string {
    return join(this.#dir, `p${p}.log`)
  }

  #cpFile(p: number): string {
    return join(this.#dir, `p${p}.cp`)
  }

  /** Create the directory and delete temp files a crash left behind (once). */
  #init(): Promise<void> {
    this.#ready ??= (async () => {
      await mkdir(this.#dir, { recursive: true })
      for (const name of await readdir(this.#dir)) {
        if (name.endsWith('.tmp')) await unlink(join(this.#dir, name)).catch(() => {})
      }
    })()
    return this.#ready
  }

  async load(p: number): Promise<LocalPartition> {
    try {
      await this.#init()
    } catch (err) {
      throw new StateError(
        ErrorCodes.STATE_BACKEND,
        `cannot open checkpoint directory ${this.#dir}: ${String(err)}`,
        {
          cause: err,
        },
      )
    }
    const part = emptyPartition()
    const cpFile = this.#cpFile(p)
    let cpBytes: Buffer | undefined
    try {
      cpBytes = await readFile(cpFile)
    } catch (err) {
      if (!isErrno(err, 'ENOENT')) throw unavailable(`cannot read ${cpFile}`, err)
    }
    if (cpBytes !== undefined) {
      const { meta, state } = decodeCheckpoint(cpBytes, cpFile, p)
      part.meta = meta
      part.state = state
    }
    const logFile = this.#logFile(p)
    let logBytes: Buffer | undefined
    try {
      logBytes = await readFile(logFile)
    } catch (err) {
      if (!isErrno(err, 'ENOENT')) throw unavailable(`cannot read ${logFile}`, err)
    }
    let size = 0
    let base = 0
    if (logBytes !== undefined) {
      const parsed = decodeLog(logBytes, logFile)
      part.log = parsed.entries
      base = parsed.base
      size = parsed.validBytes
      if (parsed.validBytes < logBytes.length) {
        // A torn last record (crash mid-append): cut it off so appends continue after valid data.
        const fh = await open(logFile, 'r+')
        try {
          await fh.truncate(parsed.validBytes)
          if (this.#fsync) await fh.sync()
        } finally {
          await fh.close()
        }
      }
    }
    const last = part.log[part.log.length - 1]?.offset ?? 0
    part.lastOffset = Math.max(base, last, part.meta?.logOffset ?? 0)
    part.durableOffset = part.lastOffset
    this.#writers.set(p, { size, pending: [], running: undefined, fh: undefined })
    return part
  }

  #writer(p: number): LogWriter {
    let w = this.#writers.get(p)
    if (w === undefined) {
      w = { size: 0, pending: [], running: undefined, fh: undefined }
      this.#writers.set(p, w)
    }
    return w
  }

  /** Resolves when `e` (already in part.log) is on disk; rejects (and rolls back) if writing failed. */
  append(p: number, part: LocalPartition, e: LogEntry): Promise<void> {
    const w = this.#writer(p)
    const done = deferred<void>()
    w.pending.push({ entry: e, bytes: encodeRecord(e), done })
    w.running ??= this.#drain(p, part, w)
    return done.promise
  }

  async #drain(p: number, part: LocalPartition, w: LogWriter): Promise<void> {
    while (w.pending.length > 0) {
      const group = w.pending
      w.pending = []
      const last = (group[group.length - 1] as PendingAppend).entry.offset
      try {
        await this.#fileLock.run(p, async () => {
          const created = w.size === 0
          if (created) await closeLog(w) // a new file: 'w' creates (or empties) it
          const fh = (w.fh ??= await open(this.#logFile(p), created ? 'w' : 'r+'))
          const bytes = Buffer.concat([...(created ? [logHeader(0)] : []), ...group.map((g) => g.bytes)])
          await fh.write(bytes, 0, bytes.length, w.size)
          if (this.#fsync) await fh.datasync()
          w.size += bytes.length
          if (created) await this.#syncDir()
        })
        part.durableOffset = Math.max(part.durableOffset, last)
        for (const g of group) g.done.resolve()
      } catch (err) {
        // Nothing after the durable prefix survives: drop it from memory and fail its appends.
        const failed = [...group, ...w.pending]
        w.pending = []
        part.log = part.log.slice(0, firstAfter(part.log, part.durableOffset))
        part.lastOffset = part.durableOffset
        await this.#fileLock
          .run(p, async () => {
            await closeLog(w)
            const fh = await open(this.#logFile(p), 'r+')
            try {
              await fh.truncate(w.size)
            } finally {
              await fh.close()
            }
          })
          .catch(() => {})
        const error = unavailable(`cannot append to ${this.#logFile(p)}`, err)
        for (const g of failed) g.done.reject(error)
      }
    }
    w.running = undefined
  }

  /** Rewrite the log with the entries still in part.log (after a trim), atomically. */
  async rewrite(p: number, part: LocalPartition, base: number): Promise<void> {
    const w = this.#writer(p)
    await this.#fileLock.run(p, async () => {
      await closeLog(w) // the file is replaced: the next write opens the new one
      const durable = part.log.slice(0, firstAfter(part.log, part.durableOffset))
      const bytes = Buffer.concat([logHeader(base), ...durable.map(encodeRecord)])
      await this.#replace(this.#logFile(p), bytes)
      w.size = bytes.length
    })
  }

  /** Write the checkpoint to a temp file (fsynced); commit() renames it into place. */
  async stageCheckpoint(p: number, meta: Meta, state: CommittedState): Promise<StagedCheckpoint> {
    await this.#init()
    const file = this.#cpFile(p)
    const tmp = `${file}.${process.pid}.${this.#seq++}.tmp`
    // Format 2: keys, values end to end, their ends (little-endian u32): no object per key.
    const payload = packr.pack([
      CP_FORMAT_VERSION,
      p,
      [meta.checkpointId, meta.logOffset, meta.dedup, meta.epoch, meta.committedAt],
      state.keys,
      state.data,
      endsBytes(state.ends),
    ])
    const header = Buffer.alloc(CP_HEADER_BYTES)
    CP_MAGIC.copy(header, 0)
    header.writeUInt8(CP_FORMAT_VERSION, CP_MAGIC.length)
    header.writeUInt32BE(crc32(payload), CP_MAGIC.length + 1)
    try {
      await this.#writeFile(tmp, [header, payload])
    } catch (err) {
      await unlink(tmp).catch(() => {})
      throw unavailable(`cannot write checkpoint ${tmp}`, err)
    }
    return {
      commit: async () => {
        try {
          await rename(tmp, file)
        } catch (err) {
          throw unavailable(`cannot commit checkpoint ${file}`, err)
        }
      },
      sync: async () => {
        try {
          await this.#syncDir()
        } catch (err) {
          throw unavailable(`checkpoint ${file} committed, but syncing its directory failed`, err)
        }
      },
      discard: () => unlink(tmp).catch(() => {}),
    }
  }

  async #writeFile(file: string, parts: Buffer[]): Promise<void> {
    const fh = await open(file, 'wx')
    try {
      for (const b of parts) await fh.write(b)
      if (this.#fsync) await fh.sync()
    } finally {
      await fh.close()
    }
  }

  async #replace(file: string, bytes: Buffer): Promise<void> {
    await this.#init()
    const tmp = `${file}.${process.pid}.${this.#seq++}.tmp`
    try {
      await this.#writeFile(tmp, [bytes])
      await rename(tmp, file)
      await this.#syncDir()
    } catch (err) {
      await unlink(tmp).catch(() => {})
      throw unavailable(`cannot rewrite ${file}`, err)
    }
  }

  async #syncDir(): Promise<void> {
    if (!this.#fsync) return
    const fh = await open(this.#dir, 'r')
    try {
      await fh.sync()
    } finally {
      await fh.close()
    }
  }

  /** Resolves when no append is being written; closes the open log files (reopened on demand). */
  async flushed(): Promise<void> {
    for (const w of this.#writers.values()) await w.running
    await this.#fileLock.idle()
    await Promise.all([...this.#writers].map(([p, w]) => this.#fileLock.run(p, () => closeLog(w))))
  }
}

async function closeLog(w: LogWriter): Promise<void> {
  const fh = w.fh
  w.fh = undefined
  await fh?.close().catch(() => {})
}

function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err))
}

function unavailable(what: string, err: unknown): StateUnavailableError {
  return new StateUnavailableError(`file checkpoint store: ${what}: ${String(err)}`, { cause: err })
}

function corrupt(file: string, why: string): StateError {
  return new StateError(ErrorCodes.STATE_BACKEND, `corrupt checkpoint file ${file}: ${why}`, {
    data: { file },
  })
}

function decodeLog(bytes: Buffer, file: string): { base: number; entries: LogEntry[]; validBytes: number } {
  if (bytes.length < LOG_HEADER_BYTES) {
    // A crash while the file was first created: nothing was acknowledged from it.
    return { base: 0, entries: [], validBytes: 0 }
  }
  if (!bytes.subarray(0, LOG_MAGIC.length).equals(LOG_MAGIC)) throw corrupt(file, 'bad magic')
  const version = bytes.readUInt8(LOG_MAGIC.length)
  if (version !== FORMAT_VERSION) throw corrupt(file, `unsupported format version ${version}`)
  const base = Number(bytes.readBigUInt64BE(LOG_MAGIC.length + 1))
  const entries: LogEntry[] = []
  let pos = LOG_HEADER_BYTES
  while (pos < bytes.length) {
    const torn = (): { base: number; entries: LogEntry[]; validBytes: number } => ({
      base,
      entries,
      validBytes: pos,
    })
    if (pos + RECORD_HEADER_BYTES > bytes.length) return torn()
    const len = bytes.readUInt32BE(pos)
    const end = pos + RECORD_HEADER_BYTES + len
    if (end > bytes.length) return torn()
    const payload = bytes.subarray(pos + RECORD_HEADER_BYTES, end)
    if (crc32(payload) !== bytes.readUInt32BE(pos + 4)) {
      if (end === bytes.length) return torn()
      throw corrupt(file, `checksum mismatch in the record at byte ${pos}`)
    }
    let decoded: unknown
    try {
      decoded = packr.unpack(payload)
    } catch (err) {
      throw corrupt(file, `undecodable record at byte ${pos} (${String(err)})`)
    }
    if (!Array.isArray(decoded) || decoded.length !== 6 || !(decoded[5] instanceof Uint8Array)) {
      throw corrupt(file, `bad record at byte ${pos}`)
    }
    const [offset, epoch, producerId, sequence, count, data] = decoded as [
      number,
      number,
      string,
      number,
      number,
      Uint8Array,
    ]
    entries.push({ offset, epoch, producerId, sequence, count, payload: Buffer.from(data) })
    pos = end
  }
  return { base, entries, validBytes: pos }
}

function decodeCheckpoint(
  bytes: Buffer,
  file: string,
  partition: number,
): { meta: Meta; state: CommittedState } {
  if (bytes.length < CP_HEADER_BYTES || !bytes.subarray(0, CP_MAGIC.length).equals(CP_MAGIC)) {
    throw corrupt(file, 'bad magic')
  }
  const version = bytes.readUInt8(CP_MAGIC.length)
  if (version !== 1 && version !== CP_FORMAT_VERSION) {
    throw corrupt(file, `unsupported format version ${version}`)
  }
  const payload = bytes.subarray(CP_HEADER_BYTES)
  if (crc32(payload) !== bytes.readUInt32BE(CP_MAGIC.length + 1)) throw corrupt(file, 'checksum mismatch')
  let decoded: unknown
  try {
    decoded = packr.unpack(payload)
  } catch (err) {
    throw corrupt(file, `undecodable payload (${String(err)})`)
  }
  const fields = version === 1 ? 4 : 6
  if (
    !Array.isArray(decoded) ||
    decoded.length !== fields ||
    decoded[0] !== version ||
    decoded[1] !== partition
  ) {
    throw corrupt(file, 'unexpected payload shape')
  }
  const m: unknown = decoded[2]
  if (!Array.isArray(m) || m.length !== 5) throw corrupt(file, 'unexpected payload shape')
  const [checkpointId, logOffset, dedup, epoch, committedAt] = m as [
    string,
    number,
    Record<string, number>,
    number,
    number,
  ]
  const meta = { checkpointId, logOffset, dedup: { ...dedup }, epoch, committedAt }
  if (version === 1) {
    const stored: unknown = decoded[3]
    if (!Array.isArray(stored)) throw corrupt(file, 'unexpected payload shape')
    for (const item of stored) {
      if (!Array.isArray(item) || typeof item[0] !== 'string' || !(item[1] instanceof Uint8Array)) {
        throw corrupt(file, 'bad entry')
      }
    }
    return { meta, state: CommittedState.from(packPairs(stored as [string, Uint8Array][])) }
  }
  const [, , , keys, data, endBytes] = decoded as unknown[]
  if (
    !Array.isArray(keys) ||
    !keys.every((k) => typeof k === 'string') ||
    !(data instanceof Uint8Array) ||
    !(endBytes instanceof Uint8Array) ||
    endBytes.length !== keys.length * 4
  ) {
    throw corrupt(file, 'bad entries')
  }
  const ends = new Uint32Array(keys.length)
  const view = new DataView(endBytes.buffer, endBytes.byteOffset, endBytes.byteLength)
  let prev = 0
  for (let i = 0; i < ends.length; i++) {
    const e = view.getUint32(i * 4, true)
    if (e < prev || e > data.length) throw corrupt(file, 'bad entries')
    ends[i] = prev = e
  }
  if (prev !== data.length) throw corrupt(file, 'bad entries')
  // A copy: the state outlives the file's bytes and must not pin them.
  return { meta, state: new CommittedState(keys, Buffer.from(data), ends) }
}
