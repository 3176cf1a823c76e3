/**
 * The PartitionStore contract on real redis-server processes (a standalone server and a 3-master
 * cluster), plus Redis specifics: key layout under the partition's hash tag, the stream entry
 * format, staged segments that expire when abandoned and are verified at commit, the background
 * fold of a delta and its fencing, and WAIT / WAITAOF durability.
 */
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest'
import { ErrorCodes } from '../../../src/errors.ts'
import { createStateBackend, type StateBackendOptions } from '../../../src/state/index.ts'
import type { RedisBackend } from '../../../src/state/redis/redis-backend.ts'
import {
  openPartitionStore,
  readCheckpoint,
  replayAll,
  type PartitionStoreOptions,
} from '../../../src/state/checkpoint/partition-store.ts'
import { startRedis, startRedisCluster, type RedisCluster, type RedisServer } from '../../helpers/redis.ts'
import { waitFor } from '../../helpers/wait-for.ts'
import { expectCode, partitionStoreSuite, uniquePrefix, type StoreNode } from './partition-store-suite.ts'

const fast: StateBackendOptions = { connectTimeoutMs: 3000, commandTimeoutMs: 5000 }

function opener(url: () => string): (prefix: string, options?: PartitionStoreOptions) => Promise<StoreNode> {
  return async (prefix, options) => {
    const backend = await createStateBackend(url(), { ...fast, prefix })
    onTestFinished(() => backend.close())
    return { backend, store: await openPartitionStore(backend, options) }
  }
}

describe('standalone redis', () => {
  let server: RedisServer
  beforeAll(async () => {
    server = await startRedis()
  })
  afterAll(() => server?.dispose())
  const open = opener(() => server.url)

  partitionStoreSuite({
    name: 'redis',
    open,
    peer: (_node, prefix, options) => open(prefix, options),
    restart: (_node, prefix, options) => open(prefix, options),
  })

  const keysOf = (prefix: string): string[] =>
    server
      .cli('--scan', '--pattern', `*${prefix}*`)
      .split('\n')
      .filter((k) => k !== '')
      .sort()

  it('re-checks a server that is loading its AOF every 100 ms, not after 1 s (ioredis default)', async () => {
    // After a restart the server answers LOADING until its AOF is read; a 1 s re-check made
    // every Redis restart cost the leader its 1.5 s lease (docs/reliability.md).
    const backend = (await createStateBackend(server.url, fast)) as RedisBackend
    onTestFinished(() => backend.close())
    expect(
      (backend.client as { options: { maxLoadingRetryTime?: number } }).options.maxLoadingRetryTime,
    ).toBe(100)
  })

  it('keeps every key of a partition under its hash tag; the log is a stream of small fields', async () => {
    const prefix = uniquePrefix()
    const { store } = await open(prefix)
    await store.claim(3, 1)
    await store.appendBatch(3, 1, {
      producerId: 'prod',
      sequence: 7,
      payload: Buffer.from([0, 1, 255]),
      count: 2,
    })
    await store.writeCheckpoint(3, 1, {
      checkpointId: 'c',
      changed: [['k', Buffer.from('v')]],
      logOffset: 1,
      dedup: { prod: 7 },
      full: false,
    })
    await store.writeCheckpoint(3, 1, {
      checkpointId: 'd',
      changed: [['k2', Buffer.from('v')]],
      deleted: ['k'],
      logOffset: 1,
      dedup: { prod: 7 },
      full: false,
    })
    await store.settle(3, 1)
    const keys = keysOf(prefix)
    const tag = `{${prefix}:p3}`
    expect(keys.every((k) => k.startsWith(tag))).toBe(true)
    expect(keys.filter((k) => !k.includes('#seg:'))).toEqual([`${tag}#cp`, `${tag}#epoch`, `${tag}#log`])
    expect(keys.filter((k) => k.includes('#seg:')).length).toBe(1) // the base; the delta was folded in
    expect(server.cli('type', `${tag}#log`).trim()).toBe('stream')
    expect(server.cli('type', `${tag}#cp`).trim()).toBe('hash')
    const entry = server
      .cli('xrange', `${tag}#log`, '-', '+')
      .split('\n')
      .filter((l) => l !== '')
    expect(entry.slice(0, 9)).toEqual(['0-1', 'p', 'prod', 's', '7', 'n', '2', 'e', '1'])
    // Nothing of this shows up as state keys of the backend.
    const backend = await createStateBackend(server.url, { ...fast, prefix })
    onTestFinished(() => backend.close())
    const found: string[] = []
    for await (const batch of backend.scan('')) found.push(...batch)
    expect(found).toEqual([])
  })

  it('an abandoned stage expires on its own; an expired stage is never committed', async () => {
    const prefix = uniquePrefix()
    let action: 'crash' | 'expire' | undefined
    const node = await open(prefix, {
      stageTtlMs: 60_000,
      hooks: {
        beforeCommit: () => {
          if (action === 'crash') throw new Error('crash')
          if (action === 'expire') {
            for (const k of keysOf(prefix).filter((k) => k.includes('#seg:'))) server.cli('del', k)
          }
        },
      },
    })
    action = 'crash'
    const changed: [string, Buffer][] = Array.from({ length: 3000 }, (_, i) => [
      `k${i}`,
      Buffer.from(`v${i}`),
    ])
    await expect(
      node.store.writeCheckpoint(0, 1, { checkpointId: 'c', changed, logOffset: 0, dedup: {}, full: false }),
    ).rejects.toThrow('crash')
    const [staged] = keysOf(prefix).filter((k) => k.includes('#seg:'))
    expect(staged).toBeDefined()
    expect(Number(server.cli('hlen', staged!).trim())).toBe(3000)
    const ttl = Number(server.cli('pttl', staged!).trim())
    expect(ttl).toBeGreaterThan(0)
    expect(ttl).toBeLessThanOrEqual(60_000)
    expect((await readCheckpoint(node.store, 0)).checkpoint.checkpointId).toBeUndefined()

    action = 'expire'
    const err = await expectCode(
      node.store.writeCheckpoint(0, 1, { checkpointId: 'c2', changed, logOffset: 0, dedup: {}, full: false }),
      ErrorCodes.CHECKPOINT_ABORTED,
    )
    expect(err.retryable).toBe(true)
    expect((await readCheckpoint(node.store, 0)).checkpoint.checkpointId).toBeUndefined()
    action = undefined
    await node.store.writeCheckpoint(0, 1, {
      checkpointId: 'c3',
      changed,
      logOffset: 0,
      dedup: {},
      full: false,
    })
    const { state } = await readCheckpoint(node.store, 0)
    expect(state.size).toBe(3000)
    expect(
      Number(
        server
          .cli(
            'pttl',
            keysOf(prefix).find((k) => k.includes('#seg:'))!,
          )
          .trim(),
      ),
    ).toBe(-1)
  })

  it('folds a delta into the base in the background, fenced: a zombie cannot fold, the successor can', async () => {
    const prefix = uniquePrefix()
    let crash = false
    const old = await open(prefix, {
      hooks: {
        afterCommit: () => {
          if (crash) throw new Error('crash after commit')
        },
      },
    })
    const base: [string, Buffer][] = Array.from({ length: 2000 }, (_, i) => [`k${i}`, Buffer.from('base')])
    await old.store.writeCheckpoint(1, 1, {
      checkpointId: 'base',
      changed: base,
      logOffset: 0,
      dedup: {},
      full: true,
    })
    const delta: [string, Buffer][] = Array.from({ length: 1500 }, (_, i) => [
      `k${i * 2}`,
      Buffer.from('delta'),
    ])
    const r = await old.store.writeCheckpoint(1, 1, {
      checkpointId: 'delta',
      changed: delta,
      deleted: ['k1', 'k3'],
      logOffset: 0,
      dedup: {},
      full: false,
    })
    expect(r).toEqual({ changed: 1500, deleted: 2, merging: true })
    await old.store.settle(1, 1)
    const tag = `{${prefix}:p1}`
    expect(server.cli('hget', `${tag}#cp`, 'delta').trim()).toBe('')
    expect(keysOf(prefix).filter((k) => k.includes('#seg:') || k.includes('#del:')).length).toBe(1)

    crash = true
    await expect(
      old.store.writeCheckpoint(1, 1, {
        checkpointId: 'd2',
        changed: [['k5', Buffer.from('d2')]],
        deleted: ['k7'],
        logOffset: 0,
        dedup: {},
        full: false,
      }),
    ).rejects.toThrow('crash after commit')
    const pending = server.cli('hget', `${tag}#cp`, 'delta').trim()
    expect(pending).not.toBe('')
    const successor = await open(prefix)
    await successor.store.claim(1, 2)
    await expectCode(old.store.settle(1, 1), ErrorCodes.FENCED)
    expect(server.cli('hget', `${tag}#cp`, 'delta').trim()).toBe(pending)
    const expected = new Map<string, string>()
    for (const [k] of base) expected.set(k, 'base')
    for (const [k] of delta) expected.set(k, 'delta')
    expected.delete('k1')
    expected.delete('k3')
    expected.set('k5', 'd2')
    expected.delete('k7')
    const read = async (): Promise<Map<string, string>> =>
      new Map([...(await readCheckpoint(successor.store, 1)).state].map(([k, v]) => [k, v.toString()]))
    expect(await read()).toEqual(expected)
    await successor.store.settle(1, 2)
    expect(server.cli('hget', `${tag}#cp`, 'delta').trim()).toBe('')
    expect(await read()).toEqual(expected)
  })

  it('backgroundMerge: false folds inside writeCheckpoint', async () => {
    const prefix = uniquePrefix()
    const { store } = await open(prefix, { backgroundMerge: false })
    await store.writeCheckpoint(2, 1, {
      checkpointId: 'a',
      changed: [['x', Buffer.from('1')]],
      logOffset: 0,
      dedup: {},
      full: false,
    })
    const r = await store.writeCheckpoint(2, 1, {
      checkpointId: 'b',
      changed: [['y', Buffer.from('2')]],
      logOffset: 0,
      dedup: {},
      full: false,
    })
    expect(r.merging).toBe(false)
    expect(server.cli('hget', `{${prefix}:p2}#cp`, 'delta').trim()).toBe('')
  })

  it('WAIT for a replica that does not exist: DURABILITY_TIMEOUT, retryable; the entry is on the primary', async () => {
    const { store } = await open(uniquePrefix(), { durability: { replicas: 1, timeoutMs: 100 } })
    const err = await expectCode(
      store.appendBatch(0, 1, { producerId: 'p', sequence: 1, payload: Buffer.from('x'), count: 1 }),
      ErrorCodes.DURABILITY_TIMEOUT,
    )
    expect(err.retryable).toBe(true)
    expect(err.data).toMatchObject({ acked: 0, required: 1 })
    // Applied on the primary but not acknowledged: a retry is deduplicated on replay.
    expect((await replayAll(store, 0, 0)).length).toBe(1)
    await expectCode(
      store.writeCheckpoint(0, 1, { checkpointId: 'c', changed: [], logOffset: 1, dedup: {}, full: false }),
      ErrorCodes.DURABILITY_TIMEOUT,
    )
  })

  it('WAITAOF: refused clearly before Redis 7.2, honoured from 7.2', async () => {
    const version = /redis_version:(\d+)\.(\d+)/.exec(server.cli('info', 'server'))
    const modern = Number(version?.[1]) > 7 || (Number(version?.[1]) === 7 && Number(version?.[2]) >= 2)
    const { store } = await open(uniquePrefix(), {
      durability: { aof: { local: false, replicas: 0 }, timeoutMs: 100 },
    })
    const append = store.appendBatch(0, 1, {
      producerId: 'p',
      sequence: 1,
      payload: Buffer.from('x'),
      count: 1,
    })
    if (modern) expect(await append).toBe(1)
    else expect((await expectCode(append, ErrorCodes.STATE_BACKEND)).message).toContain('7.2')
  })
})

describe('redis with a replica', () => {
  let primary: RedisServer
  let replica: RedisServer
  beforeAll(async () => {
    ;[primary, replica] = await Promise.all([startRedis(), startRedis()])
    replica.cli('replicaof', '127.0.0.1', String(primary.port))
    await waitFor(
      () => replica.cli('info', 'replication').includes('master_link_status:up'),
      'replication link',
      10_000,
    )
  })
  afterAll(() => Promise.all([replica?.dispose(), primary?.dispose()]))

  it('WAIT 1: appends of one tick share a WAIT and resolve once the replica has them', async () => {
    const prefix = uniquePrefix()
    const backend = (await createStateBackend(primary.url, { ...fast, prefix })) as RedisBackend
    onTestFinished(() => backend.close())
    const store = await openPartitionStore(backend, { durability: { replicas: 1, timeoutMs: 2000 } })
    const offsets = await Promise.all(
      Array.from({ length: 50 }, (_, i) =>
        store.appendBatch(i % 2, 1, {
          producerId: 'p',
          sequence: i,
          payload: Buffer.from(`b${i}`),
          count: 1,
        }),
      ),
    )
    expect(offsets.filter((_, i) => i % 2 === 0)).toEqual(Array.from({ length: 25 }, (_, i) => i + 1))
    expect(Number(replica.cli('xlen', `{${prefix}:p0}#log`).trim())).toBe(25)
    await store.writeCheckpoint(0, 1, {
      checkpointId: 'c',
      changed: [['k', Buffer.from('v')]],
      logOffset: 25,
      dedup: {},
      full: false,
    })
    expect(replica.cli('hget', `{${prefix}:p0}#cp`, 'id').trim()).toBe('c')
  })
})

describe('redis cluster (3 masters)', () => {
  let cluster: RedisCluster
  beforeAll(async () => {
    cluster = await startRedisCluster(3)
  }, 30_000)
  afterAll(() => cluster?.dispose())
  const open = opener(() => cluster.url)

  partitionStoreSuite({
    name: 'redis cluster',
    open,
    peer: (_node, prefix, options) => open(prefix, options),
    restart: (_node, prefix, options) => open(prefix, options),
  })

  it('spreads partitions over the masters', async () => {
    const prefix = uniquePrefix()
    const { store } = await open(prefix)
    await Promise.all(
      Array.from({ length: 16 }, (_, p) =>
        store.appendBatch(p, 1, { producerId: 'p', sequence: 1, payload: Buffer.from('x'), count: 1 }),
      ),
    )
    const perNode = cluster.nodes.map((n) => Number(n.cli('dbsize').trim()))
    expect(perNode.filter((n) => n > 0).length).toBeGreaterThan(1)
  })
})
