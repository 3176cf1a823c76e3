/**
 * Dedup of batches numbered per event (firstSequence, eventSequences): two senders of one
 * producer (a source reader and a survivor re-delivering its records) race; every event is
 * applied once. In process, memory transport, a durable in-memory store.
 */
import { Packr } from 'msgpackr'
import { pino } from 'pino'
import { afterEach, describe, expect, it } from 'vitest'
import { ShoalClient } from '../../../src/client/client.ts'
import { Coordinator } from '../../../src/coordinator/coordinator.ts'
import { ErrorCodes } from '../../../src/errors.ts'
import { createPartitioner } from '../../../src/protocol/partition.ts'
import { openPartitionStore } from '../../../src/state/checkpoint/partition-store.ts'
import { createStateBackend } from '../../../src/state/index.ts'
import { createMemoryTransport } from '../../../src/transport/memory/memory-transport.ts'
import { createWorkerNode } from '../../../src/worker/node.ts'
import { waitFor } from '../../helpers/wait-for.ts'

const logger = pino({ level: 'silent' })
const packr = new Packr({ useRecords: true, moreTypes: true })
const cleanup: (() => Promise<void> | void)[] = []
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f()
})

async function setup() {
  const c = new Coordinator({
    transport: createMemoryTransport({ nodeId: 'coordinator', role: 'coordinator' }),
    listen: { host: 'dedup', port: 1 },
    partitions: 4,
    heartbeatIntervalMs: 50,
    logger,
  })
  await c.start()
  cleanup.push(() => c.stop({ timeoutMs: 200 }))
  const backend = await createStateBackend(`memory:dedup-${process.pid}-${Date.now()}`)
  const store = await openPartitionStore(backend)
  const w = createWorkerNode({
    transport: createMemoryTransport({ nodeId: 'w', role: 'worker' }),
    coordinator: c.address,
    listen: { host: 'dedup', port: 2 },
    memberId: 'w',
    version: 'test',
    threads: 1,
    heartbeatIntervalMs: 50,
    logger,
    store,
  })
  await w.start()
  cleanup.push(async () => {
    await w.stop()
    await store.close()
    await backend.close()
  })
  await waitFor(() => c.status().members.every((m) => m.readyPartitions === m.partitions), 'ready')
  const client = async (id: string) => {
    const cl = await ShoalClient.connect({
      coordinator: c.address,
      transport: createMemoryTransport({ nodeId: id, role: 'client' }),
      retryDelayMs: 10,
    })
    cleanup.push(() => cl.close())
    return cl
  }
  return { a: await client('a'), b: await client('b') }
}

/** A batch of `key`'s events numbered `seqs` (value = seq), under producer `p`. */
function batch(partition: number, p: string, key: string, seqs: number[], numbered = true) {
  return {
    partition,
    producerId: p,
    sequence: seqs[seqs.length - 1]!,
    firstSequence: seqs[0]!,
    ...(numbered ? { eventSequences: seqs } : {}),
    count: seqs.length,
    payload: packr.pack(seqs.map((s) => [key, { value: s }])),
  }
}

describe('batches numbered per event', () => {
  it('a batch overlapping what a re-delivery applied applies only the rest; a covered one is a duplicate', async () => {
    const { a, b } = await setup()
    const p = createPartitioner(4)('k')
    // The survivor re-delivers 1 and 3 first (in order), then the original reader's batch
    // 1..7 arrives: 5 and 7 are applied, 1 and 3 not again.
    await b.sendBatch(batch(p, 'P', 'k', [1]))
    await b.sendBatch(batch(p, 'P', 'k', [3]))
    await a.sendBatch(batch(p, 'P', 'k', [1, 3, 5, 7]))
    expect(await a.getState('k')).toEqual({ count: 4, sum: 16 })
    // Entirely covered: acked without applying.
    await b.sendBatch(batch(p, 'P', 'k', [5, 7]))
    await b.sendBatch(batch(p, 'P', 'k', [3, 7]))
    expect(await a.getState('k')).toEqual({ count: 4, sum: 16 })
    // Above: applied.
    await b.sendBatch(batch(p, 'P', 'k', [8, 9]))
    expect(await a.getState('k')).toEqual({ count: 6, sum: 33 })
  })

  it('concurrent senders of one producer, in order each: every event exactly once', async () => {
    const { a, b } = await setup()
    const p = createPartitioner(4)('c')
    // A sends 1..200 in batches of 10; B re-delivers the same events in batches of 7, at the
    // same time. Whatever interleaving, the result is 200 events.
    const seqs = Array.from({ length: 200 }, (_, i) => i + 1)
    const chunks = (n: number) =>
      Array.from({ length: Math.ceil(200 / n) }, (_, i) => seqs.slice(i * n, i * n + n))
    await Promise.all([
      ...chunks(10).map((s) => a.sendBatch(batch(p, 'Q', 'c', s))),
      ...chunks(7).map((s) => b.sendBatch(batch(p, 'Q', 'c', s))),
    ])
    expect(await a.getState('c')).toEqual({ count: 200, sum: 20_100 })
  })

  it('an overlapping batch that does not number its events is refused, not half applied', async () => {
    const { a } = await setup()
    const p = createPartitioner(4)('n')
    await a.sendBatch(batch(p, 'R', 'n', [1, 2, 3]))
    await expect(a.sendBatch(batch(p, 'R', 'n', [2, 3, 4], false))).rejects.toMatchObject({
      code: ErrorCodes.SEQUENCE_OVERLAP,
    })
    expect(await a.getState('n')).toEqual({ count: 3, sum: 6 })
  })
})
