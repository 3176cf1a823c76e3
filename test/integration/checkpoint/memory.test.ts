/**
 * The PartitionStore contract on the memory backend. A "restart" is a new backend over the same
 * named in-process store (the old one stays open, so the store survives), which is what an
 * in-process cluster's failover looks like.
 */
import { describe, expect, it, onTestFinished } from 'vitest'
import { ErrorCodes } from '../../../src/errors.ts'
import {
  openPartitionStore,
  type PartitionStoreOptions,
} from '../../../src/state/checkpoint/partition-store.ts'
import { MemoryBackend } from '../../../src/state/memory/memory-backend.ts'
import { expectCode, partitionStoreSuite, uniquePrefix, type StoreNode } from './partition-store-suite.ts'

async function open(prefix: string, options?: PartitionStoreOptions): Promise<StoreNode> {
  const backend = new MemoryBackend({ name: `cp-${prefix}`, prefix })
  onTestFinished(() => backend.close())
  return { backend, store: await openPartitionStore(backend, options) }
}

partitionStoreSuite({
  name: 'memory',
  open,
  peer: (_node, prefix, options) => open(prefix, options),
  restart: (_node, prefix, options) => open(prefix, options),
})

describe('memory PartitionStore options', () => {
  it('refuses durability options that need Redis', async () => {
    const backend = new MemoryBackend({ prefix: uniquePrefix() })
    onTestFinished(() => backend.close())
    await expectCode(openPartitionStore(backend, { durability: { replicas: 1 } }), ErrorCodes.INVALID_OPTION)
    await expectCode(
      openPartitionStore(backend, { durability: { aof: { local: true, replicas: 0 } } }),
      ErrorCodes.INVALID_OPTION,
    )
    const store = await openPartitionStore(backend, { durability: { replicas: 0, timeoutMs: 10 } })
    expect(store.kind).toBe('memory')
  })

  it('private memory backends do not share logs', async () => {
    const a = new MemoryBackend({ prefix: 'same' })
    const b = new MemoryBackend({ prefix: 'same' })
    onTestFinished(async () => {
      await Promise.all([a.close(), b.close()])
    })
    const sa = await openPartitionStore(a)
    const sb = await openPartitionStore(b)
    await sa.appendBatch(0, 1, { producerId: 'p', sequence: 1, payload: Buffer.from('x'), count: 1 })
    expect((await sb.logInfo(0)).length).toBe(0)
  })
})
