/**
 * The StateBackend suite against real redis-server processes: standalone and a 3-master cluster,
 * plus Redis-only checks: key layout and hash tags, ACL users and requirepass, mutual TLS,
 * Sentinel, AOF durability, and an outage (stop, fail fast and unhealthy, restart, recover).
 * One server (or cluster) per describe block, started in beforeAll.
 */
import type { Redis } from 'ioredis'
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest'
import { ErrorCodes, ShoalError } from '../../src/errors.ts'
import {
  createStateBackend,
  partitionKey,
  scanAll,
  type StateBackend,
  type StateBackendOptions,
} from '../../src/state/index.ts'
import type { RedisBackend } from '../../src/state/redis/redis-backend.ts'
import {
  startRedis,
  startRedisCluster,
  startRedisSentinel,
  type RedisCluster,
  type RedisServer,
} from '../helpers/redis.ts'
import { waitFor } from '../helpers/wait-for.ts'
import { stateConformance, uniquePrefix } from './state-suite.ts'

const buf = (s: string): Buffer => Buffer.from(s)
const fast: StateBackendOptions = { connectTimeoutMs: 3000, commandTimeoutMs: 2000 }

async function failure(p: Promise<unknown>): Promise<ShoalError> {
  const err: unknown = await p.then(
    () => undefined,
    (e: unknown) => e,
  )
  expect(err, 'expected a rejection').toBeInstanceOf(ShoalError)
  return err as ShoalError
}

async function open(url: string, options: StateBackendOptions = {}): Promise<StateBackend> {
  const b = await createStateBackend(url, { ...fast, ...options })
  onTestFinished(() => b.close())
  return b
}

describe('standalone redis', () => {
  let server: RedisServer
  beforeAll(async () => {
    server = await startRedis()
  })
  afterAll(() => server?.dispose())

  stateConformance({
    name: 'redis',
    open: (prefix) => createStateBackend(server.url, { ...fast, prefix }),
    concurrentOpen: true,
  })

  it('lays keys out under the prefix, with one hash tag per partition', async () => {
    const prefix = uniquePrefix('layout')
    const s = await open(server.url, { prefix })
    await s.put('lease', buf('1'))
    await s.fencedWrite(7, 3, { puts: [{ key: partitionKey(7, 'user-1'), value: buf('x') }] })
    const keys = server.cli('--scan', '--pattern', `*${prefix}*`).trim().split('\n').sort()
    expect(keys).toEqual([`${prefix}:lease`, `{${prefix}:p7}#epoch`, `{${prefix}:p7}:user-1`].sort())
    expect(server.cli('get', `{${prefix}:p7}#epoch`).trim()).toBe('3')
  })

  it('never uses KEYS', async () => {
    const s = await open(server.url, { prefix: uniquePrefix() })
    await s.put('a', buf('1'))
    const before = server.cli('info', 'commandstats')
    await scanAll(s, '')
    const after = server.cli('info', 'commandstats')
    expect(after).not.toMatch(/cmdstat_keys:/)
    expect(after).toMatch(/cmdstat_scan:/)
    expect(before === after).toBe(false)
  })

  it('exposes the client and a separate connection for blocking commands', async () => {
    const s = (await open(server.url, { prefix: uniquePrefix() })) as RedisBackend
    const dup = s.duplicateClient() as Redis
    onTestFinished(() => dup.disconnect())
    await dup.connect()
    // A blocking read on the duplicate does not stall the backend.
    const blocked = dup.blpop('nothing-here', 0.3)
    await s.put('k', buf('v'))
    expect((await s.get('k'))?.toString()).toBe('v')
    expect(await blocked).toBeNull()
  })
})

describe('redis cluster (3 masters)', () => {
  let cluster: RedisCluster
  beforeAll(async () => {
    cluster = await startRedisCluster(3)
  }, 30_000)
  afterAll(() => cluster?.dispose())

  stateConformance({
    name: 'redis cluster',
    open: (prefix) => createStateBackend(cluster.url, { ...fast, prefix }),
    concurrentOpen: true,
  })

  it('keeps a partition in one slot and spreads partitions over the masters', async () => {
    const prefix = uniquePrefix('slots')
    const s = await open(cluster.url, { prefix })
    for (let p = 0; p < 24; p++) {
      await s.fencedWrite(p, 1, {
        puts: [
          { key: partitionKey(p, 'a'), value: buf('1') },
          { key: partitionKey(p, 'b'), value: buf('2') },
        ],
      })
    }
    const node = cluster.nodes[0]!
    const slot = (k: string): string => node.cli('cluster', 'keyslot', k).trim()
    expect(slot(`{${prefix}:p5}:a`)).toBe(slot(`{${prefix}:p5}#epoch`))
    expect(slot(`{${prefix}:p5}:a`)).toBe(slot(`{${prefix}:p5}:anything-else`))
    const counts = cluster.nodes.map((n) => Number(n.cli('dbsize').trim()))
    expect(counts.every((c) => c > 0)).toBe(true)
    expect(await scanAll(s, '')).toHaveLength(48)
  })

  // Runs last in this block: it stops one master.
  it('fails partitions of a stopped master with STATE_UNAVAILABLE, health false, and recovers', async () => {
    const prefix = uniquePrefix('down')
    const s = await open(cluster.url, { prefix })
    const [first, victim] = [cluster.nodes[0]!, cluster.nodes[1]!]
    // The 3 masters own slots [0, 5460], [5461, 10921], [10922, 16383] (startRedisCluster).
    const slotOf = (p: number): number => Number(first.cli('cluster', 'keyslot', `{${prefix}:p${p}}`).trim())
    const onVictim = Array.from({ length: 64 }, (_, p) => p).find(
      (p) => slotOf(p) >= 5461 && slotOf(p) <= 10921,
    )!
    const elsewhere = Array.from({ length: 64 }, (_, p) => p).find((p) => slotOf(p) < 5461)!
    await s.put(partitionKey(onVictim, 'k'), buf('1'))
    expect(await s.health()).toBe(true)

    await victim.stop()
    await waitFor(async () => !(await s.health()), 'cluster health to turn false')
    const err = await failure(s.put(partitionKey(onVictim, 'k'), buf('2')))
    expect(err.code).toBe(ErrorCodes.STATE_UNAVAILABLE)
    expect(err.retryable).toBe(true)
    // Other masters answer until Redis marks the cluster down (cluster-node-timeout; then
    // CLUSTERDOWN, also STATE_UNAVAILABLE): either way nothing reads as empty.
    const other = await s.get(partitionKey(elsewhere, 'k')).catch((e: unknown) => e)
    if (other instanceof ShoalError) expect(other.code).toBe(ErrorCodes.STATE_UNAVAILABLE)
    else expect(other).toBeUndefined()

    await victim.restart()
    await waitFor(() => s.health(), 'cluster health after restart', 15_000)
    await waitFor(
      () =>
        s.put(partitionKey(onVictim, 'k'), buf('3')).then(
          () => true,
          () => false,
        ),
      'writes to the restarted master',
      15_000,
    )
    expect((await s.get(partitionKey(onVictim, 'k')))?.toString()).toBe('3')
  }, 30_000)
})

describe('redis authentication', () => {
  let acl: RedisServer
  let pass: RedisServer
  beforeAll(async () => {
    ;[acl, pass] = await Promise.all([
      startRedis({
        aclLines: [
          'user default off',
          'user admin on >adminpw ~* &* +@all',
          // The worker may touch only its prefix: global keys and partition hash tags.
          // INFO (a @dangerous command) is needed for the client's readiness check.
          'user worker on >workerpw ~acl:* ~{acl:* +@all -@dangerous +info',
        ],
      }),
      startRedis({ password: 's3cret/+@' }),
    ])
  })
  afterAll(() => Promise.all([acl?.dispose(), pass?.dispose()]))

  it('works as an ACL user inside its key space; NOPERM outside is a non-retryable STATE_BACKEND', async () => {
    const s = await open(acl.urlFor('worker', 'workerpw'), { prefix: 'acl' })
    await s.put('k', buf('v'))
    await s.incrBy('n')
    await s.fencedWrite(1, 1, { puts: [{ key: partitionKey(1, 'x'), value: buf('y') }] })
    expect(await scanAll(s, '')).toEqual(['k', 'n', partitionKey(1, 'x')])
    const outside = await open(acl.urlFor('worker', 'workerpw'), { prefix: 'other' })
    const err = await failure(outside.put('k', buf('v')))
    expect(err.code).toBe(ErrorCodes.STATE_BACKEND)
    expect(err.retryable).toBe(false)
    expect(err.message).toMatch(/NOPERM/)
  })

  it('fails to open with a wrong password, promptly and without leaking it', async () => {
    const err = await failure(createStateBackend(acl.urlFor('worker', 'wrong-pw'), fast))
    expect(err.code).toBe(ErrorCodes.STATE_BACKEND)
    expect(err.message).toMatch(/WRONGPASS|authentication/)
    expect(err.message).not.toContain('wrong-pw')
  })

  it('authenticates with requirepass from the URL (:password@)', async () => {
    const s = await open(pass.url, { prefix: uniquePrefix() })
    await s.put('k', buf('v'))
    expect((await s.get('k'))?.toString()).toBe('v')
    const anonymous = await failure(
      createStateBackend(`redis://127.0.0.1:${pass.port}`, { ...fast, connectTimeoutMs: 1500 }),
    )
    expect(anonymous.code).toBe(ErrorCodes.STATE_BACKEND)
  })
})

describe('redis over mutual TLS', () => {
  let tls: RedisServer
  beforeAll(async () => {
    tls = await startRedis({ tls: true })
  })
  afterAll(() => tls?.dispose())

  it('connects with rediss://, the CA and a client certificate from options', async () => {
    const t = tls.tls!
    const s = await open(tls.url, { prefix: uniquePrefix(), tls: { ca: t.ca, cert: t.cert, key: t.key } })
    expect(tls.url.startsWith('rediss://')).toBe(true)
    await s.fencedWrite(0, 1, { puts: [{ key: partitionKey(0, 'k'), value: buf('v') }] })
    expect((await s.get(partitionKey(0, 'k')))?.toString()).toBe('v')
    expect(await s.health()).toBe(true)
  })

  it('fails at once with TLS_FAILED when the server certificate is not trusted', async () => {
    const t = tls.tls!
    const err = await failure(createStateBackend(tls.url, { ...fast, tls: { cert: t.cert, key: t.key } }))
    expect(err.code).toBe(ErrorCodes.TLS_FAILED)
    expect(err.message).toMatch(/certificate|self.signed|issuer/i)
  })

  it('is refused without the client certificate the server requires', async () => {
    const err = await failure(createStateBackend(tls.url, { ...fast, tls: { ca: tls.tls!.ca } }))
    // With TLS 1.3 the server's "certificate required" alert races the connection reset: the
    // client sees either the alert (TLS_FAILED) or a reset it retries until the connect deadline.
    expect([ErrorCodes.TLS_FAILED, ErrorCodes.STATE_UNAVAILABLE]).toContain(err.code)
    if (err.code === ErrorCodes.TLS_FAILED) expect(err.message).toMatch(/certificate required/i)
  })
})

describe('redis sentinel', () => {
  let master: RedisServer
  let sentinel: Awaited<ReturnType<typeof startRedisSentinel>>
  beforeAll(async () => {
    master = await startRedis()
    sentinel = await startRedisSentinel(master)
  })
  afterAll(async () => {
    await sentinel?.dispose()
    await master?.dispose()
  })

  it('finds the master through redis+sentinel://host:port/master-name', async () => {
    const prefix = uniquePrefix()
    const s = await open(sentinel.url, { prefix })
    await s.incrBy('n', 2)
    expect(master.cli('get', `${prefix}:n`).trim()).toBe('2')
  })
})

describe('redis outage and durability', () => {
  let server: RedisServer
  beforeAll(async () => {
    server = await startRedis({ aof: true })
  })
  afterAll(() => server?.dispose())

  it('rejects promptly with retryable STATE_UNAVAILABLE while down, is unhealthy, and recovers after restart', async () => {
    const s = await open(server.url, { prefix: uniquePrefix() })
    await s.put('before', buf('1'))
    expect(await s.health()).toBe(true)

    await server.stop()
    await waitFor(async () => !(await s.health()), 'health to turn false')
    const ops: [string, () => Promise<unknown>][] = [
      ['get', () => s.get('before')],
      ['getMany', () => s.getMany(['before', 'x'])],
      ['put', () => s.put('during', buf('2'))],
      ['incrBy', () => s.incrBy('n')],
      ['compareAndSet', () => s.compareAndSet('k', null, buf('v'))],
      ['writeBatch', () => s.writeBatch(1, { puts: [{ key: partitionKey(1, 'k'), value: buf('v') }] })],
      ['fencedWrite', () => s.fencedWrite(1, 1, {})],
      ['scan', () => scanAll(s, '')],
    ]
    for (const [name, op] of ops) {
      const err = await failure(op())
      expect(err.code, name).toBe(ErrorCodes.STATE_UNAVAILABLE)
      expect(err.retryable, name).toBe(true)
    }

    await server.restart()
    await waitFor(() => s.health(), 'health to turn true after restart', 10_000)
    expect((await s.get('before'))?.toString()).toBe('1')
    await s.put('after', buf('3'))
    expect(await s.incrBy('n')).toBe(1)
    expect(await scanAll(s, '')).toEqual(['after', 'before', 'n'])
  })

  it('fails in-flight commands when the connection drops instead of re-sending them later', async () => {
    const s = await open(server.url, { prefix: uniquePrefix() })
    const settled = Promise.allSettled(Array.from({ length: 200 }, () => s.incrBy('n')))
    await server.stop('SIGKILL')
    const results = await settled
    const failed = results.filter((r) => r.status === 'rejected')
    for (const r of failed) expect((r.reason as ShoalError).code).toBe(ErrorCodes.STATE_UNAVAILABLE)
    await server.restart()
    await waitFor(() => s.health(), 'health after restart', 10_000)
    // AOF with appendfsync always: every acknowledged increment survived the SIGKILL, and
    // nothing was silently re-applied after the reconnect.
    const acked = results.filter((r) => r.status === 'fulfilled').length
    const stored = Number((await s.get('n'))?.toString() ?? '0')
    expect(stored).toBeGreaterThanOrEqual(acked)
    expect(stored).toBeLessThanOrEqual(200)
    await new Promise((r) => setTimeout(r, 200))
    expect(Number((await s.get('n'))?.toString() ?? '0')).toBe(stored)
  })

  it('fails to open with STATE_UNAVAILABLE when nothing listens', async () => {
    const t0 = Date.now()
    const err = await failure(createStateBackend('redis://127.0.0.1:1', { connectTimeoutMs: 500 }))
    expect(err.code).toBe(ErrorCodes.STATE_UNAVAILABLE)
    expect(err.retryable).toBe(true)
    expect(err.message).toMatch(/ECONNREFUSED/)
    expect(Date.now() - t0).toBeLessThan(2000)
  })
})
