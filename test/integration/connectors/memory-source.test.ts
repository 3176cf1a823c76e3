/**
 * A MemorySource embedded in a cluster in this process (createWorkerNode's `sources`): each
 * worker reads one shared MemoryStream as its own consumer; durable state in a real
 * redis-server. The same guarantees as the Redis source: every event applied once, also when a
 * reader stops with records in flight and a survivor re-delivers them.
 */
import { pino } from 'pino'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { ShoalClient } from '../../../src/client/client.ts'
import { MemorySource, MemoryStream } from '../../../src/connectors/memory/source.ts'
import { Coordinator } from '../../../src/coordinator/coordinator.ts'
import { openPartitionStore } from '../../../src/state/checkpoint/partition-store.ts'
import { createStateBackend } from '../../../src/state/index.ts'
import { createMemoryTransport } from '../../../src/transport/memory/memory-transport.ts'
import { createWorkerNode, type WorkerNode } from '../../../src/worker/node.ts'
import { startRedis, type RedisServer } from '../../helpers/redis.ts'
import { expectExactState, type Totals } from '../../helpers/totals.ts'
import { waitFor } from '../../helpers/wait-for.ts'

const logger = pino({ level: process.env.DEBUG_LOG ?? 'silent' })
let redis: RedisServer
beforeAll(async () => {
  redis = await startRedis({ aof: true })
})
afterAll(async () => {
  await redis.dispose()
})
const cleanup: (() => Promise<void> | void)[] = []
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f()
})

let port = 9700
let prefix = 0
const HB = 50

function produce(stream: MemoryStream, from: number, to: number, expected: Totals, keys = 300): void {
  const events: { key: string; value: number }[] = []
  for (let i = from; i < to; i++) {
    const key = `k${(i * 7919) % keys}`
    const value = (i % 17) - 5
    events.push({ key, value })
    const e = expected.get(key) ?? { count: 0, sum: 0 }
    e.count++
    e.sum += value
    expected.set(key, e)
  }
  stream.append(events)
}

async function cluster(stream: MemoryStream, workers: number) {
  prefix++
  const c = new Coordinator({
    transport: createMemoryTransport({ nodeId: 'coordinator', role: 'coordinator' }),
    listen: { host: 'mem-src', port: port++ },
    partitions: 16,
    heartbeatIntervalMs: HB,
    heartbeatMisses: 3,
    checkpointIntervalMs: 200,
    logger,
  })
  await c.start()
  cleanup.push(() => c.stop({ timeoutMs: 200 }))
  const nodes: WorkerNode[] = []
  for (let i = 0; i < workers; i++) {
    const id = `w${i}`
    const backend = await createStateBackend(redis.url, { prefix: `m${prefix}` })
    const store = await openPartitionStore(backend)
    const n = createWorkerNode({
      transport: createMemoryTransport({ nodeId: id, role: 'worker' }),
      clientTransport: createMemoryTransport({ nodeId: `${id}-src`, role: 'client' }),
      coordinator: c.address,
      listen: { host: 'mem-src', port: port++ },
      memberId: id,
      version: 'test',
      threads: 1,
      heartbeatIntervalMs: HB,
      logger,
      store,
      sources: [new MemorySource({ stream, consumer: id, readCount: 500 })],
    })
    await n.start()
    cleanup.push(async () => {
      await n.stop()
      await store.close()
      await backend.close()
    })
    nodes.push(n)
  }
  const cl = await ShoalClient.connect({
    coordinator: c.address,
    transport: createMemoryTransport({ nodeId: 'client', role: 'client' }),
    retryDelayMs: 20,
  })
  cleanup.push(() => cl.close())
  return { nodes, cl }
}

describe('MemorySource in a cluster', () => {
  it('three readers share the stream; state exact, nothing pending', async () => {
    const stream = new MemoryStream('shared')
    const expected: Totals = new Map()
    produce(stream, 0, 5000, expected)
    stream.append([{ value: 'no key' }])
    const { nodes, cl } = await cluster(stream, 3)
    produce(stream, 5000, 8000, expected)
    await waitFor(() => stream.pending() === 0 && stream.lag() === 0, 'the stream drained', 20_000)
    await expectExactState(cl, expected)
    expect(stream.deadLetters.map((d) => d.reason)).toEqual([expect.stringContaining('no key')])
    // Every reader took part.
    for (const n of nodes) expect(n.pumps[0]!.status().read).toBeGreaterThan(0)
  })

  it('a reader stopped with records in flight: a survivor re-delivers them, each applied once', async () => {
    const stream = new MemoryStream('loss')
    const expected: Totals = new Map()
    produce(stream, 0, 10_000, expected)
    const { nodes, cl } = await cluster(stream, 3)
    produce(stream, 10_000, 20_000, expected)
    await waitFor(() => nodes[1]!.pumps[0]!.status().inFlight > 0, 'w1 holding records in flight')
    await nodes[1]!.stop()
    const left = stream.pending()
    produce(stream, 20_000, 25_000, expected)
    await waitFor(() => stream.pending() === 0 && stream.lag() === 0, 'the stream drained', 30_000)
    // Every entry has a key: nothing may have been given up on.
    expect(stream.deadLetters.map((d) => `${d.consumer} ${d.id}: ${d.reason}`).slice(0, 5)).toEqual([])
    await expectExactState(cl, expected)
    // w1's unacknowledged records were re-delivered by the survivors (not just read afresh).
    expect(left).toBeGreaterThan(0)
    const redelivered = [nodes[0]!, nodes[2]!].reduce(
      (n, w) => n + w.pumps[0]!.source.status().redelivered,
      0,
    )
    expect(redelivered).toBeGreaterThan(0)
  })
})
