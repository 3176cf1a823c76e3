/**
 * A file PartitionStore that the worker processes of one host share (`shoal up`'s embedded
 * default): every partition has its own state directory (`DIR/<prefix>/p<N>`, a FileBackend
 * with its own LOCK file and its own log and checkpoint files). The worker that claims a
 * partition opens its directory; it closes it when it lets the partition go (release, fence),
 * and a partition's next owner opens it then. A directory still locked by a live process (a
 * fenced owner that has not noticed yet) fails the claim with a retryable STATE_UNAVAILABLE, so
 * the new owner retries until it is free; a dead owner's lock is taken over at once.
 *
 * The guarantees are those of the file backend on one machine: appends and checkpoints are
 * fsynced before they resolve, so a worker crash (kill -9) loses nothing that was acked. It does
 * not survive the loss of the machine or its disk, and it cannot span hosts: use Redis for that.
 */
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { ErrorCodes } from '../../errors.ts'
import { StateError, StateUnavailableError, type StateBackend } from '../backend.ts'
import {
  closedStore,
  type CheckpointResult,
  type CheckpointWrite,
  type LoadedCheckpoint,
  type LogAppend,
  type LogEntry,
  type LogInfo,
  type PartitionStore,
  type PartitionStoreOptions,
  type ReplayOptions,
  type TrimResult,
} from './contract.ts'

interface Opened {
  backend: StateBackend
  store: PartitionStore
}

export interface PartitionedFileStoreOptions extends PartitionStoreOptions {
  dir: string
  /** @default 'shoal' */
  prefix?: string
}

export class PartitionedFileStore implements PartitionStore {
  readonly kind = 'file' as const
  readonly #opts: PartitionedFileStoreOptions
  readonly #open = new Map<number, Promise<Opened>>()
  /** Partitions let go of: refused until claimed again, so a late call cannot reopen them. */
  readonly #released = new Set<number>()
  #closed = false

  constructor(options: PartitionedFileStoreOptions) {
    this.#opts = options
  }

  /** The highest epoch stored for any of `partitions` (0 when none), for a restarting coordinator. */
  static async epochFloor(options: PartitionedFileStoreOptions, partitions: number): Promise<number> {
    const { FileBackend } = await import('../file/file-backend.ts')
    let floor = 0
    for (let p = 0; p < partitions; p++) {
      if (!existsSync(join(options.dir, dirName(options.prefix, p)))) continue
      // A directory a live worker holds is skipped: that worker rejoins with its epochs.
      const backend = await FileBackend.open({ dir: options.dir, prefix: dirName(options.prefix, p) }).catch(
        () => null,
      )
      if (backend === null) continue
      try {
        floor = Math.max(floor, (await backend.getEpoch(p)) ?? 0)
      } finally {
        await backend.close()
      }
    }
    return floor
  }

  async claim(partition: number, epoch: number, leader?: number): Promise<void> {
    this.#released.delete(partition)
    await (await this.#get(partition)).claim(partition, epoch, leader)
  }
  async appendBatch(partition: number, epoch: number, entry: LogAppend): Promise<number> {
    return (await this.#get(partition)).appendBatch(partition, epoch, entry)
  }
  async *replay(partition: number, fromOffset: number, options?: ReplayOptions): AsyncIterable<LogEntry> {
    yield* (await this.#get(partition)).replay(partition, fromOffset, options)
  }
  async writeCheckpoint(partition: number, epoch: number, cp: CheckpointWrite): Promise<CheckpointResult> {
    return (await this.#get(partition)).writeCheckpoint(partition, epoch, cp)
  }
  async loadCheckpoint(partition: number): Promise<LoadedCheckpoint> {
    return (await this.#get(partition)).loadCheckpoint(partition)
  }
  async trim(partition: number, upToOffset: number): Promise<TrimResult> {
    return (await this.#get(partition)).trim(partition, upToOffset)
  }
  async logInfo(partition: number): Promise<LogInfo> {
    return (await this.#get(partition)).logInfo(partition)
  }
  async settle(partition: number, epoch: number): Promise<void> {
    return (await this.#get(partition)).settle(partition, epoch)
  }

  /** Close the partition's directory (and free its lock) for its next owner. */
  async release(partition: number): Promise<void> {
    this.#released.add(partition)
    const o = this.#open.get(partition)
    this.#open.delete(partition)
    if (o === undefined) return
    const opened = await o.catch(() => null)
    if (opened === null) return
    await opened.store.close().catch(() => {})
    await opened.backend.close().catch(() => {})
  }

  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    await Promise.all([...this.#open.keys()].map((p) => this.release(p)))
  }

  #get(partition: number): Promise<PartitionStore> {
    if (this.#closed) return Promise.reject(closedStore('file'))
    if (this.#released.has(partition)) {
      return Promise.reject(
        new StateError(ErrorCodes.FENCED, `partition ${partition} was released by this worker`),
      )
    }
    let o = this.#open.get(partition)
    if (o === undefined) {
      o = this.#openDir(partition)
      this.#open.set(partition, o)
      o.catch(() => {
        if (this.#open.get(partition) === o) this.#open.delete(partition)
      })
    }
    return o.then((x) => x.store)
  }

  async #openDir(partition: number): Promise<Opened> {
    const [{ FileBackend }, { openLocalPartitionStore }] = await Promise.all([
      import('../file/file-backend.ts'),
      import('./local-store.ts'),
    ])
    let backend: StateBackend
    try {
      backend = await FileBackend.open({
        dir: this.#opts.dir,
        prefix: dirName(this.#opts.prefix, partition),
        ...(this.#opts.fsync === undefined ? {} : { fsync: this.#opts.fsync }),
      })
    } catch (err) {
      // Still held by its previous owner, which lets go once it learns it was fenced.
      if (err instanceof StateError && err.code === ErrorCodes.STATE_BACKEND && /in use/.test(err.message)) {
        throw new StateUnavailableError(err.message, { cause: err })
      }
      throw err
    }
    return { backend, store: openLocalPartitionStore(backend, this.#opts) }
  }
}

function dirName(prefix: string | undefined, partition: number): string {
  return `${prefix ?? 'shoal'}-p${partition}`
}
