/**
 * Redis Streams source in process: a real redis-server holds the input stream and the durable
 * state (replay log, checkpoints); coordinator and workers run in this process on the memory
 * transport with real piscina threads. Each worker reads the stream as its own consumer of the
 * group and routes entries to their owners. test/e2e/connectors.test.ts does this with real
 * processes and SIGKILL.
 */
import { Redis } from 'ioredis'
import { pino } from 'pino'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { ShoalClient } from '../../../src/client/client.ts'
import { RedisStreamSource } from '../../../src/connectors/redis-stream/source.ts'
import { ErrorCodes } from '../../../src/errors.ts'
import type { RedisStreamSourceSpec } from '../../../src/connectors/spec.ts'
import { Coordinator } from '../../../src/coordinator/coordinator.ts'
import { openPartitionStore } from '../../../src/state/checkpoint/partition-store.ts'
import { createStateBackend } from '../../../src/state/index.ts'
import { createMemoryTransport } from '../../../src/transport/memory/memory-transport.ts'
import { createWorkerNode, type WorkerNode } from '../../../src/worker/node.ts'
import { startRedis, type RedisServer } from '../../helpers/redis.ts'
import { expectExactState, type Totals } from '../../helpers/totals.ts'
import { groupDrained, pendingOf, produceCounted } from '../../helpers/streams.ts'
import { waitFor } from '../../helpers/wait-for.ts'

const logger = pino({ level: process.env.DEBUG_LOG ?? 'silent' })
let redis: RedisServer
let r: Redis
beforeAll(async () => {
  redis = await startRedis({ aof: true })
  r = new Redis(redis.port, redis.host)
})
afterAll(async () => {
  r.disconnect()
  await redis.dispose()
})
const cleanup: (() => Promise<void> | void)[] = []
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f()
})

let port = 9100
const HB = 50

function spec(stream: string, over: Partial<RedisStreamSourceSpec> = {}): RedisStreamSourceSpec {
  return {
    kind: 'redis-stream',
    redis: redis.url,
    stream,
    group: 'shoal',
    keyField: 'key',
    dataField: 'data',
    format: 'json',
    start: 'earliest',
    dlq: `${stream}:dlq`,
    count: 1000,
    ...over,
  }
}

let clusterSeq = 0

async function startWorker(c: Coordinator, id: string, specs: RedisStreamSourceSpec[]): Promise<WorkerNode> {
  // One state keyspace per cluster, shared by its workers.
  const backend = await createStateBackend(redis.url, { prefix: `t${clusterSeq}` })
  const store = await openPartitionStore(backend)
  const n = createWorkerNode({
    transport: createMemoryTransport({ nodeId: id, role: 'worker' }),
    clientTransport: createMemoryTransport({ nodeId: `${id}-src`, role: 'client' }),
    coordinator: c.address,
    listen: { host: 'src', port: port++ },
    memberId: id,
    version: 'test',
    threads: 1,
    heartbeatIntervalMs: HB,
    logger,
    store,
    sources: specs.map((s) => new RedisStreamSource({ spec: s, consumer: id, scanIntervalMs: 100 })),
  })
  await n.start()
  cleanup.push(async () => {
    await n.stop()
    await store.close()
    await backend.close()
  })
  return n
}

async function cluster(workers: number, specs: RedisStreamSourceSpec[]) {
  clusterSeq++
  const c = new Coordinator({
    transport: createMemoryTransport({ nodeId: 'coordinator', role: 'coordinator' }),
    listen: { host: 'src', port: port++ },
    partitions: 16,
    heartbeatIntervalMs: HB,
    heartbeatMisses: 3,
    checkpointIntervalMs: 200,
    logger,
  })
  await c.start()
  cleanup.push(() => c.stop({ timeoutMs: 200 }))
  const nodes: WorkerNode[] = []
  for (let i = 0; i < workers; i++) nodes.push(await startWorker(c, `w${i}`, specs))
  const cl = await ShoalClient.connect({
    coordinator: c.address,
    transport: createMemoryTransport({ nodeId: 'client', role: 'client' }),
    retryDelayMs: 20,
  })
  cleanup.push(() => cl.close())
  return { c, nodes, cl }
}

const produce = (stream: string, from: number, to: number, expected: Totals, keys = 300) =>
  produceCounted(r, stream, from, to, expected, keys)
const pending = (stream: string) => pendingOf(r, stream, 'shoal')
const drained = (stream: string, group = 'shoal') => groupDrained(r, stream, group)

describe('Redis Streams source', () => {
  it('reads a stream with a consumer group: state exact, pending list empty, bad entries dead-lettered', async () => {
    await r.flushall()
    const stream = 'in'
    const expected: Totals = new Map()
    await produce(stream, 0, 6000, expected)
    // Malformed entries among good ones: bad JSON, no key, not an object, no data field.
    await r.xadd(stream, '*', 'data', '{"key":')
    await r.xadd(stream, '*', 'data', JSON.stringify({ value: 1 }))
    await r.xadd(stream, '*', 'data', '[1,2]')
    await r.xadd(stream, '*', 'other', 'x')
    await produce(stream, 6000, 8000, expected)
    const { nodes, cl } = await cluster(3, [spec(stream)])
    await waitFor(async () => await drained(stream), 'every entry acknowledged', 20_000)
    expect(await r.xlen(`${stream}:dlq`)).toBe(4)
    expect(nodes.reduce((n, w) => n + w.pumps[0]!.status().acked, 0)).toBe(8000)
    await expectExactState(cl, expected)
    const dlq = await r.xrange(`${stream}:dlq`, '-', '+')
    const reasons = dlq.map(([, f]) => f[f.indexOf('reason') + 1])
    expect(reasons.some((x) => x?.includes('not valid json'))).toBe(true)
    expect(reasons.some((x) => x?.includes('has no key'))).toBe(true)
    expect(reasons.some((x) => x?.includes('must hold an object'))).toBe(true)
    expect(reasons.some((x) => x?.includes("has no field 'data'"))).toBe(true)
    // Several readers shared the work (consumer names are the workers' ids).
    const consumers = (await r.xinfo('CONSUMERS', stream, 'shoal')) as unknown[][]
    expect(consumers.map((c) => String(c[1])).sort()).toEqual(['w0', 'w1', 'w2'])
  })

  it('two streams at once, start=latest skips what was there', async () => {
    await r.flushall()
    const expected: Totals = new Map()
    await produce('a', 0, 2000, expected)
    const ignored: Totals = new Map()
    await produce('b', 0, 500, ignored, 50)
    const { cl } = await cluster(2, [spec('a'), spec('b', { start: 'latest', group: 'g2' })])
    await produce('b', 500, 1500, expected, 50)
    await waitFor(
      async () => (await drained('a')) && (await drained('b', 'g2')),
      'both groups drained',
      20_000,
    )
    await expectExactState(cl, expected)
  })

  it('a reader lost mid-stream: survivors re-deliver its pending entries, each applied exactly once', async () => {
    await r.flushall()
    const stream = 'loss'
    const expected: Totals = new Map()
    await produce(stream, 0, 20_000, expected)
    const { nodes, cl } = await cluster(3, [spec(stream)])
    await produce(stream, 20_000, 40_000, expected)
    // One worker disappears while it holds entries in flight (read, not acknowledged).
    await waitFor(() => nodes[1]!.pumps[0]!.status().read > 0, 'w1 reading')
    await nodes[1]!.stop()
    await produce(stream, 40_000, 50_000, expected)
    await waitFor(async () => await drained(stream), 'pending list drained', 30_000)
    await expectExactState(cl, expected)
  })

  it('a database Redis cannot select is a startup error, never silently database 0', async () => {
    await expect(createStateBackend(`${redis.url}/22`)).rejects.toMatchObject({
      code: ErrorCodes.INVALID_OPTION,
    })
    const src = new RedisStreamSource({ spec: spec('nodb', { redis: `${redis.url}/22` }), consumer: 'c' })
    await expect(src.open()).rejects.toMatchObject({ code: ErrorCodes.INVALID_OPTION })
  })

  it('a reader restarted under the same name re-delivers its own pending entries first', async () => {
    await r.flushall()
    const stream = 'restart'
    const expected: Totals = new Map()
    await produce(stream, 0, 3000, expected)
    // Entries read by `w0` in an earlier life and never acknowledged.
    await r.xgroup('CREATE', stream, 'shoal', '0')
    await r.xreadgroup('GROUP', 'shoal', 'w0', 'COUNT', 700, 'STREAMS', stream, '>')
    expect(await pending(stream)).toBe(700)
    const { nodes, cl } = await cluster(1, [spec(stream)])
    await waitFor(async () => await drained(stream), 'pending list drained', 20_000)
    expect(nodes[0]!.pumps[0]!.status().redelivered).toBe(700)
    await expectExactState(cl, expected)
  })
})
