/**
 * Durable keyed state in one process (memory transport, real piscina threads, one shared
 * in-memory PartitionStore standing in for Redis): coordinator-triggered checkpoints, restore
 * from checkpoint + replay log when partitions move, exactly-once results across an abrupt
 * worker loss. test/e2e/failover.test.ts does the same with real processes, Redis and kill -9.
 */
import { pino } from 'pino'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { AdminClient } from '../../../src/client/admin.ts'
import { ShoalClient } from '../../../src/client/client.ts'
import { Coordinator } from '../../../src/coordinator/coordinator.ts'
import {
  openPartitionStore,
  readCheckpoint,
  type PartitionStoreOptions,
} from '../../../src/state/checkpoint/partition-store.ts'
import { createStateBackend } from '../../../src/state/index.ts'
import { ErrorCodes } from '../../../src/errors.ts'
import { createMemoryTransport } from '../../../src/transport/memory/memory-transport.ts'
import { createWorkerNode, type WorkerNode } from '../../../src/worker/node.ts'
import { startRedis, startRedisCluster, type RedisCluster, type RedisServer } from '../../helpers/redis.ts'
import { expectExactState, sendCounted, type Totals } from '../../helpers/totals.ts'
import { waitFor } from '../../helpers/wait-for.ts'

type StoreKind = 'memory' | 'redis' | 'redis-cluster'
let redis: RedisServer | undefined
let redisCluster: RedisCluster | undefined
afterAll(async () => {
  await redis?.dispose()
  await redisCluster?.dispose()
})

const logger = pino({ level: process.env.DEBUG_LOG ?? 'silent' })
const cleanup: (() => Promise<void> | void)[] = []
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f()
})
let port = 7000
let storeSeq = 0
const HB = 50

async function startWorker(
  c: Coordinator,
  id: string,
  storeUrl: string,
  maxQueuePerThread?: number,
  storeOptions?: PartitionStoreOptions,
): Promise<WorkerNode> {
  const backend = await createStateBackend(storeUrl)
  const store = await openPartitionStore(backend, storeOptions)
  const n = createWorkerNode({
    transport: createMemoryTransport({ nodeId: id, role: 'worker' }),
    coordinator: c.address,
    listen: { host: 'dur', port: port++ },
    memberId: id,
    version: 'test',
    threads: 1,
    heartbeatIntervalMs: HB,
    logger,
    store,
    maxQueuePerThread,
  })
  await n.start()
  cleanup.push(async () => {
    await n.stop()
    await store.close()
    await backend.close()
  })
  return n
}

async function cluster(
  kind: StoreKind,
  workers: number,
  checkpointIntervalMs = 0,
  opts: {
    partitions?: number
    maxQueuePerThread?: number
    batchSize?: number
    deliveryTimeoutMs?: number
    storeUrl?: string
    storeOptions?: PartitionStoreOptions
  } = {},
) {
  let storeName = `memory:durable-${process.pid}-${storeSeq++}`
  if (kind === 'redis') {
    redis ??= await startRedis({ aof: true })
    redis.cli('FLUSHALL')
    storeName = redis.url
    if (opts.storeUrl !== undefined) storeName = opts.storeUrl
  } else if (kind === 'redis-cluster') {
    redisCluster ??= await startRedisCluster(3)
    for (const n of redisCluster.nodes) n.cli('FLUSHALL')
    storeName = redisCluster.url
  }
  const c = new Coordinator({
    transport: createMemoryTransport({ nodeId: 'coordinator', role: 'coordinator' }),
    listen: { host: 'dur', port: port++ },
    partitions: opts.partitions ?? 16,
    heartbeatIntervalMs: HB,
    heartbeatMisses: 3,
    checkpointIntervalMs,
    logger,
  })
  await c.start()
  cleanup.push(() => c.stop({ timeoutMs: 200 }))
  const nodes: WorkerNode[] = []
  for (let i = 0; i < workers; i++)
    nodes.push(await startWorker(c, `w${i}`, storeName, opts.maxQueuePerThread, opts.storeOptions))
  await settled(c, workers)
  const cl = await ShoalClient.connect({
    coordinator: c.address,
    transport: createMemoryTransport({ nodeId: 'client', role: 'client' }),
    retryDelayMs: 20,
    ...(opts.batchSize === undefined ? {} : { batchSize: opts.batchSize }),
    ...(opts.deliveryTimeoutMs === undefined ? {} : { deliveryTimeoutMs: opts.deliveryTimeoutMs }),
  })
  cleanup.push(() => cl.close())
  return { c, nodes, cl, storeName }
}

async function settled(c: Coordinator, members: number): Promise<void> {
  await waitFor(() => {
    const s = c.status()
    const alive = s.members.filter((m) => m.state === 'alive')
    return (
      c.readiness().ok &&
      alive.length === members &&
      s.assignment.owners.every((o) => o !== null && alive.some((m) => m.id === o)) &&
      alive.every((m) => m.readyPartitions === m.partitions)
    )
  }, `${members} members own every partition, all ready`)
}

describe.each(['memory', 'redis', 'redis-cluster'] as const)(
  'durable state (in process, %s store)',
  (kind) => {
    it('checkpoints on the coordinator trigger: state, offset and dedup table are committed, the log is trimmed', async () => {
      const { c, nodes, cl, storeName } = await cluster(kind, 2)
      const expected: Totals = new Map()
      sendCounted(cl, 0, 20_000, expected, 500, 'k')
      await cl.flush()
      const record = await c.checkpoint()
      expect(record).not.toBeNull()
      expect(record!.failedMembers).toEqual([])
      expect(record!.partitions).toBe(16)
      expect(record!.keys).toBe(500)
      expect(c.status().checkpoints.partitionCheckpoint.every((id) => id === record!.id)).toBe(true)
      // Only keys changed since the last checkpoint are written the next time.
      sendCounted(cl, 20_000, 20_010, expected, 500, 'k')
      await cl.flush()
      const second = await c.checkpoint()
      expect(second!.keys).toBeGreaterThan(0)
      expect(second!.keys).toBeLessThanOrEqual(10)
      // What the store holds is exactly the state (read it back outside the workers).
      const backend = await createStateBackend(storeName)
      const store = await openPartitionStore(backend)
      cleanup.push(async () => {
        await store.close()
        await backend.close()
      })
      let total = 0
      for (let p = 0; p < 16; p++) {
        const { checkpoint, state } = await readCheckpoint(store, p)
        expect(checkpoint.checkpointId).toBe(String(second!.id))
        expect(Object.keys(checkpoint.dedup)).toHaveLength(1)
        total += state.size
        // The coordinator's complete message trims the log up to the checkpoint.
        await waitFor(async () => (await store.logInfo(p)).length === 0, `log of ${p} trimmed`)
      }
      expect(total).toBe(500)
      // 2 checkpoints x 16 partitions, plus the final ones of partitions handed over while joining.
      expect(nodes.reduce((n, w) => n + w.dataPlane.checkpointStats.done, 0)).toBeGreaterThanOrEqual(32)
      await expectExactState(cl, expected)
    })

    it('a worker lost mid-stream: its partitions restore from checkpoint + log elsewhere, exactly once', async () => {
      const { c, nodes, cl } = await cluster(kind, 3)
      const expected: Totals = new Map()
      sendCounted(cl, 0, 30_000, expected, 500, 'k')
      await cl.flush()
      expect((await c.checkpoint())!.failedMembers).toEqual([])
      // After the checkpoint: acked batches that only the log has.
      sendCounted(cl, 30_000, 60_000, expected, 500, 'k')
      await cl.flush()
      // More in flight while the worker disappears without handing anything back.
      sendCounted(cl, 60_000, 90_000, expected, 500, 'k')
      await nodes[1]!.stop()
      await cl.flush()
      await settled(c, 2)
      const replayed = nodes[0]!.dataPlane.checkpointStats.replayedBatches
      const replayed2 = nodes[2]!.dataPlane.checkpointStats.replayedBatches
      expect(replayed + replayed2).toBeGreaterThan(0)
      await expectExactState(cl, expected)
    })

    it('a savepoint writes every key of every partition, changed or not', async () => {
      const { c, cl } = await cluster(kind, 2)
      const expected: Totals = new Map()
      sendCounted(cl, 0, 5000, expected, 500, 's')
      await cl.flush()
      expect((await c.checkpoint())!.keys).toBe(500)
      expect((await c.checkpoint())!.keys).toBe(0) // nothing changed since
      const admin = await AdminClient.connect(
        createMemoryTransport({ nodeId: 'admin', role: 'client' }),
        c.address,
      )
      cleanup.push(() => admin.close())
      const sp = await admin.savepoint()
      expect(sp).toMatchObject({ full: true, partitions: 16, assigned: 16, keys: 500, failedMembers: [] })
      expect(c.status().checkpoints.last?.id).toBe(sp.id)
    })

    it('a fence landing while a checkpoint waits never writes the dropped (empty) state', async () => {
      const { c, nodes, cl, storeName } = await cluster(kind, 1)
      const expected: Totals = new Map()
      sendCounted(cl, 0, 2000, expected, 200, 'f')
      await cl.flush()
      expect((await c.checkpoint())!.keys).toBe(200)
      const dp = nodes[0]!.dataPlane
      const p = 3
      // A full checkpoint (as after a failed one) asked, then the fence before its snapshot: the
      // store still holds this owner's epoch, so only the data plane can refuse the write.
      const cp = dp.checkpoint('raced', [p], true)
      dp.fence(p)
      expect(await cp).toEqual([])
      const backend = await createStateBackend(storeName)
      const store = await openPartitionStore(backend)
      cleanup.push(async () => {
        await store.close()
        await backend.close()
      })
      const { checkpoint, state } = await readCheckpoint(store, p)
      expect(checkpoint.checkpointId).not.toBe('raced')
      expect(state.size).toBeGreaterThan(0) // 200 keys over 16 partitions: it had some
    })

    it('a fence landing while a partition restores stops the restore: the partition is not served', async () => {
      const { c, nodes, cl } = await cluster(kind, 1)
      const expected: Totals = new Map()
      sendCounted(cl, 0, 2000, expected, 200, 'g')
      await cl.flush()
      await c.checkpoint()
      const dp = nodes[0]!.dataPlane
      const p = 5
      const epoch = c.assignment.epochs[p]!
      dp.fence(p)
      const restoring = dp.restore(p, epoch)
      dp.fence(p)
      await expect(restoring).rejects.toMatchObject({ code: ErrorCodes.FENCED })
      expect(dp.partitionsInFlight().map((x) => x.partition)).not.toContain(p)
      // Restored again without a fence, it is whole.
      await dp.restore(p, epoch)
      expect(dp.partitionsInFlight().map((x) => x.partition)).toContain(p)
    })

    it('a survivor restoring many partitions with long logs at once loses no replayed batch', async () => {
      // No checkpoint: every partition replays its whole log, hundreds of small batches each,
      // into engine threads whose queues hold only 16 tasks.
      const { nodes, cl, c } = await cluster(kind, 2, 0, {
        partitions: 48,
        maxQueuePerThread: 16,
        batchSize: 5,
      })
      const expected: Totals = new Map()
      sendCounted(cl, 0, 40_000, expected, 2000, 'r')
      await cl.flush()
      await nodes[0]!.stop()
      await settled(c, 1)
      expect(nodes[1]!.dataPlane.checkpointStats.replayedBatches).toBeGreaterThan(1000)
      await expectExactState(cl, expected)
    })

    it('partitions handed over on join and drain carry their state', async () => {
      const { c, nodes, cl, storeName } = await cluster(kind, 1)
      const expected: Totals = new Map()
      sendCounted(cl, 0, 10_000, expected, 500, 'k')
      await cl.flush()
      const second = await startWorker(c, 'w-late', storeName)
      await settled(c, 2)
      expect((second.worker.status().partitions as unknown[]).length).toBeGreaterThan(0)
      sendCounted(cl, 10_000, 20_000, expected, 500, 'k')
      await cl.flush()
      await nodes[0]!.drain(5000)
      await settled(c, 1)
      sendCounted(cl, 20_000, 25_000, expected, 500, 'k')
      await cl.flush()
      await expectExactState(cl, expected)
    })
  },
)

describe('durable state (in process) when Redis restarts', () => {
  it('Redis killed and restarted (AOF) during checkpoints and appends: every key exact afterwards', async () => {
    const { c, cl } = await cluster('redis', 2, 100)
    const expected: Totals = new Map()
    sendCounted(cl, 0, 20_000, expected, 500, 'k')
    await cl.flush()
    await waitFor(() => c.status().checkpoints.completed >= 2, 'checkpoints running')
    // Stream, and crash Redis under it: appends and checkpoints fail while it is down, the
    // worker nacks (retryable) what it could not log, the client retries.
    sendCounted(cl, 20_000, 60_000, expected, 500, 'k')
    await redis!.stop('SIGKILL')
    await new Promise((r) => setTimeout(r, 300))
    sendCounted(cl, 60_000, 70_000, expected, 500, 'k')
    await redis!.restart()
    await cl.flush()
    expect(cl.stats.failed).toBe(0)
    expect(cl.stats.retries).toBeGreaterThan(0) // the outage was felt
    const completed = c.status().checkpoints.completed
    await waitFor(() => c.status().checkpoints.completed > completed + 1, 'checkpoints again')
    await expectExactState(cl, expected)
  })
})

describe('durable state (in process) with WAIT for replicas', () => {
  let primary: RedisServer
  let replica: RedisServer
  beforeAll(async () => {
    ;[primary, replica] = await Promise.all([startRedis(), startRedis()])
    replica.cli('replicaof', '127.0.0.1', String(primary.port))
    await waitFor(
      () => replica.cli('info', 'replication').includes('master_link_status:up'),
      'replication link',
      30_000,
    )
  }, 40_000)
  afterAll(() => Promise.all([replica?.dispose(), primary?.dispose()]))

  it('acks once the replica has each batch; refuses (retryable DURABILITY_TIMEOUT) when replicas are missing', async () => {
    primary.cli('FLUSHALL')
    const ok = await cluster('redis', 1, 0, {
      storeUrl: primary.url,
      storeOptions: { durability: { replicas: 1, timeoutMs: 2000 } },
    })
    const expected: Totals = new Map()
    sendCounted(ok.cl, 0, 5000, expected, 300, 'w')
    await ok.cl.flush()
    await expectExactState(ok.cl, expected)
    // The replica holds the partitions' logs.
    expect(replica.cli('keys', '*log*').trim().split('\n').length).toBeGreaterThan(1)
    for (const f of cleanup.splice(0).reverse()) await f()

    primary.cli('FLUSHALL')
    const short = await cluster('redis', 1, 0, {
      storeUrl: primary.url,
      storeOptions: { durability: { replicas: 2, timeoutMs: 50 } },
      deliveryTimeoutMs: 1000,
    })
    short.cl.send('w-1', { value: 1 })
    await expect(short.cl.flush()).rejects.toMatchObject({ code: ErrorCodes.DURABILITY_TIMEOUT })
    expect(short.nodes[0]!.worker.readiness().ok).toBe(true) // the worker stays up
  })
})
