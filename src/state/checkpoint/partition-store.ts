/**
 * The per-partition durability layer: a replay log of accepted batches plus checkpoints of the
 * partition's keyed state, both fenced by the partition's epoch. See docs/state.md
 * ("Replay log and checkpoints") for the protocol the worker follows and the atomicity design.
 *
 * ```
 * claim(p, epoch)                       before restoring: fences the previous owner
 * loadCheckpoint(p)                     state + { logOffset, dedup, epoch, checkpointId }
 * replay(p, logOffset, { dedup })       the batches accepted after the checkpoint, in order
 * appendBatch(p, epoch, batch)          per accepted batch, before the sender is acked
 * writeCheckpoint(p, epoch, cp)         changed keys + offset + dedup table, atomically
 * trim(p, cp.logOffset)                 drop the log entries the checkpoint covers
 * ```
 *
 * Invariant: after a crash at any point, the committed checkpoint's state plus the replay of the
 * log after its offset (deduplicated by producer sequence) is exactly the state after applying
 * every appended batch once. A checkpoint is either wholly committed or not at all; staged
 * data of an uncommitted checkpoint is never read.
 *
 * Three implementations, one contract (test/integration/checkpoint/): Redis (a Stream per
 * partition, Lua-fenced appends, staged segments committed by flipping a small record), and
 * in-process memory / on-disk file versions of the same semantics.
 */
import type { StateBackend } from '../backend.ts'
import { invalid, validateStoreOptions, type PartitionStore, type PartitionStoreOptions } from './contract.ts'

export * from './contract.ts'
export { PartitionedFileStore, type PartitionedFileStoreOptions } from './partitioned-file-store.ts'

/**
 * A PartitionStore over an open StateBackend (it shares the backend's connection or store and
 * its epoch records). Closing the store does not close the backend.
 */
export async function openPartitionStore(
  backend: StateBackend,
  options: PartitionStoreOptions = {},
): Promise<PartitionStore> {
  validateStoreOptions(backend.kind, options)
  switch (backend.kind) {
    case 'redis': {
      const [{ RedisBackend }, { RedisPartitionStore }] = await Promise.all([
        import('../redis/redis-backend.ts'),
        import('./redis-store.ts'),
      ])
      if (!(backend instanceof RedisBackend)) throw invalid('a redis PartitionStore needs a RedisBackend')
      return new RedisPartitionStore(backend, options)
    }
    case 'memory':
    case 'file': {
      const { openLocalPartitionStore } = await import('./local-store.ts')
      return openLocalPartitionStore(backend, options)
    }
  }
}
